"""Whether scans over blocks of positions are unrolled: compile-only plans unroll them in their cost probes.

XLA's cost analysis counts a loop body once, so a plan's probes (`dsmath_jax.plan.core`) trace the model
inside `unrolled_scans()`: the scans this codebase writes (log-prob blocks, prefill chunks) are then
unrolled and their FLOPs, bytes and collectives counted in full. Outside it nothing changes.
"""

from __future__ import annotations

import contextlib
import contextvars

_UNROLL = contextvars.ContextVar("dsmath_unroll_scans", default=False)


@contextlib.contextmanager
def unrolled_scans():
    """Within this context (while tracing), `scan_unroll()` asks `lax.scan` to unroll completely."""
    token = _UNROLL.set(True)
    try:
        yield
    finally:
        _UNROLL.reset(token)


def scan_unroll() -> bool | int:
    """The `unroll` argument for `jax.lax.scan`: True inside `unrolled_scans()`, else 1."""
    return True if _UNROLL.get() else 1


__all__ = ["unrolled_scans", "scan_unroll"]
