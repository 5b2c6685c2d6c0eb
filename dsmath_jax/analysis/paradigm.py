"""The results JSON of experiments/rl_findings.py (Figures 5, 6 and 7 over seeds, with statistics) and of its
predecessor experiments/rl_paradigm_tiny.py (Figure 5-style arms, mean and std only).

The file: {arms, seeds, steps, k, runs: [{arm, seed, workdir, eval_history: [{step, eval_accuracy, ...}],
maj_pass: {step, ks, maj, pass, greedy, sample_accuracy}, iteration_evals: [{iteration, step, maj_pass}],
steps_per_iteration, wall_s}], ...}. The `sft` arm is the starting policy itself (no RL); a run without
`maj_pass` (the old format) has maj@k / pass@k as `eval_maj@k` / `eval_pass@k` in its eval history.

Statistics over seeds (each seed is one SFT policy, the start of every arm of that seed):

* a mean and its `level` (95%) Student-t interval with n - 1 degrees of freedom (`mean_interval`; the t
  quantile is computed here, `t_quantile`, from the regularised incomplete beta function, no scipy);
* for each ordering the paper claims (`CLAIMS`), the per-seed differences a - b, their mean with its
  t-interval and the exact two-sided sign-flip permutation p-value over seeds (`sign_flip_p_value`: under
  the null each difference is as likely negative as positive; all 2^n sign patterns are enumerated);
* a verdict (`verdict`): "holds" only when the interval excludes 0 in the claimed direction, "same
  direction, not significant", "reversed" only when it excludes 0 the other way, "opposite direction, not
  significant", "no difference" (a mean difference of exactly 0) or "too few seeds" (n < 2: no interval). A claim
  without a direction (PPO vs GRPO) is "a > b, significant", "a < b, significant" or "no significant
  difference".
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from dsmath_jax.analysis.figures import new_figure, note
from dsmath_jax.analysis.files import ResultsFormatError, RunDirError, number, read_json, resolve_dir, series

# The arms of experiments/rl_findings.py, in the paper's order, and their labels in figures.
ARM_LABELS = {
    "sft": "SFT", "rft": "RFT", "online_rft": "Online RFT", "dpo": "DPO", "ppo": "PPO",
    "grpo_outcome": "GRPO+OS", "grpo_process_prm": "GRPO+PS (PRM)", "grpo_process_oracle": "GRPO+PS (oracle)",
    "grpo_process": "GRPO+PS", "iterative_grpo": "Iterative GRPO",
}
ITERATIVE_ARM = "iterative_grpo"
SFT_ARM = "sft"

HOLDS = "holds"
NOT_SIGNIFICANT = "same direction, not significant"
REVERSED = "reversed"
REVERSED_NOT_SIGNIFICANT = "opposite direction, not significant"
NO_DIFFERENCE = "no difference"
TOO_FEW = "too few seeds"


# ------------------------------------------------------------------------------------------- loading
def load_paradigm_results(path: str) -> dict[str, Any]:
    """The results JSON of experiments/rl_findings.py or experiments/rl_paradigm_tiny.py: {arms, seeds,
    steps, k, runs: [{arm, seed, workdir, eval_history: [{step, eval_accuracy, eval_maj@k, ...}], ...}],
    ...}, checked."""
    path = resolve_dir(path)
    if not os.path.isfile(path):
        raise RunDirError(f"{path}: no such file (expected the results JSON of experiments/rl_findings.py or "
                          "experiments/rl_paradigm_tiny.py)")
    results = read_json(path)
    if not isinstance(results, dict) or not isinstance(results.get("runs"), list):
        raise ResultsFormatError(f"{path}: expected a JSON object with a `runs` list "
                                 "(the output of experiments/rl_findings.py or experiments/rl_paradigm_tiny.py)")
    for i, run in enumerate(results["runs"]):
        if not isinstance(run, dict) or "arm" not in run or "seed" not in run:
            raise ResultsFormatError(f"{path}: runs[{i}] needs `arm` and `seed`")
        if not isinstance(run.get("eval_history", []), list):
            raise ResultsFormatError(f"{path}: runs[{i}].eval_history must be a list")
        mp = run.get("maj_pass")
        if mp is not None and not (isinstance(mp, dict) and all(isinstance(mp.get(key), list)
                                                                for key in ("ks", "maj", "pass"))):
            raise ResultsFormatError(f"{path}: runs[{i}].maj_pass needs the lists `ks`, `maj` and `pass`")
    return results


def paradigm_arms(results: Mapping[str, Any]) -> list[str]:
    """The arms in the experiment's order (`arms`), then any others in order of appearance."""
    arms = list(results.get("arms") or [])
    for run in results["runs"]:
        if run["arm"] not in arms:
            arms.append(run["arm"])
    return arms


