r"""How many rollout-engine slots fit a chip: the KV cache and the decode loop per chip, from compile-only plans.

  python experiments/tools/engine_slots.py                       # the paper's GRPO at 7B on v5p-128
  python experiments/tools/engine_slots.py --config configs/rl/paradigm.py:grpo_outcome --topology v5p-32
  python experiments/tools/engine_slots.py --set rollout.max_new_tokens=2048 --out runs/engine_slots.json

The rollout engine (`dsmath_jax.generate.engine.Engine`, `rollout.batching="continuous"`) decodes
`rollout.sampler_batch_size` slots of `max_len` tokens (the longest prompt kept + the longer of the rollout's
and the evaluation's budgets, as `RLRun.build` sizes them). Its decode loop is compiled by the RL command's
own planner (`plan_rl(..., only=("rollout_decode_loop",))`, abstract shapes: nothing is allocated) for the
config's slot count and for a second one; per chip, from the compiler's figures:

* KV cache: the donated k/v arguments, which the compiler aliases to the outputs (`memory_analysis`), beside
  layers x slots x kv_heads x max_len x head_dim x 2 bytes x 2 over the chips (the cache is split over the
  decode mesh's data replicas by slot and over `tensor` by KV head);
* the decode loop: the compiler's memory report (program) + what stays resident during the rollout
  (policy parameters, AdamW moments, the reference unless `train.reference_on_host`);
* bytes per slot: the difference of the two programs over the difference of the slot counts; what does not
  scale with slots (the sampler's weights, ...) is the rest.

The largest slot count that fits: a multiple of the data replicas (chips / rollout tensor parallelism) whose
decode loop + resident state is within the chip's HBM (and within the 95% a plan asks for). The straight line
through the two compiles predicts it; the prediction is then compiled, and the count found by compiling (the
line's slope steps to the next guess, the known fitting and failing counts bound it) until a count fits and
the next multiple up does not. The slot insertion is compiled at the counts found. The decode loop holds one
copy of the cache (the donated k/v, updated in place; see the JSON's top buffers).

The decode step (one token for every slot, attention over all `max_len` entries), per chip, from the plan's
1- and 2-layer probes extrapolated to the model's layers: bytes accessed, FLOPs and the predicted seconds, for
the engine at the config's slot count and, as the reference, for the static sampler decoding as many rows
(`rollout.batching=static`; its probe does not donate its cache, so its bytes include a copy of it). Prints a
table; writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import numpy as np

from dsmath_jax.config import load_config
from dsmath_jax.plan.commands import model_from_run_or_preset, plan_rl
from dsmath_jax.plan.core import HEADROOM
from dsmath_jax.plan.topology import GIB, parse_topology
from dsmath_jax.train.rundir import write_atomic

RESULTS = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "results"
LOOP, INSERT, STEP = "rollout_decode_loop", "rollout_insert", "rollout_decode_step"


def compile_slots(args, slots: int, names: tuple[str, ...] = (LOOP,)) -> dict[str, Any]:
    """The rollout engine's executables `names` compiled for `slots` slots: per chip bytes of each."""
    config = load_config(args.config, [*args.set, "rollout.batching=continuous",
                                       f"rollout.sampler_batch_size={slots}"], command="rl")
    plan = plan_rl(config, parse_topology(args.topology), config_name=args.config, probes=False,
                   raise_if_not_fit=False, only=names)
    out: dict[str, Any] = {"slots": slots, "max_len": plan.dims["cache"], "mesh": plan.mesh}
    for e in plan.executables:
        out[e.name] = {"program_bytes": e.compiled.total_bytes, "resident_bytes": e.resident_bytes,
                       "peak_bytes": e.peak_bytes, "kv_bytes": e.compiled.alias_bytes,
                       "compiled": e.compiled.fits, "fits": e.compiled.fits and e.peak_bytes <= plan.hbm_bytes,
                       "top_buffers": [(b.bytes, b.shapes[:120]) for b in e.compiled.top_buffers[:3]]}
    print(f"  {slots} slots: " + "; ".join(f"{n} {out[n]['peak_bytes'] / GIB:.2f} GiB peak" for n in names),
          file=sys.stderr, flush=True)
    return out


