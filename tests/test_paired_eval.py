"""Before/after on the same held-out problems (dsmath_jax/analysis/rl.py, paradigm.py): the exact McNemar
p-value and the Clopper-Pearson interval against hand-worked binomial tails and scipy.stats.binomtest, the
paired interval agreeing with the p-value; `paired_change` on a hand-worked set of
verdicts; the per-problem evaluation files an RL run writes (`evals/step_<step>.jsonl`) read back, and their
errors. (That an RL run writes them and that the quickstart reports them: tests/test_quickstart.py.)"""

from __future__ import annotations

import json

import pytest

from dsmath_jax import analysis as A
from dsmath_jax.analysis import paradigm as P
from dsmath_jax.train.rundir import eval_rows_path


@pytest.mark.parametrize("gained, lost, p", [
    (10, 2, 2 * (1 + 12 + 66) / 2 ** 12),  # 2 P(X <= 2), X ~ Bin(12, 1/2) = 158 / 4096
    (2, 10, 2 * (1 + 12 + 66) / 2 ** 12),  # symmetric
    (5, 0, 2 / 32),  # all discordant items one way
    (1, 0, 1.0),  # 2 * 1/2, capped
    (3, 3, 1.0),
    (0, 0, 1.0),  # no discordant items: nothing says there was a change
])
def test_mcnemar_by_hand(gained, lost, p):
    assert A.mcnemar_p_value(gained, lost) == pytest.approx(p)


def test_mcnemar_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for gained, lost in ((12, 5), (40, 17), (7, 19), (100, 80), (0, 9), (250, 3)):
        expected = stats.binomtest(gained, gained + lost, 0.5).pvalue
        assert A.mcnemar_p_value(gained, lost) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("gained, lost", [(-1, 2), (1.5, 2), (2, None)])
def test_mcnemar_rejects_what_is_not_a_count(gained, lost):
    with pytest.raises((ValueError, TypeError)):
        A.mcnemar_p_value(gained, lost)


def rows(verdicts):
    return [{"id": f"p{i}", "correct": v} for i, v in enumerate(verdicts)]


def test_clopper_pearson_by_hand_and_against_scipy():
    # 3 of 4: the upper end solves I_x(4, 1) = x^4 = 0.975, the lower end I_x(3, 2) = 4x^3 - 3x^4 = 0.025.
    low, high = P.clopper_pearson(3, 4)
    assert high == pytest.approx(0.975 ** 0.25, abs=1e-12)
    assert 4 * low ** 3 - 3 * low ** 4 == pytest.approx(0.025, abs=1e-12) and low == pytest.approx(0.194120, abs=1e-6)
    assert P.clopper_pearson(0, 5) == pytest.approx((0.0, 1 - 0.025 ** 0.2))  # (1 - x)^5 = 0.025
    assert P.clopper_pearson(0, 0) == (0.0, 1.0)
    stats = pytest.importorskip("scipy.stats")
    for k, n in ((7, 8), (12, 17), (40, 57), (0, 9), (9, 9), (120, 250)):
        for level in (0.9, 0.95, 0.99):
            ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
            assert P.clopper_pearson(k, n, level) == pytest.approx((ci.low, ci.high), abs=1e-10)
    with pytest.raises(ValueError, match="successes <= trials"):
        P.clopper_pearson(5, 4)


def test_the_paired_interval_excludes_zero_exactly_when_mcnemar_rejects():
    for gained in range(31):
        for lost in range(31 - gained):
            low, high = P.paired_difference_interval(gained, lost, 40)
            p = A.mcnemar_p_value(gained, lost)
            assert low <= (gained - lost) / 40 <= high
            if abs(p - 0.05) > 1e-9:  # away from the boundary itself
                assert (low > 0 or high < 0) == (p < 0.05), (gained, lost, p, low, high)


def test_paired_change_by_hand():
    # 10 problems: 3 right both times, 3 gained, 1 lost, 3 wrong both times: the change 0.2 = 4 / 10 * (2 * 3/4 - 1),
    # its interval 4 / 10 * (2 * CP(3 of 4) - 1).
    before = rows([True, True, True, False, False, False, True, False, False, False])
    after = rows([True, True, True, True, True, True, False, False, False, False])
    pc = A.paired_change(before, after)
    low, high = P.clopper_pearson(3, 4)
    assert (pc["problems"], pc["gained"], pc["lost"]) == (10, 3, 1)
    assert (pc["before"], pc["after"], pc["difference"]) == pytest.approx((0.4, 0.6, 0.2))
    assert (pc["low"], pc["high"]) == pytest.approx((0.4 * (2 * low - 1), 0.4 * (2 * high - 1)))
    assert pc["low"] < 0 < pc["high"]
    assert pc["p_value"] == pytest.approx(2 * (1 + 4) / 16)  # 2 P(X <= 1), X ~ Bin(4, 1/2)
    # Matched by id, not by position.
    assert A.paired_change(before, list(reversed(after))) == pc


def test_paired_change_errors():
    with pytest.raises(ValueError, match="different problems: 'p3'"):
        A.paired_change(rows([True] * 3), rows([True] * 4))
    with pytest.raises(ValueError, match="twice"):
        A.paired_change(rows([True]) * 2, rows([True]))
    with pytest.raises(ValueError, match="no problems"):
        A.paired_change([], [])


def test_eval_rows_round_trip_and_errors(tmp_path):
    run = tmp_path / "grpo"
    (run / "evals").mkdir(parents=True)
    path = eval_rows_path(str(run), 40)
    assert path == str(run / "evals" / "step_000040.jsonl")
    written = [{"id": "arith-0-1", "correct": True, "answer": "12", "samples_correct": 7},
               {"id": "arith-0-2", "correct": False, "answer": None, "samples_correct": 0}]
    with open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in written) + "\n")  # a blank last line is skipped
    assert A.load_eval_rows(str(run), 40) == written
    with pytest.raises(A.RunDirError, match="step_000020.jsonl is missing"):
        A.load_eval_rows(str(run), 20)
    with open(path, "a") as f:
        f.write('{"id": "arith-0-3", "correct": "yes"}\n')
    with pytest.raises(A.ResultsFormatError, match=r"step_000040.jsonl:4: a row needs .* boolean `correct`"):
        A.load_eval_rows(str(run), 40)
    with open(path, "w") as f:
        f.write('{"id": "arith-0-1", "correct": true\n')
    with pytest.raises(A.ResultsFormatError, match=r"step_000040.jsonl:1: not valid JSON"):
        A.load_eval_rows(str(run), 40)
