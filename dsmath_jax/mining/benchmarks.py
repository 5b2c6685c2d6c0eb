"""The benchmark texts that the corpus is decontaminated against: every question and worked answer of
the evaluation sets, as (benchmark, text) pairs.

Reads a directory laid out like the project's benchmark data (`gsm8k/test.jsonl`, `math/test.jsonl`,
`math500/`, `cmath/`, `mgsm_zh/`, `gaokao/`, `sat/`, `ocw/`, `mmlu_stem/`, and `arithmetic/` for the arithmetic task's
held-out split); missing files are logged in one warning that names them, not an error. Final-answer labels (a number,
an option letter) are not texts: as 1-2 grams they are below the 3-gram minimum and would match any page.
`decontamination.build_ngram_index` takes any iterable of (benchmark, text), so an evaluation registry can replace
this reader.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from dsmath_jax.data.text_files import iter_jsonl

logger = logging.getLogger(__name__)

# benchmark -> [(file relative to the benchmarks dir, texts)]. Each text is a field, or fields joined
# with "+" into one text (a question with its multiple-choice options: an option list alone is not a
# benchmark text, "(A) 0 (B) 1 (C) 2" is on countless clean pages); `messages` yields each message.
BENCHMARK_FILES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "gsm8k": [("gsm8k/test.jsonl", ("question", "answer"))],
    "math": [("math/test.jsonl", ("problem", "solution"))],
    "math500": [("math500/test.jsonl", ("problem", "solution"))],
    "cmath": [("cmath/test.jsonl", ("question",))],
    "mgsm_zh": [("mgsm_zh/test.jsonl", ("messages",))],
    "gaokao_mathcloze": [("gaokao/mathcloze.jsonl", ("question",))],
    "gaokao_mathqa": [("gaokao/mathqa.jsonl", ("question+options",))],
    "sat": [("sat/test.jsonl", ("question+options",))],
    "ocw": [("ocw/test.jsonl", ("problem", "solution"))],
    "mmlu_stem": [("mmlu_stem/test.jsonl", ("question+options",))],
    # The arithmetic task's held-out split (`synthetic_crawl.arithmetic_source` writes it): the quickstart's
    # evaluation set, so its offline crawl is decontaminated against it.
    "arithmetic": [("arithmetic/test.jsonl", ("question", "response"))],
}

_GSM8K_CALCULATOR = re.compile(r"<<[^>]*>>")


def _field_texts(record: dict, field: str) -> list[str]:
    if "+" in field:
        parts = [" ".join(_field_texts(record, f)) for f in field.split("+")]
        return [" ".join(p for p in parts if p)]
    value = record.get(field)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if all(isinstance(v, dict) for v in value):  # chat messages
            return [v.get("content", "") for v in value if isinstance(v.get("content"), str)]
        return [" ".join(str(v) for v in value)]
    return []


def benchmark_texts(benchmarks_dir: str | os.PathLike, *,
                    benchmarks: Sequence[str] | None = None) -> Iterator[tuple[str, str]]:
    """(benchmark, text) for every question and worked answer of `benchmarks` (names of BENCHMARK_FILES;
    None: all); GSM8K answers come twice, with and without their `<<48/2=24>>` calculator annotations (web
    copies have either form)."""
    unknown = sorted(set(benchmarks or ()) - set(BENCHMARK_FILES))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARK_FILES)}")
    root = Path(benchmarks_dir)
    missing: list[str] = []
    for name, files in BENCHMARK_FILES.items():
        if benchmarks is not None and name not in benchmarks:
            continue
        for rel, fields in files:
            path = root / rel
            if not path.is_file():
                missing.append(rel)
                continue
            for _, record in iter_jsonl(path):
                for field in fields:
                    for text in _field_texts(record, field):
                        text = text.strip()
                        if not text:
                            continue
                        yield name, text
                        if name == "gsm8k" and "<<" in text:
                            yield name, _GSM8K_CALCULATOR.sub("", text)
    if missing:
        logger.warning("%d benchmark files missing under %s, not decontaminated against: %s", len(missing), root,
                       ", ".join(missing))
