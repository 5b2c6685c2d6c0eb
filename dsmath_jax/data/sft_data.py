r"""SFT datasets (paper §3): question/response pairs in three formats, as TFDS datasets (ArrayRecord).

Features ``{"question", "response", "format", "source"}`` (all text); ``question`` is the bare problem
(the chat template and instruction suffix are applied by the training pipeline), ``response`` the
target completion, ``source`` where the example came from (``"file.jsonl:12"``, ``"gsm8k/train/3"``).

The ``format`` of a response:

``"cot"`` -- chain of thought: natural-language reasoning that ends with the final answer in
    ``\boxed{}``, the form the DeepSeekMath instruct models answer in (PAPER.md §7), e.g.
    ``"... so she sold 48 + 24 = 72 clips.\nThe final answer is $\boxed{72}$."``

``"pot"`` -- program of thought: the solution is a program, in a fenced ``python`` block, that prints
    the answer::

        ```python
        def solution():
            may = 48 / 2
            return 48 + may
        print(solution())
        ```

``"tool"`` -- tool-integrated reasoning (the DeepSeekMath protocol): reasoning text interleaved with
    ``python`` blocks, each followed by an ``output`` block holding what the program printed (at
    evaluation the model stops at ```` ```output ````, the harness runs the code and appends the
    output), and the final answer in ``\boxed{}``::

        We add April's and May's sales.
        ```python
        print(48 + 48 // 2)
        ```
        ```output
        72
        ```
        The final answer is $\boxed{72}$.

``"answer"`` -- the final answer alone, without working, on one line (``"The final answer is
    $\boxed{72}$."``): the answer-only rows that SFT sets mix with worked solutions (an arithmetic source's
    ``answer_only`` share gives them).

Formats are checked on load (:func:`check_response_format`): a ``pot`` response must contain a
``python`` block, a ``tool`` response at least one ``python`` block directly followed by an
``output`` block, an ``answer`` response is one line. A violating row is malformed: counted and reported
with ``file:line`` like an invalid JSON line, never silently accepted.

Sources (:class:`SFTSource`, or the equivalent dict):

* ``{"kind": "jsonl", "files": [...], "default_format": "cot"}`` -- rows
  ``{"question", "response", "format"?, "source"?}`` or
  ``{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": r}], "format"?}``;
* ``{"kind": "gsm8k", "local_dir": dir or None}`` -- GSM8K train as chain of thought (see
  :func:`~dsmath_jax.data.math_text.gsm8k_cot_response`);
* ``{"kind": "arithmetic", "arithmetic": {"n_train": ..., "seed": ...}, "answer_only": 0.0}`` -- the train
  problems of the small arithmetic task (:mod:`dsmath_jax.data.arithmetic`, :mod:`dsmath_jax.data.tasks`) with
  their step-by-step responses (format ``cot``), except a share ``answer_only`` of them (drawn by a stable hash of
  the problem's id, so the same problems on every machine) given as their final-answer line alone (format
  ``answer``);
* ``{"kind": "math", "local_dir": dir or None}`` -- MATH train rows that have a reference solution
  (with its ``\boxed{}`` answer), as chain of thought; rows without one are skipped and counted (the
  local copy of MATH train has answers only, so it contributes nothing).

``local_dir`` is the benchmark directory for :func:`~dsmath_jax.data.benchmarks_tfds.prepare_benchmark`
(``None`` downloads); the benchmark is prepared in the same ``data_dir``. Test splits are never used.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from etils import epath

from dsmath_jax.data.benchmarks_tfds import prepare_benchmark
from dsmath_jax.data.corpus import (
    BuildTally,
    DatasetReport,
    expand_files,
    fingerprint_files,
    hash_share,
    in_validation,
    iter_records,
    write_dataset,
)
from dsmath_jax.data.datasets import data_source, decode_example
from dsmath_jax.data.math_text import gsm8k_cot_response, last_boxed
from dsmath_jax.data.tasks import arithmetic_split

__all__ = ["FORMATS", "SFTSource", "build_sft_dataset", "check_response_format"]

FORMATS = ("cot", "pot", "tool", "answer")
SOURCE_KINDS = ("jsonl", "gsm8k", "math", "arithmetic")
SFT_FEATURES = ("question", "response", "format", "source")

_PYTHON_BLOCK = re.compile(r"```python[^\n]*\n.*?```", re.S)
_TOOL_ROUND = re.compile(r"```python[^\n]*\n.*?```\s*```output[^\n]*\n.*?```", re.S)


@dataclasses.dataclass(frozen=True)
class SFTSource:
    """One input of :func:`build_sft_dataset`.

    ``kind`` is ``"jsonl"`` (``files``, and ``default_format`` for rows without a ``format``),
    ``"gsm8k"`` or ``"math"`` (``local_dir``: a benchmark directory, or ``None`` to download), or
    ``"arithmetic"`` (``arithmetic``: the task spec of :mod:`dsmath_jax.data.tasks`; its train problems, a share
    ``answer_only`` of them as their final answer alone).
    """

    kind: str
    files: tuple[str, ...] = ()
    local_dir: str | None = None
    default_format: str = "cot"
    arithmetic: Mapping[str, Any] | None = None  # kind "arithmetic": the spec of dsmath_jax.data.tasks
    answer_only: float = 0.0  # kind "arithmetic": the share of problems given as their final answer alone

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"SFT source kind {self.kind!r} is not one of {SOURCE_KINDS}")
        if isinstance(self.files, (str, os.PathLike)):
            raise TypeError(f"SFT source files must be a list of paths, got {self.files!r}")
        object.__setattr__(self, "files", tuple(os.fspath(f) for f in self.files))
        if self.local_dir is not None:
            object.__setattr__(self, "local_dir", os.fspath(self.local_dir))
        if self.kind == "jsonl" and not self.files:
            raise ValueError("a jsonl SFT source needs files")
        if self.kind != "jsonl" and self.files:
            raise ValueError(f"a {self.kind} SFT source takes local_dir, not files")
        if (self.arithmetic is not None) != (self.kind == "arithmetic"):
            raise ValueError("an arithmetic SFT source needs `arithmetic` (its task spec); other kinds take none")
        if self.default_format not in FORMATS:
            raise ValueError(f"default_format {self.default_format!r} is not one of {FORMATS}")
        if (isinstance(self.answer_only, bool) or not isinstance(self.answer_only, (int, float))
                or not 0.0 <= self.answer_only <= 1.0):
            raise ValueError(f"answer_only must be a share in [0, 1], got {self.answer_only!r}")
        if self.answer_only and self.kind != "arithmetic":
            raise ValueError(f"answer_only={self.answer_only} is for arithmetic sources (whose responses end in "
                             f"their answer line); this source is {self.kind!r}")

    @classmethod
    def parse(cls, spec: SFTSource | Mapping[str, Any]) -> SFTSource:
        if isinstance(spec, SFTSource):
            return spec
        unknown = set(spec) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown SFT source keys {sorted(unknown)} in {dict(spec)}")
        return cls(**spec)


def check_response_format(fmt: str, response: str) -> str | None:
    """Why ``response`` is not a valid ``fmt`` response, or ``None`` when it is (see the module doc)."""
    if fmt not in FORMATS:
        return f"format {fmt!r} is not one of {FORMATS}"
    if fmt == "pot" and not _PYTHON_BLOCK.search(response):
        return "a 'pot' response needs a ```python block"
    if fmt == "tool" and not _TOOL_ROUND.search(response):
        return "a 'tool' response needs a ```python block followed by an ```output block"
    if fmt == "answer" and "\n" in response.strip():
        return "an 'answer' response is the final answer alone, on one line"
    return None


def _parse_row(record: dict[str, Any], default_format: str) -> tuple[str, str, str] | str:
    """(question, response, format) of a JSONL row, or the reason it is malformed."""
    if "messages" in record:
        messages = record["messages"]
        if (not isinstance(messages, list) or len(messages) != 2
                or not all(isinstance(m, dict) for m in messages)
                or [m.get("role") for m in messages] != ["user", "assistant"]):
            roles = ([m.get("role") for m in messages if isinstance(m, dict)]
                     if isinstance(messages, list) else None)
            return f"'messages' must be one user and one assistant message (roles: {roles})"
        question, response = messages[0].get("content"), messages[1].get("content")
    else:
        missing = [k for k in ("question", "response") if k not in record]
        if missing:
            return f"missing field(s) {missing} and no 'messages' (fields present: {sorted(record)[:10]})"
        question, response = record["question"], record["response"]
    if not isinstance(question, str) or not isinstance(response, str):
        return "question and response must be strings"
    if not question.strip() or not response.strip():
        return "empty question or response"
    fmt = record.get("format", default_format)
    if not isinstance(fmt, str):
        return f"format must be a string, got {type(fmt).__name__}"
    reason = check_response_format(fmt, response)
    return reason if reason else (question, response, fmt)


def _examples(index: int, source: SFTSource, data_dir: epath.Path, tally: BuildTally
              ) -> Iterator[tuple[str, dict[str, str]]]:
    """(key, example) of one source; malformed and skipped rows counted in ``tally``."""
    if source.kind == "jsonl":
        for file_index, path in enumerate(expand_files(source.files)):
            for n, record, reason in iter_records(path):
                where = f"{path}:{n}"
                if record is None:
                    assert reason is not None  # iter_records gives a reason for every row it rejects
                    tally.bad(where, reason)
                    continue
                parsed = _parse_row(record, source.default_format)
                if isinstance(parsed, str):
                    tally.bad(where, parsed)
                    continue
                question, response, fmt = parsed
                origin = record.get("source")
                origin = origin if isinstance(origin, str) and origin else f"{path.name}:{n}"
                tally.accept(format=fmt, source="jsonl")
                yield f"{index}:{file_index}:{n}", {"question": question, "response": response,
                                                    "format": fmt, "source": origin}
        return

    if source.kind == "arithmetic":
        assert source.arithmetic is not None  # the source's spec requires it for this kind
        for i, p in enumerate(arithmetic_split(source.arithmetic)[0]):
            answer_only = bool(source.answer_only) and hash_share(f"answer-only:{p.id}", source.answer_only)
            fmt, response = ("answer", p.answer_line) if answer_only else ("cot", p.response)
            tally.accept(format=fmt, source="arithmetic")
            yield f"{index}:{i}", {"question": p.question, "response": response, "format": fmt, "source": p.id}
        return

    prepare_benchmark(source.kind, data_dir, local_dir=source.local_dir)
    rows = data_source(f"dsmath_{source.kind}", "train", data_dir=data_dir)
    for i in range(len(rows)):
        row = decode_example(rows[i])
        if source.kind == "gsm8k":
            question, response = row["question"], gsm8k_cot_response(row["solution"])
            origin = f"gsm8k/train/{i}"
        else:
            if not row["solution"].strip():
                tally.skip("math train: no reference solution")
                continue
            if last_boxed(row["solution"]) is None:
                tally.skip("math train: solution without \\boxed{}")
                continue
            question, response, origin = row["problem"], row["solution"], f"math/{row['id']}"
        tally.accept(format="cot", source=source.kind)
        yield f"{index}:{i}", {"question": question, "response": response, "format": "cot", "source": origin}


def build_sft_dataset(
    name: str,
    sources: Sequence[SFTSource | Mapping[str, Any]],
    *,
    data_dir: str | os.PathLike,
    validation_fraction: float = 0.0,
    max_bad_fraction: float = 0.001,
    version: str = "1.0.0",
    overwrite: bool = False,
) -> DatasetReport:
    """Build SFT dataset ``name`` (``{"question", "response", "format", "source"}``) in ``data_dir``.

    ``validation_fraction`` > 0 puts examples whose question hashes below it in a ``validation``
    split (deterministic; all responses to one question land in the same split).
    ``report.counts`` breaks the written examples down by ``format`` and by source ``kind``;
    ``report.skipped`` counts rows left out on purpose (MATH rows without solutions). Bad rows,
    thresholds, reuse and atomicity are as for :func:`~dsmath_jax.data.corpus.build_text_corpus`.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    parsed = [SFTSource.parse(s) for s in sources]
    if not parsed:
        raise ValueError(f"{name}: no SFT sources given")
    root = epath.Path(data_dir)
    recipe_sources = []
    for s in parsed:
        entry: dict[str, Any] = {"kind": s.kind}
        if s.kind == "jsonl":
            entry.update(inputs=fingerprint_files(expand_files(s.files)), default_format=s.default_format)
        elif s.kind == "arithmetic":
            assert s.arithmetic is not None  # the source's spec requires it for this kind
            entry.update(arithmetic=dict(s.arithmetic))
            if s.answer_only:  # (absent when 0: datasets built before the option keep their recipe)
                entry.update(answer_only=s.answer_only)
        else:
            entry.update(download=s.local_dir is None)
        recipe_sources.append(entry)
    recipe = {"kind": "sft", "sources": recipe_sources, "validation_fraction": validation_fraction}
    tally = BuildTally()

    def stream(counting: BuildTally) -> Iterator[tuple[str, dict[str, str]]]:
        for index, source in enumerate(parsed):
            yield from _examples(index, source, root, counting)

    generators: dict[str, Callable[[], Iterator[tuple[str, dict[str, str]]]]]
    if validation_fraction > 0:
        generators = {
            "train": lambda: ((k, ex) for k, ex in stream(tally)
                              if not in_validation(ex["question"], validation_fraction)),
            "validation": lambda: ((k, ex) for k, ex in stream(BuildTally())
                                   if in_validation(ex["question"], validation_fraction)),
        }
    else:
        generators = {"train": lambda: stream(tally)}

    described = [f"{s.kind}:{list(s.files)}" if s.kind == "jsonl" else
                 f"arithmetic:{dict(s.arithmetic or {})}" + (f" answer_only={s.answer_only}" if s.answer_only else "")
                 if s.kind == "arithmetic" else f"{s.kind}:{s.local_dir or 'download'}" for s in parsed]
    inputs = [f for s in parsed for f in s.files] + [d for d in described if not d.startswith("jsonl:")]
    return write_dataset(
        name=name, version=version, data_dir=data_dir, feature_names=SFT_FEATURES,
        split_generators=generators, tally=tally, recipe=recipe, inputs=inputs,
        max_bad_fraction=max_bad_fraction, what=f"sources {described}", noun="examples",
        overwrite=overwrite, description=f"SFT dataset {name} (dsmath_jax.data.sft_data.build_sft_dataset).")
