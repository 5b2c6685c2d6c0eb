"""experiments/rl_findings.py and its statistics (dsmath_jax/analysis/paradigm.py): the Student-t quantile and
interval, paired differences, the exact sign-flip permutation p-value and the verdicts against hand-worked
numbers; maj@k / pass@k for several k from one set of samples; the results JSON (new and old format) round
trip; `--task` parsing and how it reaches the SFT, reward-model and RL configs; and (slow) a smoke run of the
driver on a minuscule setting, resumed.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import pathlib
import sys

import numpy as np
import pytest

from dsmath_jax.analysis import paradigm as P
from dsmath_jax.data.arithmetic import ARITHMETIC_TINY

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _driver():
    spec = importlib.util.spec_from_file_location("rl_findings", ROOT / "experiments" / "rl_findings.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def driver():
    return _driver()


# ----------------------------------------------------------------------------------------------- the t quantile
@pytest.mark.parametrize("q, dof, expected", [
    (0.975, 1, 12.706204736), (0.975, 2, 4.302652730), (0.975, 4, 2.776445105), (0.975, 10, 2.228138852),
    (0.975, 30, 2.042272456), (0.95, 4, 2.131846786), (0.995, 4, 4.604094871), (0.975, 1e7, 1.959964),
])
def test_t_quantile_against_tables(q, dof, expected):
    assert P.t_quantile(q, dof) == pytest.approx(expected, abs=2e-6)
    assert P.t_quantile(1 - q, dof) == pytest.approx(-expected, abs=2e-6)  # symmetric
    assert P.t_cdf(P.t_quantile(q, dof), dof) == pytest.approx(q, abs=1e-10)


def test_t_quantile_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for dof in (1, 1.5, 3, 7, 19, 50, 200):
        for q in (0.51, 0.8, 0.9, 0.975, 0.999):
            assert P.t_quantile(q, dof) == pytest.approx(stats.t.ppf(q, dof), rel=1e-8)


def test_regularized_beta_closed_forms_and_errors():
    for x in (0.0, 0.1, 0.37, 0.9, 1.0):
        assert P.regularized_beta(x, 1.0, 1.0) == pytest.approx(x)  # uniform
        assert P.regularized_beta(x, 3.0, 1.0) == pytest.approx(x ** 3)  # I_x(a, 1) = x^a
        assert P.regularized_beta(x, 1.0, 2.0) == pytest.approx(1 - (1 - x) ** 2)
    assert P.regularized_beta(0.5, 4.5, 4.5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="a, b > 0"):
        P.regularized_beta(0.5, 0.0, 1.0)
    with pytest.raises(ValueError, match="0 < q < 1"):
        P.t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="dof > 0"):
        P.t_quantile(0.9, 0)


# ----------------------------------------------------------------------------------------------- intervals, tests
def test_mean_interval_by_hand():
    # mean 0.3; std (n - 1) = sqrt((0.04 + 0.01 + 0 + 0.01 + 0.04) / 4) = sqrt(0.025); half = t_{0.975,4} std / sqrt 5
    r = P.mean_interval([0.1, 0.2, 0.3, 0.4, 0.5])
    half = 2.776445105 * math.sqrt(0.025) / math.sqrt(5)
    assert r["n"] == 5 and r["mean"] == pytest.approx(0.3) and r["std"] == pytest.approx(math.sqrt(0.025))
    assert (r["half_width"], r["low"], r["high"]) == pytest.approx((half, 0.3 - half, 0.3 + half))
    assert half == pytest.approx(0.196324, abs=1e-6)
    # Two values 1 and 3: mean 2, std sqrt 2, half = 12.7062 * sqrt 2 / sqrt 2 = 12.7062.
    assert P.mean_interval([1.0, 3.0])["half_width"] == pytest.approx(12.706204736)
    assert P.mean_interval([0.4]) == {"n": 1, "mean": 0.4, "std": None, "half_width": None, "low": None,
                                      "high": None}
    assert P.mean_interval([])["mean"] is None
    # The 90% interval is narrower: t_{0.95,4} = 2.1318.
    assert P.mean_interval([0.1, 0.2, 0.3, 0.4, 0.5], 0.9)["half_width"] == pytest.approx(
        2.131846786 * math.sqrt(0.025) / math.sqrt(5))


@pytest.mark.parametrize("diffs, p", [
    ([0.1, 0.2, 0.3, 0.4, 0.5], 2 / 32),  # all of one sign: only the observed pattern and its mirror
    ([-0.1, -0.2, -0.3, -0.4, -0.5], 2 / 32),
    ([1, 2, 3], 2 / 8),
    ([1, 2, 4], 2 / 8),  # |sums| of the 8 patterns: 7, 1, 3, 5 and mirrors; only 7 reaches 7
    ([1, 1, 1, -1], 10 / 16),  # sums of four +-1: |sum| >= 2 except the 6 patterns summing to 0
    ([1, 2, -3], 1.0),  # an observed sum of 0
    ([0, 0, 0], 1.0),
    ([], 1.0),
    ([0.5], 1.0),  # one difference: both patterns are as extreme
])
def test_sign_flip_p_value_by_hand(diffs, p):
    assert P.sign_flip_p_value(diffs) == pytest.approx(p)


def test_sign_flip_p_value_matches_brute_force_and_monte_carlo():
    rng = np.random.default_rng(0)
    d = rng.normal(0.1, 0.2, size=9)
    brute = np.mean([abs(np.dot(s, d)) >= abs(d.sum()) - 1e-12 for s in itertools.product([-1, 1], repeat=9)])
    assert P.sign_flip_p_value(d) == pytest.approx(brute)
    many = np.full(P.EXACT_SIGN_FLIPS + 1, 0.1)  # past the exact limit: seeded Monte Carlo, true p = 2 / 2^21
    assert 0 < P.sign_flip_p_value(many) < 1e-3


def test_verdicts():
    def iv(mean, low, high):
        return {"mean": mean, "low": low, "high": high}

    assert P.verdict(iv(0.1, 0.02, 0.18), 1) == ("holds", True)
    assert P.verdict(iv(0.1, -0.02, 0.22), 1) == ("same direction, not significant", False)
    assert P.verdict(iv(-0.1, -0.22, 0.02), 1) == ("opposite direction, not significant", False)
    assert P.verdict(iv(-0.1, -0.18, -0.02), 1) == ("reversed", True)
    assert P.verdict(iv(-0.1, -0.18, -0.02), -1) == ("holds", True)  # a claimed a < b
    assert P.verdict(iv(0.0, -0.1, 0.1), 1) == ("no difference", False)
    assert P.verdict(iv(0.1, None, None), 1) == ("too few seeds", False)
    assert P.verdict(iv(0.1, 0.02, 0.18), 0) == ("a > b, significant", True)
    assert P.verdict(iv(-0.1, -0.18, -0.02), 0) == ("a < b, significant", True)
    assert P.verdict(iv(0.1, -0.02, 0.22), 0) == ("no significant difference", False)
    with pytest.raises(ValueError, match="direction"):
        P.verdict(iv(0.1, 0.0, 0.2), 2)


def test_paired_comparison_by_hand():
    a = {0: 0.60, 1: 0.70, 2: 0.65, 3: 0.80, 4: 0.75, 9: 0.1}  # seed 9 has no partner: left out
    b = {0: 0.50, 1: 0.50, 2: 0.60, 3: 0.60, 4: 0.70}
    r = P.paired_comparison(a, b)
    np.testing.assert_allclose(r["differences"], [0.10, 0.20, 0.05, 0.20, 0.05])
    assert r["seeds"] == [0, 1, 2, 3, 4] and r["n"] == 5
    d = np.asarray([0.10, 0.20, 0.05, 0.20, 0.05])
    half = 2.776445105 * d.std(ddof=1) / math.sqrt(5)
    assert (r["mean"], r["low"], r["high"]) == pytest.approx((0.12, 0.12 - half, 0.12 + half))
    assert r["low"] > 0 and r["verdict"] == "holds" and r["p_value"] == pytest.approx(2 / 32)
    # Swapped: the same numbers with the other sign, against the claim.
    r = P.paired_comparison(b, a)
    assert r["mean"] == pytest.approx(-0.12) and r["verdict"] == "reversed" and r["significant"]
    # Differences 0.2, -0.1, 0.05: mean 0.05 > 0 but the interval spans 0; |sum| of the 8 sign patterns is
    # 0.35, 0.25, 0.15, 0.05 (and mirrors): 6 of 8 reach the observed 0.15.
    r = P.paired_comparison({0: 0.3, 1: 0.1, 2: 0.15}, {0: 0.1, 1: 0.2, 2: 0.1})
    assert r["mean"] == pytest.approx(0.05) and r["verdict"] == "same direction, not significant"
    assert r["p_value"] == pytest.approx(6 / 8) and not r["significant"]


# ----------------------------------------------------------------------------------------------- results files
def synthetic_results(seeds=(0, 1, 2, 3, 4)) -> dict:
    """A results JSON in experiments/rl_findings.py's format with numbers chosen to check by hand: per seed s,
    SFT greedy 0.50 + 0.01 s, maj@4 0.55, pass@4 0.80; RFT +0.02, online RFT +0.04 + 0.01 (s odd), GRPO+OS
    +0.06, GRPO+PS (oracle) +0.06 + (0.01 if s else -0.01), iterative GRPO +0.05 then +0.07; RL raises maj@4
    by 0.05 and pass@4 by 0.01 (-0.01 on even seeds)."""
    runs = []
    for s in seeds:
        base = 0.50 + 0.01 * s
        sft_mp = {"step": None, "ks": [1, 2, 4], "maj": [0.50, 0.52, 0.55], "pass": [0.50, 0.70, 0.80],
                  "greedy": base, "sample_accuracy": 0.5}
        runs.append({"arm": "sft", "seed": s, "workdir": "x", "status": "completed", "steps": 0,
                     "eval_history": [{"step": 0, "eval_accuracy": base}], "maj_pass": sft_mp})
        gains = {"rft": 0.02, "online_rft": 0.04 + 0.01 * (s % 2), "grpo_outcome": 0.06,
                 "grpo_process_oracle": 0.06 + (0.01 if s else -0.01)}
        for arm, gain in gains.items():
            mp = {"step": 4, "ks": [1, 2, 4], "maj": [0.55, 0.57, 0.60],
                  "pass": [0.55, 0.72, 0.81 if s % 2 else 0.79], "greedy": base + gain, "sample_accuracy": 0.55}
            runs.append({"arm": arm, "seed": s, "workdir": "x", "status": "completed", "steps": 4,
                         "steps_per_iteration": 4, "iterations": 1, "maj_pass": mp, "eval_history": [
                             {"step": 0, "eval_accuracy": base}, {"step": 2, "eval_accuracy": base + gain / 2},
                             {"step": 4, "eval_accuracy": base + gain}]})
        it_mp = [{"step": 2 * i, "ks": [1, 2, 4], "maj": [0.5, 0.55, 0.55 + 0.03 * i], "pass": [0.5, 0.7, 0.8],
                  "greedy": base + g} for i, g in ((1, 0.05), (2, 0.07))]
        runs.append({"arm": "iterative_grpo", "seed": s, "workdir": "x", "status": "completed", "steps": 4,
                     "steps_per_iteration": 2, "iterations": 2, "maj_pass": it_mp[-1],
                     "iteration_evals": [{"iteration": i + 1, "step": 2 * (i + 1), "maj_pass": m}
                                         for i, m in enumerate(it_mp)],
                     "eval_history": [{"step": 0, "eval_accuracy": base}, {"step": 2, "eval_accuracy": base + 0.05},
                                      {"step": 4, "eval_accuracy": base + 0.07}]})
    return {"experiment": "rl_findings", "format": 2, "seeds": list(seeds), "steps": 4, "k": 4, "ks": [1, 2, 4],
            "arms": ["sft", "rft", "online_rft", "grpo_outcome", "grpo_process_oracle", "iterative_grpo"],
            "runs": runs}


def test_findings_of_a_synthetic_results_file_by_hand(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(synthetic_results()))
    results = P.load_paradigm_results(str(path))
    assert P.max_k(results) == 4
    assert P.seed_values(results, "sft", "accuracy") == pytest.approx({s: 0.50 + 0.01 * s for s in range(5)})
    assert P.seed_values(results, "iterative_grpo", "accuracy", 1) == pytest.approx(
        {s: 0.55 + 0.01 * s for s in range(5)})
    assert P.seed_values(results, "iterative_grpo", "maj@4", 2) == pytest.approx({s: 0.61 for s in range(5)})
    assert P.seed_values(results, "iterative_grpo", "accuracy", 0) == P.seed_values(results, "sft", "accuracy")
    assert P.gain_values(results, "grpo_outcome", "maj@4") == pytest.approx({s: 0.05 for s in range(5)})
    rows = {r["claim"]: r for r in P.paradigm_findings(results)}
    # Online RFT - RFT per seed: 0.02, 0.03, 0.02, 0.03, 0.02 -> mean 0.024, all positive -> holds, p = 2/32.
    r = rows["Online RFT > RFT"]
    d = np.asarray([0.02, 0.03, 0.02, 0.03, 0.02])
    half = 2.776445105 * d.std(ddof=1) / math.sqrt(5)
    assert (r["n"], r["mean_diff"], r["low"], r["high"]) == pytest.approx((5, 0.024, 0.024 - half, 0.024 + half))
    assert r["verdict"] == "holds" and r["p_value"] == pytest.approx(0.0625)
    # GRPO+PS (oracle) - GRPO+OS: -0.01, +0.01 x 4 -> mean 0.006, interval spans 0, p = 12/32 by enumeration.
    r = rows["GRPO+PS (oracle) > GRPO+OS"]
    assert r["mean_diff"] == pytest.approx(0.006) and r["verdict"] == "same direction, not significant"
    assert r["p_value"] == pytest.approx(12 / 32)
    assert rows["Iterative GRPO: iteration 1 > SFT"]["verdict"] == "holds"
    assert rows["Iterative GRPO: iteration 2 > iteration 1"]["mean_diff"] == pytest.approx(0.02)
    # Figure 7: maj@4 +0.05 everywhere (holds); pass@4 -0.01, +0.01, ... (no significant difference).
    assert rows["GRPO+OS raises maj@4"]["verdict"] == "holds"
    r = rows["GRPO+OS leaves pass@4 (no claimed direction)"]
    assert r["mean_diff"] == pytest.approx(-0.002) and r["verdict"] == "no significant difference"
    assert rows["GRPO+OS: maj@4 gain > pass@4 gain"]["verdict"] == "holds"
    # Claims whose arms are absent (PPO, the PRM arm, DPO) have no row.
    assert not any("PPO" in c or "PRM" in c or "DPO" in c for c in rows)
    summary = {(r["arm"], r["metric"]): r for r in P.paradigm_summary(results)}
    assert summary[("grpo_outcome", "accuracy")]["gain_mean"] == pytest.approx(0.06)
    assert summary[("sft", "pass@4")]["mean"] == pytest.approx(0.80) and summary[("sft", "pass@4")]["gain_mean"] is None
    table = {(r["arm"], r["metric"]): r for r in P.paradigm_table(results)}
    assert table[("rft", "maj@4")]["start_mean"] == pytest.approx(0.55)  # the start: the seed's SFT policy
    curves = P.paradigm_curves(results)
    assert "sft" not in curves
    np.testing.assert_allclose(curves["grpo_outcome"]["mean"], [0.52, 0.55, 0.58])
    np.testing.assert_allclose(curves["grpo_outcome"]["half_width"], [2.776445105 * np.std(
        [0.5, 0.51, 0.52, 0.53, 0.54], ddof=1) / math.sqrt(5)] * 3, rtol=1e-6)
    mp = P.maj_pass_curves(results, "sft")
    assert mp["ks"] == [1, 2, 4] and mp["pass"][2] == pytest.approx([0.8] * 5)
    # A run whose log holds a step twice (an earlier attempt's row) counts once there, with its last row.
    rerun = next(r for r in results["runs"] if r["arm"] == "grpo_outcome" and r["seed"] == 0)
    rerun["eval_history"].insert(0, {"step": 0, "eval_accuracy": 0.0})
    curves = P.paradigm_curves(results)
    np.testing.assert_array_equal(curves["grpo_outcome"]["n"], [5, 5, 5])
    np.testing.assert_allclose(curves["grpo_outcome"]["mean"], [0.52, 0.55, 0.58])


def test_figures_draw_error_bars():
    pytest.importorskip("matplotlib")
    results = synthetic_results()
    fig5 = P.findings_figure5(results)
    assert len(fig5.axes[0].containers) == 4  # one error-bar container per RL arm but iterative GRPO
    fig6 = P.findings_figure6(results)
    assert len(fig6.axes[0].containers) == 2  # greedy and maj@4 over SFT, iteration 1, iteration 2
    fig7 = P.findings_figure7(results)
    assert [len(ax.containers) for ax in fig7.axes] == [6, 6]
    empty = P.findings_figure6({"runs": []})
    assert any("no iterative GRPO" in t.get_text() for t in empty.axes[0].texts)


def test_old_results_file_still_loads_and_gets_statistics():
    path = ROOT / "experiments" / "results" / "rl_paradigm_tiny.json"
    raw = json.loads(path.read_text())
    results = P.load_paradigm_results(str(path))
    rows = {r["claim"]: r for r in P.paradigm_findings(results)}
    end = {(r["arm"], r["seed"]): r["eval_history"][-1]["eval_accuracy"] for r in raw["runs"]}
    d = [end[("online_rft", s)] - end[("rft", s)] for s in raw["seeds"]]
    r = rows["Online RFT > RFT"]
    assert r["n"] == len(raw["seeds"]) and r["differences"] == pytest.approx(d)
    assert r["mean_diff"] == pytest.approx(np.mean(d))
    assert "GRPO+PS > GRPO+OS" in rows  # rl_paradigm_tiny.py's grpo_process arm
    # Figure 7 from the eval history's maj@8 / pass@8 (the old format), the start being each run's step 0.
    g = rows["GRPO+OS: maj@8 gain > pass@8 gain"]
    runs = {r["seed"]: r["eval_history"] for r in raw["runs"] if r["arm"] == "grpo_outcome"}
    expect = [(h[-1]["eval_maj@8"] - h[0]["eval_maj@8"]) - (h[-1]["eval_pass@8"] - h[0]["eval_pass@8"])
              for h in runs.values()]
    assert g["differences"] == pytest.approx(expect)


def test_bad_maj_pass_block_is_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"runs": [{"arm": "sft", "seed": 0, "maj_pass": {"ks": [1]}}]}))
    with pytest.raises(P.ResultsFormatError, match=r"runs\[0\].maj_pass needs the lists"):
        P.load_paradigm_results(str(path))


# ----------------------------------------------------------------------------------------------- the driver
def test_k_values_and_maj_pass_by_hand(driver):
    assert driver.k_values(64) == [1, 2, 4, 8, 16, 32, 64]
    assert driver.k_values(6) == [1, 2, 4, 6] and driver.k_values(1) == [1]
    per = [[("3", True), ("3", True), ("4", False), ("5", False)],
           [("1", False), ("2", True), ("1", False), (None, False)]]
    r = driver.maj_pass_at_ks(per, [1, 2, 4])
    # pass@1 = c/n: 0.5 and 0.25; pass@2 = 1 - C(n-c,2)/C(4,2): 5/6 and 1/2; pass@4 = 1 and 1.
    assert r["pass"] == pytest.approx([0.375, (5 / 6 + 0.5) / 2, 1.0])
    # maj@2 blocks: P1 [3,3] right, [4,5] tie -> 4 wrong; P2 [1,2] tie -> 1 wrong, [1,-] wrong. maj@4: P1 3, P2 1.
    assert r["maj"] == pytest.approx([0.375, 0.25, 0.5])
    assert r["sample_accuracy"] == pytest.approx(3 / 8)
    with pytest.raises(ValueError, match="outside"):
        driver.maj_pass_at_ks(per, [8])


def test_task_parsing(driver):
    assert driver.parse_task("") is None and driver.parse_task(None) is None
    assert driver.parse_task("ARITHMETIC_TINY") == ARITHMETIC_TINY
    spec = driver.parse_task('{"n_train": 500, "n_test": 32, "knobs": {"max_steps": 3}}')
    assert spec == {"kind": "arithmetic", "n_train": 500, "n_test": 32, "knobs": {"max_steps": 3}}
    with pytest.raises(ValueError, match=r"no problem spec of that name; its specs are \[.*'ARITHMETIC_TINY'"):
        driver.parse_task("ARITHMETIC_NOPE")
    with pytest.raises(ValueError, match="not valid JSON"):
        driver.parse_task("{n_train: 5}")
    with pytest.raises(ValueError, match="expected a JSON object or the name"):
        driver.parse_task("[1, 2]")
    with pytest.raises(ValueError, match="kind 'gsm8k'"):
        driver.parse_task('{"kind": "gsm8k"}')
    with pytest.raises(ValueError, match="unknown key"):
        driver.parse_task('{"n_trian": 5}')


def test_task_and_arms_reach_the_configs(driver, tmp_path):
    args = driver.parse_args(["--out", str(tmp_path), "--arms", "grpo_outcome", "--steps", "6", "--eval-every", "4",
                              "--iteration-steps", "6", "--questions-per-step", "4", "--rm-steps", "8"])
    assert args.arms == ["sft", "grpo_outcome"] and args.seeds == [0, 1, 2, 3, 4]
    task = driver.parse_task('{"n_train": 500, "n_test": 32, "seed": 3, "knobs": {"max_steps": 3}}')
    sft = driver.sft_config(2, args, task)
    assert sft.seed == 2 and sft.data.sources[0]["sources"] == [
        {"kind": "arithmetic", "arithmetic": {"n_train": 500, "n_test": 32, "seed": 3, "knobs": {"max_steps": 3}}}]
    assert sft.data.seq_len == 128  # the tiny config's context unless --sft-seq-len
    longer = driver.parse_args(["--out", str(tmp_path), "--sft-seq-len", "192"])
    assert driver.sft_config(2, longer, task).data.seq_len == 192
    with pytest.raises(SystemExit):
        driver.parse_args(["--out", str(tmp_path), "--sft-seq-len", "-1"])
    prm = driver.prm_config(2, "sft_dir", args, task)
    assert prm.kind == "prm" and prm.init.run_dir == "sft_dir" and prm.train.steps == 8
    assert [dict(p) for p in prm.data.problems] == [task]
    for arm in driver.RL_ARMS:
        c = driver.rl_config(arm, 2, "sft_dir", "prm_dir", args, task)
        assert c.data.problems.to_dict() == task and c.seed == 2 and c.init.run_dir == "sft_dir"
        assert c.eval.samples == 0 and c.rollout.questions_per_step == 4
        if arm == "iterative_grpo":
            assert (c.train.iterations, c.train.steps_per_iteration, c.eval.every) == (2, 6, 2)  # gcd(4, 6)
            assert c.reward.kind == "prm" and c.reward.rm_dir == "prm_dir" and c.rm_update.enabled
        else:
            assert (c.train.iterations, c.train.steps_per_iteration, c.eval.every) == (1, 6, 4)
    reward = driver.rl_config("grpo_process_prm", 0, "s", "p", args, None).reward
    assert (reward.kind, reward.rule_weight, reward.rm_dir) == ("prm", 0.0, "p")
    assert driver.rl_config("grpo_process_oracle", 0, "s", None, args, None).reward.kind == "step_rule"
    assert driver.rl_config("dpo", 0, "s", None, args, None).method == "dpo"
    assert driver.rl_config("grpo_outcome", 0, "s", None, args, None).data.problems.to_dict() == ARITHMETIC_TINY
    with pytest.raises(ValueError, match="needs the seed's process reward model"):
        driver.rl_config("iterative_grpo", 0, "s", None, args, None)
    with pytest.raises(SystemExit):
        driver.parse_args(["--out", str(tmp_path), "--arms", "nope"])


def test_results_json_round_trip(driver, tmp_path):
    """The driver's results.json (written atomically) loads back with the same statistics."""
    args = driver.parse_args(["--out", str(tmp_path), "--seeds", "0", "1", "2", "3", "4", "--k", "4"])
    exp = driver.Experiment(args, None)
    for run in synthetic_results()["runs"]:
        exp.records[(run["arm"], run["seed"])] = dict(run, wall_s=10.0, eval_wall_s=2.0)
    exp.save()
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left
    loaded = P.load_paradigm_results(str(tmp_path / "results.json"))
    assert loaded["format"] == 2 and loaded["ks"] == [1, 2, 4] and loaded["task"] is None
    assert loaded["wall_s"] == pytest.approx(12.0 * len(loaded["runs"]))
    assert loaded["statistics"]["findings"] == json.loads(json.dumps(P.paradigm_findings(loaded)))
    assert [r["arm"] for r in loaded["runs"][:6]] == ["sft", "rft", "online_rft", "grpo_outcome",
                                                      "grpo_process_oracle", "iterative_grpo"]
    assert len(loaded["invocations"]) == 1 and not loaded["complete"]  # 9 arms asked, 6 recorded
    driver.Experiment(args, None).save()  # a second invocation appends to the history
    assert len(json.loads((tmp_path / "results.json").read_text())["invocations"]) == 2


