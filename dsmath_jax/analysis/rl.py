"""A `dsmath rl` run directory: metrics.jsonl (step rows and eval_* rows), summary.json, evals/step_<step>.jsonl
(per-problem verdicts of each held-out evaluation, compared before / after by `paired_change`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dsmath_jax.analysis.figures import new_figure, note
from dsmath_jax.analysis.files import (
    Curve,
    ResultsFormatError,
    number,
    read_json_if_exists,
    require_file,
    resolve_dir,
    series,
)
from dsmath_jax.analysis.paradigm import mcnemar_p_value, paired_difference_interval
from dsmath_jax.data.text_files import DataFormatError, iter_jsonl
from dsmath_jax.train.metrics import read_metrics
from dsmath_jax.train.rundir import EVALS_DIR, eval_rows_path

RL_CURVES = ("reward_mean", "reward_std", "accuracy", "kl", "clip_frac", "entropy", "response_length",
             "zero_variance_groups", "finished_frac", "rollout_tokens_per_s", "train_tokens_per_s", "loss")


def load_rl_run(path: str) -> dict[str, Any]:
    """A `dsmath rl` run directory: {path, rows (metrics.jsonl), summary (None while it runs), config}."""
    path = resolve_dir(path)
    metrics = require_file(path, "metrics.jsonl", "an RL run directory (`dsmath rl`)")
    return {"path": path, "name": os.path.basename(os.path.normpath(path)), "rows": read_metrics(metrics),
            "summary": read_json_if_exists(os.path.join(path, "summary.json")),
            "config": read_json_if_exists(os.path.join(path, "config.json"))}


def rl_curves(run: Mapping[str, Any]) -> dict[str, Curve]:
    """{metric: (steps, values)} for the training metrics of `RL_CURVES` the run logged."""
    out = {}
    for key in RL_CURVES:
        steps, values = series(run["rows"], key)
        if len(steps):
            out[key] = (steps, values)
    return out


def eval_history(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The held-out evaluations, oldest first: [{step, eval_accuracy, eval_maj@k, eval_pass@k, ...}] from
    summary.json's `eval_history`, else from the eval rows of metrics.jsonl; [] when the run evaluated nothing."""
    summary = run.get("summary") or {}
    if summary.get("eval_history"):
        return [dict(r) for r in summary["eval_history"]]
    return [dict(step=r["step"], **{k: v for k, v in r.items() if k.startswith("eval_")})
            for r in run["rows"] if "eval_accuracy" in r]


def eval_k(history: Sequence[Mapping[str, Any]]) -> int | None:
    """k of the `eval_maj@k` / `eval_pass@k` keys of an eval history (None when it has none)."""
    for row in history:
        for key in row:
            if key.startswith("eval_maj@"):
                return int(key.split("@", 1)[1])
    return None


