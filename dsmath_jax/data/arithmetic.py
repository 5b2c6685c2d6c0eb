r"""A small arithmetic word-problem task on which RL can be shown working on a CPU (issue 6 item 7).

The task is data: its problems feed the SFT data (:mod:`dsmath_jax.data.sft_data`), the RL and reward-model
prompts (:mod:`dsmath_jax.data.tasks`), the synthetic crawl of the mining pipeline and the quickstart. A tiny
model (2 layers, d_model 64, a 512-piece sentencepiece vocabulary trained on this task's text) is
SFT-trained on these problems for a minute or two and then RL-trained (GRPO, PAPER.md §4) with the rule
reward :func:`dsmath_jax.rl.rewards.check_answer` (exact final answer) or the per-step
:func:`dsmath_jax.rl.rewards.step_correctness` (a process reward; the step lines are newline-delimited so
their ends can be found, :func:`dsmath_jax.rl.rewards.step_end_offsets`).

A problem (:class:`ArithmeticProblem`)::

    question: Tom has 7 apples. He buys 5 more. Then he gives 3 to Ann. Then he keeps a third of them.
              How many apples does Tom have now?
    response: He buys 5 more: 7 + 5 = 12.
              He gives 3 to Ann: 12 - 3 = 9.
              He keeps a third of them: 9 / 3 = 3.
              The final answer is $\boxed{3}$.

One step line per operation (the action in the question's words, then its equation), each ending with
``= <intermediate result>.``; the last line is the
answer in the form the evaluation harness extracts (the last ``\boxed{}``). Every intermediate result
is a non-negative integer (divisions are exact) no larger than ``max_value``.

Difficulty knobs of :func:`generate_problems` (defaults in brackets): ``min_steps`` / ``max_steps``
[1 / 3] operations per problem (uniform), ``max_operand`` [20] the largest starting amount and added or
removed amount, ``max_value`` [99] the largest intermediate result, ``operations`` [``"+-*/"``] the
operations allowed, ``max_factor`` [3] the largest multiplier / divisor.

Problems are deterministic functions of ``(seed, index)`` (and the knobs): ``generate_problems(n)`` is a
prefix of ``generate_problems(n + k)`` with the same seed. :func:`train_test_split` gives train and test
sets with no question text in common; :func:`write_jsonl` writes SFT rows that
:func:`dsmath_jax.data.sft_data.build_sft_dataset` reads (``{"kind": "jsonl", "files": [path]}``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

__all__ = [
    "ARITHMETIC_TINY", "OPERATIONS", "MAX_FACTOR", "ArithmeticProblem", "generate_problems", "train_test_split",
    "write_jsonl", "texts_for_tokenizer", "apply_operation",
]

OPERATIONS = "+-*/"

# The task at CPU scale: one or two operations on amounts up to 9, results up to 30 (a problem source spec:
# `data/tasks.py`). The SFT stage (configs/sft/arithmetic.py) trains on its train problems, RL samples from the
# same problems, and evaluation uses its held-out test problems.
ARITHMETIC_TINY = dict(kind="arithmetic", n_train=20000, n_test=256, seed=0,
                       knobs=dict(max_operand=9, max_value=30, max_steps=2))

# (name, pronoun); the other person of a "gives to" / "gets from" is another of the names.
_PEOPLE = (("Tom", "he"), ("Ann", "she"), ("Sam", "he"), ("Mia", "she"), ("Ben", "he"), ("Lily", "she"),
           ("Max", "he"), ("Emma", "she"), ("Leo", "he"), ("Zoe", "she"))
_ITEMS = ("apples", "marbles", "stickers", "pencils", "cookies", "books", "coins", "cards", "shells", "stamps")

# What the person does, per operation: the same phrase in the question ("He buys 5 more.") and in the
# step line ("He buys 5 more: 7 + 5 = 12."). `{b}` is the operand, `{o}` another person.
_PHRASES: dict[str, tuple[str, ...]] = {
    "+": ("buys {b} more", "finds {b} more", "gets {b} more from {o}"),
    "-": ("gives {b} to {o}", "loses {b}", "sells {b}"),
}
_MULTIPLY = {2: "doubles them", 3: "triples them", 4: "quadruples them"}  # else "multiplies them by k"
_FRACTION = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth", 6: "a sixth", 7: "a seventh",
             8: "an eighth", 9: "a ninth", 10: "a tenth"}
MAX_FACTOR = 10
_MAX_TRIES = 1000
_ASKS = ("How many {item} does {name} have now?", "How many {item} does {name} have at the end?")

@dataclasses.dataclass
class ArithmeticProblem:
    r"""One word problem with its step-by-step solution.

    ``question`` the word problem; ``steps`` one sentence per operation, each ending with
    ``= <intermediate>.``; ``answer`` the final result as a string integer; ``response`` the steps, one per
    line, then ``The final answer is $\boxed{answer}$.``; ``num_steps`` the number of operations; ``id``
    ``"arith-<seed>-<index>"``. ``start``, ``operations`` (``(op, operand)`` pairs, op one of ``+-*/``) and
    ``intermediates`` (the result after each operation) are the problem as data, for independent checks
    and process rewards.
    """

    question: str
    steps: list[str]
    answer: str
    response: str
    num_steps: int
    id: str
    start: int = 0
    operations: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    intermediates: list[int] = dataclasses.field(default_factory=list)

    def sft_row(self) -> dict:
        """The SFT JSONL row of this problem (see :func:`write_jsonl`)."""
        return {"question": self.question, "response": self.response, "format": "cot", "answer": self.answer,
                "num_steps": self.num_steps, "intermediates": list(self.intermediates), "source": self.id}


def apply_operation(x: int, op: str, b: int) -> int:
    """``x op b`` for op in ``+-*/``; ``/`` must divide exactly."""
    if op == "+":
        return x + b
    if op == "-":
        return x - b
    if op == "*":
        return x * b
    if op == "/":
        if b == 0 or x % b:
            raise ValueError(f"{x} / {b} is not an exact division")
        return x // b
    raise ValueError(f"unknown operation {op!r}")


def _check_knobs(min_steps: int, max_steps: int, max_operand: int, max_value: int, operations: str,
                 max_factor: int) -> None:
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    if max_operand < 2:
        raise ValueError(f"max_operand must be >= 2, got {max_operand}")
    if max_value < max_operand + 1:
        raise ValueError(f"max_value must be > max_operand, got {max_value} <= {max_operand}")
    unknown = set(operations) - set(OPERATIONS)
    if not operations or unknown:
        raise ValueError(f"operations must be a non-empty subset of {OPERATIONS!r}, got {operations!r}")
    if ("+" not in operations and "-" not in operations):
        raise ValueError("operations must include '+' or '-' (multiplication and division alone get stuck)")
    if ("*" in operations or "/" in operations) and not 2 <= max_factor <= MAX_FACTOR:
        raise ValueError(f"max_factor must be in [2, {MAX_FACTOR}], got {max_factor}")


def _feasible(x: int, op: str, *, max_operand: int, max_value: int, max_factor: int) -> list[int]:
    """The operands of ``op`` that keep ``x`` a non-negative integer <= ``max_value``."""
    if op == "+":
        return list(range(1, min(max_operand, max_value - x) + 1))
    if op == "-":
        return list(range(1, min(max_operand, x) + 1))
    if op == "*":
        return [k for k in range(2, max_factor + 1) if x * k <= max_value and x > 0]
    return [k for k in range(2, max_factor + 1) if x >= k and x % k == 0]


def _problem(seed: int, index: int, *, min_steps: int, max_steps: int, max_operand: int, max_value: int,
             operations: str, max_factor: int) -> ArithmeticProblem:
    rng = random.Random(f"dsmath-arithmetic:{seed}:{index}")  # str seeds hash with sha512: stable everywhere
    name, pron = rng.choice(_PEOPLE)
    others = [p[0] for p in _PEOPLE if p[0] != name]
    item = rng.choice(_ITEMS)
    num_steps = rng.randint(min_steps, max_steps)
    for _ in range(_MAX_TRIES):  # a dead end (e.g. 0 things and only "-" allowed) redraws the operations
        start = rng.randint(2, max_operand)
        x = start
        ops: list[tuple[str, int]] = []
        values: list[int] = []
        clauses: list[str] = []
        steps: list[str] = []
        for k in range(num_steps):
            choices = {op: _feasible(x, op, max_operand=max_operand, max_value=max_value, max_factor=max_factor)
                       for op in operations}
            usable = [op for op in operations if choices[op]]
            if not usable:
                break
            op = rng.choice(usable)
            b = rng.choice(choices[op])
            if op == "*":
                phrase = _MULTIPLY.get(b, f"multiplies them by {b}")
            elif op == "/":
                phrase = f"keeps {_FRACTION[b]} of them"
            else:
                phrase = rng.choice(_PHRASES[op]).format(b=b, o=rng.choice(others))
            y = apply_operation(x, op, b)
            clauses.append(f"{'Then ' + pron if k else pron.capitalize()} {phrase}.")
            steps.append(f"{pron.capitalize()} {phrase}: {x} {op} {b} = {y}.")
            ops.append((op, b))
            values.append(y)
            x = y
        if len(ops) == num_steps:
            break
    else:
        raise ValueError(f"no {num_steps}-step problem with operations {operations!r} keeps every result in "
                         f"0..{max_value} (max_operand {max_operand}); widen the knobs")

    ask = rng.choice(_ASKS).format(item=item, name=name)
    question = " ".join([f"{name} has {start} {item}.", *clauses, ask])
    answer = str(x)
    response = "\n".join([*steps, f"The final answer is $\\boxed{{{answer}}}$."])
    return ArithmeticProblem(question=question, steps=steps, answer=answer, response=response,
                             num_steps=num_steps, id=f"arith-{seed}-{index}", start=start, operations=ops,
                             intermediates=values)


def _stream(seed: int, start_index: int = 0, **knobs) -> Iterator[ArithmeticProblem]:
    index = start_index
    while True:
        yield _problem(seed, index, **knobs)
        index += 1


def generate_problems(n: int, *, seed: int = 0, min_steps: int = 1, max_steps: int = 3, max_operand: int = 20,
                      max_value: int = 99, operations: str | Sequence[str] = OPERATIONS, max_factor: int = 3
                      ) -> list[ArithmeticProblem]:
    """``n`` problems, deterministic in ``seed`` and the knobs (problem ``i`` depends only on ``(seed, i)``).

    Each has ``min_steps``..``max_steps`` operations drawn from ``operations`` (a subset of ``"+-*/"``):
    adding or removing 1..``max_operand`` things, or multiplying / dividing (exactly) by 2..``max_factor``,
    starting from 2..``max_operand`` things, every intermediate result in 0..``max_value``. Questions
    may repeat (use :func:`train_test_split` for disjoint sets).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    operations = "".join(operations)
    _check_knobs(min_steps, max_steps, max_operand, max_value, operations, max_factor)
    knobs: dict[str, Any] = dict(min_steps=min_steps, max_steps=max_steps, max_operand=max_operand, max_value=max_value,
                                 operations=operations, max_factor=max_factor)
    return [_problem(seed, i, **knobs) for i in range(n)]


