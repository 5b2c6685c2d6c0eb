"""Device memory of one GRPO RL step against one PPO RL step, and rollout time against train time.

  python experiments/benchmarks/rl_memory.py                                      # ~100M Llama, fp32, CPU
  python experiments/benchmarks/rl_memory.py --preset deepseek_1_3b --dtype bfloat16 --seq-len 1024 --rows 8 --no-time
  python experiments/benchmarks/rl_memory.py --preset deepseekmath_7b --dtype bfloat16 --devices 8 --no-time

GRPO's claim (PAPER.md §4.1): dropping PPO's value model, "typically another model of comparable size as the
policy model", "significantly reduces training resources". This script measures it without running anything
and without allocating a single parameter: every executable of one RL update is lowered and compiled from
`jax.ShapeDtypeStruct`s carrying their shardings, and XLA's `memory_analysis()` (argument, output, alias and
temp bytes, per device) gives its footprint.

* GRPO step = the frozen reference's log-prob forward, then the policy train step (`grpo_loss_fn`, AdamW).
* PPO step  = the reference forward, the critic's value forward, the policy train step (`ppo_policy_loss_fn`,
  AdamW) and the critic's train step (`critic_loss_fn`, AdamW on a second model of the policy's size).

Peak device memory of a step = the resident state (policy params + AdamW moments, reference params, and for
PPO the critic's params + AdamW moments) plus, maximised over the executables that run one after the
other, what each adds on top: its non-resident arguments (the batch), its outputs that do not alias a
donated input, and its temporaries. The rollout batch itself stays resident; the sampler's KV cache (the
rollout) is the same for both methods and is left out. `--accum-steps k` splits the update into k
micro-batches (gradient accumulation in the train steps, one forward per micro-batch), as an RL run must
to fit the paper's 1024-sample batches. Fake CPU devices (`--devices 8`) give the per-device figures of an
8-way FSDP mesh.

The model state alone (params + AdamW moments + the reference) gives GRPO / PPO ~0.6 whatever the batch; the
temporaries of a train step (activations, gradients, optimizer update) are the same for the policy under
either method and dilute the ratio toward 1 as they grow. On CPU, XLA's scheduler does not realise the
savings of rematerialisation (`--remat full` leaves the compiled temp unchanged, as it does for a plain
`jax.checkpoint` chain), so CPU temps are upper bounds of what a GPU/TPU compile reports.

With `--time-preset` (default tiny; `--no-time` skips it) the script also runs real steps on small random
weights: the wall time of the rollout (`Sampler.generate`, G samples for each of a few prompts) against the
train-side work of one GRPO and one PPO update (forwards + train steps), after one warm-up call each.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="model preset (default: the ~100M Llama of common.py)")
    parser.add_argument("--dtype", default="float32", help="compute dtype (bfloat16 for the 1.3B / 7B presets)")
    parser.add_argument("--param-dtype", default="float32", help="storage dtype of params and AdamW moments")
    parser.add_argument("--remat", default="none", help="rematerialisation policy of the decoder blocks")
    parser.add_argument("--scan", action="store_true", help="scan over layers (faster compiles of deep models)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per row (prompt + response)")
    parser.add_argument("--rows", type=int, default=8, help="rows per update (prompts x G) on the whole mesh")
    parser.add_argument("--accum-steps", type=int, default=1,
                        help="micro-batches per update: the train steps accumulate gradients over them and the "
                             "forwards run once per micro-batch (what fits the paper's 1024-sample batches)")
    parser.add_argument("--devices", type=int, default=1, help="fake CPU devices (XLA flag); ignored on GPU/TPU")
    parser.add_argument("--mesh", default="fsdp=-1")
    parser.add_argument("--beta", type=float, default=0.04, help="GRPO's KL coefficient (PPO: in the reward)")
    parser.add_argument("--time-preset", default="tiny", help="preset of the timed run on real small weights")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8, help="G samples per prompt")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--time-steps", type=int, default=3)
    parser.add_argument("--no-time", action="store_true", help="only the compiled memory analysis")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.devices > 1 and "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={ARGS.devices}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from dsmath_jax.generate import Sampler, SamplingParams  # noqa: E402
from dsmath_jax.model import CausalLM, ScalarHeadModel, get_params, get_preset  # noqa: E402
from dsmath_jax.parallel import batch_sharding, create_sharded, make_mesh  # noqa: E402
from dsmath_jax.parallel.mesh import DEFAULT_RULES, activation_sharding  # noqa: E402
from dsmath_jax.rl.advantages import group_advantages, token_advantages  # noqa: E402
from dsmath_jax.rl.grpo import grpo_loss_fn, reference_logprobs, rollout_batch  # noqa: E402
from dsmath_jax.rl.losses import PolicyLossConfig  # noqa: E402
from dsmath_jax.rl.ppo import critic_from_policy, make_ppo_steps, ppo_batch  # noqa: E402
from dsmath_jax.train.step import adamw, make_train_step  # noqa: E402

from common import MODEL_100M, report  # noqa: E402

GIB = 2 ** 30


# ------------------------------------------------------------------------------------------ shapes
def _shaped(shapes, shardings):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def device_bytes(tree) -> int:
    """Bytes of one device's shards of every array of `tree` (ShapeDtypeStructs with shardings)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def abstract_state(fns, model):
    params = jax.eval_shape(lambda: get_params(model))
    return _shaped(jax.eval_shape(fns.init_state, params), fns.state_sharding)