def maj_pass_before_after(history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Figure 7's numbers from the first and last evaluation that have maj@k and pass@k:
    {k, steps: (before, after), greedy / maj / pass / sample: (before, after)}; None with fewer than two."""
    k = eval_k(history)
    if k is None:
        return None
    rows = [r for r in history if f"eval_maj@{k}" in r and f"eval_pass@{k}" in r]
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    pick = lambda key: (number(first.get(key)), number(last.get(key)))  # noqa: E731
    return {"k": k, "steps": (int(first["step"]), int(last["step"])), "greedy": pick("eval_accuracy"),
            "maj": pick(f"eval_maj@{k}"), "pass": pick(f"eval_pass@{k}"), "sample": pick("eval_sample_accuracy")}


def load_eval_rows(path: str, step: int) -> list[dict[str, Any]]:
    """The per-problem verdicts of an RL run's held-out evaluation at `step` (`evals/step_<step>.jsonl`: id,
    correct, answer, samples_correct); `RunDirError` when the run wrote none there (runs before this file existed
    wrote none), `ResultsFormatError` naming the line of a row without an id or a verdict."""
    path = resolve_dir(path)
    rel = os.path.relpath(eval_rows_path(path, step), path)
    file = require_file(path, rel, f"an RL run directory with per-problem evaluations (`{EVALS_DIR}/`)")
    rows = []
    try:
        for n, row in iter_jsonl(file):
            if not isinstance(row.get("id"), str) or not isinstance(row.get("correct"), bool):
                raise ResultsFormatError(f"{file}:{n}: a row needs a string `id` and a boolean `correct`")
            rows.append(row)
    except DataFormatError as e:
        raise ResultsFormatError(str(e)) from None
    return rows


def paired_change(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]], *,
                  level: float = 0.95) -> dict[str, Any]:
    """Greedy accuracy before vs after on the same problems (rows of `load_eval_rows`, matched by id):
    {problems, before, after, gained (wrong before, right after), lost (the reverse), difference (after - before),
    low, high (its exact `level` interval given the gained + lost problems that changed,
    `paired_difference_interval`: the test set's sampling noise, not the training seed's), p_value (exact
    McNemar, `mcnemar_p_value`; below 1 - level exactly when the interval excludes 0)}. The two evaluations
    must cover the same problem ids (a ValueError names the first that differs)."""
    a = {r["id"]: bool(r["correct"]) for r in before}
    b = {r["id"]: bool(r["correct"]) for r in after}
    if len(a) != len(before) or len(b) != len(after):
        raise ValueError("an evaluation lists a problem id twice")
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b))
        raise ValueError(f"the two evaluations cover different problems: {missing[0]!r} is in only one "
                         f"({len(missing)} such ids)")
    if not a:
        raise ValueError("no problems to compare")
    diffs = [int(b[i]) - int(a[i]) for i in a]
    gained, lost = diffs.count(1), diffs.count(-1)
    low, high = paired_difference_interval(gained, lost, len(diffs), level)
    return {"problems": len(diffs), "before": sum(a.values()) / len(a), "after": sum(b.values()) / len(b),
            "gained": gained, "lost": lost, "difference": (gained - lost) / len(diffs), "low": low, "high": high,
            "level": level, "p_value": mcnemar_p_value(gained, lost)}


def rl_summary(run: Mapping[str, Any]) -> dict[str, Any]:
    """Steps, mean reward / accuracy / KL of the first and last logged steps, held-out accuracy before and after."""
    curves = rl_curves(run)
    history = eval_history(run)
    out: dict[str, Any] = {"name": run["name"], "status": (run.get("summary") or {}).get("status", "running"),
                           "steps": int(max(curves["reward_mean"][0])) if "reward_mean" in curves else 0}
    for key in ("reward_mean", "accuracy", "kl", "response_length"):
        if key in curves:
            out[f"{key}_first"], out[f"{key}_last"] = float(curves[key][1][0]), float(curves[key][1][-1])
    if history:
        out["eval_accuracy_first"] = number(history[0].get("eval_accuracy"))
        out["eval_accuracy_last"] = number(history[-1].get("eval_accuracy"))
    return out


def rl_training_figure(run: Mapping[str, Any]):
    """Reward (mean with a +-std band) and rollout accuracy, KL to the reference, response length, policy
    entropy, zero-variance group share and clip fraction, rollout / train throughput, over steps."""
    curves = rl_curves(run)
    fig, axes = new_figure(2, 3, width=4.4)
    panels = [
        ("reward", [("reward_mean", "reward (mean)"), ("accuracy", "accuracy (rule)")]),
        ("KL to the reference", [("kl", "KL")]),
        ("response length (tokens)", [("response_length", "mean length")]),
        ("entropy (nats / token)", [("entropy", "entropy")]),
        ("group statistics", [("zero_variance_groups", "zero-variance groups"), ("clip_frac", "clip fraction"),
                              ("finished_frac", "finished (eos)")]),
        ("throughput (tokens / s)", [("rollout_tokens_per_s", "rollout"), ("train_tokens_per_s", "train")]),
    ]
    for ax, (title, keys) in zip(axes, panels):
        ax.set_title(title)
        drawn = False
        for key, label in keys:
            if key not in curves:
                continue
            steps, values = curves[key]
            ax.plot(steps, values, marker="o", ms=3, label=label)
            if key == "reward_mean" and "reward_std" in curves and len(curves["reward_std"][0]) == len(steps):
                std = curves["reward_std"][1]
                ax.fill_between(steps, values - std, values + std, alpha=0.2, label="+- std")
            drawn = True
        if not drawn:
            note(ax, "not logged")
            continue
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def eval_accuracy_figure(history: Sequence[Mapping[str, Any]], title: str = "held-out accuracy"):
    """Greedy accuracy, maj@k, pass@k and sampled accuracy of the held-out problems over RL steps."""
    fig, (ax,) = new_figure(width=6)
    ax.set_title(title)
    if not history:
        note(ax, "no held-out evaluation in this run (eval.every = 0 or eval.n_problems = 0)")
        return fig
    k = eval_k(history)
    keys = [("eval_accuracy", "greedy")]
    if k is not None:
        keys += [(f"eval_maj@{k}", f"maj@{k}"), (f"eval_pass@{k}", f"pass@{k}"),
                 ("eval_sample_accuracy", "sample (T > 0)")]
    for key, label in keys:
        steps, values = series(history, key)
        if len(steps):
            ax.plot(steps, values, marker="o", label=label)
    ax.set_xlabel("RL step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def maj_pass_figure(results: Mapping[str, Mapping[str, Any] | None]):
    """Figure 7: maj@k and pass@k before and after RL, one group of bars per entry of
    `results` = {label: maj_pass_before_after(...)} (entries that are None are listed as missing)."""
    present = {name: r for name, r in results.items() if r}
    fig, (ax,) = new_figure(width=max(5.0, 2.2 * len(present) + 2))
    if not present:
        note(ax, "no maj@k / pass@k before and after: the run needs eval.samples > 0 and two evaluations")
        return fig
    ks = sorted({r["k"] for r in present.values()})
    bars = [("maj", "before"), ("maj", "after"), ("pass", "before"), ("pass", "after")]
    colors = {"maj": ("#9ecae1", "#3182bd"), "pass": ("#fdae6b", "#e6550d")}
    width = 0.8 / len(bars)
    xs = np.arange(len(present))
    for j, (metric, when) in enumerate(bars):
        values = [r[metric][0 if when == "before" else 1] for r in present.values()]
        values = [np.nan if v is None else v for v in values]
        k_label = f"@{ks[0]}" if len(ks) == 1 else "@k"
        ax.bar(xs + (j - 1.5) * width, values, width, color=colors[metric][when == "after"],
               label=f"{metric}{k_label} {when} RL")
        for x, v in zip(xs + (j - 1.5) * width, values):
            if np.isfinite(v):
                ax.text(x, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, list(present))
    ax.set_ylim(0, 1.25)  # room for the legend above the bars
    ax.set_ylabel("accuracy")
    ax.set_title("maj@k and pass@k before vs after RL (paper Figure 7)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncol=2, loc="upper center")
    missing = [name for name, r in results.items() if not r]
    if missing:
        ax.set_xlabel("no maj@k / pass@k: " + ", ".join(missing))
    return fig
