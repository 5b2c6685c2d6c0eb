"""The arithmetic word-problem task for the CPU RL demo (dsmath_jax.data.arithmetic) and its rewards
(dsmath_jax.rl.rewards)."""

import functools
import hashlib
import json
import operator
import re

import numpy as np
import pytest

from dsmath_jax.data.arithmetic import (
    DIFFICULTY_LEVELS,
    ArithmeticProblem,
    generate_problems,
    texts_for_tokenizer,
    train_test_split,
    write_jsonl,
)
from dsmath_jax.data.datasets import data_source, decode_example
from dsmath_jax.data.math_text import last_boxed
from dsmath_jax.data.pipeline import chat_prompt
from dsmath_jax.data.sft_data import build_sft_dataset
from dsmath_jax.data.tokenizers import train_sentencepiece
from dsmath_jax.rl.rewards import check_answer, step_correctness, step_end_offsets

PY_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}
STEP = re.compile(r"^[A-Z][^:\n]*: (\d+) ([-+*/]) (\d+) = (\d+)\.$")
FINAL = "The final answer is $\\boxed{{{}}}$."
WORDS = {("*", 2): "doubles", ("*", 3): "triples", ("*", 4): "quadruples", ("/", 2): "half",
         ("/", 3): "a third", ("/", 4): "a quarter", ("/", 5): "a fifth", ("/", 6): "a sixth"}
MAX_TOKENS = 128  # bos + prompt + response + eos of every problem fits a 128-token context


def test_deterministic_from_seed_and_prefix_stable():
    a = generate_problems(60, seed=3)
    assert a == generate_problems(60, seed=3)
    assert generate_problems(20, seed=3) == a[:20]
    assert [p.question for p in generate_problems(60, seed=4)] != [p.question for p in a]
    assert len({p.id for p in a}) == 60 and a[0].id == "arith-3-0"
    assert all(isinstance(p, ArithmeticProblem) for p in a)


def test_knobs_are_respected():
    problems = generate_problems(400, seed=1, min_steps=2, max_steps=3, max_operand=9, max_value=30,
                                 operations="+-", max_factor=2)
    assert {p.num_steps for p in problems} == {2, 3}
    for p in problems:
        assert 2 <= p.start <= 9
        assert all(op in "+-" and 1 <= b <= 9 for op, b in p.operations)
        assert all(0 <= v <= 30 for v in p.intermediates)
    default = generate_problems(600, seed=0)
    assert {p.num_steps for p in default} == {1, 2, 3}
    assert {op for p in default for op, _ in p.operations} == set("+-*/")
    assert max(v for p in default for v in p.intermediates) <= 99
    with pytest.raises(ValueError, match="widen the knobs"):  # 2 things, three subtractions of 1..2
        generate_problems(5, min_steps=3, max_steps=3, operations="-", max_operand=2, max_value=3)
    for bad in (dict(min_steps=0), dict(min_steps=3, max_steps=2), dict(operations="*/"), dict(operations="+%"),
                dict(max_value=5, max_operand=10), dict(max_factor=11), dict(max_factor=1)):
        with pytest.raises(ValueError):
            generate_problems(1, **bad)


@pytest.mark.parametrize("knobs", [{}, dict(max_factor=6, max_value=200, max_operand=30),
                                   dict(operations="-", max_steps=3, max_operand=5), dict(operations="+*")])
def test_answers_match_an_independent_recomputation(knobs):
    for p in generate_problems(500, seed=7, **knobs):
        # From the text: the starting amount in the question, then each step line's equation.
        x = int(re.match(r"^\w+ has (\d+) \w+\.", p.question).group(1))
        assert x == p.start
        assert len(p.steps) == p.num_steps == len(p.operations) == len(p.intermediates)
        for line, (op, b) in zip(p.steps, p.operations):
            m = STEP.match(line)
            assert m, line
            left, sym, right, result = int(m[1]), m[2], int(m[3]), int(m[4])
            assert (left, sym, right) == (x, op, b)
            assert re.search(rf"\b{WORDS.get((op, b), b)}\b", p.question), (op, b, p.question)
            if sym == "/":
                assert left % right == 0, line
            assert result == PY_OPS[sym](left, right) >= 0
            x = result
        assert str(x) == p.answer
        # From the operation list, evaluated separately.
        assert functools.reduce(lambda v, ob: PY_OPS[ob[0]](v, ob[1]), p.operations, p.start) == int(p.answer)


def test_train_test_split_is_disjoint():
    train, test = train_test_split(3000, 300, seed=5)
    assert len(train) == 3000 and len(test) == 300
    train_q, test_q = {p.question for p in train}, {p.question for p in test}
    assert len(train_q) == 3000 and len(test_q) == 300
    assert not train_q & test_q
    train2, test2 = train_test_split(100, 300, seed=5)
    assert test2 == test  # the test set does not depend on n_train
    assert {p.question for p in train2} <= train_q
    with pytest.raises(ValueError, match="distinct questions"):
        train_test_split(5000, 0, seed=0, min_steps=1, max_steps=1, max_operand=2, operations="-",
                         max_draws_factor=2)


