"""Text corpora as TFDS datasets (ArrayRecord), and the writer that the SFT datasets share.

:func:`build_text_corpus` turns JSONL / Parquet files (and later the mining pipeline's output) into a
TFDS dataset with features ``{"text": Text, "source": Text}`` and a ``train`` split (plus
``validation``), readable with :func:`dsmath_jax.data.datasets.data_source` without TensorFlow.

Bad input is counted, not fatal line by line: a malformed record (invalid JSON or UTF-8, not an
object, missing or non-string text field, empty text) is skipped and counted, the first few
locations are kept as ``"file:line: reason"`` (for Parquet, the 1-based row number stands for the
line), and the build fails with :class:`~dsmath_jax.data.text_files.DataFormatError` when the
malformed fraction exceeds ``max_bad_fraction``, or when nothing at all is left. The
:class:`DatasetReport` is returned, logged, and stored as ``build_report.json`` inside the dataset
directory.

Writes are atomic: TFDS generates into ``<name>/incomplete.*`` and renames on success, and every
check above runs before that rename, so a failed build leaves no readable dataset behind.
``overwrite=True`` moves an existing dataset aside first and puts it back if the rebuild fails.
Building an existing dataset again without ``overwrite`` is a no-op that returns the stored report
(``report.built`` is ``False``), and raises ``ValueError`` if it was built from different inputs
(input file names and sizes, and options, are compared).

Generation runs in one process (TFDS ``GeneratorBasedBuilder``); corpora too large for one machine
belong to the Beam mining pipeline, which should write the same features.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from dsmath_jax.data.text_files import DataFormatError

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetReport",
    "CorpusReport",
    "BuildTally",
    "build_text_corpus",
    "write_dataset",
    "iter_records",
    "expand_files",
    "in_validation",
    "hash_share",
    "fingerprint_files",
]

REPORT_FILE = "build_report.json"
MAX_BAD_LOCATIONS = 20
INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

KeyExample = tuple[Any, dict[str, str]]


@dataclasses.dataclass
class DatasetReport:
    """What a dataset build read, wrote and skipped.

    ``records_read`` counts every non-blank input line / row; ``bad_records`` the malformed ones
    (``bad_locations`` keeps the first :data:`MAX_BAD_LOCATIONS` as ``"file:line: reason"``);
    ``skipped`` counts well-formed records left out on purpose, by reason (e.g. shorter than
    ``min_chars``, a MATH row without a solution); ``counts`` holds breakdowns of the written
    examples (e.g. ``{"format": {"cot": 10}}``). ``built`` is ``False`` when an existing dataset was
    reused.
    """

    name: str
    version: str
    dataset_dir: str
    splits: dict[str, int]
    records_read: int
    bad_records: int
    bad_locations: list[str]
    skipped: dict[str, int]
    counts: dict[str, dict[str, int]]
    inputs: list[str]
    recipe: dict[str, Any]
    built: bool = True

    @property
    def num_examples(self) -> int:
        return sum(self.splits.values())

    @property
    def bad_fraction(self) -> float:
        return self.bad_records / self.records_read if self.records_read else 0.0

    def summary(self) -> str:
        parts = [f"{self.name}:{self.version} {'built' if self.built else 'reused'} at {self.dataset_dir}",
                 "splits " + ", ".join(f"{k}={v}" for k, v in self.splits.items()),
                 f"{self.records_read} records read, {self.bad_records} malformed ({self.bad_fraction:.4%})"]
        if self.skipped:
            parts.append("skipped " + ", ".join(f"{k}: {v}" for k, v in self.skipped.items()))
        if self.bad_locations:
            parts.append("first malformed: " + "; ".join(self.bad_locations[:3]))
        return "; ".join(parts)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> DatasetReport:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in fields})


CorpusReport = DatasetReport  # the name build_text_corpus's callers know it by


class BuildTally:
    """Running counts of one build (the mutable half of a :class:`DatasetReport`)."""

    def __init__(self) -> None:
        self.records_read = 0
        self.accepted = 0  # well-formed records kept, whichever split they went to
        self.bad_records = 0
        self.bad_locations: list[str] = []
        self.skipped: collections.Counter[str] = collections.Counter()
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def accept(self, **breakdown: str) -> None:
        self.records_read += 1
        self.accepted += 1
        for key, value in breakdown.items():
            self.counts[key][value] += 1

    def bad(self, where: str, reason: str) -> None:
        self.records_read += 1
        self.bad_records += 1
        if len(self.bad_locations) < MAX_BAD_LOCATIONS:
            self.bad_locations.append(f"{where}: {reason}")

    def skip(self, reason: str) -> None:
        self.records_read += 1
        self.skipped[reason] += 1


# ---------------------------------------------------------------------------------------------
# Input files


def expand_files(files: Iterable[str | os.PathLike]) -> list[epath.Path]:
    """Input paths, with ``*``/``?``/``[..]`` patterns in the file name expanded (sorted).

    A directory stands for the ``.jsonl``/``.jsonl.gz``/``.parquet`` files directly inside it
    (sorted), e.g. the shards a pipeline wrote. Raises ``FileNotFoundError`` for a missing file, or a
    pattern or directory matching nothing, and ``ValueError`` for a file of another type.
    """
    if isinstance(files, (str, os.PathLike)):
        raise TypeError(f"expected a list of files, got the single path {files!r}")
    out: list[epath.Path] = []
    for f in files:
        path = epath.Path(f)
        if any(c in path.name for c in "*?["):
            matches = sorted(path.parent.glob(path.name))
            if not matches:
                raise FileNotFoundError(f"no input files match {os.fspath(f)}")
        elif path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.name.endswith(INPUT_SUFFIXES) and p.is_file())
            if not matches:
                raise FileNotFoundError(f"no {INPUT_SUFFIXES} files in directory {os.fspath(f)}")
        elif not path.is_file():
            raise FileNotFoundError(f"input file not found: {os.fspath(f)}")
        else:
            matches = [path]
        for m in matches:
            if not m.name.endswith(INPUT_SUFFIXES):
                raise ValueError(f"{m}: unsupported input file type (expected one of {INPUT_SUFFIXES})")
        out.extend(matches)
    return out


def iter_records(
    path: epath.Path, *, columns: Sequence[str] | None = None
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Records of a JSONL or Parquet file, tolerating bad ones.

    Yields ``(n, record, None)`` for a JSON object / Parquet row and ``(n, None, reason)`` for a line
    that is not valid UTF-8, not valid JSON, or not an object; ``n`` is the 1-based line (JSONL,
    blank lines skipped) or row (Parquet). Parquet files read only ``columns`` (those that exist);
    a Parquet file lacking the first of them raises :class:`DataFormatError` at once, since then the
    file, not a row, is wrong. Unlike :func:`~dsmath_jax.data.text_files.iter_jsonl`, which stops at
    the first bad line, this lets the caller count bad lines and go on.
    """
    if path.name.endswith(".parquet"):
        yield from _parquet_records(path, columns)
        return
    with path.open("rb") as raw:
        f = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                yield lineno, None, "not valid UTF-8"
                continue
            except json.JSONDecodeError as e:
                yield lineno, None, f"not valid JSON ({e.msg} at column {e.colno})"
                continue
            if not isinstance(record, dict):
                yield lineno, None, f"expected a JSON object, got {type(record).__name__}"
                continue
            yield lineno, record, None


