"""Data sources named in a config, resolved to random-access sequences of uniform records.

A training config lists its mixture as source specs:

  {"kind": "tfds",   "name": "deepseekmath_corpus", "weight": 0.56}           an existing TFDS dataset
  {"kind": "corpus", "name": "my_corpus", "files": ["a.jsonl", "b.parquet"]}    built from files, then read
  {"kind": "gsm8k",  "weight": 0.5}                                              GSM8K question + solution
  {"kind": "math",   "weight": 0.5}                                              MATH problem + solution
  {"kind": "sft",    "name": "my_sft", "sources": [{"kind": "gsm8k"}, ...]}      SFT examples

Pre-training sources yield `{"text": str}`; SFT sources yield `{"question": str, "response": str}`.
Datasets are built into `data_dir` on first use (idempotent); benchmarks come from their public
sources, or from `benchmarks_dir` when it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dsmath_jax.data.benchmarks_tfds import prepare_benchmark
from dsmath_jax.data.corpus import build_text_corpus
from dsmath_jax.data.datasets import data_source, decode_example
from dsmath_jax.data.sft_data import build_sft_dataset

KINDS = ("tfds", "corpus", "gsm8k", "math", "sft")
_SPEC_KEYS = {"kind", "name", "weight", "split", "field", "files", "text_field", "validation_fraction",
              "max_bad_fraction", "sources", "question_field", "response_field"}


class MappedSource:
    """A random-access source whose elements are decoded and passed through `fn`."""

    def __init__(self, source: Sequence, fn: Callable[[dict], dict], name: str):
        self.source, self.fn, self.name = source, fn, name

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        return self.fn(decode_example(self.source[index]))

    def __repr__(self) -> str:
        return f"MappedSource({self.name!r}, {len(self)} records)"


def _spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    spec = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"data source {spec.get('name', spec.get('kind'))!r}: unknown key(s) {sorted(unknown)}; "
                         f"allowed: {sorted(_SPEC_KEYS)}")
    if spec.get("kind") not in KINDS:
        raise ValueError(f"data source {spec}: 'kind' must be one of {KINDS}")
    return spec


def source_name(spec: Mapping[str, Any]) -> str:
    spec = _spec(spec)
    return spec.get("name") or spec["kind"]


def resolve_source(spec: Mapping[str, Any], split: str, *, data_dir: str, benchmarks_dir: str | None = None
                   ) -> MappedSource:
    """The records of one source spec's `split` ("train", "validation" or "test")."""
    spec = _spec(spec)
    kind, name = spec["kind"], source_name(spec)
    if kind == "tfds":
        field = spec.get("field", "text")
        src = data_source(spec["name"], spec.get("split", split), data_dir=data_dir)
        return MappedSource(src, lambda r: {"text": r[field]}, name)
    if kind == "corpus":
        build_text_corpus(spec["name"], spec["files"], data_dir=data_dir, text_field=spec.get("text_field", "text"),
                          validation_fraction=spec.get("validation_fraction", 0.0),
                          max_bad_fraction=spec.get("max_bad_fraction", 0.001))
        return MappedSource(data_source(spec["name"], split, data_dir=data_dir), lambda r: {"text": r["text"]}, name)
    if kind in ("gsm8k", "math"):
        builder = prepare_benchmark(kind, data_dir, local_dir=benchmarks_dir)
        src = data_source(builder.name, "test" if split == "validation" else split, data_dir=data_dir)
        if kind == "gsm8k":
            return MappedSource(src, lambda r: {"text": f"{r['question']}\n{r['solution']}",
                                                "question": r["question"], "answer": r["answer"]}, name)
        return MappedSource(src, lambda r: {"text": f"{r['problem']}\n{r['solution'] or r['answer']}",
                                            "question": r["problem"], "answer": r["answer"]}, name)
    # the "sft" kind
    subs = [dict(s, local_dir=s.get("local_dir") or benchmarks_dir) if s.get("kind") in ("gsm8k", "math") else dict(s)
            for s in (x.to_dict() if hasattr(x, "to_dict") else x for x in spec["sources"])]
    build_sft_dataset(spec["name"], subs, data_dir=data_dir, validation_fraction=spec.get("validation_fraction", 0.0),
                      max_bad_fraction=spec.get("max_bad_fraction", 0.001))
    return MappedSource(data_source(spec["name"], split, data_dir=data_dir),
                        lambda r: {"question": r["question"], "response": r["response"], "format": r["format"]}, name)