def test_responses_have_step_lines_and_the_boxed_answer():
    for p in generate_problems(300, seed=2):
        lines = p.response.split("\n")
        assert len(lines) == p.num_steps + 1
        assert lines[:-1] == p.steps
        assert lines[-1] == FINAL.format(p.answer)
        assert p.response.endswith(FINAL.format(p.answer))
        assert last_boxed(p.response) == p.answer
        assert all(re.search(r"= \d+\.$", s) for s in p.steps)
        assert check_answer(p.response, p.answer)
        assert step_correctness(p.response, p) == [True] * p.num_steps
        ends = step_end_offsets(p.response)
        assert len(ends) == p.num_steps and all(p.response[e] == "\n" for e in ends)


def test_check_answer():
    assert check_answer("He buys 5 more: 7 + 5 = 12.\nThe final answer is $\\boxed{12}$.", "12")
    assert check_answer("... $\\boxed{ 12 }$", "12")
    assert check_answer("$\\boxed {1 2}$", " 12 ")
    assert check_answer("$\\boxed{3}$ no wait $\\boxed{12}$", "12")  # the last box counts
    assert not check_answer("$\\boxed{12}$ no wait $\\boxed{3}$", "12")
    assert not check_answer("The final answer is $\\boxed{13}$.", "12")
    assert not check_answer("The final answer is 12.", "12")  # no box
    assert not check_answer("The final answer is $\\boxed{12", "12")  # cut off inside the box
    assert not check_answer("$\\boxed{12.0}$", "12") and not check_answer("$\\boxed{012}$", "12")
    assert not check_answer("$\\boxed{}$", "")
    assert not check_answer("", "12")


def test_step_correctness():
    p = next(q for q in generate_problems(100, seed=9) if q.num_steps == 3)
    assert step_correctness(" " + p.response, p) == [True, True, True]
    assert step_correctness(p.response, p.intermediates) == [True, True, True]
    # Corrupt the second step's result (and let the third carry it on): only the first stays right.
    wrong = p.intermediates[1] + 1
    lines = p.response.split("\n")
    lines[1] = re.sub(r"= \d+\.$", f"= {wrong}.", lines[1])
    lines[2] = re.sub(r": \d+ ", f": {wrong} ", lines[2])
    lines[2] = re.sub(r"= \d+\.$", f"= {p.intermediates[2] + 1}.", lines[2])
    assert step_correctness("\n".join(lines), p) == [True, False, False]
    # Missing results, extra and blank lines; the final-answer line is not a step.
    assert step_correctness("I am not sure.\n\n" + lines[0] + "\nThe final answer is $\\boxed{3}$.", p) == [
        False, False]
    assert step_correctness("\n".join(p.steps + p.steps[-1:] + ["The final answer is $\\boxed{1}$."]), p) == [
        True, True, True, False]
    assert step_correctness("", p) == []
    text = "a = 1.\n\nb = 2\nThe final answer is $\\boxed{2}$."
    assert [text[:e].rsplit("\n", 1)[-1] for e in step_end_offsets(text)] == ["a = 1.", "b = 2"]


def test_jsonl_builds_an_sft_dataset(tmp_path):
    train, _ = train_test_split(40, 10, seed=0)
    path = write_jsonl(train, tmp_path / "sub" / "arith.jsonl")
    assert [f.name for f in (tmp_path / "sub").iterdir()] == ["arith.jsonl"]  # no temporary left behind
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert rows[0] == {"question": train[0].question, "response": train[0].response, "format": "cot",
                       "answer": train[0].answer, "num_steps": train[0].num_steps,
                       "intermediates": train[0].intermediates, "source": train[0].id}
    report = build_sft_dataset("arith_sft", [{"kind": "jsonl", "files": [path]}], data_dir=tmp_path / "tfds")
    assert report.splits == {"train": 40} and report.bad_records == 0
    src = data_source("arith_sft", "train", data_dir=tmp_path / "tfds")
    got = sorted((decode_example(src[i]) for i in range(len(src))), key=lambda r: int(r["source"].split("-")[-1]))
    by_id = {p.id: p for p in train}
    assert len(got) == 40
    for row in got:
        p = by_id[row["source"]]
        assert row == {"question": p.question, "response": p.response, "format": "cot", "source": p.id}


LEVEL1 = DIFFICULTY_LEVELS[1]


def _sft_rows(data_dir, name):
    rows = []
    for split in ("train", "validation"):
        src = data_source(name, split, data_dir=data_dir)
        rows += [decode_example(src[i]) for i in range(len(src))]
    return rows


