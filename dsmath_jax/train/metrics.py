"""Run metrics: one JSON object per line (what notebooks read) plus TensorBoard event files.

Only process 0 writes. Values are converted to plain floats/ints; a resumed run appends to the same
`metrics.jsonl`, dropping lines for steps past the restored step so the file never holds two histories.

On an object store (`gs://` workdir) there is no append: the writer keeps the file's lines in memory and
rewrites the whole file atomically at most every `remote_flush_secs` (and at `flush()` / `close()`), so
readers always see one complete `metrics.jsonl`; a crash loses at most the last `remote_flush_secs`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from etils import epath

from dsmath_jax.train.rundir import is_remote, write_atomic

log = logging.getLogger(__name__)


def _plain(value: Any):
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    arr = np.asarray(value)
    if arr.ndim == 0:
        return arr.item()
    return arr.tolist()


class MetricsWriter:
    """Writes `{"step": s, "time": t, **metrics}` lines to `<workdir>/metrics.jsonl` and scalars to TensorBoard.

    `remote` (default: whether `workdir` is an object-store path) selects the rewrite-whole-file mode."""

    def __init__(self, workdir: str, *, filename: str = "metrics.jsonl", tensorboard: bool = True,
                 resume_step: int | None = None, remote: bool | None = None, remote_flush_secs: float = 30.0):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, filename)
        self.remote = is_remote(workdir) if remote is None else bool(remote)
        self.remote_flush_secs = float(remote_flush_secs)
        self._tb = None
        if not self.enabled:
            return
        if self.remote:
            self._dirty, self._last_flush = False, float("-inf")
            self._lines = self._read_lines(resume_step)
        else:
            os.makedirs(workdir, exist_ok=True)
            if resume_step is not None and os.path.exists(self.path):
                self._truncate_after(resume_step)
            self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboardX is a dependency; keep JSONL working anyway
                log.warning("tensorboardX is not installed: metrics go to %s only", self.path)

    @staticmethod
    def _kept(lines: list[str], step: int) -> list[str]:
        kept = []
        for line in lines:
            try:
                if json.loads(line).get("step", -1) <= step:
                    kept.append(line)
            except json.JSONDecodeError:  # a line cut by a crash mid-write
                continue
        return kept

    def _truncate_after(self, step: int) -> None:
        with open(self.path, encoding="utf-8") as f:
            lines = f.readlines()
        kept = self._kept(lines, step)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def _read_lines(self, resume_step: int | None) -> list[str]:
        """Remote mode: the existing file's complete lines (those up to `resume_step` when resuming)."""
        path = epath.Path(self.path)
        if not path.exists():
            return []
        lines = [line + "\n" for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if resume_step is not None:
            kept = self._kept(lines, resume_step)
            self._dirty = len(kept) != len(lines)
            return kept
        return lines

    def write(self, step: int, metrics: Mapping[str, Any], *, prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "time": time.time()}
        record.update({prefix + k: _plain(v) for k, v in metrics.items()})
        if self.remote:
            self._lines.append(json.dumps(record) + "\n")
            self._dirty = True
            if time.monotonic() - self._last_flush >= self.remote_flush_secs:
                self.flush()
        else:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, int(step))

    def flush(self) -> None:
        """Makes every record written so far durable (remote mode: rewrites the whole file)."""
        if not self.enabled:
            return
        if not self.remote:
            self._file.flush()
            return
        if self._dirty:
            write_atomic(self.path, "".join(self._lines))
            self._dirty = False
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.remote:
            self.flush()
        else:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics.jsonl (a torn last line, from a crash, is ignored)."""
    out = []
    with epath.Path(path).open("r", encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
