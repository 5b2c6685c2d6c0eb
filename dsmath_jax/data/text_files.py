"""Reading documents from plain-text and JSONL files, with errors that name the file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence


class DataFormatError(ValueError):
    """A malformed input record; the message names the file and line."""


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every non-blank line of a JSONL file; a bad line raises DataFormatError."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def iter_texts(paths: Sequence[str | os.PathLike], *, field: str = "text") -> Iterator[str]:
    """Documents from files: each `.jsonl` line's `field`, or the whole of any other (text) file."""
    for path in paths:
        path = os.fspath(path)
        if path.endswith(".jsonl"):
            for lineno, record in iter_jsonl(path):
                if field not in record:
                    raise DataFormatError(f"{path}:{lineno}: missing field {field!r} "
                                          f"(fields present: {sorted(record)[:10]})")
                value = record[field]
                if not isinstance(value, str):
                    raise DataFormatError(f"{path}:{lineno}: field {field!r} must be a string, "
                                          f"got {type(value).__name__}")
                yield value
        else:
            with open(path, encoding="utf-8") as f:
                yield f.read()