RECORDED = {  # experiments/results/<name>: the seeds and arms of a recorded run of experiments/rl_findings.py
    "rl_findings_level1.json": ([0, 1, 2, 3, 4], None),  # None: every arm
    "rl_findings_level1_prm512.json": ([0, 1, 2, 3, 4], ["sft", "grpo_process_prm"]),
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_the_recorded_experiments_follow_from_their_runs(driver, name):
    """The recorded experiments are complete, their statistics are those of their runs, every run starts at its
    seed's SFT policy (the RL loop's own step-0 evaluation equals the driver's), and every maj@k / pass@k block
    keeps the identities maj@1 = pass@1 = sample accuracy, pass@k non-decreasing in k and maj@K <= pass@K."""
    results = P.load_paradigm_results(str(ROOT / "experiments" / "results" / name))
    seeds, arms = RECORDED[name]
    assert results["complete"] and not results["failed"] and results["seeds"] == seeds
    assert results["arms"] == (arms or list(driver.ARMS))
    assert len(results["runs"]) == len(results["arms"]) * len(seeds)
    assert json.loads(json.dumps(P.paradigm_statistics(results, 0.95))) == results["statistics"]
    sft = {r["seed"]: r["maj_pass"]["greedy"] for r in results["runs"] if r["arm"] == "sft"}
    assert sorted(sft) == seeds
    for run in results["runs"]:
        assert run["status"] == "completed", (run["arm"], run["seed"])
        history = run["eval_history"]
        assert history[0]["step"] == 0 and history[0]["eval_accuracy"] == pytest.approx(sft[run["seed"]])
        if run["arm"] != "sft":
            assert history[-1]["step"] == run["steps"]
        blocks = [run["maj_pass"]] + [it["maj_pass"] for it in run.get("iteration_evals", [])]
        for mp in blocks:
            assert mp["ks"] == results["ks"] and mp["samples"] == results["k"]
            assert mp["maj"][0] == pytest.approx(mp["pass"][0]) and mp["pass"][0] == pytest.approx(
                mp["sample_accuracy"])
            assert all(a <= b + 1e-12 for a, b in zip(mp["pass"], mp["pass"][1:]))
            assert mp["maj"][-1] <= mp["pass"][-1] + 1e-12


@pytest.mark.slow
def test_smoke_run_of_the_driver(driver, tmp_path):
    """1 seed, the SFT arm and GRPO+OS, 2 RL steps of 4 questions, k = 4 on 8 problems; then resumed."""
    out = tmp_path / "findings"
    argv = ["--out", str(out), "--seeds", "0", "--arms", "grpo_outcome", "--steps", "2", "--eval-every", "1",
            "--eval-problems", "16", "--k", "4", "--k-problems", "8", "--sft-steps", "20", "--questions-per-step", "4"]
    assert driver.main(argv) == 0
    results = P.load_paradigm_results(str(out / "results.json"))
    assert results["complete"] and results["arms"] == ["sft", "grpo_outcome"] and results["ks"] == [1, 2, 4]
    runs = {r["arm"]: r for r in results["runs"]}
    assert set(runs) == {"sft", "grpo_outcome"}
    rl = runs["grpo_outcome"]
    assert [h["step"] for h in rl["eval_history"]] == [0, 1, 2] and rl["status"] == "completed"
    for run in runs.values():
        mp = run["maj_pass"]
        assert mp["ks"] == [1, 2, 4] and mp["samples"] == 4 and mp["k_problems"] == 8 and mp["eval_problems"] == 16
        assert all(0 <= m <= p <= 1 for m, p in zip(mp["maj"], mp["pass"][:1]))  # maj@1 = pass@1
        assert mp["pass"] == sorted(mp["pass"])  # pass@k grows with k
        assert run["wall_s"] > 0 and run["eval_wall_s"] > 0
    # The SFT policy's greedy accuracy is the RL run's step-0 evaluation (same policy, same problems).
    assert runs["sft"]["maj_pass"]["greedy"] == pytest.approx(rl["eval_history"][0]["eval_accuracy"])
    assert results["elapsed_s"] >= results["wall_s"] > 0
    assert {r["claim"] for r in results["statistics"]["findings"]} >= {"GRPO+OS raises maj@4"}
    before = {r["arm"]: r["maj_pass"] for r in results["runs"]}
    assert driver.main(argv) == 0  # resumed: every stage and evaluation reused
    again = P.load_paradigm_results(str(out / "results.json"))
    assert {r["arm"]: r["maj_pass"] for r in again["runs"]} == before and len(again["invocations"]) == 2
