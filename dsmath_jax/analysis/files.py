"""Reading run files: JSON, JSONL shards, CSV; numeric series and plain-text tables; the loaders' errors."""

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

from dsmath_jax.train.rundir import read_json

Curve = tuple[np.ndarray, np.ndarray]  # (x [n], y [n]) float64


class RunDirError(FileNotFoundError):
    """A run directory without the file its loader needs; the message names both."""


class ResultsFormatError(ValueError):
    """A results file that does not have the expected structure; the message names the file and key."""


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


def read_json_if_exists(path: str) -> Any:
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


def number(value: Any) -> float | None:
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
        a, b = number(r.get(x)), number(r.get(key))
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
