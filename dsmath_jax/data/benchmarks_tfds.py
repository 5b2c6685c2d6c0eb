"""GSM8K and MATH as TFDS datasets (ArrayRecord): ``dsmath_gsm8k`` and ``dsmath_math``, splits train/test.

Both keep the examples in the order of the source files (``data_source(...)[i]`` is row ``i``).

* ``dsmath_gsm8k``: ``question``; ``solution``, the reference solution as published (GSM8K's
  ``<<48/2=24>>`` calculator annotations and the final ``#### N`` line kept); ``answer``, the number
  after ``####`` with commas removed.
* ``dsmath_math``: ``problem``; ``solution`` (``""`` when the source has none, as in the local copy
  of the train split); ``answer``, the source's ``answer`` field when it has one, else the last
  ``\\boxed{}`` of the solution (:func:`~dsmath_jax.data.math_text.last_boxed`); ``level``
  (``"Level 3"``); ``subject`` (``subject`` or ``type``: ``"Algebra"``, ...); ``id`` (``unique_id``
  such as ``"test/algebra/1.json"``, the MATH file path; or the ``idx`` of the row).

By default the builders download the public sources with TFDS's download manager; given a manual
directory (see ``MANUAL_DOWNLOAD_INSTRUCTIONS``) they read local files instead.
:func:`prepare_benchmark` does the right ``download_and_prepare``::

    builder = prepare_benchmark("gsm8k", data_dir, local_dir="path/to/benchmarks")
    src = data_source("dsmath_gsm8k", "test", data_dir=data_dir)
"""

from __future__ import annotations

import json
import logging
import os
import re

import tensorflow_datasets as tfds
from etils import epath

from dsmath_jax.data.math_text import gsm8k_final_answer, last_boxed
from dsmath_jax.data.text_files import DataFormatError, iter_jsonl

logger = logging.getLogger(__name__)

__all__ = ["DsmathGsm8k", "DsmathMath", "prepare_benchmark", "BENCHMARK_BUILDERS"]

SPLITS = ("train", "test")
_GSM8K_BASE = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data"
GSM8K_URLS = {split: f"{_GSM8K_BASE}/{split}.jsonl" for split in SPLITS}
MATH_URL = "https://people.eecs.berkeley.edu/~hendrycks/MATH.tar"


def _local_dir(dl_manager: tfds.download.DownloadManager) -> epath.Path | None:
    """The manual directory when one was given and is not empty; ``None`` means download."""
    try:
        return dl_manager.manual_dir
    except AssertionError:  # TFDS: "Manual directory ... does not exist or is empty"
        return None


def _first_existing(root: epath.Path, candidates: list[str], what: str, instructions: str) -> epath.Path:
    for rel in candidates:
        if (root / rel).exists():
            return root / rel
    raise FileNotFoundError(f"{root}: no {what} (looked for {candidates}).\n{instructions}")


def _string_field(record: dict, key: str, where: str) -> str:
    if key not in record:
        raise DataFormatError(f"{where}: missing field {key!r} (fields present: {sorted(record)[:10]})")
    value = record[key]
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


