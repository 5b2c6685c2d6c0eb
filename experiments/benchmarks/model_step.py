"""Speed and memory of one jitted training step (forward + backward + AdamW) of a model preset.

  python experiments/benchmarks/model_step.py --preset deepseek_1_3b --dtype bfloat16 --batch 8 --seq 2048
  python experiments/benchmarks/model_step.py --preset tiny --steps 5          # CPU smoke run

Prints (and with --output writes) JSON: compile time, seconds per step (median of --steps after one
warm-up), tokens/s, model FLOPs utilisation against the device's bf16 peak, and peak device memory
(`memory_stats()` on GPU/TPU; XLA's compiled memory analysis where the runtime has no statistics).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from common import report
from flax import nnx

from dsmath_jax.model import CausalLM, get_params, get_preset
from dsmath_jax.parallel import create_sharded, make_mesh
from dsmath_jax.train.mfu import mfu, peak_flops
from dsmath_jax.train.step import adamw, make_train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="deepseek_1_3b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--param-dtype", default="float32")
    parser.add_argument("--remat", default="none")
    parser.add_argument("--scan", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--mesh", default="fsdp=-1")
    parser.add_argument("--attention", default=None, choices=[None, "auto", "xla", "cudnn", "splash"])
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    shape = {k: int(v) for k, v in (p.split("=") for p in args.mesh.split(","))}
    mesh = make_mesh(shape)
    cfg = get_preset(args.preset, dtype=args.dtype, param_dtype=args.param_dtype, remat_policy=args.remat,
                     scan_layers=args.scan, attention_impl=args.attention)
    model = create_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)), mesh)
    init_state, train_step, *_ = make_train_step(model, adamw(1e-4), mesh)
    state = init_state(get_params(model))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (args.batch, args.seq + 1)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((args.batch, args.seq), np.float32)}

    t0 = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tokens_per_s = args.batch * args.seq / step_s
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    analysis = compiled.memory_analysis()
    result = {
        "device": device.device_kind, "num_devices": jax.device_count(), "preset": args.preset,
        "dtype": args.dtype, "param_dtype": args.param_dtype, "remat": args.remat, "scan": args.scan,
        "batch": args.batch, "seq": args.seq, "mesh": dict(mesh.shape), "parameters": cfg.num_params(),
        "compile_s": round(compile_s, 2), "step_s": round(step_s, 4), "step_s_all": [round(t, 4) for t in times],
        "tokens_per_s": round(tokens_per_s, 1), "loss": float(metrics["loss"]),
        "mfu": mfu(cfg.flops_per_token(args.seq), tokens_per_s, device=device),
        "peak_flops_per_device": peak_flops(device),
        "peak_memory_gib": round(stats["peak_bytes_in_use"] / 2**30, 2) if "peak_bytes_in_use" in stats else None,
        "compiled_temp_gib": round(analysis.temp_size_in_bytes / 2**30, 3) if analysis else None,
        "compiled_args_gib": round(analysis.argument_size_in_bytes / 2**30, 3) if analysis else None,
    }
    report(result, args.output)


if __name__ == "__main__":
    main()