def arm_label(arm: str) -> str:
    return ARM_LABELS.get(arm, arm)


def max_k(results: Mapping[str, Any]) -> int | None:
    """The largest k of maj@k / pass@k in the results (`k`, else the runs' `maj_pass.ks`), None without any."""
    ks = [int(k) for run in results["runs"] for k in (run.get("maj_pass") or {}).get("ks", [])]
    if results.get("k"):
        ks.append(int(results["k"]))
    return max(ks) if ks else None


# ------------------------------------------------------------------------------------------- statistics
def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes §6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < eps:
            break
    return h


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for 0 <= x <= 1 and a, b > 0."""
    if not (a > 0 and b > 0):
        raise ValueError(f"regularized_beta needs a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"regularized_beta needs 0 <= x <= 1, got x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with `dof` degrees of freedom."""
    if dof <= 0:
        raise ValueError(f"Student's t needs dof > 0, got {dof}")
    tail = 0.5 * regularized_beta(dof / (dof + t * t), dof / 2.0, 0.5)  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_quantile(q: float, dof: float) -> float:
    """The `q` quantile of Student's t with `dof` degrees of freedom (bisection on `t_cdf`, to 1e-12):
    t_quantile(0.975, 4) = 2.7764."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"a quantile needs 0 < q < 1, got {q}")
    if dof <= 0:
        raise ValueError(f"Student's t needs dof > 0, got {dof}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_quantile(1.0 - q, dof)
    hi = 1.0
    while t_cdf(hi, dof) < q:
        hi *= 2.0
    lo = 0.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, dof) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mean_interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """{n, mean, std (n - 1 in the denominator), half_width, low, high}: the mean of `values` and its `level`
    Student-t interval, mean -+ t_{(1+level)/2, n-1} * std / sqrt(n). With fewer than two values the std and
    the interval are None (nothing to estimate them from); with none the mean is None too."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"the interval's level must be in (0, 1), got {level}")
    x = np.asarray([float(v) for v in values], np.float64)
    n = len(x)
    out: dict[str, Any] = {"n": n, "mean": float(x.mean()) if n else None, "std": None, "half_width": None,
                           "low": None, "high": None}
    if n >= 2:
        std = float(x.std(ddof=1))
        half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
        out.update(std=std, half_width=half, low=out["mean"] - half, high=out["mean"] + half)
    return out


EXACT_SIGN_FLIPS = 20  # up to 2^20 sign patterns enumerated; more seeds draw MONTE_CARLO_FLIPS random ones
MONTE_CARLO_FLIPS = 200_000


def sign_flip_p_value(differences: Sequence[float], *, seed: int = 0) -> float:
    """The two-sided sign-flip permutation p-value of paired differences: the share of the 2^n sign patterns
    (each difference kept or negated; the observed one included) whose |sum| is at least the observed |sum|.
    Exact up to EXACT_SIGN_FLIPS differences, else a seeded Monte Carlo estimate (the observed pattern counted
    once more). 1.0 for no differences or all zero; 5 differences of one sign give 2/32 = 0.0625."""
    d = np.asarray([float(v) for v in differences], np.float64)
    n = len(d)
    observed = abs(float(d.sum()))
    if n == 0 or observed == 0.0:
        return 1.0
    cut = observed * (1.0 - 1e-9) - 1e-12 * float(np.abs(d).sum())  # ties within rounding count as extreme
    if n <= EXACT_SIGN_FLIPS:
        hits, total, chunk = 0, 2 ** n, 2 ** min(n, 14)
        bits = np.arange(n)
        for start in range(0, total, chunk):
            codes = np.arange(start, min(start + chunk, total))[:, None]
            signs = 1.0 - 2.0 * ((codes >> bits) & 1)  # [chunk, n] of +-1
            hits += int((np.abs(signs @ d) >= cut).sum())
        return hits / total
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(MONTE_CARLO_FLIPS, n))
    hits = int((np.abs(signs @ d) >= cut).sum())
    return (hits + 1) / (MONTE_CARLO_FLIPS + 1)


