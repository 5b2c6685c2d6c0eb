"""The paradigm comparison (PAPER.md §5.2, Figure 5) and maj@k vs pass@k before and after RL (Figure 7) at
CPU scale, on the small arithmetic task, over several seeds.

For each seed: SFT a tiny policy (configs/sft/arithmetic.py:tiny, with that seed), then from it run each arm
of configs/rl/paradigm.py (default: rft, online_rft, grpo_outcome, grpo_process) for the same number of
steps, evaluating held-out greedy accuracy along the way and maj@k / pass@k (k samples at temperature 0.7)
at the start and the end. Everything goes to one results JSON that notebooks/rl_analysis.ipynb reads:

  python experiments/rl_paradigm_tiny.py --out runs/paradigm_tiny --seeds 0 1 2 --steps 40

Runs resume: each SFT and RL run directory is reused when its summary exists. About 3 minutes per arm and
seed on 2 CPU cores at the defaults (32 questions x G 8 per step).

Its results (experiments/results/rl_paradigm_tiny.json) keep this format. experiments/rl_findings.py is the
fuller experiment: every arm of Figure 5 (PPO, DPO and GRPO+PS with a trained PRM included), iterative GRPO
(Figure 6), maj@k / pass@k for k up to 64 from one set of samples (Figure 7), and statistics over seeds
(t-intervals, paired sign-flip tests, verdicts per claimed ordering; notebooks/rl_findings.ipynb).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import numpy as np

from dsmath_jax.config import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_ARMS = ("rft", "online_rft", "grpo_outcome", "grpo_process")


def sft_run(out: pathlib.Path, seed: int, steps: int) -> str:
    from dsmath_jax.train.loop import train
    workdir = out / f"sft_seed{seed}"
    if not (workdir / "summary.json").exists():
        c = load_config("configs/sft/arithmetic.py:tiny", {"seed": seed, "data.seed": seed, "train.steps": steps,
                                                            "train.tensorboard": False}, command="sft", root=REPO)
        train(c, str(workdir), task="sft")
    return str(workdir)


def rl_run(out: pathlib.Path, arm: str, seed: int, sft_dir: str, args) -> dict:
    from dsmath_jax.rl.loop import run_rl
    workdir = out / f"{arm}_seed{seed}"
    summary_file = workdir / "summary.json"
    if summary_file.exists():
        summary = json.loads(summary_file.read_text())
        if summary.get("status") == "completed":
            return summary
    c = load_config(f"configs/rl/paradigm.py:{arm},tiny", {
        "seed": seed, "data.seed": seed, "init.run_dir": sft_dir, "train.steps_per_iteration": args.steps,
        "train.checkpoint_every": args.steps, "train.tensorboard": False, "eval.every": args.eval_every,
        "eval.samples": args.k, "eval.temperature": 0.7}, command="rl", root=REPO)
    return run_rl(c, str(workdir))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for the runs and results.json")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS))
    p.add_argument("--steps", type=int, default=40, help="RL steps per arm")
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--sft-steps", type=int, default=450)
    p.add_argument("--k", type=int, default=8, help="samples per problem for maj@k / pass@k")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"arms": args.arms, "seeds": args.seeds, "steps": args.steps, "k": args.k, "runs": []}
    for seed in args.seeds:
        sft_dir = sft_run(out, seed, args.sft_steps)
        for arm in args.arms:
            summary = rl_run(out, arm, seed, sft_dir, args)
            results["runs"].append({"arm": arm, "seed": seed, "workdir": summary["workdir"],
                                    "eval_history": summary.get("eval_history", [])})
            print(json.dumps({"arm": arm, "seed": seed, "initial": summary.get("initial_eval"),
                              "final": summary.get("final_eval")}), flush=True)
    # Per arm: mean and std over seeds of the final greedy accuracy, maj@k and pass@k, and their gains.
    k = args.k
    table = {}
    for arm in args.arms:
        runs = [r for r in results["runs"] if r["arm"] == arm and r["eval_history"]]
        row = {}
        for key in ("eval_accuracy", f"eval_maj@{k}", f"eval_pass@{k}"):
            start = [r["eval_history"][0].get(key) for r in runs]
            end = [r["eval_history"][-1].get(key) for r in runs]
            if None in start or None in end or not runs:
                continue
            row[key] = {"start_mean": float(np.mean(start)), "end_mean": float(np.mean(end)),
                        "end_std": float(np.std(end)), "gain_mean": float(np.mean(np.subtract(end, start)))}
        table[arm] = row
    results["table"] = table
    ends = {arm: table[arm].get("eval_accuracy", {}).get("end_mean") for arm in args.arms}
    orderings = {}
    pairs = [("online_rft", "rft"), ("grpo_outcome", "online_rft"), ("grpo_process", "grpo_outcome")]
    for better, worse in pairs:
        if ends.get(better) is not None and ends.get(worse) is not None:
            orderings[f"{better} > {worse}"] = bool(ends[better] > ends[worse])
    results["figure5_orderings_hold"] = orderings
    fig7 = {}
    for arm in args.arms:
        row = table.get(arm, {})
        if f"eval_maj@{k}" in row and f"eval_pass@{k}" in row:
            fig7[arm] = {"maj_gain": row[f"eval_maj@{k}"]["gain_mean"], "pass_gain": row[f"eval_pass@{k}"]["gain_mean"]}
    results["figure7_maj_vs_pass_gain"] = fig7
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({"table": table, "figure5_orderings_hold": orderings, "figure7": fig7}, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    sys.exit(main())
