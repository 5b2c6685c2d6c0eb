r"""Calibrates the arithmetic task's difficulty dial (`dsmath_jax.data.arithmetic.DIFFICULTY_LEVELS`) against
the tiny SFT policy: how much headroom each level leaves for RL at CPU scale (issue 18).

  python experiments/tools/calibrate_task.py --levels 0 2 3 --out runs/task_calibration
  python experiments/tools/calibrate_task.py --levels 3 --seeds 0 1 --out runs/task_calibration

For each level and seed: SFT-train the tiny model with the tiny SFT config (configs/sft/arithmetic.py:tiny, its
450 steps unless `--steps`) on the level's train problems (the config's SFT source with the level's task spec,
`arithmetic_spec(level)`), then on the level's held-out test problems:

* greedy accuracy (`check_answer`, the task's rule reward) and the greedy response length in tokens;
* the spread across questions: k samples per question at temperature 1 (the RL rollout's), the fraction of
  questions whose pass rate is strictly between 0 and 1 (`mixed`: a GRPO group with signal), all right, all
  wrong, and the mean sample accuracy;
* the wrong-step fraction: of the wrong answers (greedy, and sampled), the fraction with at least one step
  line whose result is not the true intermediate (`step_correctness`): what process supervision can find;
* the gold problems' token lengths with the run's tokenizer (response, prompt, and prompt + response against
  the SFT config's `data.seq_len`, beyond which SFT examples are truncated), and the SFT wall time.

Results go to experiments/results/task_calibration.json (`--results`), one entry per level and seed, written
after each; a table is printed. Resumable: an entry whose level knobs and settings are unchanged is kept, and an
SFT run directory with a summary is reused. Several minutes per level on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
import time
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "results" / "task_calibration.json"
SFT_CONFIG = "configs/sft/arithmetic.py:tiny"
MAX_NEW_TOKENS = 96  # the tiny RL config's rollout.max_new_tokens (dsmath_jax.config.rl.tiny_rl_overrides)


def knobs_tag(knobs: dict[str, Any]) -> str:
    """A short stable name of a knob set (run directories of a redefined level are not reused)."""
    return hashlib.sha256(json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:8]


def sft_config(spec: dict[str, Any], seed: int, steps: int):
    """The tiny SFT config with its arithmetic source's task spec replaced by `spec`."""
    from dsmath_jax.config import load_config

    base = load_config(SFT_CONFIG, command="sft", root=REPO)
    sources = [s.to_dict() if hasattr(s, "to_dict") else dict(s) for s in base.data.sources]
    subs = sources[0].get("sources") or []
    if len(subs) != 1 or subs[0].get("kind") != "arithmetic":
        raise ValueError(f"{SFT_CONFIG}: expected one arithmetic SFT source in data.sources[0], got {sources[0]}")
    subs[0] = dict(subs[0], arithmetic={k: v for k, v in spec.items() if k != "kind"})
    sources[0]["sources"] = subs
    return load_config(SFT_CONFIG, {"seed": seed, "data.seed": seed, "train.steps": steps, "train.tensorboard": False,
                                    "data.sources": sources}, command="sft", root=REPO)


def sft_run(workdir: pathlib.Path, spec: dict[str, Any], seed: int, steps: int) -> float:
    """Trains (or reuses) the SFT run in `workdir`; returns its wall time in seconds (as first recorded)."""
    from dsmath_jax.train.loop import train

    timing = workdir / "calibration_sft_seconds.json"
    if (workdir / "summary.json").exists() and timing.exists():
        return float(json.loads(timing.read_text())["seconds"])
    start = time.perf_counter()
    train(sft_config(spec, seed, steps), str(workdir), task="sft")
    seconds = time.perf_counter() - start
    timing.write_text(json.dumps({"seconds": seconds}))
    return seconds


