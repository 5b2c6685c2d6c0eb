"""Rewards for RL (PAPER.md §4): rule rewards from the evaluation harness's checker, a format reward,
the read-out of outcome and process reward models, and weighted combinations; the arithmetic task's exact
rule reward (:func:`check_answer`) and per-step process reward (:func:`step_correctness`, on the step lines
of :func:`step_lines`; the task itself is :mod:`dsmath_jax.data.arithmetic`).

Shapes: completions are strings (one per sampled row); reward-model scores are [rows, seq] float32 from a
`ScalarHeadModel` run over prompt + completion; `mask` [rows, seq] marks completion positions.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dsmath_jax.data.arithmetic import ArithmeticProblem
from dsmath_jax.data.math_text import last_boxed
from dsmath_jax.evals.grader import Grader

_STEP_RESULT = re.compile(r"=\s*(-?\d+)")
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def rule_rewards(grader: Grader, completions: Sequence[str], golds: Sequence[str], kind: str = "math",
                 options: Sequence[Sequence[str] | None] | None = None) -> np.ndarray:
    """1.0 where the completion's extracted answer is equivalent to the gold answer, else 0.0 ([rows]).

    The check runs in the grader's worker processes with its timeout; a check that times out or crashes
    counts as wrong."""
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
    options = options if options is not None else [None] * len(completions)
    verdicts = grader.grade(list(zip(completions, golds, [kind] * len(completions), options)))
    return np.asarray([float(v.correct) for v in verdicts], np.float32)


def format_rewards(completions: Sequence[str], finish_reasons: Sequence[str] | None = None) -> np.ndarray:
    """1.0 for a completion that ends (not cut off at the length limit) with a final answer in \\boxed{}
    after which nothing but punctuation and whitespace follows, else 0.0 ([rows])."""
    out = np.zeros(len(completions), np.float32)
    for i, text in enumerate(completions):
        if finish_reasons is not None and finish_reasons[i] == "length":
            continue
        answer = last_boxed(text)
        if answer is None or not answer.strip():
            continue
        tail = text[text.rfind("\\boxed"):]
        after = tail[tail.find(answer) + len(answer):]
        out[i] = float(all(not ch.isalnum() for ch in after))
    return out


def overlong_penalty(lengths: Sequence[int] | np.ndarray, max_len: int, buffer: int) -> np.ndarray:
    """DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13) per output [rows]: 0 for ``|o| <= max_len -
    buffer``, ``(max_len - buffer - |o|) / buffer`` in the last `buffer` tokens, -1 beyond ``max_len``."""
    if buffer < 1 or buffer > max_len:
        raise ValueError(f"overlong buffer must be in [1, max_len={max_len}], got {buffer}")
    n = np.asarray(lengths, np.float32)
    soft = (max_len - buffer - n) / buffer
    return np.where(n <= max_len - buffer, 0.0, np.where(n <= max_len, soft, -1.0)).astype(np.float32)


def outcome_scores(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """An outcome reward model's reward: its score at the last completion token ([rows, seq] -> [rows]).
    Rows without completion tokens get 0."""
    positions = jnp.arange(mask.shape[1])
    last = jnp.max(jnp.where(mask > 0, positions, -1), axis=1)
    picked = jnp.take_along_axis(scores, jnp.maximum(last, 0)[:, None], axis=1)[:, 0]
    return jnp.where(last >= 0, picked, 0.0)


def process_scores(scores: jax.Array, step_ends: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A process reward model's step rewards: its score at the token ending each step.

    step_ends: [rows, max_steps] token indices (-1 = no such step), e.g. from `advantages.step_end_indices`.
    Returns (step rewards [rows, max_steps], step mask [rows, max_steps]) ready for `process_advantages`.
    """
    valid = step_ends >= 0
    picked = jnp.take_along_axis(scores, jnp.maximum(step_ends, 0), axis=1)
    return jnp.where(valid, picked, 0.0), valid


def combine_rewards(rewards: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """sum_k weights[k] * rewards[k]; every weighted reward must be given and have the same shape."""
    missing = sorted(set(weights) - set(rewards))
    if missing:
        raise KeyError(f"rewards {missing} have weights but were not computed (computed: {sorted(rewards)})")
    if not weights:
        raise ValueError("no reward weights given")
    shapes = {k: np.shape(rewards[k]) for k in weights}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"rewards have different shapes: {shapes}")
    return functools.reduce(operator.add, [float(w) * np.asarray(rewards[k], np.float32) for k, w in weights.items()])


def check_answer(completion: str, answer: str) -> bool:
    r"""The arithmetic task's rule reward: whether the last ``\boxed{}`` of ``completion`` is exactly
    ``answer``, ignoring whitespace (``\boxed{ 12 }`` matches ``"12"``; ``12.0``, ``012`` or a missing box
    do not)."""
    boxed = last_boxed(completion)
    if boxed is None:
        return False
    return re.sub(r"\s+", "", boxed) == re.sub(r"\s+", "", str(answer)) != ""


def step_lines(completion: str) -> list[tuple[int, int]]:
    r"""``(start, end)`` character spans of the step lines of ``completion``: its non-blank lines without a
    ``\boxed`` / ``\fbox`` (the final-answer line is not a step), in order; ``end`` excludes the newline."""
    spans = []
    pos = 0
    for line in completion.split("\n"):
        end = pos + len(line)
        if line.strip() and not _BOX.search(line):
            spans.append((pos, end))
        pos = end + 1
    return spans


def step_end_offsets(completion: str) -> list[int]:
    """The character offset just past each step line of ``completion`` (the ends that
    :func:`step_correctness` scores), for mapping step rewards onto tokens."""
    return [end for _, end in step_lines(completion)]


def step_correctness(completion: str, problem: ArithmeticProblem | Sequence[int]) -> list[bool]:
    """One flag per generated step line (:func:`step_lines`): whether its last ``= N`` equals the true
    result of the step at that position (``problem.intermediates``, or the sequence of intermediate
    results itself). A line without ``= N``, or beyond the problem's number of steps, is ``False``."""
    truth = list(problem.intermediates if isinstance(problem, ArithmeticProblem) else problem)
    flags = []
    for k, (start, end) in enumerate(step_lines(completion)):
        found = _STEP_RESULT.findall(completion[start:end])
        flags.append(bool(found) and k < len(truth) and int(found[-1]) == truth[k])
    return flags