def _parquet_records(path: epath.Path, columns: Sequence[str] | None) -> Iterator[tuple[int, dict, None]]:
    import pyarrow.parquet as pq

    with path.open("rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        if columns and columns[0] not in names:
            raise DataFormatError(f"{path}: no column {columns[0]!r} (columns: {names[:20]})")
        wanted = [c for c in columns if c in names] if columns else None
        row = 0
        for batch in pf.iter_batches(batch_size=1024, columns=wanted):
            for record in batch.to_pylist():
                row += 1
                yield row, record, None


def hash_share(text: str, fraction: float) -> bool:
    """Whether ``text`` falls in a ``fraction`` of all texts: a stable hash of its content below ``fraction``.

    Deterministic across runs and machines; identical texts always get the same answer, and a text in the share of
    ``fraction`` is in the share of any larger one. Salt ``text`` (a prefix) to draw an independent share.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2.0**64


def in_validation(text: str, fraction: float) -> bool:
    """Whether ``text`` belongs to the validation split (:func:`hash_share` of its content).

    Deterministic across runs and machines, and identical texts always land in the same split.
    """
    return hash_share(text, fraction)


def fingerprint_files(paths: Sequence[epath.Path]) -> list[list[Any]]:
    """Names and sizes: what a rebuild compares (not full paths, so a moved copy still matches)."""
    return [[p.name, p.stat().length] for p in paths]


# ---------------------------------------------------------------------------------------------
# The writer


# tfds has no type information here, so mypy checks the class keyword against object.__init_subclass__.
class _GeneratedDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):  # type: ignore[call-arg]
    """A TFDS builder over given split generators, with a named dataset and post-generation checks."""

    VERSION = tfds.core.Version("1.0.0")  # replaced per instance
    code_path = None  # no checksums to look up (see benchmarks_tfds.DsmathGsm8k.code_path)

    def __init__(self, *, name: str, version: str, feature_names: Sequence[str], description: str,
                 split_generators: Mapping[str, Callable[[], Iterator[KeyExample]]],
                 finish: Callable[[epath.Path, bool], None], data_dir: epath.PathLike) -> None:
        self.name = name
        self.VERSION = tfds.core.Version(version)  # pylint: disable=invalid-name
        self._feature_names = tuple(feature_names)
        self._description = description
        self._generators = split_generators
        self._finish = finish
        super().__init__(data_dir=data_dir, file_format="array_record")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._description,
            features=tfds.features.FeaturesDict({k: tfds.features.Text() for k in self._feature_names}),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: make() for split, make in self._generators.items()}

    def _generate_examples(self, **kwargs):  # generators are given, not derived from kwargs
        raise NotImplementedError

    def _download_and_prepare(self, dl_manager, download_config=None):
        empty = False
        try:
            super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
        except AssertionError as e:  # TFDS refuses to finalize a split without examples
            if "No examples were yielded" not in str(e):
                raise
            empty = True
        # Still inside TFDS's incomplete.* directory: raising here leaves nothing readable.
        self._finish(epath.Path(self.data_dir), empty)


def write_dataset(
    *,
    name: str,
    version: str,
    data_dir: str | os.PathLike,
    feature_names: Sequence[str],
    split_generators: Mapping[str, Callable[[], Iterable[KeyExample]]],
    tally: BuildTally,
    recipe: Mapping[str, Any],
    inputs: Sequence[str],
    max_bad_fraction: float,
    what: str,
    noun: str = "examples",
    overwrite: bool = False,
    description: str = "",
) -> DatasetReport:
    """Write a TFDS ArrayRecord dataset of ``Text`` features from per-split example generators.

    ``split_generators[split]()`` yields ``(key, example)`` pairs (keys unique within a split) and
    records what it reads in ``tally``. Splits are generated in the mapping's order. After
    generation, and before the dataset becomes visible, the build fails with
    :class:`DataFormatError` if the malformed fraction exceeds ``max_bad_fraction``, if nothing was
    accepted (``what`` names the inputs in that message), or if a split is empty. The report is
    written into the dataset directory as ``build_report.json``.

    An existing dataset is reused (``report.built`` false) unless ``overwrite``; if its stored
    ``recipe`` differs from ``recipe``, ``ValueError`` says so.
    """
    if not _NAME.match(name):
        raise ValueError(f"dataset name {name!r} must be lower-case snake_case (TFDS naming)")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    recipe = json.loads(json.dumps(recipe))  # as it will read back from JSON
    version = str(tfds.core.Version(version))
    dataset_dir = epath.Path(data_dir) / name / version

    if (dataset_dir / "dataset_info.json").exists():
        if not overwrite:
            return _reuse(dataset_dir, name, version, recipe)
        aside = dataset_dir.parent / f".replaced-{version}-{uuid.uuid4().hex[:8]}"
        dataset_dir.rename(aside)
        logger.info("%s: moved the existing dataset aside to %s while rebuilding", name, aside)
    else:
        aside = None

    written: dict[str, int] = {}
    result: list[DatasetReport] = []

    def counted(split: str, make: Callable[[], Iterable[KeyExample]]) -> Callable[[], Iterator[KeyExample]]:
        def gen() -> Iterator[KeyExample]:
            written[split] = 0
            for key, example in make():
                written[split] += 1
                yield key, example
        return gen

    def finish(tmp_dir: epath.Path, empty: bool) -> None:
        report = DatasetReport(
            name=name, version=version, dataset_dir=os.fspath(dataset_dir),
            splits={s: written.get(s, 0) for s in split_generators},
            records_read=tally.records_read, bad_records=tally.bad_records,
            bad_locations=list(tally.bad_locations), skipped=dict(tally.skipped),
            counts={k: dict(v) for k, v in tally.counts.items()}, inputs=list(inputs), recipe=dict(recipe))
        if tally.bad_records and report.bad_fraction > max_bad_fraction:
            err = DataFormatError(
                f"{name}: {tally.bad_records} of {tally.records_read} input records are malformed "
                f"({report.bad_fraction:.4%}), above max_bad_fraction={max_bad_fraction}; first at "
                f"{tally.bad_locations[0]}" + "".join(f"\n  {loc}" for loc in tally.bad_locations[1:5]))
        elif tally.accepted == 0:
            err = DataFormatError(
                f"{name}: produced no {noun}: {what} ({tally.records_read} records read, "
                f"{tally.bad_records} malformed, skipped {dict(tally.skipped)})")
        elif empty or not all(report.splits.values()):
            split = next(s for s in split_generators if written.get(s, -1) == 0)
            err = DataFormatError(
                f"{name}: split {split!r} has no {noun} ({tally.accepted} {noun} in all); "
                f"give it more data (a larger validation fraction, or validation files)")
        else:
            (tmp_dir / REPORT_FILE).write_text(report.to_json())
            result.append(report)
            return
        err.report = report  # type: ignore[attr-defined]
        raise err

    builder = _GeneratedDataset(
        name=name, version=version, feature_names=feature_names,
        description=description or f"{name}: built by dsmath_jax from {what}",
        split_generators={s: counted(s, make) for s, make in split_generators.items()},
        finish=finish, data_dir=data_dir)
    try:
        builder.download_and_prepare()
    except BaseException:
        if aside is not None:
            if dataset_dir.exists():
                dataset_dir.rmtree()
            aside.rename(dataset_dir)
            logger.info("%s: rebuild failed; restored the previous dataset", name)
        elif dataset_dir.parent.is_dir() and not any(dataset_dir.parent.iterdir()):
            dataset_dir.parent.rmdir()  # the empty <name>/ folder TFDS made
        raise
    if aside is not None:
        aside.rmtree()
    report = result[0]
    logger.info("%s", report.summary())
    return report


def _reuse(dataset_dir: epath.Path, name: str, version: str, recipe: Mapping[str, Any]) -> DatasetReport:
    report_path = dataset_dir / REPORT_FILE
    if not report_path.exists():
        raise ValueError(f"{dataset_dir} exists but has no {REPORT_FILE} (not built by dsmath_jax?); "
                         "pass overwrite=True to rebuild it, or use another name or version")
    report = DatasetReport.from_json(report_path.read_text())
    if report.recipe != recipe:
        diff = sorted(k for k in set(report.recipe) | set(recipe) if report.recipe.get(k) != recipe.get(k))
        raise ValueError(
            f"{name}:{version} at {dataset_dir} was built from different inputs or options "
            f"(differing: {diff}; stored {[report.recipe.get(k) for k in diff]}, "
            f"now {[recipe.get(k) for k in diff]}); pass overwrite=True to rebuild it, "
            "or use another name or version")
    report.built = False
    report.dataset_dir = os.fspath(dataset_dir)
    logger.info("%s", report.summary())
    return report


# ---------------------------------------------------------------------------------------------
# The text corpus


def _documents(paths: Sequence[epath.Path], *, text_field: str, min_chars: int, tally: BuildTally,
               file_offset: int = 0) -> Iterator[tuple[str, str, str]]:
    """(key, text, source) of every well-formed document; everything else counted in ``tally``."""
    short = f"shorter than min_chars={min_chars}"
    for file_index, path in enumerate(paths, file_offset):
        for n, record, reason in iter_records(path, columns=[text_field, "url", "id"]):
            where = f"{path}:{n}"
            if record is None:
                assert reason is not None  # iter_records gives a reason for every row it rejects
                tally.bad(where, reason)
                continue
            if text_field not in record or record[text_field] is None:
                tally.bad(where, f"missing field {text_field!r} (fields present: {sorted(record)[:10]})")
                continue
            text = record[text_field]
            if not isinstance(text, str):
                tally.bad(where, f"field {text_field!r} must be a string, got {type(text).__name__}")
                continue
            if not text.strip():
                tally.bad(where, f"empty text in field {text_field!r}")
                continue
            if len(text) < min_chars:
                tally.skip(short)
                continue
            source = f"{path.name}:{n}"
            for field in ("url", "id"):
                value = record.get(field)
                if value is not None and value != "":
                    source = str(value)
                    break
            tally.accept()
            yield f"{file_index}:{n}", text, source


def build_text_corpus(
    name: str,
    files: Sequence[str | os.PathLike],
    *,
    data_dir: str | os.PathLike,
    text_field: str = "text",
    validation_fraction: float = 0.0,
    validation_files: Sequence[str | os.PathLike] | None = None,
    max_bad_fraction: float = 0.001,
    min_chars: int = 1,
    version: str = "1.0.0",
    overwrite: bool = False,
) -> DatasetReport:
    """Build TFDS dataset ``name`` (``{"text", "source"}``, ArrayRecord) in ``data_dir`` from text files.

    Args:
      files: ``.jsonl`` (optionally ``.gz``) files of one JSON object per line, or ``.parquet``
        files; ``*`` patterns in file names and directories are expanded (:func:`expand_files`).
        The document is ``record[text_field]``; ``source`` is the record's ``url`` or ``id`` when
        present, else ``"<file name>:<line>"``.
      validation_fraction: if positive, documents whose content hash falls below it go to a
        ``validation`` split (deterministic, disjoint from ``train``, duplicates stay together).
      validation_files: alternatively, files whose documents form the ``validation`` split.
      max_bad_fraction: the build fails when more than this fraction of records is malformed.
      min_chars: well-formed documents shorter than this are skipped and counted in
        ``report.skipped`` (not as malformed).
      overwrite: rebuild even if the dataset exists (otherwise an existing one is reused).

    Returns:
      The :class:`DatasetReport` (also logged and stored in the dataset directory).

    Raises:
      DataFormatError: too many malformed records (the message names the fraction, the threshold
        and the first bad ``file:line``), no documents at all, or an empty split.
      FileNotFoundError / ValueError: missing or unsupported input files, bad arguments, or an
        existing dataset built from different inputs.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if validation_fraction > 0 and validation_files:
        raise ValueError("give validation_fraction or validation_files, not both")
    paths = expand_files(files)
    if not paths:
        raise ValueError(f"{name}: no input files given")
    val_paths = expand_files(validation_files) if validation_files else []
    recipe = {"kind": "text_corpus", "inputs": fingerprint_files(paths),
              "validation_inputs": fingerprint_files(val_paths), "text_field": text_field,
              "validation_fraction": validation_fraction, "min_chars": min_chars}
    tally = BuildTally()
    opts: dict[str, Any] = dict(text_field=text_field, min_chars=min_chars)

    def examples(docs: Iterable[tuple[str, str, str]]) -> Iterator[KeyExample]:
        for key, text, source in docs:
            yield key, {"text": text, "source": source}

    if val_paths:
        generators = {
            "train": lambda: examples(_documents(paths, tally=tally, **opts)),
            "validation": lambda: examples(_documents(val_paths, tally=tally, file_offset=len(paths),
                                                      **opts)),
        }
    elif validation_fraction > 0:
        # Two passes over the files; only the first (train) one counts, so nothing is counted twice.
        generators = {
            "train": lambda: examples(d for d in _documents(paths, tally=tally, **opts)
                                      if not in_validation(d[1], validation_fraction)),
            "validation": lambda: examples(d for d in _documents(paths, tally=BuildTally(), **opts)
                                           if in_validation(d[1], validation_fraction)),
        }
    else:
        generators = {"train": lambda: examples(_documents(paths, tally=tally, **opts))}

    shown = [os.fspath(p) for p in paths + val_paths]
    return write_dataset(
        name=name, version=version, data_dir=data_dir, feature_names=("text", "source"),
        split_generators=generators, tally=tally, recipe=recipe, inputs=shown,
        max_bad_fraction=max_bad_fraction, noun="documents", overwrite=overwrite,
        what=f"files {shown[:10]}" + (f" and {len(shown) - 10} more" if len(shown) > 10 else ""),
        description=f"Text corpus {name} (dsmath_jax.data.corpus.build_text_corpus).")
