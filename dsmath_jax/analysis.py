"""Reading run directories and drawing their figures: what the notebooks in `notebooks/` call.

Pure functions over the files that runs write, no state and no pandas: loaders return plain dicts, lists
and numpy arrays; `*_figure` functions return matplotlib `Figure`s (not registered with pyplot, so a
notebook shows them with `display(fig)` and nothing leaks); `save_figure` writes one as a PNG.

    mining     a `dsmath mine` work directory (dsmath_jax/mining/driver.py): pages/stats.json (stage 0),
               iter_k/stats.json (one report per iteration), iter_k/{domains,paths,paths_annotated}.csv,
               iter_k/corpus/pages-*.jsonl.gz, iter_k/classifier.bin, stats.json (written at the end)
    training   a `dsmath pretrain` / `dsmath sft` run directory: metrics.jsonl, config.json, summary.json
    rl         a `dsmath rl` run directory: metrics.jsonl (step rows and eval_* rows), summary.json
    paradigm   the results JSON of experiments/rl_paradigm_tiny.py

A directory that is not what a loader expects raises `RunDirError` naming the path and the file it looked
for; an optional input that is missing (no eval rows, no MFU on a CPU, no annotated CSV) gives an empty
result that the figures mark with a note. Paths are local (copy a bucket's run directory first).
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from dsmath_jax.train.metrics import read_metrics

Curve = tuple[np.ndarray, np.ndarray]  # (x [n], y [n]) float64


class RunDirError(FileNotFoundError):
    """A run directory without the file its loader needs; the message names both."""


class ResultsFormatError(ValueError):
    """A results file that does not have the expected structure; the message names the file and key."""


# ------------------------------------------------------------------------------------------- files


def resolve_dir(path: str) -> str:
    """`path` with `~` expanded; a relative path that does not exist from the working directory is tried
    from its parent (a notebook runs in notebooks/, run directories live under the repository root)."""
    path = os.path.expanduser(str(path))
    if os.path.isabs(path) or os.path.exists(path):
        return path
    parent = os.path.join(os.pardir, path)
    return os.path.normpath(parent) if os.path.exists(parent) else path


def require_file(directory: str, filename: str, what: str) -> str:
    """`directory/filename`, or RunDirError saying which file was expected and what writes it."""
    if not os.path.isdir(directory):
        raise RunDirError(f"{directory}: no such directory (expected {what})")
    path = os.path.join(directory, filename)
    if not os.path.exists(path):
        raise RunDirError(f"{directory}: not {what}: {filename} is missing")
    return path


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _read_json_if_exists(path: str) -> Any:
    return read_json(path) if os.path.exists(path) else None


def iter_jsonl_shards(pattern: str) -> Iterator[dict]:
    """Records of every file matching `pattern` (`.gz` decompressed), in file-name order."""
    for path in sorted(glob.glob(pattern)):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def read_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _number(value: Any) -> float | None:
    """A finite float, or None (missing, non-numeric, NaN or infinite)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def series(rows: Iterable[Mapping[str, Any]], key: str, x: str = "step") -> Curve:
    """(x values, `key` values) of the rows where both are finite numbers, in row order."""
    xs, ys = [], []
    for r in rows:
        a, b = _number(r.get(x)), _number(r.get(key))
        if a is not None and b is not None:
            xs.append(a)
            ys.append(b)
    return np.asarray(xs, np.float64), np.asarray(ys, np.float64)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table (floats to 4 significant digits) for printing in a notebook."""
    if not rows:
        return "(no rows)"
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))  # every key, in order of appearance

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- figures


def _figure(nrows: int = 1, ncols: int = 1, *, width: float = 5.0, height: float = 3.6):
    """A pyplot-free Figure and a flat list of its axes."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - matplotlib is in the notebooks and test extras
        raise ImportError("the figures need matplotlib: pip install -e '.[notebooks]'") from e
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _note(ax, text: str) -> None:
    """Marks an empty panel with why it is empty."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig, plots_dir: str, name: str, *, dpi: int = 110) -> str:
    """Writes `fig` to `plots_dir/name.png` (directory created; written to a temp name, then renamed)."""
    os.makedirs(plots_dir, exist_ok=True)
    path = os.path.join(plots_dir, name if name.endswith(".png") else name + ".png")
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png", dpi=dpi)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------- training

TRAINING_CURVES = ("loss", "eval_loss", "lr", "grad_norm", "tokens_per_s", "mfu")


def tokens_per_step(config: Mapping[str, Any] | None) -> int | None:
    """Tokens a training step consumes: `train.batch_size` x `data.seq_len` of a run's config.json (what
    `tokens_per_s` and the checkpoints' `tokens_seen` count), or None when the config lacks them."""
    try:
        return int(config["train"]["batch_size"]) * int(config["data"]["seq_len"])
    except (KeyError, TypeError, ValueError):
        return None


