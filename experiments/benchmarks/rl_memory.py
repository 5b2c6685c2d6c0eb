"""GRPO against PPO: per-chip memory of one RL step, compiled for a TPU slice with the real TPU compiler.

  python experiments/benchmarks/rl_memory.py                                   # the paper's GRPO at 7B, v5p-128
  python experiments/benchmarks/rl_memory.py --topology v5p-64 --set train.accum_steps=32
  python experiments/benchmarks/rl_memory.py --config configs/rl/paradigm.py:grpo_outcome --topology v5p-32

GRPO's claim (PAPER.md §4.1): dropping PPO's value model, "typically another model of comparable size as the
policy model", "significantly reduces training resources". Both methods are planned with the RL command's
own planner (`dsmath_jax.plan.commands.plan_rl`: the run's `RLRun._build`, so the GRPO loss is the one
`dsmath rl` trains with, and PPO's steps are the run's `make_ppo_steps`), on an abstract model: nothing is
allocated or run. PPO is the same config with `method="ppo"` (its critic, a value head on a copy of the
policy's trunk, with its own AdamW state; the KL in the reward).

Per chip, from the compiler's own memory report of each program plus the resident state that stays in HBM
while it runs (policy params and AdamW moments, the frozen reference, PPO's critic and its moments):

* train side: the peak over the update's programs (reference forward, critic values, policy step, critic
  step): what the critic costs, the paper's point;
* whole step: also the rollout (sampler prefill and decode with its KV cache and its bf16 copy of the
  weights), which is the same program for both methods and, on a large slice, the biggest.

Writes JSON (`--out`) and prints a table. Exit 0 whatever the ratio: a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from dsmath_jax.config import load_config
from dsmath_jax.plan.commands import plan_rl
from dsmath_jax.plan.topology import GIB, parse_topology

ROLLOUT = ("rollout_",)


def peaks(plan) -> dict:
    train = [e for e in plan.executables if not e.name.startswith(ROLLOUT)]
    rollout = [e for e in plan.executables if e.name.startswith(ROLLOUT)]
    best = lambda es: max(es, key=lambda e: e.peak_bytes) if es else None  # noqa: E731
    t, r = best(train), best(rollout)
    return {"step_peak_gib": plan.peak.peak_bytes / GIB, "step_peak_at": plan.peak.name,
            "train_peak_gib": t.peak_bytes / GIB, "train_peak_at": t.name,
            "rollout_peak_gib": r.peak_bytes / GIB if r else None,
            "resident_gib": {k: round(v / GIB, 3) for k, v in plan.resident.items()},
            "executables": {e.name: {"program_gib": round(e.compiled.total_bytes / GIB, 3),
                                     "resident_gib": round(e.resident_bytes / GIB, 3),
                                     "peak_gib": round(e.peak_bytes / GIB, 3),
                                     "top_buffers": [(round(b.bytes / GIB, 3), b.shapes[:100])
                                                     for b in e.compiled.top_buffers[:3]]}
                            for e in plan.executables},
            "fits": plan.fits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/rl/grpo_outcome.py")
    parser.add_argument("--topology", default="v5p-128")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value (both methods)")
    parser.add_argument("--probes", action="store_true", help="also FLOPs and predicted step times (slower)")
    parser.add_argument("--output", "--out", dest="out", default=None)
    args = parser.parse_args()
    topology = parse_topology(args.topology)
    result = {"config": args.config, "topology": args.topology, "overrides": args.set}
    for method in ("grpo", "ppo"):
        config = load_config(args.config, [*args.set, f"method={method}"], command="rl")
        plan = plan_rl(config, topology, config_name=f"{args.config} (method={method})", probes=args.probes,
                       raise_if_not_fit=False)
        print(plan.table(), file=sys.stderr)
        result[method] = dict(peaks(plan), step=plan.step, predicted_step_seconds=plan.step_seconds)
    g, p = result["grpo"], result["ppo"]
    result["grpo_over_ppo_train_peak"] = g["train_peak_gib"] / p["train_peak_gib"]
    result["grpo_over_ppo_step_peak"] = g["step_peak_gib"] / p["step_peak_gib"]
    state = lambda r: sum(v for k, v in r["resident_gib"].items() if k != "rollout_batch")  # noqa: E731
    result["grpo_over_ppo_model_state"] = state(g) / state(p)
    print(f"\nper chip on {args.topology}: train-side peak GRPO {g['train_peak_gib']:.2f} GiB "
          f"({g['train_peak_at']}) vs "
          f"PPO {p['train_peak_gib']:.2f} GiB ({p['train_peak_at']}): {result['grpo_over_ppo_train_peak']:.3f} "
          f"(target <= 0.7); whole step {g['step_peak_gib']:.2f} vs {p['step_peak_gib']:.2f} GiB: "
          f"{result['grpo_over_ppo_step_peak']:.3f}; model state alone {result['grpo_over_ppo_model_state']:.3f}",
          file=sys.stderr)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
