"""pass@k against brute-force enumeration, maj@k on hand-worked votes, accuracy breakdowns."""

import itertools
import math

import pytest

from dsmath_jax.evals.grader import Grader, is_equiv
from dsmath_jax.evals.metrics import (
    accuracy,
    accuracy_breakdown,
    expected_maj_at_k,
    group_answers,
    maj_at_k,
    majority_vote,
    mean_pass_at_k,
    pass_at_k,
)


def same_number(a, b):
    return is_equiv(a, b, "number")


def brute_force_pass_at_k(n, c, k):
    """The fraction of k-subsets of n samples (c of them correct) holding at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = brute_force_pass_at_k(n, c, k)
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)
            assert expected == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_edges():
    assert pass_at_k(64, 16, 1) == pytest.approx(16 / 64)  # pass@1 is the fraction correct
    assert pass_at_k(1000, 0, 64) == 0.0 and pass_at_k(1000, 1000, 1) == 1.0
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)  # large n without huge binomials
    for bad in [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)
    assert mean_pass_at_k([[True, False], [False, False]], 1) == pytest.approx(0.25)
    assert mean_pass_at_k([], 1) == 0.0


def test_majority_vote_groups_equivalent_answers():
    assert majority_vote(["2", "2.0", "3", None], same_number) == ("2", 2)
    # A tie goes to the answer seen first; None does not vote however many there are.
    assert majority_vote(["3", "2", "2.0", "3"], same_number) == ("3", 2)
    assert majority_vote([None, None, "5"], same_number) == ("5", 1)
    assert majority_vote([None, None], same_number) == (None, 0)
    assert majority_vote([], same_number) == (None, 0)
    # Math answers: \frac12, 0.5 and \dfrac{1}{2} are one answer with three votes.
    assert majority_vote(["1/3", "\\frac12", "0.5", "\\dfrac{1}{2}", "1/3"], is_equiv) == ("\\frac12", 3)


def test_group_answers_compares_with_class_leaders_only():
    calls = []

    def same(a, b):
        calls.append((a, b))
        return same_number(a, b)

    assert group_answers(["2", "3", "2", "2.0", None, "3.0"], same) == [0, 1, 0, 0, None, 1]
    # The repeated "2" is matched by its text; each new text is compared with the leaders only.
    assert calls == [("3", "2"), ("2.0", "2"), ("3.0", "2"), ("3.0", "3")]


def test_maj_at_k_hand_worked():
    samples = [("3", False), ("2", True), ("2.0", True), (None, False), ("4", False)]
    assert maj_at_k(samples, 1, same_number) == 0.0  # "3" alone
    assert maj_at_k(samples, 2, same_number) == 0.0  # "3" vs "2": a tie, "3" was first
    assert maj_at_k(samples, 3, same_number) == 1.0  # "2" and "2.0" outvote "3"
    assert maj_at_k(samples, 5, same_number) == 1.0
    assert maj_at_k([(None, False)] * 3, 3, same_number) == 0.0
    with pytest.raises(ValueError):
        maj_at_k(samples, 0, same_number)


def test_expected_maj_at_k_over_subsets():
    samples = [("2", True), ("3", False), ("3", False)]
    # k=2: {2,3} tie -> 2 (first, correct); {2,3} again -> correct; {3,3} -> wrong: 2/3.
    assert expected_maj_at_k(samples, 2, same_number) == pytest.approx(2 / 3)
    assert expected_maj_at_k(samples, 1, same_number) == pytest.approx(1 / 3)  # = pass@1
    assert expected_maj_at_k(samples, 3, same_number) == maj_at_k(samples, 3, same_number) == 0.0
    # Against an independent enumeration on a larger case, exact and sampled.
    answers = ["1", "2", "1", "3", "2", "1", None, "2", "1.0", "4"]
    samples = [(a, a is not None and float(a) == 1.0) for a in answers]
    k = 5
    exact = 0.0
    for subset in itertools.combinations(range(len(samples)), k):
        votes = {}
        for i in subset:
            if answers[i] is not None:
                votes.setdefault(float(answers[i]), []).append(i)
        best = min(votes.values(), key=lambda ix: (-len(ix), ix[0]))
        exact += samples[best[0]][1]
    exact /= math.comb(len(samples), k)
    assert expected_maj_at_k(samples, k, same_number, num_subsets=1000) == pytest.approx(exact)  # 252 subsets
    sampled = expected_maj_at_k(samples, k, same_number, num_subsets=200, seed=1)
    assert sampled == expected_maj_at_k(samples, k, same_number, num_subsets=200, seed=1)  # seeded
    assert abs(sampled - exact) < 0.15


def test_majority_vote_through_the_grader():
    with Grader(max_workers=1, timeout=5) as grader:
        same = lambda a, b: grader.same_answer(a, b, "math")  # noqa: E731
        assert majority_vote(["\\frac{1}{2}", "x", "0.5", "y", "2/4"], same) == ("\\frac{1}{2}", 3)


def test_accuracy_and_breakdown():
    rows = [{"subject": "Algebra", "level": "Level 1", "correct": True},
            {"subject": "Algebra", "level": "Level 2", "correct": False},
            {"subject": "Geometry", "level": "Level 1", "correct": True},
            {"subject": "Geometry", "level": "Level 1", "correct": True},
            {"level": "Level 2", "correct": False}]
    assert accuracy(r["correct"] for r in rows) == pytest.approx(3 / 5)
    assert accuracy([]) == 0.0
    assert accuracy_breakdown(rows) == {
        "subject": {"Algebra": (1, 2, 0.5), "Geometry": (2, 2, 1.0), None: (0, 1, 0.0)},
        "level": {"Level 1": (3, 3, 1.0), "Level 2": (0, 2, 0.0)},
    }
