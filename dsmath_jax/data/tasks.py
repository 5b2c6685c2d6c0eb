r"""RL and reward-model prompts: questions with gold answers, from a spec in a config.

  {"kind": "arithmetic", "n_train": 20000, "n_test": 256, "seed": 0, "knobs": {...}}   the small task
  {"kind": "gsm8k"}  /  {"kind": "math"}                                                 benchmark train/test
  {"kind": "jsonl", "files": [...], "question_field": "question", "answer_field": "answer"}

The paper's RL data are the GSM8K and MATH chain-of-thought questions of the SFT data (PAPER.md §4.2);
`gsm8k` / `math` read the benchmark files (a local directory, or downloaded) and `jsonl` any other set.
Prompts are the SFT chat format (`User: {question}\n\nAssistant:`, :func:`prompt_text`), so an SFT model
continues them with its response. The arithmetic task's train problems are exactly its SFT data
(`{"kind": "arithmetic", ...}` as an SFT source in :mod:`dsmath_jax.data.sft_data`), its test problems are
held out.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from dsmath_jax.data.arithmetic import train_test_split
from dsmath_jax.data.benchmarks_tfds import prepare_benchmark
from dsmath_jax.data.corpus import expand_files
from dsmath_jax.data.datasets import data_source, decode_example
from dsmath_jax.data.math_text import gsm8k_cot_response
from dsmath_jax.data.pipeline import chat_prompt

KINDS = ("arithmetic", "gsm8k", "math", "jsonl")
SPLITS = ("train", "test")
# The zero-shot chain-of-thought instruction of the paper's prompts (PAPER.md §7), and the template that puts it
# after the question: the RL and reward-model questions of the paper's configs.
COT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
COT_TEMPLATE = "{question}\n" + COT_INSTRUCTION
_KEYS = {"kind", "n_train", "n_test", "seed", "knobs", "files", "question_field", "answer_field", "limit",
         "template"}


@dataclasses.dataclass(frozen=True)
class Problem:
    """A question with its gold answer. `kind` is the grader's answer kind ("math" or "number");
    `intermediates` are the true step results of an arithmetic problem (for step-level checks); `response`
    a reference solution (the `sft` method of the paradigm trains on it)."""

    id: str
    question: str
    answer: str
    kind: str = "math"
    intermediates: tuple[int, ...] | None = None
    response: str | None = None  # a gold chain-of-thought response, where the source has one


def problem_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A problem source spec as a dict, checked: known keys and kind (ValueError naming them otherwise)."""
    spec = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
    unknown = set(spec) - _KEYS
    if unknown:
        raise ValueError(f"problem source {spec}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    if spec.get("kind") not in KINDS:
        raise ValueError(f"problem source {spec}: 'kind' must be one of {KINDS}")
    return spec


def arithmetic_split(spec: Mapping[str, Any]):
    """(train, test) ArithmeticProblem lists of an arithmetic spec (deterministic in the spec)."""
    spec = problem_spec(dict(spec, kind="arithmetic"))
    return train_test_split(int(spec.get("n_train", 20000)), int(spec.get("n_test", 256)),
                            seed=int(spec.get("seed", 0)), **dict(spec.get("knobs") or {}))


def load_problems(spec: Mapping[str, Any], split: str, *, data_dir: str | None = None,
                  benchmarks_dir: str | None = None) -> list[Problem]:
    """The problems of `split` ("train" or "test") of a source spec (see the module docstring). GSM8K and
    MATH are prepared as TFDS datasets in `data_dir`, from `benchmarks_dir` or their public sources."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    spec = problem_spec(spec)
    kind = spec["kind"]
    if kind == "arithmetic":
        train, test = arithmetic_split(spec)
        out = [Problem(p.id, p.question, p.answer, "number", tuple(p.intermediates), p.response)
               for p in (train if split == "train" else test)]
    elif kind in ("gsm8k", "math"):
        if data_dir is None:
            raise ValueError(f"problem source {spec}: a {kind} source needs a data_dir for its TFDS copy")
        builder = prepare_benchmark(kind, data_dir, local_dir=benchmarks_dir)
        rows = data_source(builder.name, split, data_dir=data_dir)
        out = []
        for i in range(len(rows)):
            r = decode_example(rows[i])
            if kind == "gsm8k":
                out.append(Problem(f"gsm8k/{split}/{i}", r["question"], r["answer"], "number",
                                   response=gsm8k_cot_response(r["solution"])))
            else:
                out.append(Problem(f"math/{split}/{i}", r["problem"], r["answer"], "math",
                                   response=r["solution"] or None))
    else:
        files = spec.get("files")
        if not files:
            raise ValueError(f"problem source {spec}: a jsonl source needs `files`")
        qf, af = spec.get("question_field", "question"), spec.get("answer_field", "answer")
        out = []
        for path in expand_files(files if not isinstance(files, str) else [files]):
            with path.open("r", encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                        question, answer = row[qf], row[af]
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise ValueError(f"{path}:{lineno}: cannot read a problem (fields {qf!r}, {af!r}): "
                                         f"{type(e).__name__}: {e}") from e
                    response = row.get("response")
                    out.append(Problem(str(row.get("id", f"{path}:{lineno}")), str(question), str(answer),
                                       str(row.get("kind", "math")), response=response if isinstance(response, str)
                                       else None))
    limit = spec.get("limit")
    out = out[:int(limit)] if limit else out
    if not out:
        raise ValueError(f"problem source {spec}: no {split} problems")
    return out


def prompt_text(problem: Problem, template: str = "{question}") -> str:
    """The prompt of a problem: the SFT chat format around `template` (e.g. `COT_TEMPLATE`, the paper's
    zero-shot instruction after the question)."""
    return chat_prompt(template.replace("{question}", problem.question))


def prompts(problems: Sequence[Problem], template: str = "{question}") -> list[str]:
    return [prompt_text(p, template) for p in problems]


__all__ = ["Problem", "KINDS", "load_problems", "arithmetic_split", "prompt_text", "prompts"]
