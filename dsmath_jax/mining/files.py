"""File helpers over Beam's filesystems (local paths, gs://, s3://, hdfs://): line reading,
atomic writes (temporary name, then rename), JSON-lines shards, and committing a directory."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

logger = logging.getLogger(__name__)


def join(*parts: str) -> str:
    """Path join that keeps URL schemes (gs://bucket/a + b -> gs://bucket/a/b)."""
    return FileSystems.join(*parts) if parts else ""


def is_local(path: str) -> bool:
    return "://" not in path


def match(pattern: str) -> list[str]:
    """Files matching a glob, sorted; [] when none."""
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # noqa: BLE001 - Beam raises BeamIOError when nothing matches on some filesystems
        return []


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def iter_lines(path: str) -> Iterator[bytes]:
    """Lines of a file (gzip and other compressions from the extension), without holding it whole."""
    with FileSystems.open(path) as f:
        while True:
            line = f.readline()
            if not line:
                return
            yield line


def iter_jsonl_shards(pattern: str) -> Iterator[dict[str, Any]]:
    """Records of every JSON-lines shard matching `pattern`; a bad line raises naming file and line."""
    for path in match(pattern):
        for lineno, line in enumerate(iter_lines(path), 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None


def write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to `path` atomically (temporary name, then rename)."""
    tmp = path + ".tmp"
    if is_local(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    with FileSystems.create(tmp) as f:
        f.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def write_json(path: str, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8"))


def read_json(path: str) -> Any:
    with FileSystems.open(path) as f:
        return json.loads(f.read())


def remove_tree(path: str) -> None:
    """Deletes a directory and everything in it, if it exists."""
    if is_local(path):
        shutil.rmtree(path, ignore_errors=True)
    elif FileSystems.exists(path):
        FileSystems.delete([path])


def commit_dir(tmp: str, final: str, marker: str = "stats.json") -> None:
    """Moves a finished directory into place. Locally one `os.rename` (atomic); on object stores every
    file is renamed and `marker` last, so a directory without its marker is known to be incomplete."""
    if is_local(tmp):
        remove_tree(final)
        os.rename(tmp, final)
        return
    files = match(join(tmp, "**"))
    files.sort(key=lambda p: p.endswith("/" + marker))
    for src in files:
        dst = final + src[len(tmp):]
        FileSystems.rename([src], [dst])
    remove_tree(tmp)


def write_jsonl(pcoll, prefix: str, *, suffix: str = ".jsonl.gz", num_shards: int = 0, label: str = "Write"):
    """Writes a PCollection of dicts as JSON-lines shards `prefix-SSSSS-of-NNNNN{suffix}`."""
    return (pcoll
            | f"{label}ToJson" >> beam.Map(lambda r: json.dumps(r, ensure_ascii=False))
            | f"{label}Shards" >> beam.io.WriteToText(prefix, file_name_suffix=suffix, num_shards=num_shards))


def read_jsonl(pipeline, pattern: str, *, label: str = "Read"):
    """A PCollection of the dicts in the JSON-lines shards matching `pattern` (empty when none match)."""
    if not match(pattern):
        logger.info("no files match %s: reading nothing", pattern)
        return pipeline | f"{label}Empty" >> beam.Create([])
    return (pipeline
            | f"{label}Lines" >> beam.io.ReadFromText(pattern)
            | f"{label}Json" >> beam.Map(json.loads))
