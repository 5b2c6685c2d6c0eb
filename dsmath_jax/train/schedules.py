"""Learning-rate schedules.

`multi_step` is DeepSeek's schedule (DeepSeek-LLM, arXiv 2401.02954 §2.3; DeepSeekMath §2.2.1, PAPER.md §2):
linear warm-up to the peak over `warmup_steps`, the peak until 80% of training, 31.6% of the peak until
90%, then 10% of the peak to the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import optax

from dsmath_jax.config.train import SCHEDULES


def multi_step(peak: float, total_steps: int, *, warmup_steps: int = 2000,
               boundaries: Sequence[float] = (0.8, 0.9), factors: Sequence[float] = (0.316, 0.1)) -> optax.Schedule:
    """Warm-up, then piecewise-constant decay: `factors[i] * peak` from `boundaries[i] * total_steps` on."""
    if len(boundaries) != len(factors):
        raise ValueError(f"multi_step: {len(boundaries)} boundaries but {len(factors)} factors")
    if list(boundaries) != sorted(boundaries) or not all(0 < b <= 1 for b in boundaries):
        raise ValueError(f"multi_step: boundaries {list(boundaries)} must increase within (0, 1]")
    steps = [int(round(b * total_steps)) for b in boundaries]
    values = [peak] + [peak * f for f in factors]

    def schedule(step):
        step = jnp.asarray(step)
        warm = peak * jnp.minimum(1.0, (step + 1) / max(warmup_steps, 1))
        level = jnp.asarray(values[0], jnp.float32)
        for boundary, value in zip(steps, values[1:]):
            level = jnp.where(step >= boundary, value, level)
        return jnp.where(step < warmup_steps, warm, level)

    return schedule


def constant(peak: float, *, warmup_steps: int = 0) -> optax.Schedule:
    """The peak after an optional linear warm-up (DeepSeekMath SFT uses a constant 5e-5, PAPER.md §3)."""

    def schedule(step):
        step = jnp.asarray(step)
        return peak * jnp.minimum(1.0, (step + 1) / max(warmup_steps, 1)) if warmup_steps else jnp.full_like(
            step, peak, dtype=jnp.float32)

    return schedule


def cosine(peak: float, total_steps: int, *, warmup_steps: int = 0, final_fraction: float = 0.1) -> optax.Schedule:
    """Linear warm-up, then cosine decay to `final_fraction * peak` at `total_steps`."""
    return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=peak, warmup_steps=max(warmup_steps, 1),
                                              decay_steps=max(total_steps, warmup_steps + 1),
                                              end_value=peak * final_fraction)


def from_config(cfg: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """A schedule from a config section: {name: one of SCHEDULES (the config schema's), peak, warmup_steps, ...}."""
    cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    name = cfg.pop("name")
    peak = cfg.pop("peak")
    if name == "multi_step":
        return multi_step(peak, total_steps, **cfg)
    if name == "constant":
        return constant(peak, **cfg)
    if name == "cosine":
        return cosine(peak, total_steps, **cfg)
    raise ValueError(f"unknown learning-rate schedule {name!r}; expected one of {tuple(SCHEDULES)}")