def decode_step_cost(args, batching: str) -> dict[str, Any]:
    """The rollout's decode step under `batching` ("continuous": the engine; "static": the sampler), per chip:
    the plan's probes (1 and 2 layers, no loops) extrapolated to the model's layers."""
    config = load_config(args.config, [*args.set, f"rollout.batching={batching}"], command="rl")
    plan = plan_rl(config, parse_topology(args.topology), config_name=args.config, probes=True,
                   raise_if_not_fit=False, only=(STEP,))
    [e] = plan.executables
    out = {"batching": batching, "rows": config.rollout.sampler_batch_size, "bytes_accessed": e.bytes_accessed,
           "flops": e.flops, "collective_bytes": e.collective_bytes, "seconds": e.seconds}
    print(f"  {batching} decode step: {(e.bytes_accessed or 0) / GIB:.2f} GiB accessed, "
          f"{1e3 * (e.seconds or 0):.1f} ms", file=sys.stderr, flush=True)
    return out


def markdown(result: dict[str, Any], json_path: str) -> str:
    """The "Rollout engine" section of experiments/results/plans.md from this script's JSON (at `json_path`)."""
    gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    hbm, kv, loop = result["hbm_bytes_per_chip"], result["kv_bytes_per_chip"], result["decode_loop"]
    kv_slot = kv["formula"] / kv["slots"]
    ratio = result["bytes_per_slot_per_chip"] / kv_slot
    why = (": the decode loop keeps a second copy of the cache (loop-carried buffers beside the donated "
           "arguments)" if ratio > 1.8 else ": the decode loop updates the donated cache in place")
    line = ("" if (result["predicted_slots_fit_hbm"], result["predicted_slots_fit_with_headroom"]) ==
            (result["slots_fit_hbm"], result["slots_fit_with_headroom"]) else " (the programs grow slightly faster "
                                                                              "than linearly)")
    out = ["## Rollout engine", "",
           f"`{result['config']}` on {result['topology']} ({result['chips']} chips): the continuous-batching engine's "
           f"slots of {result['max_len']} tokens, split over {result['slot_multiple']} data replicas x tensor "
           f"{result['rollout_tensor_parallel']}, compiled per slot count by `experiments/tools/engine_slots.py` "
           f"(JSON: `experiments/results/{pathlib.Path(json_path).name}`). GiB per chip of {gib(hbm)}:", "",
           "| slots | executable | KV cache | program | + resident | peak | fits |", "|---|---|---|---|---|---|---|"]
    for row in result["compiled"]:
        for name in (INSERT, LOOP):
            if name in row:
                e = row[name]
                out.append(f"| {row['slots']:,} | {name} | {gib(e['kv_bytes'])} | {gib(e['program_bytes'])} | "
                           f"{gib(e['resident_bytes'])} | {gib(e['peak_bytes'])} | {'yes' if e['fits'] else 'no'} |")
    out += ["", f"- KV cache at {kv['slots']:,} slots x {result['max_len']} tokens: {gib(kv['compiled'])} GiB per chip "
            f"(layers x slots x KV heads x tokens x head_dim x 2 bytes x k,v over {result['chips']} chips: "
            f"{gib(kv['formula'])}); the decode loop {gib(loop['program_bytes'])} GiB + {gib(loop['resident_bytes'])} "
            "GiB resident during the rollout (what the plan keeps in HBM beside it: policy parameters, AdamW "
            "moments, ...) = "
            f"{gib(loop['peak_bytes'])} GiB.",
            f"- Per slot {result['bytes_per_slot_per_chip'] / 2 ** 20:.2f} MiB per chip, {ratio:.2f} x its KV cache "
            f"({kv_slot / 2 ** 20:.2f} MiB){why}; {gib(result['fixed_bytes_per_chip'])} GiB does not scale with "
            "slots (the sampler's weights, ...).",
            f"- Largest slot count, compiled: **{result['slots_fit_hbm']:,}** within HBM, "
            f"**{result['slots_fit_with_headroom']:,}** within {100 * (1 - result['headroom']):.0f}% of it (a plan's "
            "headroom); the straight line through the first two compiles predicted "
            f"{result['predicted_slots_fit_hbm']:,} and {result['predicted_slots_fit_with_headroom']:,}{line}."]
    if "decode_step" in result:
        engine, static = result["decode_step"]["continuous"], result["decode_step"]["static"]
        out.append(f"- Decode step (one token for every slot, attention over all {result['max_len']} entries; the "
                   "plan's probes): the engine's "
                   f"{engine['bytes_accessed'] / GIB:.1f} GiB accessed per chip, {1e3 * engine['seconds']:.1f} ms "
                   f"predicted for {engine['rows']:,} slots; the static sampler's {static['bytes_accessed'] / GIB:.1f} "
                   f"GiB, {1e3 * static['seconds']:.1f} ms for {static['rows']:,} rows (its probe copies its "
                   "undonated cache).")
    return "\n".join(out + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/rl/grpo_outcome.py")
    parser.add_argument("--topology", default="v5p-128")
    parser.add_argument("--second", type=int, default=None, help="the second slot count (default: twice the "
                                                                 "config's rollout.sampler_batch_size)")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    parser.add_argument("--out", default=str(RESULTS / "engine_slots_grpo_7b_v5p-128.json"))
    args = parser.parse_args()
    topology = parse_topology(args.topology)
    config = load_config(args.config, args.set, command="rl")
    cfg = model_from_run_or_preset(config.init.get("run_dir"), config.model.to_dict(), "the RL policy")
    hbm = topology.chip.hbm_bytes

    s1 = config.rollout.sampler_batch_size
    s2 = args.second or 2 * s1
    one, two = compile_slots(args, s1), compile_slots(args, s2)
    max_len = one["max_len"]
    tp = config.rollout.get("tensor_parallel") or one["mesh"]["tensor"]
    replicas = topology.num_chips // tp  # the decode mesh's data axis: slots are split over it
    per_slot = (two[LOOP]["program_bytes"] - one[LOOP]["program_bytes"]) / (s2 - s1)
    fixed = one[LOOP]["program_bytes"] - s1 * per_slot
    resident = one[LOOP]["resident_bytes"]
    kv_formula = (2 * cfg.num_layers * s1 * cfg.num_kv_heads * max_len * cfg.head_dim
                  * np.dtype(cfg.compute_dtype).itemsize / topology.num_chips)

    def largest(budget: float) -> int:
        return int((budget - resident - fixed) // per_slot) // replicas * replicas

    compiled = {s1: one, s2: two}

    def peak(slots: int) -> int:
        if slots not in compiled:
            compiled[slots] = compile_slots(args, slots)
        return compiled[slots][LOOP]["peak_bytes"] if compiled[slots][LOOP]["compiled"] else hbm * 2

    def search(budget: float, guess: int) -> int:
        """The largest multiple of `replicas` whose decode loop + resident state is within `budget`, by
        compiling: the line's slope proposes, the known fitting (lo) and failing (hi) counts bound."""
        fitting = [s for s in compiled if peak(s) <= budget]
        lo, hi = max(fitting, default=0), min((s for s in compiled if peak(s) > budget), default=None)
        while hi is None or hi - lo > replicas:
            s = guess
            if not (lo < s and (hi is None or s < hi)):  # outside the bounds: halve them
                s = (lo + hi) // 2 // replicas * replicas if hi is not None else lo + replicas
                s = s if lo < s else lo + replicas
            gap = budget - peak(s)
            if gap >= 0:
                lo, guess = s, s + replicas * max(1, int(gap // (per_slot * replicas)))
            else:
                hi, guess = s, s - replicas * max(1, -int(gap // (per_slot * replicas)))
        return lo

    predicted, predicted_headroom = largest(hbm), largest((1 - HEADROOM) * hbm)
    fit = search(hbm, predicted)
    fit_headroom = search((1 - HEADROOM) * hbm, predicted_headroom)
    for s in dict.fromkeys((fit_headroom, fit)):
        compiled[s].update({k: v for k, v in compile_slots(args, s, (INSERT,)).items() if k == INSERT})

    steps = {b: decode_step_cost(args, b) for b in ("continuous", "static")}
    result = {
        "config": args.config, "overrides": args.set, "topology": args.topology, "chips": topology.num_chips,
        "chip": topology.chip.name, "hbm_bytes_per_chip": hbm, "model": {"parameters": cfg.num_params(),
        "num_layers": cfg.num_layers, "num_kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
        "compute_dtype": str(np.dtype(cfg.compute_dtype))}, "rollout_tensor_parallel": tp,
        "slot_multiple": replicas, "max_len": max_len,
        "kv_bytes_per_chip": {"slots": s1, "compiled": one[LOOP]["kv_bytes"], "formula": kv_formula},
        "decode_loop": {"slots": s1, "program_bytes": one[LOOP]["program_bytes"], "resident_bytes": resident,
                        "peak_bytes": one[LOOP]["peak_bytes"]},
        "bytes_per_slot_per_chip": per_slot, "fixed_bytes_per_chip": fixed,
        "predicted_slots_fit_hbm": predicted, "predicted_slots_fit_with_headroom": predicted_headroom,
        "slots_fit_hbm": fit, "slots_fit_with_headroom": fit_headroom, "headroom": HEADROOM,
        "compiled": [compiled[s] for s in sorted(compiled)], "decode_step": steps,
        "method": "decode loop compiled (plan_rl, only the named executables, abstract shapes) at two slot counts; "
                  "bytes per slot = difference of the compiler's program totals over the difference of slots; "
                  "predicted largest count = (HBM - resident - fixed) / bytes per slot, down to a multiple of the "
                  "data replicas; the largest count = compiled: it fits and the next multiple does not",
    }
    write_atomic(args.out, json.dumps(result, indent=2) + "\n")

    g = lambda b: f"{b / GIB:.2f} GiB"  # noqa: E731
    print(f"rollout engine of {args.config} on {args.topology} ({topology.num_chips} chips, {g(hbm)} HBM each; "
          f"slots of {max_len} tokens, split over {replicas} data replicas x tensor {tp})")
    print(f"  KV cache at {s1} slots: {g(one[LOOP]['kv_bytes'])} per chip compiled "
          f"(formula {g(kv_formula)})")
    print(f"  bytes per slot per chip: {per_slot / 2 ** 20:.2f} MiB (KV alone {kv_formula / s1 / 2 ** 20:.2f} MiB); "
          f"fixed {g(fixed)}; resident during the rollout {g(resident)}")
    print(f"  largest slot count, compiled: {fit} within HBM, {fit_headroom} within {100 * (1 - HEADROOM):.0f}% of "
          f"it (the straight line predicted {predicted} and {predicted_headroom})")
    for b, e in steps.items():
        print(f"  decode step, {b} batching ({e['rows']} rows): {e['bytes_accessed'] / 2 ** 30:.2f} GiB accessed, "
              f"{e['flops'] / 1e9:.0f} GFLOP, {1e3 * e['seconds']:.1f} ms predicted per chip")
    print()
    print(f"  {'slots':>7}{'executable':>22}{'KV cache':>11}{'program':>11}{'+resident':>11}{'peak':>10}{'fits':>6}")
    for row in result["compiled"]:
        for name in (INSERT, LOOP):
            if name in row:
                e = row[name]
                print(f"  {row['slots']:>7}{name:>22}{g(e['kv_bytes']):>11}{g(e['program_bytes']):>11}"
                      f"{g(e['resident_bytes']):>11}{g(e['peak_bytes']):>10}{'yes' if e['fits'] else 'NO':>6}")
    print("\n" + markdown(result, args.out))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