def rollout_spec(rows: int, seq: int, sharding) -> dict:
    """A PPO/GRPO update batch as ShapeDtypeStructs (every key a [rows, seq] array)."""
    ints = ("inputs", "targets", "segment_ids")
    floats = ("weights", "old_logp", "ref_logp", "advantages", "old_values", "returns", "token_rewards")
    spec = {k: jax.ShapeDtypeStruct((rows, seq), jnp.int32, sharding=sharding) for k in ints}
    spec.update({k: jax.ShapeDtypeStruct((rows, seq), jnp.float32, sharding=sharding) for k in floats})
    return spec


def analysis(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        raise RuntimeError("this backend gives no compiled memory analysis")
    return {"argument": int(m.argument_size_in_bytes), "output": int(m.output_size_in_bytes),
            "alias": int(m.alias_size_in_bytes), "temp": int(m.temp_size_in_bytes)}


def step_peak(resident: dict[str, int], executables: list[tuple[str, dict, int]]) -> dict:
    """Peak of executables run in sequence on top of the resident state.

    executables: (name, memory analysis, bytes of its arguments that are resident state). While one runs,
    the device holds the whole resident state, its other arguments (the batch), its outputs that do not
    alias a donated input, and its temporaries.
    """
    total = sum(resident.values())
    rows = []
    for name, m, resident_args in executables:
        extra = (m["argument"] - resident_args) + (m["output"] - m["alias"]) + m["temp"]
        rows.append({"name": name, **m, "resident_args": resident_args, "on_top": extra, "peak": total + extra})
    worst = max(rows, key=lambda r: r["peak"])
    return {"resident": resident, "resident_total": total, "executables": rows, "peak": worst["peak"],
            "peak_at": worst["name"]}


# ------------------------------------------------------------------------------------------ memory
def memory(cfg, mesh, rows: int, seq: int, beta: float, accum_steps: int = 1) -> dict:
    rules = DEFAULT_RULES
    if rows % accum_steps:
        raise ValueError(f"--rows {rows} does not split into --accum-steps {accum_steps} micro-batches")
    policy = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
    critic = nnx.eval_shape(lambda: ScalarHeadModel(cfg, rngs=nnx.Rngs(0)))
    rows_sharding = batch_sharding(mesh, rules)
    batch = rollout_spec(rows, seq, rows_sharding)
    micro = rollout_spec(rows // accum_steps, seq, rows_sharding)  # what one forward pass sees
    forward_batch = {k: micro[k] for k in ("inputs", "targets", "weights", "segment_ids")}
    grpo_batch = {k: v for k, v in batch.items() if k not in ("old_values", "returns", "token_rewards")}
    optimizer = adamw(1e-6)

    grpo_fns = make_train_step(policy, optimizer, mesh, rules, loss_fn=grpo_loss_fn(PolicyLossConfig(beta=beta)),
                               accum_steps=accum_steps)
    ppo_fns = make_ppo_steps(policy, critic, optimizer, adamw(1e-6), mesh, rules,
                             loss_config=PolicyLossConfig(beta=0.0), value_clip=0.2, accum_steps=accum_steps)
    policy_state = abstract_state(grpo_fns, policy)
    critic_state = abstract_state(ppo_fns.critic, critic)
    ref_params = policy_state.params  # the frozen reference: same shapes and shardings as the policy

    graphdef, _ = nnx.split(policy)

    def ref_forward(params, b):
        with activation_sharding(mesh, rules):
            return reference_logprobs(graphdef, params, b)

    ref_jit = jax.jit(ref_forward, in_shardings=(grpo_fns.state_sharding.params, rows_sharding),
                      out_shardings=rows_sharding)
    compiled, compile_s = {}, {}

    def compile_(name, lowered):
        t0 = time.perf_counter()
        compiled[name] = analysis(lowered.compile())
        compile_s[name] = round(time.perf_counter() - t0, 1)
        print(f"compiled {name} in {compile_s[name]} s", file=sys.stderr, flush=True)

    compile_("reference_forward", ref_jit.lower(ref_params, forward_batch))
    compile_("grpo_policy_step", grpo_fns.train_step.lower(policy_state, grpo_batch))
    compile_("critic_value_forward", ppo_fns.values.lower(critic_state.params, micro))
    compile_("ppo_policy_step", ppo_fns.policy.train_step.lower(policy_state, batch))
    compile_("critic_step", ppo_fns.critic.train_step.lower(critic_state, batch))

    pol_b, ref_b, cri_b = device_bytes(policy_state), device_bytes(ref_params), device_bytes(critic_state)
    cri_params_b, batch_b = device_bytes(critic_state.params), device_bytes(batch)
    grpo_batch_b = device_bytes(grpo_batch)
    # The update's batch (all rows, every per-token array) stays on the device through the step.
    grpo = step_peak({"policy_params_and_adamw": pol_b, "reference_params": ref_b, "rollout_batch": grpo_batch_b},
                     [("reference_forward", compiled["reference_forward"], ref_b),
                      ("grpo_policy_step", compiled["grpo_policy_step"], pol_b + grpo_batch_b)])
    ppo = step_peak({"policy_params_and_adamw": pol_b, "reference_params": ref_b, "critic_params_and_adamw": cri_b,
                     "rollout_batch": batch_b},
                    [("reference_forward", compiled["reference_forward"], ref_b),
                     ("critic_value_forward", compiled["critic_value_forward"], cri_params_b),
                     ("ppo_policy_step", compiled["ppo_policy_step"], pol_b + batch_b),
                     ("critic_step", compiled["critic_step"], cri_b + batch_b)])
    state_only = (grpo["resident_total"] - grpo_batch_b) / (ppo["resident_total"] - batch_b)
    return {"grpo": grpo, "ppo": ppo, "grpo_over_ppo": grpo["peak"] / ppo["peak"],
            "grpo_over_ppo_model_state": state_only, "compile_s": compile_s}


def print_table(mem: dict) -> None:
    g = lambda b: f"{b / GIB:8.3f}"  # noqa: E731
    print(f"\n{'per device, GiB':32s} {'GRPO':>8s} {'PPO':>8s}", file=sys.stderr)
    keys = ("policy_params_and_adamw", "reference_params", "critic_params_and_adamw", "rollout_batch")
    for k in keys:
        print(f"{k:32s} {g(mem['grpo']['resident'].get(k, 0))} {g(mem['ppo']['resident'].get(k, 0))}", file=sys.stderr)
    print(f"{'resident total':32s} {g(mem['grpo']['resident_total'])} {g(mem['ppo']['resident_total'])}",
          file=sys.stderr)
    for method in ("grpo", "ppo"):
        for r in mem[method]["executables"]:
            print(f"  {method}: {r['name']:24s} temp {g(r['temp'])}  on top {g(r['on_top'])}  -> peak {g(r['peak'])}",
                  file=sys.stderr)
    print(f"{'peak of one RL step':32s} {g(mem['grpo']['peak'])} {g(mem['ppo']['peak'])}", file=sys.stderr)
    print(f"GRPO / PPO peak memory: {mem['grpo_over_ppo']:.3f} (target <= 0.7); model state alone: "
          f"{mem['grpo_over_ppo_model_state']:.3f}\n", file=sys.stderr)


# ------------------------------------------------------------------------------------------ timing
class _IdTokenizer:
    """Token ids in, token ids out (prompts are given as ids): the benchmark measures the model."""

    bos_id, eos_id, pad_id = None, None, 0

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def encode(self, text, add_bos=False, add_eos=False):
        return [ord(ch) % self.vocab_size for ch in text]

    def decode(self, ids, skip_special_tokens=True):
        return ""


def _timed(fn, steps):
    fn()  # warm-up (compiles)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timing(cfg, mesh, args) -> dict:
    rules = DEFAULT_RULES
    rows = args.prompts * args.group
    rng = np.random.default_rng(0)
    prompt_ids = rng.integers(1, cfg.vocab_size, (args.prompts, 16)).tolist()
    seq = 16 + args.new_tokens
    policy = create_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)), mesh, rules)
    critic = critic_from_policy(policy, mesh, rules, seed=1)
    sampler = Sampler(policy, _IdTokenizer(cfg.vocab_size), batch_size=rows, mesh=mesh, rules=rules, add_bos=False)
    sampling = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, n=args.group, stop_token_ids=())
    holder = {}

    def rollout():
        holder["completions"] = sampler.generate(prompt_ids, sampling)

    rollout_s = _timed(rollout, args.time_steps)
    batch = rollout_batch(prompt_ids, holder["completions"], seq_len=seq)
    batch = {k: v for k, v in batch.items() if k != "truncated"}
    scores = rng.choice([0.0, 1.0], rows).astype(np.float32)

    grpo_fns = make_train_step(policy, adamw(1e-6), mesh, rules,
                               loss_fn=grpo_loss_fn(PolicyLossConfig(beta=args.beta)))
    ppo_fns = make_ppo_steps(policy, critic, adamw(1e-6), adamw(1e-6), mesh, rules,
                             loss_config=PolicyLossConfig(beta=0.0))
    params = get_params(policy)
    ref_params = jax.tree.map(jnp.copy, params)
    state = {"grpo": grpo_fns.init_state(jax.tree.map(jnp.copy, params)),
             "ppo": ppo_fns.policy.init_state(jax.tree.map(jnp.copy, params)),
             "critic": ppo_fns.critic.init_state(get_params(critic))}
    advantages = jax.jit(lambda r, w: token_advantages(group_advantages(r, args.group), w))
    prepare = jax.jit(lambda b, s, ref, v: ppo_batch(b, s, ref, v, kl_coef=args.beta))

    def grpo_update():
        ref = ppo_fns.reference_logprobs(ref_params, batch)
        b = dict(batch, ref_logp=ref, advantages=advantages(scores, batch["weights"]))
        state["grpo"], metrics = grpo_fns.train_step(state["grpo"], b)
        jax.block_until_ready(metrics)

    def ppo_update():
        ref = ppo_fns.reference_logprobs(ref_params, batch)
        values = ppo_fns.values(state["critic"].params, batch)
        b = prepare(batch, scores, ref, values)
        state["ppo"], m1 = ppo_fns.policy.train_step(state["ppo"], b)
        state["critic"], m2 = ppo_fns.critic.train_step(state["critic"], b)
        jax.block_until_ready((m1, m2))

    grpo_s = _timed(grpo_update, args.time_steps)
    ppo_s = _timed(ppo_update, args.time_steps)
    return {"time_preset": args.time_preset, "parameters": cfg.num_params(), "prompts": args.prompts,
            "group": args.group, "rows": rows, "new_tokens": args.new_tokens, "seq_len": seq,
            "rollout_s": round(rollout_s, 4), "grpo_update_s": round(grpo_s, 4), "ppo_update_s": round(ppo_s, 4),
            "rollout_over_grpo_update": round(rollout_s / grpo_s, 2),
            "rollout_over_ppo_update": round(rollout_s / ppo_s, 2)}


