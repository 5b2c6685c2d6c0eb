"""Train-step throughput of our model against `transformers` (PyTorch) on the same model and batch.

  python experiments/benchmarks/train_step.py    # ~100M-parameter Llama, CPU
  python experiments/benchmarks/train_step.py --preset deepseek_1_3b --dtype bfloat16 --batch 8 --seq 2048 \
      --no-torch    # GPU: MFU

Measures, in one run: (1) the FLOP/s of one large matmul in JAX and in torch (what the hardware gives each
framework), (2) our jitted train step (forward + backward + AdamW) in tokens/s and achieved FLOP/s
(6 N + attention FLOPs per token, PaLM's formula), (3) the same step with `transformers.LlamaForCausalLM`
and `torch.optim.AdamW`. Prints JSON with the ratios: ours / transformers tokens/s and ours / jnp.dot
FLOP/s, and the MFU against the device's bf16 peak where it is known.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import MODEL_100M, hf_llama, report
from flax import nnx

from dsmath_jax.model import CausalLM, get_params, get_preset
from dsmath_jax.parallel import create_sharded, make_mesh
from dsmath_jax.train.mfu import mfu
from dsmath_jax.train.step import adamw, make_train_step


def timed(fn, steps):
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def jax_matmul_flops(n=2048, steps=5, dtype=jnp.float32):
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    t, _ = timed(lambda: f(a, b).block_until_ready(), steps)
    return 2 * n ** 3 / t


def ours(cfg, batch, seq, steps):
    mesh = make_mesh({"fsdp": -1})
    model = create_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)), mesh)
    fns = make_train_step(model, adamw(1e-4), mesh)
    state = fns.init_state(get_params(model))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (batch, seq + 1)).astype(np.int32)
    data = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((batch, seq), np.float32)}
    t0 = time.perf_counter()
    compiled = fns.train_step.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], data)
        jax.block_until_ready(metrics)

    run()  # warm-up
    step_s, all_s = timed(run, steps)
    return {"compile_s": compile_s, "step_s": step_s, "all_s": all_s}


def transformers_step(cfg, batch, seq, steps, threads):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hf = hf_llama(cfg)
    hf.train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1))

    def run():
        opt.zero_grad(set_to_none=True)
        out = hf(input_ids=tokens[:, :-1], labels=tokens[:, :-1])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()

    run()
    step_s, all_s = timed(run, steps)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    mm_s, _ = timed(lambda: torch.mm(a, b), 5)
    return {"step_s": step_s, "all_s": all_s, "matmul_flops": 2 * n ** 3 / mm_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="a model preset (default: the ~100M model)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true", help="skip the transformers comparison")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    cfg = get_preset(args.preset) if args.preset else MODEL_100M
    cfg = cfg.replace(dtype=args.dtype, max_seq_len=max(cfg.max_seq_len, args.seq))
    tokens = args.batch * args.seq
    flops_per_token = cfg.flops_per_token(args.seq)
    matmul = jax_matmul_flops(dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
    result = {"device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
              "cpu_threads": os.cpu_count(), "parameters": cfg.num_params(),
              "parameters_without_embedding": cfg.num_params(include_embedding=False), "dtype": args.dtype,
              "batch": args.batch, "seq": args.seq, "flops_per_token": flops_per_token,
              "jax_matmul_flops": matmul}
    mine = ours(cfg, args.batch, args.seq, args.steps)
    ours_tps = tokens / mine["step_s"]
    result.update(ours_compile_s=round(mine["compile_s"], 2), ours_step_s=round(mine["step_s"], 3),
                  ours_tokens_per_s=round(ours_tps, 1), ours_flops=flops_per_token * ours_tps,
                  ours_vs_jax_matmul=round(flops_per_token * ours_tps / matmul, 3),
                  mfu=mfu(flops_per_token, ours_tps))
    if not args.no_torch:
        hf = transformers_step(cfg, args.batch, args.seq, args.steps, threads=os.cpu_count() or 1)
        hf_tps = tokens / hf["step_s"]
        result.update(transformers_step_s=round(hf["step_s"], 3), transformers_tokens_per_s=round(hf_tps, 1),
                      transformers_flops=flops_per_token * hf_tps, torch_matmul_flops=hf["matmul_flops"],
                      ours_vs_transformers=round(ours_tps / hf_tps, 3))
    report(result, args.output)


if __name__ == "__main__":
    main()