def train_test_split(n_train: int, n_test: int, seed: int = 0, *, max_draws_factor: int = 20, **knobs
                     ) -> tuple[list[ArithmeticProblem], list[ArithmeticProblem]]:
    """``(train, test)``: ``n_train`` and ``n_test`` problems with distinct question texts (none shared
    between or within the splits).

    The test set is the first ``n_test`` distinct questions of the seed's stream, the train set the next
    ``n_train`` distinct ones, so the test set does not change with ``n_train``. ``knobs`` are those of
    :func:`generate_problems`. Raises ``ValueError`` when the knobs do not allow that many distinct
    questions (after ``max_draws_factor * (n_train + n_test)`` draws).
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train and n_test must be >= 0, got {n_train}, {n_test}")
    full: dict[str, Any] = dict(min_steps=1, max_steps=3, max_operand=20, max_value=99, operations=OPERATIONS,
                                max_factor=3)
    unknown = set(knobs) - set(full)
    if unknown:
        raise TypeError(f"unknown knobs {sorted(unknown)}; known: {sorted(full)}")
    full.update(knobs)
    full["operations"] = "".join(full["operations"])
    _check_knobs(**full)
    wanted = n_train + n_test
    limit = max(1000, max_draws_factor * wanted)
    seen: set[str] = set()
    unique: list[ArithmeticProblem] = []
    for draws, problem in enumerate(_stream(seed, **full)):
        if len(unique) == wanted:
            break
        if draws >= limit:
            raise ValueError(f"only {len(unique)} distinct questions in {limit} draws (wanted {wanted}); "
                             "widen the knobs (max_operand, max_steps, operations)")
        if problem.question not in seen:
            seen.add(problem.question)
            unique.append(problem)
    return unique[n_test:], unique[:n_test]


def write_jsonl(problems: Iterable[ArithmeticProblem], path: str | os.PathLike) -> str:
    """Write SFT rows ``{"question", "response", "format": "cot", "answer", "num_steps", "intermediates",
    "source"}`` to ``path`` atomically (a temporary file renamed into place); returns the path.

    ``build_sft_dataset(name, [{"kind": "jsonl", "files": [path]}], data_dir=...)`` reads it (it keeps
    ``question``, ``response``, ``format`` and ``source``, the problem id).
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for problem in problems:
                f.write(json.dumps(problem.sft_row(), ensure_ascii=False))
                f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def texts_for_tokenizer(problems: Iterable[ArithmeticProblem]) -> Iterator[str]:
    """Training text for the task's tokenizer: each problem as the SFT model sees it,
    ``User: {question}\\n\\nAssistant: {response}`` (the chat format of
    :func:`dsmath_jax.data.pipeline.sft_example_fn`, without the special tokens)."""
    for problem in problems:
        yield f"User: {problem.question}\n\nAssistant: {problem.response}"