def main(args) -> None:
    shape = {k: int(v) for k, v in (p.split("=") for p in args.mesh.split(","))}
    mesh = make_mesh(shape)
    cfg = get_preset(args.preset) if args.preset else MODEL_100M
    cfg = cfg.replace(dtype=args.dtype, param_dtype=args.param_dtype, remat_policy=args.remat,
                      scan_layers=args.scan, max_seq_len=max(cfg.max_seq_len, args.seq_len))
    result = {"device": jax.devices()[0].device_kind, "num_devices": jax.device_count(), "mesh": dict(mesh.shape),
              "preset": args.preset or "100m", "parameters": cfg.num_params(), "dtype": args.dtype,
              "param_dtype": args.param_dtype, "remat": args.remat, "rows": args.rows, "seq_len": args.seq_len,
              "accum_steps": args.accum_steps}
    mem = memory(cfg, mesh, args.rows, args.seq_len, args.beta, args.accum_steps)
    print_table(mem)
    result.update(
        memory_gib={m: {"resident": {k: round(v / GIB, 3) for k, v in mem[m]["resident"].items()},
                        "resident_total": round(mem[m]["resident_total"] / GIB, 3),
                        "peak": round(mem[m]["peak"] / GIB, 3), "peak_at": mem[m]["peak_at"],
                        "temp": {r["name"]: round(r["temp"] / GIB, 3) for r in mem[m]["executables"]}}
                    for m in ("grpo", "ppo")},
        grpo_over_ppo=round(mem["grpo_over_ppo"], 3),
        grpo_over_ppo_model_state=round(mem["grpo_over_ppo_model_state"], 3), compile_s=mem["compile_s"],
        memory_bytes=mem)
    if not args.no_time:
        tcfg = get_preset(args.time_preset) if args.time_preset != "100m" else MODEL_100M
        result["timing"] = timing(tcfg.replace(max_seq_len=max(tcfg.max_seq_len, 16 + args.new_tokens)), mesh, args)
        t = result["timing"]
        print(f"rollout {t['rollout_s']} s vs GRPO update {t['grpo_update_s']} s / PPO update {t['ppo_update_s']} s "
              f"({t['rows']} rows, {t['new_tokens']} new tokens)", file=sys.stderr)
    report(result, args.out)


if __name__ == "__main__":
    main(ARGS)
