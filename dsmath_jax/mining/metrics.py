"""Beam counters for every page that is skipped or dropped, and reading them back after a run.

Every skip in the pipeline calls `count("reason")`; `collect_counters(result)` returns
{reason: n} for the stats JSON. Counters live in one namespace so a Dataflow job's UI lists them together.
"""

from __future__ import annotations

import functools
import logging

from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

NAMESPACE = "dsmath_mining"
logger = logging.getLogger(__name__)


@functools.cache
def _counter(name: str):
    return Metrics.counter(NAMESPACE, name)


def count(name: str, n: int = 1) -> None:
    """Adds `n` to the counter `name` (call inside a Beam transform)."""
    if n:
        _counter(name).inc(n)


def collect_counters(result) -> dict[str, int]:
    """{counter name: value} of a finished pipeline (committed values where the runner has them)."""
    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return dict(sorted(out.items()))