def measure(workdir: pathlib.Path, spec: dict[str, Any], *, k: int, seq_len: int, seed: int) -> dict[str, Any]:
    """Greedy accuracy, pass-rate spread over `k` samples at temperature 1, wrong-step fractions and token lengths
    of the SFT policy in `workdir` on the held-out problems of `spec`."""
    from dsmath_jax.data.arithmetic import ArithmeticProblem
    from dsmath_jax.data.tasks import arithmetic_split, prompt_text
    from dsmath_jax.generate import make_sampler
    from dsmath_jax.generate.sampler import SamplingParams
    from dsmath_jax.rl.rewards import check_answer, step_correctness
    from dsmath_jax.train.restore import load_run

    model, tokenizer = load_run(str(workdir))
    _, test = arithmetic_split(spec)
    bos = tokenizer.bos_id is not None
    prompts = [tokenizer.encode(prompt_text(p), add_bos=bos) for p in test]  # as RL's encode_prompts does
    responses = [tokenizer.encode(" " + p.response, add_eos=True) for p in test]
    max_len = -(-(max(map(len, prompts)) + MAX_NEW_TOKENS) // 16) * 16
    sampler = make_sampler("continuous", model, tokenizer, rows=256, max_len=max_len, chunk_size=16)
    del model

    def wrong_step(text: str, p: ArithmeticProblem) -> bool:
        return not all(step_correctness(text, p))

    greedy = [g[0] for g in sampler.generate(prompts, SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0))]
    right = np.array([check_answer(c.text, p.answer) for c, p in zip(greedy, test)])
    greedy_wrong = [wrong_step(c.text, p) for c, p in zip(greedy, test) if not check_answer(c.text, p.answer)]
    sampled = sampler.generate(prompts, SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, n=k,
                                                       seed=1000 + seed))
    per_q = np.array([[check_answer(c.text, p.answer) for c in cs] for cs, p in zip(sampled, test)], dtype=float)
    rate = per_q.mean(axis=1)
    sampled_wrong = [wrong_step(c.text, p) for cs, p in zip(sampled, test) for c in cs
                     if not check_answer(c.text, p.answer)]
    by_steps = {}
    for n in sorted({p.num_steps for p in test}):
        idx = [i for i, p in enumerate(test) if p.num_steps == n]
        by_steps[str(n)] = {"n": len(idx), "greedy_accuracy": float(right[idx].mean())}
    return {
        "n_test": len(test),
        "greedy_accuracy": float(right.mean()),
        "greedy_accuracy_by_steps": by_steps,
        "greedy_length_tokens": float(np.mean([len(c.tokens) for c in greedy])),
        "greedy_truncated": float(np.mean([c.finish_reason == "length" for c in greedy])),
        "k": k,
        "sample_accuracy": float(per_q.mean()),
        f"pass@{k}": float((rate > 0).mean()),
        "mixed_fraction": float(((rate > 0) & (rate < 1)).mean()),
        "all_right_fraction": float((rate == 1).mean()),
        "all_wrong_fraction": float((rate == 0).mean()),
        "greedy_wrong_with_wrong_step": float(np.mean(greedy_wrong)) if greedy_wrong else None,
        "sampled_wrong_with_wrong_step": float(np.mean(sampled_wrong)) if sampled_wrong else None,
        **token_lengths(prompts, responses, seq_len),
    }


def token_lengths(prompts: list[list[int]], responses: list[list[int]], seq_len: int) -> dict[str, Any]:
    """Gold token lengths: responses (with eos), prompts (with bos), and SFT examples (prompt + response), of
    which those longer than `seq_len` + 1 are truncated by the SFT pipeline (`sft_example_fn`)."""
    totals = np.array([len(a) + len(b) for a, b in zip(prompts, responses)])
    return {"gold_response_tokens_mean": float(np.mean(list(map(len, responses)))),
            "gold_response_tokens_max": int(max(map(len, responses))),
            "prompt_tokens_max": int(max(map(len, prompts))),
            "sft_example_tokens_max": int(totals.max()),
            "sft_examples_truncated": float(np.mean(totals > seq_len + 1))}


