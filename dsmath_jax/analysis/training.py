"""A `dsmath pretrain` / `dsmath sft` run directory: metrics.jsonl, config.json, summary.json."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import numpy as np

from dsmath_jax.analysis.figures import new_figure, note
from dsmath_jax.analysis.files import number, read_json_if_exists, require_file, resolve_dir, series
from dsmath_jax.train.metrics import read_metrics

TRAINING_CURVES = ("loss", "eval_loss", "lr", "grad_norm", "tokens_per_s", "mfu")


def tokens_per_step(config: Mapping[str, Any] | None) -> int | None:
    """Tokens a training step consumes: `train.batch_size` x `data.seq_len` of a run's config.json (what
    `tokens_per_s` and the checkpoints' `tokens_seen` count), or None when the config lacks them."""
    if config is None:
        return None
    try:
        return int(config["train"]["batch_size"]) * int(config["data"]["seq_len"])
    except (KeyError, TypeError, ValueError):
        return None


def load_training_run(path: str, name: str | None = None) -> dict[str, Any]:
    """A `dsmath pretrain` / `dsmath sft` run directory: {name, path, rows (metrics.jsonl), config, summary
    (None while the run is going), tokens_per_step (None without config.json)}."""
    path = resolve_dir(path)
    metrics = require_file(path, "metrics.jsonl", "a training run directory (`dsmath pretrain` / `dsmath sft`)")
    config = read_json_if_exists(os.path.join(path, "config.json"))
    return {"name": name or os.path.basename(os.path.normpath(path)), "path": path, "rows": read_metrics(metrics),
            "config": config, "summary": read_json_if_exists(os.path.join(path, "summary.json")),
            "tokens_per_step": tokens_per_step(config)}


class Curve(TypedDict):
    """One logged metric of a run against steps and tokens."""

    step: np.ndarray
    tokens: np.ndarray | None  # step x tokens_per_step; None when the run's config does not say it
    value: np.ndarray


def training_curves(run: Mapping[str, Any]) -> dict[str, Curve]:
    """{metric: {"step", "tokens" (step x tokens_per_step, or None), "value"}} for the metrics of
    `TRAINING_CURVES` the run logged (MFU is absent on devices without a known peak, e.g. CPUs)."""
    out: dict[str, Curve] = {}
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
    last_step = max((int(r["step"]) for r in run["rows"] if number(r.get("step")) is not None), default=0)
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
    fig, (ax_loss, ax_lr, ax_tps, ax_mfu) = new_figure(2, 2)
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
            note(ax, f"{title}: {why}")
            ax.set_title(title)
            continue
        ax.set_title(title)
        ax.set_xlabel("tokens" if x == "tokens" else "step")
        if title == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig
