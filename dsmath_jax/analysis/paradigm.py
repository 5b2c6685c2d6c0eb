"""The results JSON of experiments/rl_paradigm_tiny.py (Figure 5-style arms)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from dsmath_jax.analysis.figures import new_figure, note
from dsmath_jax.analysis.files import ResultsFormatError, RunDirError, number, read_json, resolve_dir, series


def load_paradigm_results(path: str) -> dict[str, Any]:
    """experiments/rl_paradigm_tiny.py's results JSON: {arms, seeds, steps, k, runs: [{arm, seed, workdir,
    eval_history: [{step, eval_accuracy, eval_maj@k, ...}]}], table, ...}, checked."""
    path = resolve_dir(path)
    if not os.path.isfile(path):
        raise RunDirError(f"{path}: no such file (expected the results JSON of experiments/rl_paradigm_tiny.py)")
    results = read_json(path)
    if not isinstance(results, dict) or not isinstance(results.get("runs"), list):
        raise ResultsFormatError(f"{path}: expected a JSON object with a `runs` list "
                                 "(the output of experiments/rl_paradigm_tiny.py)")
    for i, run in enumerate(results["runs"]):
        if not isinstance(run, dict) or "arm" not in run or "seed" not in run:
            raise ResultsFormatError(f"{path}: runs[{i}] needs `arm` and `seed`")
        if not isinstance(run.get("eval_history", []), list):
            raise ResultsFormatError(f"{path}: runs[{i}].eval_history must be a list")
    return results


def paradigm_arms(results: Mapping[str, Any]) -> list[str]:
    """The arms in the experiment's order (`arms`), then any others in order of appearance."""
    arms = list(results.get("arms") or [])
    for run in results["runs"]:
        if run["arm"] not in arms:
            arms.append(run["arm"])
    return arms


def paradigm_curves(results: Mapping[str, Any], key: str = "eval_accuracy") -> dict[str, dict[str, np.ndarray]]:
    """Figure 5's curves: {arm: {"step", "mean", "std", "n"}}: per evaluated step, the mean and the
    (population) standard deviation of `key` over the seeds that evaluated it; arms without it are left out."""
    out = {}
    for arm in paradigm_arms(results):
        by_step: dict[float, list[float]] = {}
        for run in results["runs"]:
            if run["arm"] != arm:
                continue
            for step, value in zip(*series(run.get("eval_history", []), key)):
                by_step.setdefault(step, []).append(value)
        if by_step:
            steps = sorted(by_step)
            out[arm] = {"step": np.asarray(steps), "mean": np.asarray([np.mean(by_step[s]) for s in steps]),
                        "std": np.asarray([np.std(by_step[s]) for s in steps]),
                        "n": np.asarray([len(by_step[s]) for s in steps])}
    return out


def paradigm_table(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per arm and metric (greedy accuracy, maj@k, pass@k): mean over seeds of the first and last evaluation,
    the std of the last, the mean gain and the number of seeds (the experiment's own `table`, recomputed)."""
    k = results.get("k")
    keys = ["eval_accuracy"] + ([f"eval_maj@{k}", f"eval_pass@{k}"] if k else [])
    rows = []
    for arm in paradigm_arms(results):
        runs = [r for r in results["runs"] if r["arm"] == arm and r.get("eval_history")]
        for key in keys:
            pairs = [(number(r["eval_history"][0].get(key)), number(r["eval_history"][-1].get(key))) for r in runs]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if not pairs:
                continue
            start, end = np.asarray(pairs).T
            rows.append({"arm": arm, "metric": key[len("eval_"):], "start_mean": float(start.mean()),
                         "end_mean": float(end.mean()), "end_std": float(end.std()),
                         "gain_mean": float((end - start).mean()), "seeds": len(pairs)})
    return rows


def paradigm_maj_pass(results: Mapping[str, Any]) -> dict[str, dict[str, Any] | None]:
    """{arm: maj@k / pass@k before and after (means over seeds)} in `maj_pass_before_after`'s format."""
    table = paradigm_table(results)
    k = results.get("k")
    out: dict[str, dict[str, Any] | None] = {}
    for arm in paradigm_arms(results):
        rows = {r["metric"]: r for r in table if r["arm"] == arm}
        if k and f"maj@{k}" in rows and f"pass@{k}" in rows:
            get = lambda m: (rows[m]["start_mean"], rows[m]["end_mean"]) if m in rows else (None, None)  # noqa: E731, B023
            out[arm] = {"k": int(k), "steps": None, "greedy": get("accuracy"), "maj": get(f"maj@{k}"),
                        "pass": get(f"pass@{k}"), "sample": (None, None)}
        else:
            out[arm] = None
    return out


def paradigm_figure(curves: Mapping[str, Mapping[str, np.ndarray]], key: str = "eval_accuracy"):
    """Figure 5: `key` per method over RL steps, mean over seeds with a +-std band."""
    fig, (ax,) = new_figure(width=6.5, height=4.2)
    ax.set_title(f"{key.removeprefix('eval_')} per method (paper Figure 5)")
    if not curves:
        note(ax, f"no run of the results has {key}")
        return fig
    for i, (arm, c) in enumerate(curves.items()):
        n = int(c["n"].max())
        ax.plot(c["step"], c["mean"], marker="o", color=f"C{i}", label=f"{arm} ({n} seed{'s' * (n > 1)})")
        ax.fill_between(c["step"], c["mean"] - c["std"], c["mean"] + c["std"], color=f"C{i}", alpha=0.15)
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
