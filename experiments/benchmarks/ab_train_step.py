r"""Train-step speed of two versions of this code, side by side: a git ref (A) against the working tree (B).

  python experiments/benchmarks/ab_train_step.py --ref HEAD~3                       # ~100M Llama, fp32, CPU
  python experiments/benchmarks/ab_train_step.py --ref main --seq 1024 --batch 2 --rounds 8

A worktree of `--ref` is checked out in a temporary directory. One worker process per version builds the same
model (the ~100M Llama of common.py unless `--preset`), the same batch and its jitted train step (forward +
backward + AdamW), compiles it and warms it up; then the driver alternates them, A B A B ..., each time
asking for `--steps` steps and reading their wall time, so both see the same machine state. Only one worker
runs at a time. Reports the median seconds per step of each, their ratio (B / A) and every round's times.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[2]

WORKER = r"""
import json, sys, time
import jax, numpy as np
from flax import nnx
from dsmath_jax.model import CausalLM, ModelConfig, get_params
from dsmath_jax.parallel import create_sharded, make_mesh
from dsmath_jax.train.step import adamw, make_train_step

spec = json.loads(sys.argv[1])
fields = {f for f in ModelConfig.__dataclass_fields__}
cfg = ModelConfig(**{k: v for k, v in spec["model"].items() if k in fields})
mesh = make_mesh({"fsdp": -1})
model = create_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)), mesh)
fns = make_train_step(model, adamw(1e-4), mesh)
state = fns.init_state(get_params(model))
rng = np.random.default_rng(0)
b, s = spec["batch"], spec["seq"]
tokens = rng.integers(0, cfg.vocab_size, (b, s + 1)).astype(np.int32)
data = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((b, s), np.float32)}
step = fns.train_step.lower(state, data).compile()
for _ in range(2):
    state, m = step(state, data)
    jax.block_until_ready(m)
print(json.dumps({"ready": True, "loss": float(m["loss"])}), flush=True)
for line in sys.stdin:
    n = int(line)
    t0 = time.perf_counter()
    for _ in range(n):
        state, m = step(state, data)
    jax.block_until_ready(m)
    print(json.dumps({"seconds": (time.perf_counter() - t0) / n, "loss": float(m["loss"])}), flush=True)
"""


def start(tree: pathlib.Path, spec: dict) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(tree), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(spec)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the worker in {tree} failed to start")
    return proc


def ask(proc: subprocess.Popen, steps: int) -> float:
    proc.stdin.write(f"{steps}\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="git ref of version A (B is the working tree)")
    parser.add_argument("--preset", default=None, help="model preset (default: the ~100M Llama of common.py)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed call")
    parser.add_argument("--rounds", type=int, default=6, help="A/B alternations")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from common import MODEL_100M  # the benchmarks' shared model

    from dsmath_jax.model import get_preset
    cfg = get_preset(args.preset) if args.preset else MODEL_100M
    model = dict(cfg.to_dict(), dtype=args.dtype, max_seq_len=max(cfg.max_seq_len, args.seq))
    spec = {"model": model, "batch": args.batch, "seq": args.seq}
    with tempfile.TemporaryDirectory(prefix="ab_") as tmp:
        tree_a = pathlib.Path(tmp) / "a"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree_a), args.ref], cwd=REPO, check=True,
                       capture_output=True)
        try:
            a, b = start(tree_a, spec), start(REPO, spec)
            times = {"a": [], "b": []}
            for _ in range(args.rounds):
                times["a"].append(ask(a, args.steps))
                times["b"].append(ask(b, args.steps))
            for p in (a, b):
                p.stdin.close()
                p.wait()
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree_a)], cwd=REPO, check=False,
                           capture_output=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = args.batch * args.seq
    result = {"ref_a": args.ref, "b": "working tree", "model": spec["model"], "batch": args.batch, "seq": args.seq,
              "seconds_per_step": med, "tokens_per_s": {k: tokens / v for k, v in med.items()},
              "b_over_a_tokens_per_s": med["a"] / med["b"], "rounds": times}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        pathlib.Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
