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
operations allowed, ``max_factor`` [3] the largest multiplier / divisor, ``distractors`` [0] irrelevant
sentences with numbers in the question, which the solution must ignore::

    question: Tom has 7 apples. Ann buys 4 apples. He buys 5 more apples. Tom also has 6 books. Then he
              keeps a third of his apples. How many apples does Tom have now?
    response: He buys 5 more apples: 7 + 5 = 12.
              He keeps a third of his apples: 12 / 3 = 4.
              The final answer is $\boxed{4}$.

A distractor is about another person (always of the other pronoun than the asked-about person, so "he" /
"she" stays unambiguous; the same or another item) or about the same person's other item; it goes anywhere
after the first sentence. With distractors every action names its item ("buys 5 more apples", "doubles his
apples"), so that none could be read as being about the other item. The problem itself (start, operations,
wording choices) is the one drawn without distractors: the distractors and their places are drawn from a
separate random stream, and ``distractors=0`` gives exactly the problems of the code before the knob.

The single difficulty dial :data:`DIFFICULTY_LEVELS` (level -> knobs) and :func:`arithmetic_spec` (a problem
source spec of a level) sit on top of the knobs; :data:`ARITHMETIC_HEADROOM` is the level calibrated to leave
the tiny SFT policy room for RL (``experiments/tools/calibrate_task.py``).

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
    "ARITHMETIC_TINY", "ARITHMETIC_HEADROOM", "ARITHMETIC_ANSWER_MIX", "ANSWER_MIX_SHARE", "DIFFICULTY_LEVELS",
    "OPERATIONS", "MAX_FACTOR", "MAX_DISTRACTORS",
    "ArithmeticProblem", "generate_problems", "train_test_split", "arithmetic_spec", "write_jsonl",
    "texts_for_tokenizer", "apply_operation",
]

OPERATIONS = "+-*/"

# The task at CPU scale: one or two operations on amounts up to 9, results up to 30 (a problem source spec:
# `data/tasks.py`). The SFT stage (configs/sft/arithmetic.py) trains on its train problems, RL samples from the
# same problems, and evaluation uses its held-out test problems.
ARITHMETIC_TINY = dict(kind="arithmetic", n_train=20000, n_test=256, seed=0,
                       knobs=dict(max_operand=9, max_value=30, max_steps=2))

# The difficulty dial: level -> knobs of `generate_problems` (a level's problem source spec: `arithmetic_spec`).
# Level 0 is ARITHMETIC_TINY's task (its problems exactly); each later level adds distractors, steps, larger
# numbers or larger factors. Per level, the tiny SFT policy (configs/sft/arithmetic.py:tiny, 450 steps on the
# level's 20,000 train problems, seed 0; experiments/tools/calibrate_task.py -> experiments/results/
# task_calibration.json) on the 256 held-out problems: greedy accuracy; "mixed", the fraction of questions whose
# 8 samples at temperature 1 are neither all right nor all wrong (GRPO groups with signal); gold response tokens
# (mean / max, the run's 512-piece tokenizer; the tiny RL config samples 96) and the SFT examples longer than
# the tiny config's 128-token sequences (truncated).
DIFFICULTY_LEVELS: dict[int, dict[str, Any]] = {
    # 1-2 steps, amounts up to 9, results up to 30. Greedy 75.8%, mixed 54%; 34 / 49 tokens; none truncated.
    0: dict(max_operand=9, max_value=30, max_steps=2),
    # Level 0 with one distractor sentence. Greedy 58.6%, mixed 62%; 36 / 51 tokens; none truncated.
    1: dict(max_operand=9, max_value=30, max_steps=2, distractors=1),
    # 2-3 steps, results up to 50, one distractor. Greedy 35.9%, mixed 61% (seed 1: 34.8%, 56%); 52 / 67 tokens;
    # 0.8% truncated, by at most 2 tokens. ARITHMETIC_HEADROOM.
    2: dict(max_operand=9, max_value=50, min_steps=2, max_steps=3, distractors=1),
    # 2-3 steps, amounts up to 20, results up to 99, two distractors. Greedy 14.1%, mixed 31%; 55 / 72 tokens;
    # 29% of SFT examples truncated at 128 tokens (a longer data.seq_len would help it).
    3: dict(max_operand=20, max_value=99, min_steps=2, max_steps=3, distractors=2),
    # 3-4 steps, amounts up to 20, results up to 99, factors up to 5, two distractors. Not calibrated: two thirds
    # of its SFT examples exceed 128 tokens and its responses reach ~100 (for a larger context, e.g. `small`).
    4: dict(max_operand=20, max_value=99, min_steps=3, max_steps=4, max_factor=5, distractors=2),
}


def arithmetic_spec(level: int, *, n_train: int = 20000, n_test: int = 256, seed: int = 0) -> dict[str, Any]:
    """The problem source spec (:mod:`dsmath_jax.data.tasks`; the shape of :data:`ARITHMETIC_TINY`) of the
    difficulty ``level`` of :data:`DIFFICULTY_LEVELS`."""
    if isinstance(level, bool) or level not in DIFFICULTY_LEVELS:
        raise ValueError(f"difficulty level must be one of {sorted(DIFFICULTY_LEVELS)}, got {level!r}")
    return dict(kind="arithmetic", n_train=n_train, n_test=n_test, seed=seed, knobs=dict(DIFFICULTY_LEVELS[level]))


