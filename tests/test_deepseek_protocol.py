"""The `deepseek` protocol (dsmath_jax/evals/deepseek) against DeepSeek-Math's own evaluation harness.

The fixtures (tests/fixtures/deepseek) are what the harness itself (deepseek-ai/DeepSeek-Math, evaluation/ at
commit b8b0f8c, in its pinned environment: sympy 1.12, antlr4 4.11) produced, written by
experiments/fixtures/deepseek_harness_fixtures.py: its process_fn outputs, gold answers, prompts and stop
words, and its predictions and verdicts on constructed completions. Every row must agree exactly.
"""

from __future__ import annotations

import collections
import hashlib
import json
import pathlib

import pytest

from dsmath_jax.data.text_files import iter_jsonl
from dsmath_jax.evals.benchmarks import BENCHMARKS
from dsmath_jax.evals.deepseek import (
    MODES,
    PROTOCOL,
    build_prompt,
    extract,
    gold,
    is_correct,
    pal_program,
    process,
    program_output,
)
from dsmath_jax.evals.deepseek.grading import ocw_numeric

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "deepseek"

# The (benchmark, mode) pairs the harness's configs define (configs/{few_shot,zero_shot}_test_configs.json).
HARNESS_PAIRS = {
    ("gsm8k", "few_shot_cot"), ("gsm8k", "few_shot_pot"), ("gsm8k", "zero_shot_cot"), ("gsm8k", "tool"),
    ("math", "few_shot_cot"), ("math", "few_shot_pot"), ("math", "zero_shot_cot"), ("math", "tool"),
    ("math500", "few_shot_cot"), ("math500", "few_shot_pot"), ("math500", "zero_shot_cot"), ("math500", "tool"),
    ("cmath", "few_shot_cot"), ("cmath", "zero_shot_cot"), ("cmath", "tool"),
    ("mgsm_zh", "zero_shot_cot"), ("mgsm_zh", "tool"),
    ("gaokao_mathcloze", "few_shot_cot"), ("gaokao_mathqa", "few_shot_cot"), ("sat", "few_shot_cot"),
    ("ocw", "few_shot_cot"), ("mmlu_stem", "few_shot_cot"),
}