def test_answer_only_share_of_an_arithmetic_sft_source(tmp_path):
    """`answer_only` gives that share of the problems as their final-answer line alone (format "answer"), the
    others as their worked solutions; which ones is a stable hash of the problem id (the same on every machine
    and in every build), and the recipe carries the share (a build with another share is not reused)."""
    spec = {"n_train": 1000, "n_test": 20, "seed": 0, "knobs": LEVEL1}
    train, _ = train_test_split(1000, 20, seed=0, **LEVEL1)
    by_id = {p.id: p for p in train}
    source = {"kind": "arithmetic", "arithmetic": spec, "answer_only": 0.5}
    report = build_sft_dataset("mix", [source], data_dir=tmp_path / "a", validation_fraction=0.02)
    rows = _sft_rows(tmp_path / "a", "mix")
    assert sorted(r["source"] for r in rows) == sorted(by_id)
    answer_only = {r["source"] for r in rows if r["format"] == "answer"}
    for r in rows:
        p = by_id[r["source"]]
        assert r["question"] == p.question
        if r["format"] == "answer":
            assert r["response"] == p.response.splitlines()[-1] == f"The final answer is $\\boxed{{{p.answer}}}$."
        else:
            assert r["format"] == "cot" and r["response"] == p.response and len(p.response.splitlines()) >= 2
    # Binomial(1000, 0.5): 99.9% of draws fall within 500 +- 52.
    assert 448 <= len(answer_only) <= 552, len(answer_only)
    assert report.counts["format"] == {"answer": len(answer_only), "cot": 1000 - len(answer_only)}
    # The rule, recomputed here: the 8-byte BLAKE2b of "answer-only:<id>" below the share of 2^64.
    digest = lambda text: int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")  # noqa: E731
    assert answer_only == {i for i in by_id if digest(f"answer-only:{i}") < 0.5 * 2.0**64}
    # The same problems in another build (another directory, another process's hash seed would not matter):
    build_sft_dataset("mix", [source], data_dir=tmp_path / "b", validation_fraction=0.02)
    assert {r["source"] for r in _sft_rows(tmp_path / "b", "mix") if r["format"] == "answer"} == answer_only
    # Another share is another recipe: the built dataset is not reused for it (an error naming the difference),
    # and a rebuild with the larger share keeps the smaller one's problems (one hash, one threshold).
    with pytest.raises(ValueError, match=r"built from different inputs or options.*'answer_only': 0.8"):
        build_sft_dataset("mix", [dict(source, answer_only=0.8)], data_dir=tmp_path / "a", validation_fraction=0.02)
    build_sft_dataset("mix", [dict(source, answer_only=0.8)], data_dir=tmp_path / "a", validation_fraction=0.02,
                      overwrite=True)
    larger = {r["source"] for r in _sft_rows(tmp_path / "a", "mix") if r["format"] == "answer"}
    assert answer_only < larger and 748 <= len(larger) <= 852
    # 0 is the worked solutions only, as without the option.
    build_sft_dataset("none", [dict(source, answer_only=0.0)], data_dir=tmp_path / "a", validation_fraction=0.02)
    assert {r["format"] for r in _sft_rows(tmp_path / "a", "none")} == {"cot"}


@pytest.mark.parametrize("source, message", [
    ({"kind": "arithmetic", "arithmetic": {"n_train": 10}, "answer_only": 1.5},
     r"answer_only must be a share in \[0, 1\], got 1.5"),
    ({"kind": "arithmetic", "arithmetic": {"n_train": 10}, "answer_only": True}, "answer_only must be a share"),
    ({"kind": "jsonl", "files": ["x.jsonl"], "answer_only": 0.5}, "answer_only=0.5 is for arithmetic sources"),
])
def test_answer_only_is_checked(tmp_path, source, message):
    with pytest.raises(ValueError, match=message):
        build_sft_dataset("bad", [source], data_dir=tmp_path)


def test_tokenizer_vocabulary_and_lengths(tmp_path):
    tok = train_sentencepiece(texts_for_tokenizer(generate_problems(2000, seed=11)), tmp_path / "arith",
                              vocab_size=512, num_threads=2)
    assert tok.vocab_size == 512
    problems = generate_problems(200, seed=12)
    lengths = np.array([len(tok.encode(chat_prompt(p.question), add_bos=True))
                        + len(tok.encode(" " + p.response, add_eos=True)) for p in problems])
    assert lengths.max() < MAX_TOKENS, lengths.max()
    assert np.median(lengths) < 85, np.median(lengths)
    unk = tok.token_to_id("<unk>")
    for p in problems[:20]:
        text = chat_prompt(p.question) + " " + p.response
        ids = tok.encode(text)
        assert unk not in ids and tok.decode(ids) == text  # round-trips, newlines included
