"""Benchmark records as the DeepSeek-Math harness turns them into test items.

`process(benchmark, record)` is what the harness's `process_fn` for that benchmark yields
(`evaluation/data_processing/process_utils.py` in deepseek-ai/DeepSeek-Math, commit b8b0f8c): a dict with
the chat `messages` (user question, assistant reference) and the gold `answer` in the form its `eval_fn`
compares (a string, or a list of strings for MATH and Gaokao cloze), plus the bookkeeping fields the harness
carries (`dataset`, `id`, level/type/grade...). The prompt suffixes of the zero-shot protocol are not part of
the item: `prompts.build_prompt` adds them, as the harness's `markup_question` does before inference.

Our benchmark names map to the harness's configs (`evaluation/configs/*_test_configs.json`):

| ours | few-shot config | zero-shot config |
|---|---|---|
| gsm8k | gsm8k-cot-test, gsm8k-pal-test | gsm8k-test |
| math, math500 | math-cot-test, math-pal-test | math-test |
| cmath | cmath-cot-test | cmath |
| mgsm_zh | | mgsm-zh |
| gaokao_mathcloze | agieval-gaokao-mathcloze-cot-test | |
| gaokao_mathqa | agieval-gaokao-mathqa-cot-test | |
| sat | math_sat | |
| ocw | OCWCourses | |
| mmlu_stem | MMLU-STEM-test | |

Records are read in the layout of our benchmark files (dsmath_jax/evals/benchmarks.py), which is the
harness's own layout except for two benchmarks:

* gsm8k: the harness's copy splits OpenAI's `answer` ("...\\n#### 70,000") into `cot` and `answer`; both
  layouts are accepted here, and the OpenAI one is split at its "\\n#### " line exactly as that copy is.
* math500 (PRM800K's MATH-500, not in the harness): processed as MATH; its `subject` stands in for MATH's
  `type`. The gold is extracted from the reference solution, as for MATH (not PRM800K's `answer` field).

The harness's MATH `process_fn` also reads a `category` field that our MATH copy lacks; it is bookkeeping
only (None here).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from dsmath_jax.data.text_files import DataFormatError
from dsmath_jax.evals.deepseek import grading

# our benchmark name -> (few-shot config, zero-shot config) of the harness; None where it has none.
CONFIGS: dict[str, tuple[str | None, str | None]] = {
    "gsm8k": ("gsm8k-cot-test", "gsm8k-test"),
    "math": ("math-cot-test", "math-test"),
    "math500": ("math-cot-test", "math-test"),
    "cmath": ("cmath-cot-test", "cmath"),
    "mgsm_zh": (None, "mgsm-zh"),
    "gaokao_mathcloze": ("agieval-gaokao-mathcloze-cot-test", None),
    "gaokao_mathqa": ("agieval-gaokao-mathqa-cot-test", None),
    "sat": ("math_sat", None),
    "ocw": ("OCWCourses", None),
    "mmlu_stem": ("MMLU-STEM-test", None),
}

LANGUAGE = {"cmath": "zh", "mgsm_zh": "zh", "gaokao_mathcloze": "zh", "gaokao_mathqa": "zh"}

_GSM8K_SPLIT = "\n#### "


def _get(record: Mapping[str, Any], key: str, benchmark: str) -> Any:
    if key not in record:
        raise DataFormatError(f"{benchmark} record: missing field {key!r} (fields: {sorted(record)})")
    return record[key]


def _chat(question: str, reference: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": reference}]


def _record_id(record: Mapping[str, Any], benchmark: str, index: int) -> Any:
    # run_subset_parallel.py gives a record without an id the id "<config>-<line index>".
    return record.get("id", f"{benchmark}-{index}")


def _gsm8k(record, index):
    if "cot" in record:  # the harness's own layout
        cot, answer = record["cot"], _get(record, "answer", "gsm8k")
    else:  # OpenAI's layout: the solution ends with "\n#### <answer>"
        parts = _get(record, "answer", "gsm8k").split(_GSM8K_SPLIT)
        if len(parts) != 2:
            raise DataFormatError(f"gsm8k record {index}: expected one {_GSM8K_SPLIT!r} line in `answer`")
        cot, answer = parts
    reference = re.sub(r"<<[^<>]*>>", "", cot) + "\nSo the answer is $\\boxed{" + answer.strip() + "}$."
    return {
        "dataset": "gsm8k-cot",
        "id": record.get("id", f"gsm8k-test-{index}"),
        "messages": _chat(_get(record, "question", "gsm8k"), reference),
        "answer": answer.replace(",", ""),
    }


def _math(record, index):
    question = _get(record, "problem", "math")
    solution = _get(record, "solution", "math")
    return {
        "dataset": "math-cot",
        "id": _record_id(record, "math", index),
        "level": record.get("level"),
        "type": record.get("type", record.get("subject")),
        "category": record.get("category"),
        # the reference solution, one sentence a line
        "messages": _chat(question, "\n".join(re.split(r"(?<=\.) (?=[A-Z])", solution))),
        "answer": grading.math_answers(question, solution),
    }


def _sat(record, index):
    options = _get(record, "options", "sat").strip()
    if not options.startswith("A"):
        raise DataFormatError(f"sat record {index}: options must start with 'A', got {options[:20]!r}")
    options = "(" + options  # "A) x B) y" -> "(A) x (B) y"
    for letter in "BCDEFG":
        options = options.replace(f" {letter}) ", f" ({letter}) ")
    question = (f"{_get(record, 'question', 'sat').strip()}\nWhat of the following is the right choice? "
                f"Explain your answer.\n{options.strip()}")
    return {"dataset": "math_sat", "id": _get(record, "id", "sat"), "language": "en",
            "messages": _chat(question, record["Answer"]), "answer": _get(record, "Answer", "sat")}


def _ocw(record, _index):
    return {"dataset": "OCWCourses", "id": _get(record, "id", "ocw"), "language": "en",
            "messages": _chat(_get(record, "problem", "ocw").strip(), _get(record, "solution", "ocw").strip()),
            "answer": _get(record, "answer", "ocw")}


def _mmlu_stem(record, _index):
    options = ", ".join(f"({label}) {str(option).strip()}"
                        for label, option in zip("ABCD", _get(record, "options", "mmlu_stem")))
    question = (f"{_get(record, 'question', 'mmlu_stem').strip()}\nWhat of the following is the right choice? "
                f"Explain your answer.\n{options}")
    return {"dataset": "MMLU-STEM", "id": _get(record, "id", "mmlu_stem"), "language": "en",
            "messages": _chat(question, record["answer"]), "answer": _get(record, "answer", "mmlu_stem")}


def _mgsm_zh(record, _index):
    item = {key: value for key, value in record.items()}
    item["messages"] = [dict(message) for message in _get(record, "messages", "mgsm_zh")]
    item["answer"] = _get(record, "answer", "mgsm_zh").replace(",", "")
    return item


def _cmath(record, index):
    return {"dataset": "cmath", "id": _record_id(record, "cmath", index), "grade": record.get("grade"),
            "reasoning_step": record.get("reasoning_step"),
            "messages": _chat(_get(record, "question", "cmath").strip(), ""),
            "answer": _get(record, "golden", "cmath").strip().replace(",", "")}


def _gaokao_mathcloze(record, index):
    answers = _get(record, "answer", "gaokao_mathcloze").strip().split(";")
    return {"dataset": "agieval-gaokao-math-cloze", "id": _record_id(record, "gaokao_mathcloze", index),
            "messages": _chat(_get(record, "question", "gaokao_mathcloze").strip(), ""),
            "answer": [grading.strip_string(answer) for answer in answers]}


def _gaokao_mathqa(record, index):
    # The few-shot chain-of-thought processing (process_agieval_gaokao_mathqa_few_shot_cot_test), the only
    # one a config of the harness uses.
    question = _get(record, "question", "gaokao_mathqa").strip().rstrip("\\")
    options = " ".join(option.strip() for option in _get(record, "options", "gaokao_mathqa"))
    return {"dataset": "agieval-gaokao-mathqa", "id": _record_id(record, "gaokao_mathqa", index),
            "messages": _chat(f"{question}\n从以下选项中选择:    {options}", ""),
            "answer": _get(record, "label", "gaokao_mathqa")}


_PROCESS: dict[str, Callable[[Mapping[str, Any], int], dict[str, Any]]] = {
    "gsm8k": _gsm8k, "math": _math, "math500": _math, "cmath": _cmath, "mgsm_zh": _mgsm_zh,
    "gaokao_mathcloze": _gaokao_mathcloze, "gaokao_mathqa": _gaokao_mathqa, "sat": _sat, "ocw": _ocw,
    "mmlu_stem": _mmlu_stem,
}


def check_benchmark(benchmark: str) -> None:
    if benchmark not in _PROCESS:
        raise ValueError(f"benchmark {benchmark!r} has no DeepSeek-Math protocol; known: {sorted(_PROCESS)}")


def process(benchmark: str, record: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
    """The harness's test item for one benchmark record (`index`: its line index, for records without an id).

    The record is not modified. `item["messages"][-2]["content"]` is the question the prompts are built
    from; `item["answer"]` the gold that `grading.is_correct` compares with.
    """
    check_benchmark(benchmark)
    return _PROCESS[benchmark](record, index)


def question(item: Mapping[str, Any]) -> str:
    """The user turn of an item (before any zero-shot suffix)."""
    return item["messages"][-2]["content"]