def write_results(path: pathlib.Path, results: dict[str, Any]) -> None:
    from dsmath_jax.train.rundir import write_atomic

    write_atomic(path, json.dumps(results, indent=2) + "\n")


def table(results: dict[str, Any]) -> str:
    rows = [("level/seed", "greedy", "mixed", "pass@k", "all0", "wrongstep(g/s)", "resp tok", "gold max", "sft s")]
    for key, e in sorted(results["entries"].items()):
        m = e["metrics"]
        ws = "/".join("-" if m[x] is None else f"{m[x]:.2f}"
                      for x in ("greedy_wrong_with_wrong_step", "sampled_wrong_with_wrong_step"))
        pass_k = m[f"pass@{m['k']}"]
        rows.append((key, f"{m['greedy_accuracy']:.3f}", f"{m['mixed_fraction']:.3f}", f"{pass_k:.3f}",
                     f"{m['all_wrong_fraction']:.3f}", ws, f"{m['greedy_length_tokens']:.1f}",
                     str(m["gold_response_tokens_max"]), f"{e['sft_seconds']:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


def main(argv=None) -> int:
    # XLA's CPU matrix products on one thread: a rerun gives the same numbers on any core count (as the quickstart)
    from dsmath_jax.quickstart.config import make_cpu_math_deterministic
    make_cpu_math_deterministic()
    from dsmath_jax.data.arithmetic import DIFFICULTY_LEVELS, arithmetic_spec

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", type=int, nargs="+", default=sorted(DIFFICULTY_LEVELS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", required=True, help="directory for the SFT runs")
    p.add_argument("--results", default=str(RESULTS), help="results JSON (default: experiments/results/...)")
    p.add_argument("--steps", type=int, default=450, help="SFT steps (the tiny config's 450)")
    p.add_argument("--k", type=int, default=8, help="samples per question at temperature 1 (the RL group size)")
    args = p.parse_args(argv)
    unknown = [lv for lv in args.levels if lv not in DIFFICULTY_LEVELS]
    if unknown:
        p.error(f"unknown levels {unknown}; DIFFICULTY_LEVELS has {sorted(DIFFICULTY_LEVELS)}")
    out = pathlib.Path(args.out)
    results_path = pathlib.Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("entries", {})
    results.update(sft_config=SFT_CONFIG, max_new_tokens=MAX_NEW_TOKENS)
    seq_len = int(sft_config(arithmetic_spec(args.levels[0]), 0, args.steps).data.seq_len)
    for level in args.levels:
        for seed in args.seeds:
            spec = arithmetic_spec(level)
            key = f"level{level}/seed{seed}"
            settings = {"knobs": spec["knobs"], "n_train": spec["n_train"], "n_test": spec["n_test"],
                        "steps": args.steps, "k": args.k}
            done = results["entries"].get(key)
            if done and done.get("settings") == settings:
                print(f"[calibrate] {key}: done (greedy {done['metrics']['greedy_accuracy']:.3f}), skipped", flush=True)
                continue
            workdir = out / f"level{level}_{knobs_tag(settings)}_seed{seed}"
            print(f"[calibrate] {key}: SFT {args.steps} steps on {spec['knobs']} in {workdir}", flush=True)
            seconds = sft_run(workdir, spec, seed, args.steps)
            print(f"[calibrate] {key}: SFT took {seconds:.0f} s; measuring on {spec['n_test']} held-out problems",
                  flush=True)
            start = time.perf_counter()
            metrics = measure(workdir, spec, k=args.k, seq_len=seq_len, seed=seed)
            results["entries"][key] = {"level": level, "seed": seed, "settings": settings, "sft_seconds": seconds,
                                       "eval_seconds": time.perf_counter() - start, "metrics": metrics}
            write_results(results_path, results)
            print(f"[calibrate] {key}: " + json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}),
                  flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    sys.exit(main())
