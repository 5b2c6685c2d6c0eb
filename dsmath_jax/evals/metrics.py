"""Benchmark metrics from graded samples: greedy accuracy, pass@k, maj@k, and breakdowns by subject/level.

* pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): with ``n`` samples of
  which ``c`` are correct, the unbiased estimate of the chance that at least one of ``k`` samples is
  correct, ``1 - C(n-c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1..n} (1 - k/i)`` (no big binomials).
* maj@k (self-consistency): the answers of ``k`` samples vote, answers judged equivalent count as one
  (``same(a, b)``, e.g. ``Grader.same_answer``); samples without an answer do not vote; a tie goes to the
  answer seen first. maj@k is 1 when the winning answer is correct. :func:`maj_at_k` votes over the first
  ``k`` samples; :func:`expected_maj_at_k` averages over ``k``-subsets of the ``n`` samples (all of them
  when there are at most ``num_subsets``, else a seeded random draw), as Figure 7 of the paper plots it.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["accuracy", "pass_at_k", "mean_pass_at_k", "group_answers", "majority_vote", "maj_at_k",
           "expected_maj_at_k", "accuracy_breakdown"]

Same = Callable[[str, str], bool]


def accuracy(correct: Iterable[bool]) -> float:
    """The fraction of correct verdicts (greedy accuracy when given one verdict per problem); 0.0 when empty."""
    values = [bool(c) for c in correct]
    return sum(values) / len(values) if values else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 - C(n-c, k) / C(n, k)``."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(correct_per_problem: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k averaged over problems, each given as the verdicts of its ``n`` samples."""
    if not correct_per_problem:
        return 0.0
    return sum(pass_at_k(len(v), sum(map(bool, v)), k) for v in correct_per_problem) / len(correct_per_problem)


def group_answers(answers: Sequence[str | None], same: Same) -> list[int | None]:
    """Equivalence classes: for each answer the index of the first answer of its class (None for no answer).

    Each answer is compared with the first member of each class found so far (string-equal answers
    without calling ``same``)."""
    leaders: list[int] = []
    by_text: dict[str, int] = {}
    out: list[int | None] = []
    for i, a in enumerate(answers):
        if a is None:
            out.append(None)
            continue
        text = str(a)
        if text in by_text:
            out.append(by_text[text])
            continue
        leader = next((j for j in leaders if same(text, str(answers[j]))), None)
        if leader is None:
            leader = i
            leaders.append(i)
        by_text[text] = leader
        out.append(leader)
    return out


def _vote(classes: Sequence[int | None], indices: Iterable[int]) -> tuple[int | None, int]:
    """The winning class among `indices` (in order) and its votes; ties go to the class seen first."""
    counts: dict[int, int] = {}
    first: dict[int, int] = {}
    for position, i in enumerate(indices):
        cls = classes[i]
        if cls is None:
            continue
        counts[cls] = counts.get(cls, 0) + 1
        first.setdefault(cls, position)
    if not counts:
        return None, 0
    best = min(counts, key=lambda cls: (-counts[cls], first[cls]))
    return best, counts[best]


def majority_vote(answers: Sequence[str | None], same: Same) -> tuple[str | None, int]:
    """The majority answer (the first-seen member of the largest class) and its votes; ``(None, 0)`` when no
    sample has an answer."""
    classes = group_answers(answers, same)
    best, votes = _vote(classes, range(len(answers)))
    return (None, 0) if best is None else (answers[best], votes)


def maj_at_k(samples: Sequence[tuple[str | None, bool]], k: int, same: Same) -> float:
    """maj@k over the first ``k`` ``(answer, correct)`` samples: 1.0 when the majority answer is correct."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    first = list(samples[:k])
    classes = group_answers([a for a, _ in first], same)
    best, _ = _vote(classes, range(len(first)))
    return float(best is not None and bool(first[best][1]))


def expected_maj_at_k(samples: Sequence[tuple[str | None, bool]], k: int, same: Same, *,
                      num_subsets: int = 1000, seed: int = 0) -> float:
    """The mean of maj@k over ``k``-subsets of the ``n`` samples (each subset votes in sample order).

    Every subset when there are at most ``num_subsets`` of them (exact), else ``num_subsets`` random ones
    (seeded). Answers are grouped once over all ``n`` samples."""
    n = len(samples)
    if not 1 <= k <= n:
        raise ValueError(f"expected maj@k needs 1 <= k <= n, got k={k}, n={n}")
    classes = group_answers([a for a, _ in samples], same)
    correct = [bool(c) for _, c in samples]

    def score(subset: Sequence[int]) -> float:
        best, _ = _vote(classes, subset)
        return float(best is not None and correct[best])

    if math.comb(n, k) <= num_subsets:
        subsets: Iterable[Sequence[int]] = itertools.combinations(range(n), k)
        total = math.comb(n, k)
    else:
        rng = random.Random(seed)
        subsets = (sorted(rng.sample(range(n), k)) for _ in range(num_subsets))
        total = num_subsets
    return sum(score(s) for s in subsets) / total


def accuracy_breakdown(rows: Iterable[Mapping[str, Any]],
                       keys: Sequence[str] = ("subject", "level")) -> dict[str, dict[Any, tuple[int, int, float]]]:
    """``{key: {value: (correct, total, accuracy)}}`` over rows holding ``correct`` and the keys (a row
    without a key, or with None, counts under None)."""
    counts: dict[str, dict[Any, list[int]]] = {key: {} for key in keys}
    for row in rows:
        for key in keys:
            cell = counts[key].setdefault(row.get(key), [0, 0])
            cell[0] += bool(row.get("correct"))
            cell[1] += 1
    return {key: {value: (c, t, c / t) for value, (c, t) in sorted(values.items(), key=lambda kv: str(kv[0]))}
            for key, values in counts.items()}