def load_training_run(path: str, name: str | None = None) -> dict[str, Any]:
    """A `dsmath pretrain` / `dsmath sft` run directory: {name, path, rows (metrics.jsonl), config, summary
    (None while the run is going), tokens_per_step (None without config.json)}."""
    path = resolve_dir(path)
    metrics = require_file(path, "metrics.jsonl", "a training run directory (`dsmath pretrain` / `dsmath sft`)")
    config = _read_json_if_exists(os.path.join(path, "config.json"))
    return {"name": name or os.path.basename(os.path.normpath(path)), "path": path, "rows": read_metrics(metrics),
            "config": config, "summary": _read_json_if_exists(os.path.join(path, "summary.json")),
            "tokens_per_step": tokens_per_step(config)}


def training_curves(run: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """{metric: {"step", "tokens" (step x tokens_per_step, or None), "value"}} for the metrics of
    `TRAINING_CURVES` the run logged (MFU is absent on devices without a known peak, e.g. CPUs)."""
    out = {}
    for key in TRAINING_CURVES:
        steps, values = series(run["rows"], key)
        if len(steps):
            tps = run.get("tokens_per_step")
            out[key] = {"step": steps, "tokens": steps * tps if tps else None, "value": values}
    return out


def training_summary(run: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of a run: last step and loss, first / best / last held-out loss, median tokens/s and MFU
    over the logged windows after the first (which includes compilation), tokens seen."""
    curves = training_curves(run)

    def steady(key):
        if key not in curves:
            return None
        v = curves[key]["value"]
        return float(np.median(v[1:] if len(v) > 1 else v))

    loss, ev = curves.get("loss"), curves.get("eval_loss")
    last_step = max((int(r["step"]) for r in run["rows"] if _number(r.get("step")) is not None), default=0)
    tps = run.get("tokens_per_step")
    return {
        "name": run["name"], "status": (run.get("summary") or {}).get("status", "running"), "step": last_step,
        "loss": float(loss["value"][-1]) if loss else None,
        "eval_loss_first": float(ev["value"][0]) if ev else None,
        "eval_loss_best": float(ev["value"].min()) if ev else None,
        "eval_loss_last": float(ev["value"][-1]) if ev else None,
        "tokens_per_s": steady("tokens_per_s"), "mfu": steady("mfu"),
        "tokens_seen": last_step * tps if tps else None,
    }


def training_figure(runs: Sequence[Mapping[str, Any]], x: str = "step"):
    """Loss (solid) and held-out loss (dashed, same colour), learning rate, tokens/s and MFU of one or more
    runs against `x` = "step" or "tokens"."""
    if x not in ("step", "tokens"):
        raise ValueError(f"x must be 'step' or 'tokens', got {x!r}")
    fig, (ax_loss, ax_lr, ax_tps, ax_mfu) = _figure(2, 2)
    panels = [(ax_loss, ("loss", "eval_loss"), "loss"), (ax_lr, ("lr",), "learning rate"),
              (ax_tps, ("tokens_per_s",), "tokens / s"), (ax_mfu, ("mfu",), "MFU")]
    for ax, keys, title in panels:
        drawn, logged = False, False
        for i, run in enumerate(runs):
            curves = training_curves(run)
            color = f"C{i}"
            for key in keys:
                c = curves.get(key)
                if c is None:
                    continue
                logged = True
                xs = c["step"] if x == "step" else c["tokens"]
                if xs is None:
                    continue
                style = dict(ls="--", marker="o", ms=3) if key.startswith("eval_") else dict(ls="-")
                label = run["name"] + (" (held-out)" if key.startswith("eval_") else "")
                ax.plot(xs, c["value"], color=color, label=label, **style)
                drawn = True
        if not drawn:
            if logged:
                why = "no tokens per step (config.json lacks train.batch_size or data.seq_len)"
            elif title == "MFU":
                why = "not logged\n(no known peak FLOP/s for the device, e.g. a CPU)"
            else:
                why = "not logged"
            _note(ax, f"{title}: {why}")
            ax.set_title(title)
            continue
        ax.set_title(title)
        ax.set_xlabel("tokens" if x == "tokens" else "step")
        if title == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


# ------------------------------------------------------------------------------------------- RL

RL_CURVES = ("reward_mean", "reward_std", "accuracy", "kl", "clip_frac", "entropy", "response_length",
             "zero_variance_groups", "finished_frac", "rollout_tokens_per_s", "train_tokens_per_s", "loss")


def load_rl_run(path: str) -> dict[str, Any]:
    """A `dsmath rl` run directory: {path, rows (metrics.jsonl), summary (None while it runs), config}."""
    path = resolve_dir(path)
    metrics = require_file(path, "metrics.jsonl", "an RL run directory (`dsmath rl`)")
    return {"path": path, "name": os.path.basename(os.path.normpath(path)), "rows": read_metrics(metrics),
            "summary": _read_json_if_exists(os.path.join(path, "summary.json")),
            "config": _read_json_if_exists(os.path.join(path, "config.json"))}


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
    pick = lambda key: (_number(first.get(key)), _number(last.get(key)))  # noqa: E731
    return {"k": k, "steps": (int(first["step"]), int(last["step"])), "greedy": pick("eval_accuracy"),
            "maj": pick(f"eval_maj@{k}"), "pass": pick(f"eval_pass@{k}"), "sample": pick("eval_sample_accuracy")}


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
        out["eval_accuracy_first"] = _number(history[0].get("eval_accuracy"))
        out["eval_accuracy_last"] = _number(history[-1].get("eval_accuracy"))
    return out


def rl_training_figure(run: Mapping[str, Any]):
    """Reward (mean with a +-std band) and rollout accuracy, KL to the reference, response length, policy
    entropy, zero-variance group share and clip fraction, rollout / train throughput, over steps."""
    curves = rl_curves(run)
    fig, axes = _figure(2, 3, width=4.4)
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
            _note(ax, "not logged")
            continue
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def eval_accuracy_figure(history: Sequence[Mapping[str, Any]], title: str = "held-out accuracy"):
    """Greedy accuracy, maj@k, pass@k and sampled accuracy of the held-out problems over RL steps."""
    fig, (ax,) = _figure(width=6)
    ax.set_title(title)
    if not history:
        _note(ax, "no held-out evaluation in this run (eval.every = 0 or eval.n_problems = 0)")
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
    fig, (ax,) = _figure(width=max(5.0, 2.2 * len(present) + 2))
    if not present:
        _note(ax, "no maj@k / pass@k before and after: the run needs eval.samples > 0 and two evaluations")
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


# ------------------------------------------------------------------------------------------- paradigm


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
            pairs = [(_number(r["eval_history"][0].get(key)), _number(r["eval_history"][-1].get(key))) for r in runs]
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
            get = lambda m: (rows[m]["start_mean"], rows[m]["end_mean"]) if m in rows else (None, None)  # noqa: E731
            out[arm] = {"k": int(k), "steps": None, "greedy": get("accuracy"), "maj": get(f"maj@{k}"),
                        "pass": get(f"pass@{k}"), "sample": (None, None)}
        else:
            out[arm] = None
    return out


def paradigm_figure(curves: Mapping[str, Mapping[str, np.ndarray]], key: str = "eval_accuracy"):
    """Figure 5: `key` per method over RL steps, mean over seeds with a +-std band."""
    fig, (ax,) = _figure(width=6.5, height=4.2)
    ax.set_title(f"{key.removeprefix('eval_')} per method (paper Figure 5)")
    if not curves:
        _note(ax, f"no run of the results has {key}")
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


# ------------------------------------------------------------------------------------------- mining

MINING_WHAT = "a `dsmath mine` work directory"
# The values that mark a math path in the annotation CSV (dsmath_jax.mining.domains.TRUE_VALUES; kept here
# so reading a run needs no Apache Beam; a test checks the two agree).
ANNOTATION_TRUE = frozenset({"1", "y", "yes", "true", "math", "x"})


def load_mining_run(workdir: str) -> dict[str, Any]:
    """A mining work directory: {path, status, prepare (stage 0 stats), iterations (reports, by k), final}.
    Works on a finished run (stats.json), one waiting for an annotation and one still running."""
    workdir = resolve_dir(workdir)
    pages_stats = require_file(workdir, os.path.join("pages", "stats.json"), MINING_WHAT + " (stage 0 done)")
    stats = _read_json_if_exists(os.path.join(workdir, "stats.json")) or {}
    reports = []
    k = 1
    while os.path.exists(os.path.join(workdir, f"iter_{k}", "stats.json")):
        reports.append(read_json(os.path.join(workdir, f"iter_{k}", "stats.json")))
        k += 1
    return {"path": workdir, "status": stats.get("status", "running"), "prepare": read_json(pages_stats),
            "iterations": reports, "final": stats.get("final"), "annotate": stats.get("annotate")}


def mining_iteration_table(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per iteration: classifier data, scored / collected / corpus / new pages and tokens,
    decontaminated pages, math-related domains."""
    rows = []
    for r in run["iterations"]:
        rows.append({
            "iteration": r["iteration"], "positives": r["classifier"]["positives"],
            "negatives": r["classifier"]["negatives"], "seed_additions": r["classifier"]["seed_additions"],
            "scored_pages": r["scored"]["pages"], "scored_tokens": r["scored"]["tokens"],
            "collected_pages": r["collected"]["pages"], "collected_tokens": r["collected"]["tokens"],
            "decontaminated_pages": r["decontaminated"]["pages"],
            "corpus_pages": r["corpus"]["pages"], "corpus_tokens": r["corpus"]["tokens"],
            "new_pages": r["new"]["pages"], "new_tokens": r["new"]["tokens"], "new_fraction": r["new"]["fraction"],
            "kept_pages": r["previous"]["pages_kept"], "dropped_pages": r["previous"]["pages_dropped"],
            "math_domains": r["math_domains"],
        })
    return rows


def _iteration_dir(run: Mapping[str, Any], iteration: int) -> str:
    path = os.path.join(run["path"], f"iter_{iteration}")
    if not os.path.isdir(path):
        raise RunDirError(f"{run['path']}: iteration {iteration} has not run (no iter_{iteration}/)")
    return path


def _int(v: Any) -> int:
    return int(float(v)) if v not in (None, "") else 0


def domain_rows(run: Mapping[str, Any], iteration: int) -> list[dict[str, Any]]:
    """Domains of an iteration, most collected pages first: the report's top domains joined with the
    math-related ones of domains.csv; {domain, pages, collected, collected_fraction, tokens_collected,
    math_related}."""
    report = run["iterations"][iteration - 1]
    rows = {d["domain"]: {**d, "math_related": False} for d in report.get("top_domains", [])}
    csv_path = os.path.join(_iteration_dir(run, iteration), "domains.csv")
    for d in (read_csv(csv_path) if os.path.exists(csv_path) else []):
        pages, collected = _int(d["pages"]), _int(d["collected"])
        rows[d["domain"]] = {"domain": d["domain"], "pages": pages, "collected": collected,
                             "collected_fraction": collected / pages if pages else 0.0,
                             "tokens_collected": _int(d["tokens_collected"]), "math_related": True}
    return sorted(rows.values(), key=lambda d: (-d["collected"], -d["pages"], d["domain"]))


def path_rows(run: Mapping[str, Any], iteration: int) -> list[dict[str, Any]]:
    """The URL paths of the math-related domains of an iteration, from paths_annotated.csv when it was
    annotated (is_math True / False) else paths.csv (is_math None); numbers as numbers."""
    directory = _iteration_dir(run, iteration)
    annotated = os.path.join(directory, "paths_annotated.csv")
    path = annotated if os.path.exists(annotated) else os.path.join(directory, "paths.csv")
    if not os.path.exists(path):
        return []
    rows = []
    for r in read_csv(path):
        mark = (r.get("is_math") or "").strip().lower()
        rows.append({"domain": r["domain"], "path": r["path"], "pages": _int(r["pages"]),
                     "collected": _int(r["collected"]), "collected_fraction": float(r["collected_fraction"] or 0),
                     "is_math": (mark in ANNOTATION_TRUE) if path == annotated else None,
                     "sample_titles": r.get("sample_titles", "")})
    return rows


def corpus_scores(run: Mapping[str, Any], iteration: int) -> np.ndarray:
    """[pages] float64 classifier scores of the iteration's corpus (collected and decontaminated pages)."""
    pattern = os.path.join(_iteration_dir(run, iteration), "corpus", "pages-*.jsonl*")
    return np.asarray([float(p["score"]) for p in iter_jsonl_shards(pattern)], np.float64)


def score_threshold(run: Mapping[str, Any], iteration: int) -> float | None:
    """The recall cut's score (pages above it were collected), None when the budget kept every page."""
    rank = (run["iterations"][iteration - 1].get("threshold") or {}).get("rank")
    return float(rank[0]) if rank else None


def classifier_scores(run: Mapping[str, Any], iteration: int, max_pages: int = 20_000) -> np.ndarray | None:
    """[pages] P(math) of the first `max_pages` stage-0 pages under the iteration's fastText classifier
    (iter_k/classifier.bin): the whole distribution that recall cut. None when the mining extra
    (fastText, Beam) is not installed or the classifier file is missing."""
    model_path = os.path.join(_iteration_dir(run, iteration), "classifier.bin")
    if not os.path.exists(model_path):
        return None
    try:
        from dsmath_jax.mining.classifier import load_classifier, math_scores
    except ImportError:
        return None
    model = load_classifier(model_path)
    texts, scores = [], []
    for page in iter_jsonl_shards(os.path.join(run["path"], "pages", "pages-*.jsonl*")):
        if len(texts) + sum(len(s) for s in scores) >= max_pages:
            break
        texts.append(page["text"])
        if len(texts) == 512:
            scores.append(math_scores(model, texts))
            texts = []
    if texts:
        scores.append(math_scores(model, texts))
    return np.concatenate(scores).astype(np.float64) if scores else np.zeros(0)


def dedup_counts(run: Mapping[str, Any]) -> dict[str, int]:
    """Stage 0: pages read, every reason a page was skipped or removed (URL and near duplicates included),
    and the pages kept."""
    counters = dict(run["prepare"].get("counters", {}))
    out = {"pages_read": int(counters.pop("pages_read", 0))}
    for key in ("url_duplicates", "near_duplicates"):
        out[key] = int(run["prepare"].get(key, counters.get(key, 0)))
        counters.pop(key, None)
    for key in ("prepared_pages", "prepared_tokens", "files_read"):
        counters.pop(key, None)
    out.update({k: int(v) for k, v in sorted(counters.items()) if v})
    out["pages_kept"] = int(run["prepare"]["pages"])
    return out


def decontamination_counts(run: Mapping[str, Any]) -> dict[int, dict[str, int]]:
    """{iteration: {benchmark: pages removed}} (plus "segments" in segment mode)."""
    out = {}
    for r in run["iterations"]:
        d = r["decontaminated"]
        row = {b: int(n) for b, n in sorted(d.get("by_benchmark", {}).items())}
        if d.get("segments"):
            row["segments"] = int(d["segments"])
        out[int(r["iteration"])] = row
    return out


def mining_iterations_figure(table: Sequence[Mapping[str, Any]]):
    """Pages and tokens per iteration: scored, collected by recall, corpus (after decontamination), new."""
    fig, axes = _figure(1, 2, width=5.5)
    if not table:
        for ax in axes:
            _note(ax, "no iteration has finished yet")
        return fig
    its = np.asarray([r["iteration"] for r in table])
    kinds = [("scored", "scored"), ("collected", "collected (recall)"), ("corpus", "corpus"), ("new", "new")]
    width = 0.8 / len(kinds)
    for ax, unit in zip(axes, ("pages", "tokens")):
        for j, (kind, label) in enumerate(kinds):
            values = [r[f"{kind}_{unit}"] for r in table]
            ax.bar(its + (j - 1.5) * width, values, width, label=label)
        ax.set_xticks(its, [f"iteration {i}" for i in its])
        ax.set_ylabel(unit)
        ax.set_title(f"{unit} per iteration")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    return fig


def domains_figure(run: Mapping[str, Any], threshold: float = 0.10, top: int = 12):
    """Per iteration, the share of each domain's pages that was collected (top domains by collected pages),
    math-related domains (above `threshold`) highlighted: the domain step of the paper."""
    n = len(run["iterations"])
    fig, axes = _figure(1, max(n, 1), width=4.6, height=0.35 * top + 1.5)
    if not n:
        _note(axes[0], "no iteration has finished yet")
        return fig
    for ax, k in zip(axes, range(1, n + 1)):
        rows = domain_rows(run, k)[:top][::-1]
        fractions = [r["collected_fraction"] for r in rows]
        colors = ["#2ca02c" if r["math_related"] else "0.65" for r in rows]
        ax.barh([r["domain"] for r in rows], fractions, color=colors)
        for y, r in enumerate(rows):
            ax.text(r["collected_fraction"] + 0.01, y, f'{r["collected"]}/{r["pages"]}', va="center", fontsize=7)
        ax.axvline(threshold, color="k", ls="--", lw=1)
        ax.set_xlim(0, 1.15)
        ax.set_xlabel("share of the domain's pages collected")
        ax.set_title(f"iteration {k}: math-related (green) > {threshold:.0%}")
        ax.tick_params(axis="y", labelsize=7)
    return fig


def paths_figure(run: Mapping[str, Any]):
    """Per iteration, the URL paths of the math-related domains with their collected share, coloured by the
    annotation (math, not math, not annotated)."""
    n = len(run["iterations"])
    per = [path_rows(run, k) for k in range(1, n + 1)]
    tallest = max((len(p) for p in per), default=1)
    fig, axes = _figure(1, max(n, 1), width=4.8, height=0.35 * max(tallest, 3) + 1.5)
    colors = {True: "#2ca02c", False: "#d62728", None: "0.65"}
    for ax, k, rows in zip(axes, range(1, n + 1), per):
        ax.set_title(f"iteration {k}: URL paths")
        if not rows:
            _note(ax, "no math-related domain")
            continue
        rows = rows[::-1]
        ax.barh([f'{r["domain"]}{r["path"]}' for r in rows], [r["collected_fraction"] for r in rows],
                color=[colors[r["is_math"]] for r in rows])
        for y, r in enumerate(rows):
            ax.text(r["collected_fraction"] + 0.01, y, f'{r["collected"]}/{r["pages"]}', va="center", fontsize=7)
        ax.set_xlim(0, 1.2)
        ax.set_xlabel("share of the path's pages collected")
        ax.tick_params(axis="y", labelsize=7)
    if not n:
        _note(axes[0], "no iteration has finished yet")
    from matplotlib.patches import Patch
    fig.legend(handles=[Patch(color=colors[True], label="annotated math"),
                        Patch(color=colors[False], label="annotated not math"),
                        Patch(color=colors[None], label="not annotated")], loc="outside lower center", ncol=3,
               fontsize=8)
    return fig


def score_histograms_figure(run: Mapping[str, Any], all_scores: Mapping[int, np.ndarray | None] | None = None,
                            bins: int = 40):
    """Per iteration, the fastText P(math) histogram: of every scored page (when `all_scores[k]` is given,
    from `classifier_scores`) and of the corpus pages, with the recall cut."""
    n = len(run["iterations"])
    fig, axes = _figure(1, max(n, 1), width=4.4)
    if not n:
        _note(axes[0], "no iteration has finished yet")
        return fig
    edges = np.linspace(0.0, 1.0, bins + 1)
    for ax, k in zip(axes, range(1, n + 1)):
        every = (all_scores or {}).get(k)
        if every is not None and len(every):
            ax.hist(np.clip(every, 0, 1), bins=edges, color="0.7", label=f"all pages ({len(every)})")
        corpus = corpus_scores(run, k)
        ax.hist(np.clip(corpus, 0, 1), bins=edges, color="C0", alpha=0.8, label=f"corpus ({len(corpus)})")
        cut = score_threshold(run, k)
        if cut is not None:
            ax.axvline(min(cut, 1.0), color="k", ls="--", lw=1, label=f"recall cut {cut:.3f}")
        ax.set_yscale("log")
        ax.set_xlabel("P(math)")
        ax.set_ylabel("pages")
        ax.set_title(f"iteration {k}")
        ax.legend(fontsize=8)
    return fig


def dedup_figure(run: Mapping[str, Any]):
    """Stage 0's skipped / removed page counts (dedup among them) and each iteration's decontaminated pages
    per benchmark."""
    fig, (ax0, ax1) = _figure(1, 2, width=5.5)
    counts = dedup_counts(run)
    items = [(k, v) for k, v in counts.items() if k not in ("pages_read", "pages_kept")]
    ax0.barh([k for k, _ in items][::-1], [v for _, v in items][::-1],
             color=["C3" if "duplicate" in k else "C7" for k, _ in items][::-1])
    ax0.set_title(f'stage 0: {counts["pages_read"]} pages read, {counts["pages_kept"]} kept')
    ax0.set_xlabel("pages (or files)")
    ax0.tick_params(axis="y", labelsize=7)
    decon = decontamination_counts(run)
    benchmarks = sorted({b for row in decon.values() for b in row})
    ax1.set_title("decontaminated pages per iteration")
    if not benchmarks:
        _note(ax1, "no page was decontaminated (or decontamination was off)")
        return fig
    its = np.asarray(sorted(decon))
    bottom = np.zeros(len(its))
    for b in benchmarks:
        values = np.asarray([decon[i].get(b, 0) for i in its], np.float64)
        ax1.bar(its, values, bottom=bottom, label=b)
        bottom += values
    ax1.set_xticks(its, [f"iteration {i}" for i in its])
    ax1.set_ylabel("pages")
    ax1.legend(fontsize=8)
    return fig


__all__ = [
    "RunDirError", "ResultsFormatError", "resolve_dir", "require_file", "series", "format_table", "save_figure",
    "tokens_per_step", "load_training_run", "training_curves", "training_summary", "training_figure",
    "load_rl_run", "rl_curves", "eval_history", "eval_k", "maj_pass_before_after", "rl_summary",
    "rl_training_figure", "eval_accuracy_figure", "maj_pass_figure",
    "load_paradigm_results", "paradigm_arms", "paradigm_curves", "paradigm_table", "paradigm_maj_pass",
    "paradigm_figure",
    "load_mining_run", "mining_iteration_table", "domain_rows", "path_rows", "corpus_scores", "score_threshold",
    "classifier_scores", "dedup_counts", "decontamination_counts", "mining_iterations_figure", "domains_figure",
    "paths_figure", "score_histograms_figure", "dedup_figure",
]