class DsmathGsm8k(tfds.core.GeneratorBasedBuilder):
    """GSM8K (Cobbe et al., 2021): grade-school math word problems, 7473 train / 1319 test."""

    name = "dsmath_gsm8k"
    # TFDS 4.9 looks for a checksums file beside a builder's module through the `importlib_resources`
    # backport, which it requires only on Python < 3.9 (ModuleNotFoundError otherwise). We ship no
    # checksums file, so skip the look-up.
    code_path = None
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "train/test in source order; answer = the number after ####, commas removed."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Instead of downloading from github.com/openai/grade-school-math, give a local directory as
`manual_dir` (tfds.download.DownloadConfig(manual_dir=...), or prepare_benchmark("gsm8k", data_dir,
local_dir=...)) holding either gsm8k/train.jsonl and gsm8k/test.jsonl, or train.jsonl and test.jsonl:
one JSON object per line with "question" and "answer" (the solution, ending in a "#### N" line),
exactly as in grade_school_math/data/ of that repository."""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="GSM8K grade-school math problems with reference solutions and final answers.",
            features=tfds.features.FeaturesDict({
                "question": tfds.features.Text(),
                "solution": tfds.features.Text(),
                "answer": tfds.features.Text(),
            }),
            homepage="https://github.com/openai/grade-school-math",
            citation="Cobbe et al., Training Verifiers to Solve Math Word Problems, arXiv:2110.14168",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        local = _local_dir(dl_manager)
        if local is None:
            paths = dl_manager.download(GSM8K_URLS)
        else:
            paths = {split: _first_existing(local, [f"gsm8k/{split}.jsonl", f"{split}.jsonl"],
                                            f"GSM8K {split} file", self.MANUAL_DOWNLOAD_INSTRUCTIONS)
                     for split in SPLITS}
        return {split: self._generate_examples(epath.Path(paths[split])) for split in SPLITS}

    def _generate_examples(self, path: epath.Path):
        for index, (lineno, record) in enumerate(iter_jsonl(path)):
            where = f"{path}:{lineno}"
            solution = _string_field(record, "answer", where)
            try:
                answer = gsm8k_final_answer(solution)
                float(answer)
            except ValueError as e:
                raise DataFormatError(f"{where}: bad GSM8K final answer ({e})") from None
            yield index, {"question": _string_field(record, "question", where),
                          "solution": solution, "answer": answer}


class DsmathMath(tfds.core.GeneratorBasedBuilder):
    """MATH (Hendrycks et al., 2021): competition mathematics, 7500 train / 5000 test."""

    name = "dsmath_math"
    # See DsmathGsm8k.code_path.
    code_path = None
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "MATH train/test in source order; answer = `answer` field or last \\boxed{}."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Instead of downloading the MATH tarball, give a local directory as `manual_dir`
(tfds.download.DownloadConfig(manual_dir=...), or prepare_benchmark("math", data_dir, local_dir=...))
holding, for each of train and test, either
  math/<split>.jsonl (or <split>.jsonl): one JSON object per line with "problem", "solution" and/or
    "answer", "level", "subject" or "type", and "unique_id" or "idx"; or
  MATH/<split>/<subject>/<n>.json (or <split>/<subject>/<n>.json): the extracted MATH.tar, one
    problem per file with "problem", "level", "type" and "solution"."""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="MATH competition problems; answer = the reference's final (boxed) answer.",
            features=tfds.features.FeaturesDict({
                k: tfds.features.Text() for k in ("problem", "solution", "answer", "level", "subject", "id")
            }),
            homepage="https://github.com/hendrycks/math",
            citation="Hendrycks et al., Measuring Mathematical Problem Solving With the MATH Dataset, "
                     "arXiv:2103.03874",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        local = _local_dir(dl_manager)
        if local is None:
            root = epath.Path(dl_manager.download_and_extract(MATH_URL))
            root = root / "MATH" if (root / "MATH").is_dir() else root
            sources = {split: root / split for split in SPLITS}
        else:
            sources = {split: _first_existing(
                local, [f"math/{split}.jsonl", f"{split}.jsonl", f"MATH/{split}", split],
                f"MATH {split} data", self.MANUAL_DOWNLOAD_INSTRUCTIONS) for split in SPLITS}
        return {split: self._generate_examples(sources[split], split) for split in SPLITS}

    def _generate_examples(self, source: epath.Path, split: str):
        if source.is_dir():
            records = _math_tree(source, split)
        else:
            records = ((f"{source}:{lineno}", record, None) for lineno, record in iter_jsonl(source))
        no_answer = 0
        for index, (where, record, default_id) in enumerate(records):
            example = _math_example(record, where, default_id)
            no_answer += not example["answer"]
            yield index, example
        if no_answer:
            logger.warning("dsmath_math %s: %d problems have neither an answer field nor a \\boxed{} "
                           "in their solution; their answer is ''", split, no_answer)


def _math_tree(directory: epath.Path, split: str):
    """(where, record, id) for MATH/<split>/<subject>/<n>.json, by subject and then number."""
    def order(p: epath.Path):
        return p.parent.name, int(p.stem) if p.stem.isdigit() else -1, p.stem

    files = sorted(directory.glob("*/*.json"), key=order)
    if not files:
        raise FileNotFoundError(f"{directory}: no <subject>/<n>.json files")
    for path in files:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataFormatError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(record, dict):
            raise DataFormatError(f"{path}: expected a JSON object, got {type(record).__name__}")
        yield os.fspath(path), record, f"{split}/{path.parent.name}/{path.name}"


def _math_example(record: dict, where: str, default_id: str | None) -> dict[str, str]:
    problem = _string_field(record, "problem", where)
    solution = _string_field(record, "solution", where) if "solution" in record else ""
    if record.get("answer") is not None:
        answer = str(record["answer"])
    else:
        answer = last_boxed(solution) or ""
    subject = record.get("subject") or record.get("type") or ""
    if record.get("unique_id") is not None:
        uid = str(record["unique_id"])
    elif record.get("idx") is not None:
        uid = str(record["idx"])
    elif default_id is not None:
        uid = default_id
    else:
        raise DataFormatError(f"{where}: no 'unique_id' or 'idx' field to identify the problem")
    return {"problem": problem, "solution": solution, "answer": answer,
            "level": str(record.get("level", "")), "subject": str(subject), "id": uid}


BENCHMARK_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {"gsm8k": DsmathGsm8k, "math": DsmathMath}


def prepare_benchmark(name: str, data_dir: str | os.PathLike, *,
                      local_dir: str | os.PathLike | None = None) -> tfds.core.DatasetBuilder:
    """Build (once) benchmark ``name`` (``"gsm8k"``/``"math"``, or ``"dsmath_gsm8k"``/``"dsmath_math"``).

    With ``local_dir`` (a directory laid out like the public harness copies: ``gsm8k/train.jsonl``,
    ``math/test.jsonl``, ...; see each builder's ``MANUAL_DOWNLOAD_INSTRUCTIONS``) the files there
    are read as TFDS's ``manual_dir``; without it the public sources are downloaded into
    ``<data_dir>/downloads``. A dataset already in ``data_dir`` is reused as is. Returns the
    prepared builder (``builder.as_data_source("test")``, ``builder.info.splits``).
    """
    key = re.sub(r"^dsmath_", "", name)
    if key not in BENCHMARK_BUILDERS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARK_BUILDERS)}")
    config = None
    if local_dir is not None:
        local = epath.Path(local_dir)
        if not local.is_dir():
            raise FileNotFoundError(f"benchmark directory not found: {local}")
        config = tfds.download.DownloadConfig(manual_dir=os.fspath(local))
    builder = BENCHMARK_BUILDERS[key](data_dir=os.fspath(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=config)
    return builder