def _load(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


RECORDS = {(row["benchmark"], row["index"]): row for row in _load("records")}
PROMPTS = collections.defaultdict(list)
for _row in _load("prompts"):
    PROMPTS[_row["benchmark"], _row["mode"]].append(_row)
VERDICTS = collections.defaultdict(list)
for _row in _load("verdicts"):
    VERDICTS[_row["benchmark"], _row["mode"]].append(_row)
GOLDS = collections.defaultdict(list)
for _row in _load("golds"):
    GOLDS[_row["benchmark"]].append(_row)


def _item(benchmark: str, index: int) -> dict:
    return process(benchmark, RECORDS[benchmark, index]["record"], index)


def test_fixtures_cover_every_pair_the_harness_defines():
    assert PROTOCOL == HARNESS_PAIRS
    assert set(PROMPTS) == HARNESS_PAIRS and set(VERDICTS) == HARNESS_PAIRS
    assert {b for b, _ in RECORDS} == set(BENCHMARKS)
    assert all(len(rows) == 20 for rows in PROMPTS.values())
    assert all(len(rows) >= 140 for rows in VERDICTS.values())


@pytest.mark.parametrize("benchmark", sorted(BENCHMARKS))
def test_process_matches_harness(benchmark):
    rows = [row for (b, _), row in RECORDS.items() if b == benchmark]
    for row in rows:
        record = json.loads(json.dumps(row["record"]))
        ours = process(benchmark, record, row["index"])
        assert record == row["record"], "process() must not modify the record"
        theirs = dict(row["item"])
        # ids are bookkeeping: the harness's launcher numbers records by its config name
        ours.pop("id"), theirs.pop("id")
        assert ours == theirs, f"{benchmark} record {row['index']}"
        assert gold(benchmark, ours) == row["item"]["answer"]


@pytest.mark.parametrize("benchmark", sorted(GOLDS))
def test_golds_of_every_record_match_harness(benchmark, shared_data):
    path = shared_data / "benchmarks" / BENCHMARKS[benchmark].path
    theirs = GOLDS[benchmark]
    ours = [process(benchmark, record, i)["answer"] for i, (_, record) in enumerate(iter_jsonl(path))]
    assert len(ours) == len(theirs)
    wrong = [(row["index"], ours[row["index"]], row["answer"]) for row in theirs if ours[row["index"]] != row["answer"]]
    assert not wrong, f"{len(wrong)}/{len(theirs)} golds differ, e.g. {wrong[:5]}"


@pytest.mark.parametrize("benchmark,mode", sorted(HARNESS_PAIRS))
def test_prompts_and_stops_match_harness(benchmark, mode):
    for row in PROMPTS[benchmark, mode]:
        prompt, stops = build_prompt(benchmark, _item(benchmark, row["index"]), mode)
        if row["prompt"] is not None:
            assert prompt == row["prompt"]
        assert hashlib.sha256(prompt.encode("utf-8")).hexdigest() == row["sha256"], f"problem {row['index']}"
        assert stops == tuple(row["stops"])


def _disagreements(benchmark: str, mode: str, row: dict) -> list[str]:
    item = _item(benchmark, row["index"])
    completion = row["completion"]
    found = []
    if mode == "few_shot_pot":
        if completion is not None:
            program, _, _ = pal_program(benchmark, completion)
            if program != row["program"]:
                found.append(f"program {program!r} != {row['program']!r}")
        prediction = extract(benchmark, mode, item, row["program_output"])
    else:
        prediction = extract(benchmark, mode, item, completion)
        if prediction != row["prediction"]:
            found.append(f"prediction {prediction!r} != {row['prediction']!r}")
    if is_correct(benchmark, item, prediction) != row["correct"]:
        found.append(f"verdict on {prediction!r} should be {row['correct']}")
    if mode == "tool":
        output = program_output(completion)
        if output != row["program_output"]:
            found.append(f"program output {output!r} != {row['program_output']!r}")
        elif is_correct(benchmark, item, output) != row["program_correct"]:
            found.append(f"program verdict on {output!r} should be {row['program_correct']}")
    return found


# Program outputs such as '\\sqrt{2}' (quotes included) are Python string literals to sympy's parse_expr, whose
# compile() warns about their backslashes, in the harness as here.
@pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")
@pytest.mark.parametrize("benchmark,mode", sorted(HARNESS_PAIRS))
def test_predictions_and_verdicts_match_harness(benchmark, mode):
    rows = VERDICTS[benchmark, mode]
    failures = []
    for row in rows:
        found = _disagreements(benchmark, mode, row)
        if found:
            failures.append(f"problem {row['index']}, completion {row['completion']!r}: {'; '.join(found)}")
    assert not failures, (f"{benchmark} x {mode}: {len(rows) - len(failures)}/{len(rows)} rows agree; "
                          + "\n".join(failures[:10]))
    # the fixtures exercise both verdicts
    assert {row["correct"] for row in rows} == {True, False}


@pytest.mark.parametrize("benchmark", sorted(BENCHMARKS))
def test_modes_the_harness_does_not_define_raise(benchmark):
    item = _item(benchmark, 0)
    for mode in MODES:
        if (benchmark, mode) in HARNESS_PAIRS:
            continue
        with pytest.raises(ValueError, match="defines no"):
            build_prompt(benchmark, item, mode)
        with pytest.raises(ValueError, match="defines no"):
            extract(benchmark, mode, item, "The answer is 1.")
    with pytest.raises(ValueError, match="unknown evaluation mode"):
        build_prompt(benchmark, item, "five_shot")
    with pytest.raises(ValueError, match="no DeepSeek-Math protocol"):
        process("svamp", {})


def test_answers_that_would_run_code_are_not_executed(tmp_path):
    """The harness hands answers to sympy's parse_expr / sympify and OCW answers to Python's eval, which run the
    first two MATH payloads below (checked against the harness); ours must run none of them."""
    marker = str(tmp_path / "ran")
    item = _item("math", 0)
    opener = f'open("{marker}", "w")'
    payloads = [
        f"('{opener}',)",  # a string in a tuple: N() sympifies it
        f"'open(\"{marker}\",' + ' \"w\")'",  # a string built at evaluation time
        f"sin('{opener}')",  # a string argument: sin() sympifies it
        opener,
        "__import__('os').getcwd()",
    ]
    for payload in payloads:
        assert not is_correct("math", item, [payload])
        assert not is_correct("gsm8k", _item("gsm8k", 0), payload)
    ocw = next(row["index"] for (b, _), row in RECORDS.items() if b == "ocw"
               and isinstance(ocw_numeric(row["record"]["answer"]), float))
    assert not is_correct("ocw", _item("ocw", ocw), opener)
    assert not is_correct("ocw", _item("ocw", ocw), "10**10**10")  # the harness times out on it
    assert not (tmp_path / "ran").exists()