def mcnemar_p_value(gained: int, lost: int) -> float:
    """The exact two-sided McNemar p-value of a paired before/after comparison on the same items: `gained` items
    right after and wrong before, `lost` the reverse. Under no change each discordant item is a fair coin, so p
    is twice the Binomial(gained + lost, 1/2) tail at min(gained, lost), capped at 1 (McNemar 1947; the exact
    form as in scipy.stats.binomtest). 1.0 without discordant items; 10 gained and 2 lost give 0.0386."""
    if gained < 0 or lost < 0 or int(gained) != gained or int(lost) != lost:
        raise ValueError(f"gained and lost are counts of items, got {gained!r} and {lost!r}")
    n, low = int(gained) + int(lost), min(int(gained), int(lost))
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(low + 1))
    return min(1.0, 2.0 * tail / 2 ** n)


def beta_quantile(q: float, a: float, b: float) -> float:
    """The `q` quantile of the Beta(a, b) distribution (bisection on `regularized_beta`, to 1e-13)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile needs 0 <= q <= 1, got {q}")
    lo, hi = 0.0, 1.0
    while hi - lo > 1e-13:
        mid = 0.5 * (lo + hi)
        if regularized_beta(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson 1934) `level` interval of a binomial proportion: the Beta((1-level)/2;
    k, n-k+1) and Beta((1+level)/2; k+1, n-k) quantiles, 0 and 1 at the ends; (0, 1) for no trials."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"the interval's level must be in (0, 1), got {level}")
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return 0.0, 1.0
    alpha = 1.0 - level
    low = 0.0 if successes == 0 else beta_quantile(alpha / 2, successes, trials - successes + 1)
    high = 1.0 if successes == trials else beta_quantile(1 - alpha / 2, successes + 1, trials - successes)
    return low, high


def paired_difference_interval(gained: int, lost: int, items: int, level: float = 0.95) -> tuple[float, float]:
    """An exact `level` interval of the change in accuracy (gained - lost) / items of a paired before/after
    comparison, conditional on the gained + lost discordant items: with theta the share of them that were gained
    and (low, high) its Clopper-Pearson interval, the change is (gained + lost) / items * (2 theta - 1). It
    excludes 0 exactly when `mcnemar_p_value` < 1 - level (both are the same binomial tails)."""
    n = int(gained) + int(lost)
    if items <= 0 or n > items:
        raise ValueError(f"{gained} gained + {lost} lost items do not fit in {items} items")
    low, high = clopper_pearson(int(gained), n, level)
    return n / items * (2 * low - 1), n / items * (2 * high - 1)


def verdict(interval: Mapping[str, Any], direction: int) -> tuple[str, bool]:
    """(verdict, significant) of a mean difference a - b with its interval (`mean_interval`'s dict) against a
    claim: `direction` +1 claims a > b, -1 claims a < b, 0 claims nothing (module docstring)."""
    if direction not in (-1, 0, 1):
        raise ValueError(f"direction must be +1 (a > b), -1 (a < b) or 0 (no claimed direction), got {direction}")
    mean, low, high = interval.get("mean"), interval.get("low"), interval.get("high")
    if mean is None or low is None or high is None:
        return TOO_FEW, False
    significant = bool(low > 0 or high < 0)
    if direction == 0:
        if not significant:
            return "no significant difference", False
        return ("a > b, significant" if low > 0 else "a < b, significant"), True
    if mean == 0:
        return NO_DIFFERENCE, False
    if mean * direction > 0:
        return (HOLDS if significant else NOT_SIGNIFICANT), significant
    return (REVERSED if significant else REVERSED_NOT_SIGNIFICANT), significant


def paired_comparison(a: Mapping[Any, float], b: Mapping[Any, float], *, direction: int = 1,
                      level: float = 0.95) -> dict[str, Any]:
    """a vs b over the seeds both have ({seed: value} each): {seeds, differences (a - b per seed), n, mean, std,
    half_width, low, high (the mean difference's t-interval), p_value (sign-flip, two-sided), verdict,
    significant}."""
    seeds = sorted(set(a) & set(b), key=lambda s: (str(type(s)), s))
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    out: dict[str, Any] = {"seeds": list(seeds), "differences": diffs, **mean_interval(diffs, level)}
    out["p_value"] = sign_flip_p_value(diffs) if diffs else None
    out["verdict"], out["significant"] = verdict(out, direction)
    return out


# ------------------------------------------------------------------------------------------- per-seed values
def _runs(results: Mapping[str, Any], arm: str) -> list[Mapping[str, Any]]:
    return [r for r in results["runs"] if r["arm"] == arm]


def _history_value(run: Mapping[str, Any], key: str, at: str | int) -> float | None:
    """`key` of the run's eval history at its first ("start") or last ("end") row or at step `at`."""
    rows = run.get("eval_history") or []
    if not rows:
        return None
    if at == "start":
        return number(rows[0].get(key))
    if at == "end":
        return number(rows[-1].get(key))
    match = [r for r in rows if number(r.get("step")) == float(at)]
    return number(match[-1].get(key)) if match else None


def _maj_pass_value(block: Mapping[str, Any] | None, metric: str) -> float | None:
    """maj@k / pass@k / greedy / sample_accuracy from a `maj_pass` block."""
    if not block:
        return None
    if "@" in metric:
        name, k = metric.split("@", 1)
        ks = [int(x) for x in block.get("ks", [])]
        if name in ("maj", "pass") and k.isdigit() and int(k) in ks:
            return number(block[name][ks.index(int(k))])
        return None
    return number(block.get({"accuracy": "greedy"}.get(metric, metric)))


def run_value(run: Mapping[str, Any], metric: str, at: str | int = "end") -> float | None:
    """A run's `metric` ("accuracy" = greedy, "maj@k", "pass@k", "sample_accuracy") at "end", "start" or
    iteration `at` (an int, iterative runs: the evaluation at the end of that iteration). The `sft` arm has one
    point, its own evaluation."""
    if run["arm"] == SFT_ARM:
        return _maj_pass_value(run.get("maj_pass"), metric) if run.get("maj_pass") else \
            _history_value(run, f"eval_{metric}", "end")
    if isinstance(at, int):
        m = run.get("steps_per_iteration")
        if at == 0:
            return None  # iteration 0 is the SFT policy: the sft arm's value
        if metric == "accuracy" or not run.get("iteration_evals"):
            return _history_value(run, f"eval_{metric}", at * int(m)) if m else None
        for it in run.get("iteration_evals") or []:
            if int(it.get("iteration", -1)) == at:
                return _maj_pass_value(it.get("maj_pass"), metric)
        return None
    if at == "end" and metric != "accuracy" and run.get("maj_pass"):
        return _maj_pass_value(run["maj_pass"], metric)
    return _history_value(run, f"eval_{metric}", at)


def seed_values(results: Mapping[str, Any], arm: str, metric: str, at: str | int = "end") -> dict[Any, float]:
    """{seed: value} of `arm`'s `metric` at `at` (see `run_value`); iteration 0 and the start of an arm without
    its own start value are the seed's SFT policy (the `sft` arm's value)."""
    out: dict[Any, float] = {}
    sft = {r["seed"]: r for r in _runs(results, SFT_ARM)}
    for run in _runs(results, arm):
        value = run_value(run, metric, at)
        if value is None and (at == "start" or at == 0) and run["seed"] in sft:
            value = run_value(sft[run["seed"]], metric)
        if value is not None:
            out[run["seed"]] = value
    return out


def gain_values(results: Mapping[str, Any], arm: str, metric: str) -> dict[Any, float]:
    """{seed: end - start} of `arm`'s `metric` (the start: the seed's SFT policy where the run has none)."""
    start, end = seed_values(results, arm, metric, "start"), seed_values(results, arm, metric, "end")
    return {s: end[s] - start[s] for s in end if s in start}


# ------------------------------------------------------------------------------------------- the claims
@dataclasses.dataclass(frozen=True)
class Quantity:
    """A per-seed number: `arm`'s `metric` at `at`; `gain`: minus the seed's SFT value. `metric` may name
    "maj@K" / "pass@K", K being the results' largest k."""

    arm: str
    metric: str
    at: str | int = "end"
    gain: bool = False

    def values(self, results: Mapping[str, Any]) -> dict[Any, float]:
        k = max_k(results)
        metric = self.metric.replace("@K", f"@{k}") if k else self.metric
        if self.gain:
            return gain_values(results, self.arm, metric)
        return seed_values(results, self.arm, metric, self.at)

    def describe(self, k: int | None) -> str:
        metric = self.metric.replace("@K", f"@{k}") if k else self.metric
        where = f" after iteration {self.at}" if isinstance(self.at, int) and self.at else ""
        if self.arm == SFT_ARM or self.at == 0:
            return f"{metric} of SFT"
        return f"{metric} {'gain ' if self.gain else ''}of {arm_label(self.arm)}{where}"


@dataclasses.dataclass(frozen=True)
class Claim:
    """An ordering the paper claims: a `direction` b (+1: a > b; 0: compared without a claimed direction)."""

    figure: str
    name: str
    a: Quantity
    b: Quantity
    direction: int = 1


def _figure7_claims(arm: str) -> list[Claim]:
    label = arm_label(arm)
    return [
        Claim("Figure 7", f"{label} raises maj@K", Quantity(arm, "maj@K"), Quantity(SFT_ARM, "maj@K")),
        Claim("Figure 7", f"{label} leaves pass@K (no claimed direction)", Quantity(arm, "pass@K"),
              Quantity(SFT_ARM, "pass@K"), direction=0),
        Claim("Figure 7", f"{label}: maj@K gain > pass@K gain", Quantity(arm, "maj@K", gain=True),
              Quantity(arm, "pass@K", gain=True)),
    ]


CLAIMS: tuple[Claim, ...] = (
    Claim("Figure 5", "Online RFT > RFT", Quantity("online_rft", "accuracy"), Quantity("rft", "accuracy")),
    Claim("Figure 5", "GRPO+OS > Online RFT", Quantity("grpo_outcome", "accuracy"),
          Quantity("online_rft", "accuracy")),
    Claim("Figure 5", "GRPO+PS (PRM) > GRPO+OS", Quantity("grpo_process_prm", "accuracy"),
          Quantity("grpo_outcome", "accuracy")),
    Claim("Figure 5", "GRPO+PS (oracle) > GRPO+OS", Quantity("grpo_process_oracle", "accuracy"),
          Quantity("grpo_outcome", "accuracy")),
    Claim("Figure 5", "GRPO+PS > GRPO+OS", Quantity("grpo_process", "accuracy"),  # rl_paradigm_tiny.py's arm
          Quantity("grpo_outcome", "accuracy")),
    Claim("Figure 5", "PPO vs GRPO+OS (no claimed direction)", Quantity("ppo", "accuracy"),
          Quantity("grpo_outcome", "accuracy"), direction=0),
    Claim("Figure 6", "Iterative GRPO: iteration 1 > SFT", Quantity(ITERATIVE_ARM, "accuracy", 1),
          Quantity(ITERATIVE_ARM, "accuracy", 0)),
    Claim("Figure 6", "Iterative GRPO: iteration 2 > iteration 1", Quantity(ITERATIVE_ARM, "accuracy", 2),
          Quantity(ITERATIVE_ARM, "accuracy", 1)),
    *_figure7_claims("grpo_outcome"),
    *_figure7_claims("grpo_process_prm"),
    *_figure7_claims("grpo_process_oracle"),
    *_figure7_claims("online_rft"),
    *_figure7_claims("rft"),
    *_figure7_claims("ppo"),
    *_figure7_claims("dpo"),
    *_figure7_claims(ITERATIVE_ARM),
)


def paradigm_findings(results: Mapping[str, Any], claims: Sequence[Claim] = CLAIMS,
                      level: float = 0.95) -> list[dict[str, Any]]:
    """One row per claim whose two sides both have values: {figure, claim, a, b, direction, n, mean_diff,
    low, high, p_value, verdict, significant, differences} (`paired_comparison` over the seeds of both)."""
    k = max_k(results)
    rows = []
    for claim in claims:
        a, b = claim.a.values(results), claim.b.values(results)
        if not (set(a) & set(b)):
            continue
        cmp = paired_comparison(a, b, direction=claim.direction, level=level)
        rows.append({"figure": claim.figure, "claim": claim.name.replace("@K", f"@{k}" if k else "@K"),
                     "a": claim.a.describe(k), "b": claim.b.describe(k), "direction": claim.direction,
                     "n": cmp["n"], "mean_diff": cmp["mean"], "low": cmp["low"], "high": cmp["high"],
                     "p_value": cmp["p_value"], "verdict": cmp["verdict"], "significant": cmp["significant"],
                     "differences": cmp["differences"]})
    return rows


def paradigm_summary(results: Mapping[str, Any], level: float = 0.95) -> list[dict[str, Any]]:
    """Per arm and metric (greedy accuracy, maj@K, pass@K): the mean over seeds of the final value with its
    t-interval, and of the gain over the seed's SFT policy with its interval (None for the sft arm)."""
    k = max_k(results)
    metrics = ["accuracy"] + ([f"maj@{k}", f"pass@{k}"] if k else [])
    rows = []
    for arm in paradigm_arms(results):
        for metric in metrics:
            end = seed_values(results, arm, metric, "end")
            if not end:
                continue
            value = mean_interval(list(end.values()), level)
            row = {"arm": arm, "metric": metric, "n": value["n"], "mean": value["mean"], "low": value["low"],
                   "high": value["high"], "gain_mean": None, "gain_low": None, "gain_high": None}
            if arm != SFT_ARM:
                gains = gain_values(results, arm, metric)
                if gains:
                    gain = mean_interval(list(gains.values()), level)
                    row.update(gain_mean=gain["mean"], gain_low=gain["low"], gain_high=gain["high"])
            rows.append(row)
    return rows


def paradigm_statistics(results: Mapping[str, Any], level: float = 0.95) -> dict[str, Any]:
    """{level, summary: paradigm_summary, findings: paradigm_findings}: what experiments/rl_findings.py
    stores in its results JSON after every run."""
    return {"level": level, "summary": paradigm_summary(results, level),
            "findings": paradigm_findings(results, level=level)}


# ------------------------------------------------------------------------------------------- older tables
def paradigm_curves(results: Mapping[str, Any], key: str = "eval_accuracy",
                    level: float = 0.95) -> dict[str, dict[str, np.ndarray]]:
    """Figure 5's curves: {arm: {"step", "mean", "std", "half_width", "n"}}: per evaluated step, the mean, the
    (population) standard deviation and the `level` t-interval's half width (NaN with one seed) of `key` over
    the seeds that evaluated it (a run with two rows at one step, a rerun's log that kept an earlier attempt's
    row, counts once, with its last row, as `run_value` reads it); arms without it (the sft arm: one point) are
    left out."""
    out = {}
    for arm in paradigm_arms(results):
        if arm == SFT_ARM:
            continue
        by_step: dict[float, list[float]] = {}
        for run in _runs(results, arm):
            last = dict(zip(*series(run.get("eval_history", []), key)))  # per step, the run's last row
            for step, value in last.items():
                by_step.setdefault(step, []).append(value)
        if by_step:
            steps = sorted(by_step)
            half = [mean_interval(by_step[s], level)["half_width"] for s in steps]
            out[arm] = {"step": np.asarray(steps), "mean": np.asarray([np.mean(by_step[s]) for s in steps]),
                        "std": np.asarray([np.std(by_step[s]) for s in steps]),
                        "half_width": np.asarray([np.nan if h is None else h for h in half]),
                        "n": np.asarray([len(by_step[s]) for s in steps])}
    return out


def paradigm_table(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per arm and metric (greedy accuracy, maj@k, pass@k): mean over seeds of the start and the end, the std of
    the end, the mean gain and the number of seeds (rl_paradigm_tiny.py's own `table`, recomputed; the start of
    an arm without its own is the seed's SFT policy)."""
    k = max_k(results)
    metrics = ["accuracy"] + ([f"maj@{k}", f"pass@{k}"] if k else [])
    rows = []
    for arm in paradigm_arms(results):
        if arm == SFT_ARM:
            continue
        for metric in metrics:
            start, end = seed_values(results, arm, metric, "start"), seed_values(results, arm, metric, "end")
            seeds = [s for s in end if s in start]
            if not seeds:
                continue
            a, b = np.asarray([start[s] for s in seeds]), np.asarray([end[s] for s in seeds])
            rows.append({"arm": arm, "metric": metric, "start_mean": float(a.mean()), "end_mean": float(b.mean()),
                         "end_std": float(b.std()), "gain_mean": float((b - a).mean()), "seeds": len(seeds)})
    return rows


def paradigm_maj_pass(results: Mapping[str, Any]) -> dict[str, dict[str, Any] | None]:
    """{arm: maj@k / pass@k before and after (means over seeds)} in `maj_pass_before_after`'s format."""
    table = paradigm_table(results)
    k = max_k(results)
    out: dict[str, dict[str, Any] | None] = {}
    for arm in paradigm_arms(results):
        if arm == SFT_ARM:
            continue
        rows = {r["metric"]: r for r in table if r["arm"] == arm}
        if k and f"maj@{k}" in rows and f"pass@{k}" in rows:
            get = lambda m: (rows[m]["start_mean"], rows[m]["end_mean"]) if m in rows else (None, None)  # noqa: E731, B023
            out[arm] = {"k": int(k), "steps": None, "greedy": get("accuracy"), "maj": get(f"maj@{k}"),
                        "pass": get(f"pass@{k}"), "sample": (None, None)}
        else:
            out[arm] = None
    return out


# ------------------------------------------------------------------------------------------- figures
def paradigm_figure(curves: Mapping[str, Mapping[str, np.ndarray]], key: str = "eval_accuracy"):
    """Figure 5: `key` per method over RL steps, mean over seeds with a +-std band."""
    fig, (ax,) = new_figure(width=6.5, height=4.2)
    ax.set_title(f"{key.removeprefix('eval_')} per method (paper Figure 5)")
    if not curves:
        note(ax, f"no run of the results has {key}")
        return fig
    for i, (arm, c) in enumerate(curves.items()):
        n = int(c["n"].max())
        ax.plot(c["step"], c["mean"], marker="o", color=f"C{i}", label=f"{arm} ({n} seed{'s' * (n > 1)})")
        ax.fill_between(c["step"], c["mean"] - c["std"], c["mean"] + c["std"], color=f"C{i}", alpha=0.15)
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _errorbar(ax, x, values: Sequence[Sequence[float]], level: float, **kwargs) -> None:
    """Means of each list of `values` at `x` with their t-interval as error bars (none with one value)."""
    stats = [mean_interval(v, level) for v in values]
    means = np.asarray([s["mean"] for s in stats], np.float64)
    halves = np.asarray([np.nan if s["half_width"] is None else s["half_width"] for s in stats], np.float64)
    ax.errorbar(x, means, yerr=np.where(np.isfinite(halves), halves, 0.0), capsize=3, **kwargs)


def findings_figure5(results: Mapping[str, Any], level: float = 0.95):
    """Figure 5: held-out greedy accuracy of each method (not iterative GRPO) over RL steps, mean over seeds
    with `level` t-interval error bars; the SFT policy's mean as a dashed line."""
    fig, (ax,) = new_figure(width=7.0, height=4.4)
    ax.set_title(f"Figure 5: methods over RL steps (mean, {level:.0%} t-interval over seeds)")
    curves = {a: c for a, c in paradigm_curves(results, level=level).items() if a != ITERATIVE_ARM}
    sft = list(seed_values(results, SFT_ARM, "accuracy").values())
    if not curves and not sft:
        note(ax, "no run of the results has a held-out accuracy")
        return fig
    if sft:
        ax.axhline(float(np.mean(sft)), color="0.3", ls="--", lw=1, label=f"SFT ({len(sft)} seeds)")
    span = max((float(c["step"].max()) for c in curves.values()), default=1.0) or 1.0
    for i, (arm, c) in enumerate(curves.items()):
        n = int(c["n"].max())
        offset = (i - len(curves) / 2) * 0.008 * span  # spreads the error bars of one step apart
        ax.errorbar(c["step"] + offset, c["mean"], yerr=np.nan_to_num(c["half_width"]), marker="o", ms=3,
                    capsize=3, color=f"C{i}", label=f"{arm_label(arm)} ({n} seed{'s' * (n > 1)})")
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out greedy accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def findings_figure6(results: Mapping[str, Any], level: float = 0.95):
    """Figure 6: iterative GRPO's held-out greedy accuracy (and maj@K where evaluated) at iteration 0 (the SFT
    policy) and at the end of each iteration, mean over seeds with `level` t-interval error bars."""
    fig, (ax,) = new_figure(width=5.5, height=4.0)
    ax.set_title(f"Figure 6: iterative GRPO (mean, {level:.0%} t-interval)")
    runs = _runs(results, ITERATIVE_ARM)
    iterations = max((int(r.get("iterations") or 0) for r in runs), default=0)
    if not runs or not iterations:
        note(ax, "no iterative GRPO run in the results")
        return fig
    k = max_k(results)
    for i, metric in enumerate(["accuracy"] + ([f"maj@{k}"] if k else [])):
        xs, values = [], []
        for it in range(iterations + 1):
            v = list(seed_values(results, ITERATIVE_ARM, metric, it).values())
            if v:
                xs.append(it)
                values.append(v)
        if xs:
            _errorbar(ax, np.asarray(xs, np.float64) + 0.05 * i, values, level, marker="o", color=f"C{i}",
                      label=f"{'greedy' if metric == 'accuracy' else metric} ({max(map(len, values))} seeds)")
    ax.set_xticks(range(iterations + 1), ["SFT"] + [f"iteration {i}" for i in range(1, iterations + 1)])
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def maj_pass_curves(results: Mapping[str, Any], arm: str) -> dict[str, Any] | None:
    """{ks, maj: [[per-seed values] per k], pass: [...]} of `arm`'s final maj@k / pass@k (Figure 7), over the
    ks every seed has; None when no run of `arm` has a `maj_pass` block."""
    blocks = [r["maj_pass"] for r in _runs(results, arm) if r.get("maj_pass")]
    if not blocks:
        return None
    ks = sorted(set.intersection(*[{int(k) for k in b["ks"]} for b in blocks]))
    return {"ks": ks, "maj": [[_maj_pass_value(b, f"maj@{k}") for b in blocks] for k in ks],
            "pass": [[_maj_pass_value(b, f"pass@{k}") for b in blocks] for k in ks]}


def findings_figure7(results: Mapping[str, Any], arms: Sequence[str] | None = None, level: float = 0.95):
    """Figure 7: maj@k (left) and pass@k (right) against k of the SFT policy and of RL `arms` (default: every
    arm with maj@k values), from one set of samples per problem, mean over seeds with t-interval error bars."""
    fig, axes = new_figure(1, 2, width=5.0, height=4.0)
    arms = [a for a in (arms or paradigm_arms(results)) if maj_pass_curves(results, a)]
    if SFT_ARM in arms:
        arms = [SFT_ARM] + [a for a in arms if a != SFT_ARM]
    for ax, metric in zip(axes, ("maj", "pass")):
        ax.set_title(f"Figure 7: {metric}@k (mean, {level:.0%} t-interval)")
        if not arms:
            note(ax, "no maj@k / pass@k curves in the results (runs need a `maj_pass` block)")
            continue
        for i, arm in enumerate(arms):
            curve = maj_pass_curves(results, arm)
            assert curve is not None
            style: dict[str, Any] = {"color": "0.2", "ls": "--"} if arm == SFT_ARM else {"color": f"C{i}"}
            _errorbar(ax, np.asarray(curve["ks"], np.float64) * (1 + 0.02 * i), curve[metric], level, marker="o",
                      ms=3, label=arm_label(arm), **style)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (samples at the evaluation temperature)")
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def findings_table_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`paradigm_findings` rows without the per-seed differences, for printing."""
    keep: Callable[[str], bool] = lambda key: key not in ("differences", "a", "b", "direction")  # noqa: E731
    return [{k: v for k, v in r.items() if keep(k)} for r in rows]
