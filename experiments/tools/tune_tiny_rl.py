r"""Tunes the tiny RL config on a task with headroom (issue 18): GRPO variants from one or more SFT policies,
held-out greedy accuracy along the way, over seeds.

  python experiments/tools/tune_tiny_rl.py --sft runs/task_calibration/level2_<tag>_seed0 \
      --task ARITHMETIC_HEADROOM --out runs/tune_rl --variant base= \
      --variant lr3e-4_80="optimizer.schedule.peak=3e-4 train.steps_per_iteration=80"

Each `--variant NAME=OVERRIDES` (space-separated `key=value` config overrides, values parsed as in `--set`) runs
`configs/rl/grpo_outcome.py:tiny` (`--config`) from every `--sft` policy for every `--seeds` seed, with the task's
problems (`--task`, as experiments/rl_findings.py reads it) and held-out greedy accuracy every `--eval-every`
steps on `--eval-problems` problems. Results: one row per (variant, SFT policy, seed) with the accuracy before
(step 0) and after, the best along the way, mean training reward, the share of all-equal groups and wall time, in
`--results` (default experiments/results/tiny_rl_tuning.json, which holds the recorded sweep; rewritten after every
run, other rows kept); a run directory whose summary says completed is reused, so the sweep resumes.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse
import json
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments"))

from rl_findings import parse_task  # noqa: E402

from dsmath_jax.config import load_config  # noqa: E402

RESULTS = REPO / "experiments" / "results" / "tiny_rl_tuning.json"


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME=k1=v1 k2=v2` -> (NAME, {k1: v1, k2: v2})."""
    name, sep, rest = text.partition("=")
    if not sep or not name.isidentifier():
        raise ValueError(f"--variant {text!r}: expected NAME=OVERRIDES with NAME an identifier")
    overrides = {}
    for item in rest.split():
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--variant {text!r}: {item!r} is not key=value")
        overrides[key] = value  # parsed by the field's type (dsmath_jax.config.loader.apply_overrides)
    return name, overrides


def _metrics(workdir: pathlib.Path) -> dict[str, list[float]]:
    """Per-step training reward and all-equal group share from the run's metrics log."""
    from dsmath_jax.train.metrics import read_metrics

    rows = read_metrics(str(workdir / "metrics.jsonl")) if (workdir / "metrics.jsonl").exists() else []
    return {"reward": [float(r["reward_mean"]) for r in rows if "reward_mean" in r],
            "zero_std": [float(r["zero_variance_groups"]) for r in rows if "zero_variance_groups" in r]}


def run_one(config: str, overrides: dict[str, Any], task: dict[str, Any] | None, sft: str, seed: int,
            workdir: pathlib.Path, args) -> dict[str, Any]:
    from dsmath_jax.rl.loop import run_rl

    o = {"seed": seed, "data.seed": seed, "init.run_dir": sft, "train.tensorboard": False,
         "eval.samples": 0, "eval.n_problems": args.eval_problems, **overrides}
    c = load_config(config, o, root=REPO)
    steps = c.train.steps_per_iteration
    with c.unlocked():
        if task is not None:
            c.data.problems = dict(task)
        c.eval.every = args.eval_every
        c.train.checkpoint_every = steps
    start = time.perf_counter()
    timing = workdir / "tuning_seconds.json"
    summary_path = workdir / "summary.json"
    if summary_path.exists() and json.loads(summary_path.read_text()).get("status") == "completed":
        summary = json.loads(summary_path.read_text())
        wall = json.loads(timing.read_text())["seconds"] if timing.exists() else None
    else:
        summary = run_rl(c, str(workdir))
        wall = time.perf_counter() - start
        timing.write_text(json.dumps({"seconds": wall}))
    history = summary.get("eval_history", [])
    acc = {int(h["step"]): float(h["eval_accuracy"]) for h in history}
    m = _metrics(workdir)
    return {"status": summary.get("status"), "sft_dir": sft, "steps": steps, "accuracy": acc,
            "before": acc.get(0), "after": acc.get(steps),
            "best": max(acc.values()) if acc else None, "wall_s": wall,
            "reward_first5": float(np.mean(m["reward"][:5])) if m["reward"] else None,
            "reward_last5": float(np.mean(m["reward"][-5:])) if m["reward"] else None,
            "zero_std_last5": float(np.mean(m["zero_std"][-5:])) if m["zero_std"] else None}


def main(argv: Sequence[str] | None = None) -> int:
    # XLA's CPU matrix products on one thread: a rerun gives the same numbers on any core count (as the quickstart)
    from dsmath_jax.quickstart.config import make_cpu_math_deterministic
    make_cpu_math_deterministic()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sft", nargs="+", required=True, help="SFT run directories (the policies RL starts from)")
    p.add_argument("--out", required=True, help="directory of the RL runs")
    p.add_argument("--variant", action="append", required=True, help="NAME=OVERRIDES (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--task", default="ARITHMETIC_HEADROOM")
    p.add_argument("--config", default="configs/rl/grpo_outcome.py:tiny")
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--eval-problems", type=int, default=256)
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args(argv)
    task = parse_task(args.task)
    variants = [parse_variant(v) for v in args.variant]
    results_path = pathlib.Path(args.results)
    recorded = json.loads(results_path.read_text()) if results_path.exists() else {}
    rows = recorded.get("runs", [])
    for name, overrides in variants:
        for sft_index, sft in enumerate(args.sft):
            for seed in args.seeds:
                workdir = pathlib.Path(args.out) / f"{name}_sft{sft_index}_seed{seed}"
                row = run_one(args.config, overrides, task, sft, seed, workdir, args)
                row.update(variant=name, overrides=overrides, config=args.config, sft=sft_index, seed=seed,
                           task=args.task)
                rows = [r for r in rows if (r["variant"], r["sft"], r["seed"], r["task"]) !=
                        (name, sft_index, seed, args.task)] + [row]
                results_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = results_path.with_suffix(".tmp")
                tmp.write_text(json.dumps({**recorded, "runs": rows}, indent=1, sort_keys=True) + "\n")
                tmp.replace(results_path)
                print(f"{name} sft{sft_index} seed{seed}: {row['before']} -> {row['after']} (best {row['best']}), "
                      f"reward {row['reward_first5']} -> {row['reward_last5']}, {row['wall_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
