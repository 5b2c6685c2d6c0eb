"""The small files of a run directory (config.json, summary.json, metrics, tokenizer, result files),
read and written through `etils.epath`, so `--workdir=gs://bucket/run` works like a local path.

Writes are atomic: the bytes go to a temporary name beside the target, then a rename puts them in
place (locally `os.replace`; on GCS a copy and a delete, and GCS objects are never seen half-written).
Object stores have no directories and no append: `mkdir` is a no-op there, and a file that grows
(metrics.jsonl) is rewritten whole (see `MetricsWriter`). gs:// needs gcsfs (the `tpu` / `gpu` extras).
"""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """True for object-store paths (gs://, s3://, ...), False for local paths."""
    return "://" in os.fspath(path)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes `data` (text as UTF-8) to `path` via a temporary file beside it and a rename."""
    target = epath.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp.{os.getpid()}")
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> None:
    """`json.dumps(obj, indent=2, **dumps_kwargs)` written atomically to `path`."""
    write_atomic(path, json.dumps(obj, **{"indent": 2, **dumps_kwargs}))


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(epath.Path(path).read_text(encoding="utf-8"))


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copies the file `src` to `dst` (either may be remote), atomically at `dst`."""
    write_atomic(dst, epath.Path(src).read_bytes())


EVALS_DIR = "evals"  # an RL run's per-problem verdicts of each held-out evaluation


def eval_rows_path(workdir: str | os.PathLike, step: int) -> str:
    """Where an RL run writes its held-out evaluation at `step`, one JSON row per problem
    (`dsmath_jax.rl.rollout.evaluate_problems`): `<workdir>/evals/step_<step, 6 digits>.jsonl`."""
    return os.path.join(os.fspath(workdir), EVALS_DIR, f"step_{int(step):06d}.jsonl")


__all__ = ["is_remote", "write_atomic", "write_json", "read_json", "copy_atomic", "EVALS_DIR", "eval_rows_path"]