# The task at CPU scale with headroom for RL (issue 18): DIFFICULTY_LEVELS[2], 2-3 operations, results up to 50,
# one distractor sentence. The tiny SFT policy (configs/sft/arithmetic.py:tiny, 450 steps on these train problems)
# answers 35.9% / 34.8% (seeds 0 / 1) of the held-out problems greedily, against 75.8% on ARITHMETIC_TINY; 56-61%
# of its questions get both right and wrong answers among 8 samples at temperature 1 (54% on ARITHMETIC_TINY), and
# all but a few of its wrong answers have a wrong step line. Responses take at most 67 tokens of the run's
# tokenizer, prompts 65 (experiments/results/task_calibration.json). That headroom is mostly arithmetic not yet
# learned: the same SFT run for 900 steps answers 94.5%, and the wrong answers of the 450-step policy are slips of
# the facts (9 + 9 = 17, 6 * 3 = 12), which GRPO at the tiny RL config barely moves (experiments/results/
# tiny_rl_tuning.json). The quickstart's SFT (450 steps from the pre-trained tiny model) starts at 49.6%.
ARITHMETIC_HEADROOM = dict(kind="arithmetic", n_train=20000, n_test=256, seed=0,
                           knobs=dict(max_operand=9, max_value=50, min_steps=2, max_steps=3, distractors=1))

# The quickstart's task (configs/sft/arithmetic.py:tiny,answer_mix and configs/rl/grpo_outcome.py:tiny,answer_mix):
# DIFFICULTY_LEVELS[1], one distractor sentence in each question, its SFT data giving a share ANSWER_MIX_SHARE of
# the problems as their final answer alone (dsmath_jax.data.sft_data, `answer_only`), like SFT sets that mix
# worked solutions with bare answers. The SFT policy then works some problems out and answers others at once;
# answering at once (no steps written, the distractor to see past) is more often wrong, and GRPO with the outcome reward
# learns to work problems out. Measured over the quickstart's seeds: README, "What RL does in the quickstart".
ARITHMETIC_ANSWER_MIX = dict(kind="arithmetic", n_train=20000, n_test=256, seed=0, knobs=dict(DIFFICULTY_LEVELS[1]))
ANSWER_MIX_SHARE = 0.5

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
# With distractors, the same choices naming the item (`{i}`) and the person's possessive (`{p}`), in the same order
# (the choice is drawn as without distractors, then worded so).
_PHRASES_ITEM: dict[str, tuple[str, ...]] = {
    "+": ("buys {b} more {i}", "finds {b} more {i}", "gets {b} more {i} from {o}"),
    "-": ("gives {b} {i} to {o}", "loses {b} {i}", "sells {b} {i}"),
}
_MULTIPLY_ITEM = {2: "doubles {p} {i}", 3: "triples {p} {i}", 4: "quadruples {p} {i}"}  # else "multiplies {p} {i} by k"
_POSSESSIVE = {"he": "his", "she": "her"}
_FRACTION = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth", 6: "a sixth", 7: "a seventh",
             8: "an eighth", 9: "a ninth", 10: "a tenth"}
MAX_FACTOR = 10
_MAX_TRIES = 1000
MAX_DISTRACTORS = 6
# Distractor sentences: about another person (`{n}` that person's name, of the other pronoun), of the same or
# another item; or about the asked-about person's other item (`{n}` their name, `{r}` their pronoun).
_OTHER_DISTRACTORS = ("{n} has {k} {i}.", "{n} buys {k} {i}.")
_SELF_DISTRACTORS = ("{n} also has {k} {i}.", "{r} also finds {k} {i}.")
_ASKS = ("How many {item} does {name} have now?", "How many {item} does {name} have at the end?")

@dataclasses.dataclass
class ArithmeticProblem:
    r"""One word problem with its step-by-step solution.

    ``question`` the word problem; ``steps`` one sentence per operation, each ending with
    ``= <intermediate>.``; ``answer`` the final result as a string integer; ``response`` the steps, one per
    line, then ``The final answer is $\boxed{answer}$.``; ``num_steps`` the number of operations; ``id``
    ``"arith-<seed>-<index>"``. ``start``, ``operations`` (``(op, operand)`` pairs, op one of ``+-*/``) and
    ``intermediates`` (the result after each operation) are the problem as data, for independent checks
    and process rewards; ``distractors`` the question's irrelevant sentences (the ``distractors`` knob).
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
    distractors: list[str] = dataclasses.field(default_factory=list)  # the question's irrelevant sentences

    @property
    def answer_line(self) -> str:
        r"""The response's last line, the final answer: ``The final answer is $\boxed{answer}$.``"""
        return _answer_line(self.answer)

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
                 max_factor: int, distractors: int = 0) -> None:
    for name, value in (("min_steps", min_steps), ("max_steps", max_steps), ("max_operand", max_operand),
                        ("max_value", max_value), ("max_factor", max_factor), ("distractors", distractors)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"knob {name} must be an integer, got {value!r}")
    if not 0 <= distractors <= MAX_DISTRACTORS:
        raise ValueError(f"distractors must be in [0, {MAX_DISTRACTORS}], got {distractors}")
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
             operations: str, max_factor: int, distractors: int = 0) -> ArithmeticProblem:
    rng = random.Random(f"dsmath-arithmetic:{seed}:{index}")  # str seeds hash with sha512: stable everywhere
    name, pron = rng.choice(_PEOPLE)
    pos = _POSSESSIVE[pron]
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
                phrase = (_MULTIPLY_ITEM.get(b, f"multiplies {{p}} {{i}} by {b}").format(p=pos, i=item) if distractors
                          else _MULTIPLY.get(b, f"multiplies them by {b}"))
            elif op == "/":
                phrase = f"keeps {_FRACTION[b]} of {f'{pos} {item}' if distractors else 'them'}"
            else:
                k_phrase = rng.randrange(len(_PHRASES[op]))  # as rng.choice(_PHRASES[op]) draws it
                phrase = (_PHRASES_ITEM if distractors else _PHRASES)[op][k_phrase].format(b=b, o=rng.choice(others),
                                                                                          i=item)
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
    sentences = [f"{name} has {start} {item}.", *clauses]
    extra = _distractors(seed, index, distractors, name=name, pron=pron, item=item, max_operand=max_operand)
    if extra:
        # Each distractor goes after one of the sentences (never before the first), in its drawn order.
        drng = random.Random(f"dsmath-arithmetic-distractor-places:{seed}:{index}")
        after = sorted(drng.randint(0, len(sentences) - 1) for _ in extra)
        for offset, (gap, sentence) in enumerate(zip(after, extra)):
            sentences.insert(gap + 1 + offset, sentence)
    question = " ".join([*sentences, ask])
    answer = str(x)
    response = "\n".join([*steps, _answer_line(answer)])
    return ArithmeticProblem(question=question, steps=steps, answer=answer, response=response,
                             num_steps=num_steps, id=f"arith-{seed}-{index}", start=start, operations=ops,
                             intermediates=values, distractors=extra)


def _answer_line(answer: str) -> str:
    return f"The final answer is $\\boxed{{{answer}}}$."


def _distractors(seed: int, index: int, count: int, *, name: str, pron: str, item: str, max_operand: int
                 ) -> list[str]:
    """``count`` irrelevant sentences for the problem ``(seed, index)`` about ``name`` (pronoun ``pron``) and
    ``item``, drawn from their own random stream (the problem's own draws are those without distractors)."""
    if not count:
        return []
    rng = random.Random(f"dsmath-arithmetic-distractors:{seed}:{index}")
    strangers = [p[0] for p in _PEOPLE if p[1] != pron]  # the other pronoun: "he" / "she" stays unambiguous
    other_items = [i for i in _ITEMS if i != item]
    out = []
    for _ in range(count):
        k = rng.randint(2, max_operand)
        if rng.random() < 0.5:  # another person's things, the same item half of the time
            thing = item if rng.random() < 0.5 else rng.choice(other_items)
            out.append(rng.choice(_OTHER_DISTRACTORS).format(n=rng.choice(strangers), k=k, i=thing))
        else:  # the same person's other item
            out.append(rng.choice(_SELF_DISTRACTORS).format(n=name, r=pron.capitalize(), k=k,
                                                            i=rng.choice(other_items)))
    return out


def _stream(seed: int, start_index: int = 0, **knobs) -> Iterator[ArithmeticProblem]:
    index = start_index
    while True:
        yield _problem(seed, index, **knobs)
        index += 1


def generate_problems(n: int, *, seed: int = 0, min_steps: int = 1, max_steps: int = 3, max_operand: int = 20,
                      max_value: int = 99, operations: str | Sequence[str] = OPERATIONS, max_factor: int = 3,
                      distractors: int = 0) -> list[ArithmeticProblem]:
    """``n`` problems, deterministic in ``seed`` and the knobs (problem ``i`` depends only on ``(seed, i)``).

    Each has ``min_steps``..``max_steps`` operations drawn from ``operations`` (a subset of ``"+-*/"``):
    adding or removing 1..``max_operand`` things, or multiplying / dividing (exactly) by 2..``max_factor``,
    starting from 2..``max_operand`` things, every intermediate result in 0..``max_value``; the question
    has ``distractors`` irrelevant sentences (numbers 2..``max_operand``; see the module docstring). Questions
    may repeat (use :func:`train_test_split` for disjoint sets).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    operations = "".join(operations)
    _check_knobs(min_steps, max_steps, max_operand, max_value, operations, max_factor, distractors)
    knobs: dict[str, Any] = dict(min_steps=min_steps, max_steps=max_steps, max_operand=max_operand, max_value=max_value,
                                 operations=operations, max_factor=max_factor, distractors=distractors)
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
                                max_factor=3, distractors=0)
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
