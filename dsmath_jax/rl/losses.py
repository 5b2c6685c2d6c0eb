"""Losses of the unified paradigm (PAPER.md §5, Table 10): SFT, RFT / online RFT, DPO, PPO and GRPO.

Every method's gradient has the form (PAPER.md §5)
    grad J = E_(q,o)[ 1/|o| sum_t GC(q, o, t) * grad log pi_theta(o_t | q, o_<t) ]
and the losses here are written so that their gradients with respect to the per-token log-probs are exactly
``-weight_t * GC_t`` (:func:`gradient_coefficient` gives each GC explicitly; the tests check the identity).

Every loss returns ``(total, weight, metrics)``: the loss is ``total / weight``, as the shared train step
(`dsmath_jax.train.step`) expects, so gradient accumulation over micro-batches (adding totals and weights)
gives exactly the gradient of the whole batch. All arrays are float32; token arrays are [batch, seq] with
``mask`` 1 on response tokens; rows of a GRPO batch are grouped consecutively (G outputs per question).

References:
* GRPO: Shao et al. 2024, DeepSeekMath (arXiv 2402.03300), Eq. 3 (PAPER.md §4).
* PPO: Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (clipped surrogate, clipped value loss).
* KL estimators k1/k2/k3: J. Schulman, "Approximating KL Divergence" (2020); k3 is the paper's.
* DPO: Rafailov et al. 2023, "Direct Preference Optimization".
* Dr. GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training" (no 1/|o|, no std: sum / constant).
* DAPO: Yu et al. 2025, "DAPO" (clip-higher eps_high = 0.28, token-level mean).
* GSPO: Zheng et al. 2025, "Group Sequence Policy Optimization" (sequence-level ratio and clipping).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from dsmath_jax.config.rl import AGGREGATIONS, RATIOS

__all__ = ["LOG_RATIO_CLAMP", "K3_MAX", "kl_k1", "kl_k2", "kl_k3", "KL_ESTIMATORS", "AGGREGATIONS", "PolicyLossConfig",
           "policy_loss",
           "aggregate", "value_loss", "dpo_loss", "sequence_logprob", "sft_loss", "rft_loss",
           "gradient_coefficient", "token_logprobs", "token_entropy"]

Aggregation = Literal["sequence_mean", "token_mean", "sum_constant"]  # AGGREGATIONS, the config schema's

_f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731

# One token must not be able to break a step. Log-ratios (policy vs old policy, reference vs policy) are clamped
# to +-LOG_RATIO_CLAMP before `exp` (exp(20) ~ 4.9e8: finite in float32 with room to multiply), and the per-token
# k3 estimate to K3_MAX; verl uses the same bounds (its `low_var_kl` clamps the log-ratio to +-20 and k3 to
# +-10). A clamped token contributes a finite value and no gradient through the clamped term (the clip's
# derivative is 0 outside its range), so the rest of the batch still updates; before the clamps a log-ratio of
# 100 made the loss or its gradient non-finite and the train step skipped the whole update.
LOG_RATIO_CLAMP = 20.0
K3_MAX = 10.0


def _on_mask(x: jax.Array, mask: jax.Array) -> jax.Array:
    """`x` as float32 with 0 off the mask (padding may hold -inf/garbage log-probs; `where`, not a product,
    so that neither the value nor the gradient picks up NaN from there)."""
    return jnp.where(jnp.asarray(mask) != 0, _f32(x), 0.0)


# ------------------------------------------------------------------------------------------ KL estimators
def kl_k1(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """k1 = log pi_theta - log pi_ref per token: unbiased for KL(pi_theta || pi_ref) under samples of
    pi_theta, but signed and high-variance."""
    return _f32(logp) - _f32(ref_logp)


def kl_k2(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """k2 = 0.5 (log pi_theta - log pi_ref)^2 per token: non-negative, biased, low variance."""
    return 0.5 * (_f32(logp) - _f32(ref_logp)) ** 2


def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """k3 = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1 per token (the paper's, PAPER.md §4): unbiased,
    non-negative, 0 where the log-probs agree. Computed as ``expm1(d) - d`` with ``d = ref - logp`` clamped to
    +-LOG_RATIO_CLAMP, and the result capped at K3_MAX (module comment): exact wherever k3 <= K3_MAX, i.e. for
    ``d`` in about [-11, 2.6]."""
    d = jnp.clip(_f32(ref_logp) - _f32(logp), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return jnp.minimum(jnp.expm1(d) - d, K3_MAX)


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


# ------------------------------------------------------------------------------------------ aggregation
def aggregate(per_token: jax.Array, mask: jax.Array, aggregation: Aggregation = "sequence_mean",
              max_len: int | None = None) -> tuple[jax.Array, jax.Array]:
    """(total, weight) of a per-token loss [batch, seq] over the response tokens, such that total/weight is:

    * "sequence_mean" (the paper's): ``1/|o_i| sum_t`` per sequence, then the mean over sequences;
      total = sum of the per-sequence means, weight = number of sequences with at least one token.
    * "token_mean" (DAPO): sum over all tokens / number of tokens; total = the sum, weight = the count.
    * "sum_constant" (Dr. GRPO): sum over tokens / (number of sequences * `max_len`), a constant per
      sequence; total = the sum, weight = number of sequences with at least one token times `max_len`.

    Rows without any response token (padding rows) count nowhere.
    """
    m = _f32(mask)
    x = _on_mask(per_token, m) * m
    lengths = m.sum(axis=1)
    sequences = (lengths > 0).astype(jnp.float32).sum()
    if aggregation == "sequence_mean":
        return (x.sum(axis=1) / jnp.maximum(lengths, 1.0)).sum(), sequences
    if aggregation == "token_mean":
        return x.sum(), lengths.sum()
    if aggregation == "sum_constant":
        if not max_len or max_len < 1:
            raise ValueError(f"aggregation 'sum_constant' needs max_len >= 1, got {max_len!r}")
        return x.sum(), sequences * float(max_len)
    raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS}")


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    m = _f32(mask)
    return (_on_mask(x, m) * m).sum() / jnp.maximum(m.sum(), 1.0)


# ------------------------------------------------------------------------------------------ GRPO / PPO
@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
    """The clipped policy-gradient loss of GRPO (PAPER.md §4 Eq. 3) and its later variants (PAPER.md §8).

    clip_eps: eps of clip(r, 1 - eps, 1 + eps_high); the paper does not state it, 0.2 is the usual default.
    clip_eps_high: upper clip (DAPO's clip-higher, e.g. 0.28); None = clip_eps (symmetric).
    beta: coefficient of the per-token KL(pi_theta || pi_ref) in the loss (paper: 0.04; 0 drops it).
    kl_estimator: "k3" (the paper's), "k1" or "k2".
    aggregation: "sequence_mean" (paper), "token_mean" (DAPO) or "sum_constant" (Dr. GRPO, needs max_len).
    ratio: "token" (PPO/GRPO) or "sequence" (GSPO: the length-normalised sequence ratio
      ``s_i = exp(mean_t(logp - old_logp))``, clipped per sequence; written in GSPO's token form
      ``s_i * pi_t / sg(pi_t)`` so that token-level advantages are allowed; with one advantage per
      sequence it is GSPO's sequence objective exactly, value and gradient). GSPO clips much tighter than
      token-level PPO (the paper uses eps 3e-4 / eps_high 4e-4).
    max_len: the constant normaliser of "sum_constant" (e.g. the generation budget, 1024 in the paper).
    """

    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    beta: float = 0.04
    kl_estimator: str = "k3"
    aggregation: Aggregation = "sequence_mean"
    ratio: Literal["token", "sequence"] = "token"
    max_len: int | None = None

    def __post_init__(self):
        if not self.clip_eps > 0 or (self.clip_eps_high is not None and not self.clip_eps_high > 0):
            raise ValueError(f"PolicyLossConfig: clip_eps/clip_eps_high must be > 0, got "
                             f"{self.clip_eps}/{self.clip_eps_high}")
        if self.beta < 0:
            raise ValueError(f"PolicyLossConfig: beta must be >= 0, got {self.beta}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"PolicyLossConfig: kl_estimator {self.kl_estimator!r} not in {tuple(KL_ESTIMATORS)}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"PolicyLossConfig: aggregation {self.aggregation!r} not in {AGGREGATIONS}")
        if self.aggregation == "sum_constant" and not (self.max_len and self.max_len >= 1):
            raise ValueError(f"PolicyLossConfig: aggregation 'sum_constant' needs max_len >= 1, got {self.max_len}")
        if self.ratio not in RATIOS:
            raise ValueError(f"PolicyLossConfig: ratio {self.ratio!r} not in {RATIOS}")

    @property
    def eps_low(self) -> float:
        return self.clip_eps

    @property
    def eps_high(self) -> float:
        return self.clip_eps if self.clip_eps_high is None else self.clip_eps_high


def policy_loss(logp: jax.Array, old_logp: jax.Array, ref_logp: jax.Array | None, advantages: jax.Array,
                mask: jax.Array, *, config: PolicyLossConfig = PolicyLossConfig(),
                is_weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array, dict]:
    """Negative GRPO objective (PAPER.md §4 Eq. 3) as (total, weight, metrics):

        loss = - agg_t[ min(r_t A_t, clip(r_t, 1 - eps, 1 + eps_high) A_t) - beta KL_t ],
        r_t = pi_theta(o_t) / pi_old(o_t) = exp(clip(logp_t - old_logp_t, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)),

    with `agg` the configured aggregation (default ``1/G sum_i 1/|o_i| sum_t``). PPO's clipped surrogate is
    the same with GAE advantages and beta = 0 (its KL sits in the reward).

    logp: [batch, seq] log pi_theta of the sampled tokens (differentiated); old_logp, ref_logp: the same
    under pi_old and pi_ref (treated as constants; ref_logp may be None when beta = 0); advantages:
    [batch, seq] per token or [batch] per sequence (constants); mask: [batch, seq] response tokens.
    is_weights: [batch, seq] constants multiplying each token's surrogate term: the truncated importance
    sampling correction for a sampler whose log-probs differ from the trainer's (Yao et al. 2025, "Your
    efficient RL framework secretly brings you off-policy RL training"; verl's and TRL's `tis`):
    ``min(pi_old(o_t) / pi_sampler(o_t), C)``.
    Metrics: pg_loss (the clipped-surrogate part of the loss) and kl_loss (the KL part before the factor
    beta), both aggregated like the loss; token means over the mask: kl, ratio_mean, advantage_mean,
    clip_frac_low / clip_frac_high (tokens whose clip is active: r < 1 - eps with A < 0, r > 1 + eps_high with
    A > 0; their gradient is zero), clip_frac (both); ratio_dev_max, the largest |r - 1| on the mask.
    """
    c = config
    m = _f32(mask)
    logp = _on_mask(logp, m)  # padding tokens: all log-probs 0, so ratios are 1 and KL 0 there
    old_logp = jax.lax.stop_gradient(_on_mask(old_logp, m))
    adv = jax.lax.stop_gradient(_f32(advantages))
    if adv.ndim == 1:
        adv = adv[:, None]
    adv = _on_mask(jnp.broadcast_to(adv, logp.shape), m)

    log_ratio = logp - old_logp
    if c.ratio == "token":
        ratio = jnp.exp(jnp.clip(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    else:  # GSPO: s_i = exp(mean_t log r_t), in the token form sg(s_i) * pi_t / sg(pi_t)
        seq_log_ratio = jnp.clip(log_ratio.sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0), -LOG_RATIO_CLAMP,
                                 LOG_RATIO_CLAMP)
        ratio = jnp.exp(jax.lax.stop_gradient(seq_log_ratio))[:, None] * jnp.exp(logp - jax.lax.stop_gradient(logp))
    clipped = jnp.clip(ratio, 1.0 - c.eps_low, 1.0 + c.eps_high)
    surrogate = jnp.minimum(ratio * adv, clipped * adv)
    pg_token = -surrogate
    if is_weights is not None:
        pg_token = pg_token * jax.lax.stop_gradient(_on_mask(_f32(is_weights), m))

    if ref_logp is not None:
        kl = KL_ESTIMATORS[c.kl_estimator](logp, jax.lax.stop_gradient(_on_mask(ref_logp, m)))
    elif c.beta != 0:
        raise ValueError(f"policy_loss: beta={c.beta} needs ref_logp (pass None only with beta=0)")
    else:
        kl = jnp.zeros_like(logp)

    pg_total, weight = aggregate(pg_token, m, c.aggregation, c.max_len)
    kl_total, _ = aggregate(kl, m, c.aggregation, c.max_len)
    total = pg_total + c.beta * kl_total

    denom = jnp.maximum(weight, 1.0)
    low = (ratio < 1.0 - c.eps_low) & (adv < 0)
    high = (ratio > 1.0 + c.eps_high) & (adv > 0)
    metrics = {
        "pg_loss": pg_total / denom,
        "kl_loss": kl_total / denom,
        "kl": _masked_mean(kl, m),
        "ratio_mean": _masked_mean(ratio, m),
        "clip_frac_low": _masked_mean(low, m),
        "clip_frac_high": _masked_mean(high, m),
        "clip_frac": _masked_mean(low | high, m),
        "ratio_dev_max": jnp.max(jnp.where(m > 0, jnp.abs(ratio - 1.0), 0.0)),
        "advantage_mean": _masked_mean(adv, m),
    }
    return total, weight, jax.lax.stop_gradient(metrics)


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array, *,
               clip_eps: float = 0.2) -> tuple[jax.Array, jax.Array, dict]:
    """PPO's clipped value loss, token mean over the mask:
    ``0.5 max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)``.

    values: [batch, seq] (differentiated); old_values (the values at sampling time) and returns (GAE
    returns): [batch, seq] constants. Metrics: value_clip_frac (tokens where the clipped term is larger),
    value_mean, return_mean.
    """
    m = _f32(mask)
    v = _on_mask(values, m)
    old = jax.lax.stop_gradient(_on_mask(old_values, m))
    ret = jax.lax.stop_gradient(_on_mask(returns, m))
    v_clipped = old + jnp.clip(v - old, -clip_eps, clip_eps)
    unclipped_sq = (v - ret) ** 2
    clipped_sq = (v_clipped - ret) ** 2
    per_token = 0.5 * jnp.maximum(unclipped_sq, clipped_sq)
    total, weight = aggregate(per_token, m, "token_mean")
    metrics = {"value_clip_frac": _masked_mean(clipped_sq > unclipped_sq, m), "value_mean": _masked_mean(v, m),
               "return_mean": _masked_mean(ret, m)}
    return total, weight, jax.lax.stop_gradient(metrics)


# ------------------------------------------------------------------------------------------ DPO
def sequence_logprob(logp: jax.Array, mask: jax.Array, *, normalize: bool = False) -> jax.Array:
    """[batch] sum of per-token log-probs [batch, seq] over the response tokens (the mean if `normalize`)."""
    m = _f32(mask)
    total = (_on_mask(logp, m) * m).sum(axis=1)
    return total / jnp.maximum(m.sum(axis=1), 1.0) if normalize else total


def dpo_loss(policy_chosen_logp: jax.Array, policy_rejected_logp: jax.Array, ref_chosen_logp: jax.Array,
             ref_rejected_logp: jax.Array, *, beta: float = 0.1, valid: jax.Array | None = None
             ) -> tuple[jax.Array, jax.Array, dict]:
    """DPO (Rafailov et al. 2023) on sequence log-probs [pairs] (:func:`sequence_logprob`):
    ``-log sigmoid(beta ((pc - rc) - (pr - rr)))``, mean over pairs (`valid` [pairs] masks padding pairs).

    Metrics: chosen_reward / rejected_reward (the implicit rewards ``beta (p - r)``, means), reward_margin
    (their mean difference) and reward_accuracy (fraction of pairs whose chosen reward is larger).
    """
    pc, pr = _f32(policy_chosen_logp), _f32(policy_rejected_logp)
    rc, rr = jax.lax.stop_gradient(_f32(ref_chosen_logp)), jax.lax.stop_gradient(_f32(ref_rejected_logp))
    w = jnp.ones_like(pc) if valid is None else _f32(valid)
    chosen_reward = beta * (pc - rc)
    rejected_reward = beta * (pr - rr)
    margin = chosen_reward - rejected_reward
    per_pair = jax.nn.softplus(-margin)  # -log sigmoid(margin)
    weight = w.sum()
    denom = jnp.maximum(weight, 1.0)
    mean = lambda x: (_f32(x) * w).sum() / denom  # noqa: E731
    metrics = {"chosen_reward": mean(chosen_reward), "rejected_reward": mean(rejected_reward),
               "reward_margin": mean(margin), "reward_accuracy": mean(margin > 0)}
    return (per_pair * w).sum(), weight, jax.lax.stop_gradient(metrics)


# ------------------------------------------------------------------------------------------ SFT / RFT
def sft_loss(logp: jax.Array, mask: jax.Array, *, aggregation: Aggregation = "sequence_mean",
             max_len: int | None = None) -> tuple[jax.Array, jax.Array, dict]:
    """SFT: negative log-likelihood of the response tokens (GC = 1, PAPER.md §5).

    Default aggregation "sequence_mean" is the paradigm's ``1/|o| sum_t`` per sequence, then the mean over
    sequences; "token_mean" is the mean over all response tokens (what `train.step.lm_loss` computes).
    """
    total, weight = aggregate(-_on_mask(logp, mask), mask, aggregation, max_len)
    return total, weight, {}


def rft_loss(logp: jax.Array, mask: jax.Array, correct: jax.Array, *, aggregation: Aggregation = "sequence_mean",
             max_len: int | None = None) -> tuple[jax.Array, jax.Array, dict]:
    """RFT and online RFT: SFT on the samples whose answer is correct (GC = 1 if correct else 0, PAPER.md §5).

    correct: [batch] bool/0-1. Incorrect samples get zero gradient and do not count in the weight (the
    loss is the mean over correct samples, i.e. SFT on the filtered data set). RFT samples come from
    pi_sft offline, online RFT from the current policy; the loss is the same.
    Metrics: correct_frac.
    """
    ok = _f32(correct)
    m = _f32(mask) * ok[:, None]
    total, weight = aggregate(-_on_mask(logp, m), m, aggregation, max_len)
    return total, weight, {"correct_frac": ok.mean()}


# ------------------------------------------------------------------------------------------ Table 10
def gradient_coefficient(method: str, **inputs) -> jax.Array | tuple[jax.Array, jax.Array]:
    """The gradient coefficient GC of PAPER.md §5 Table 10, per token ([batch, seq], 0 off the mask).

    method and its inputs (keyword arguments):
    * "sft": mask                                         -> 1
    * "rft", "online_rft": mask, correct [batch]          -> 1 if correct else 0
    * "ppo": advantages [batch, seq], mask                -> A_t (GAE), at pi_old = pi_theta
    * "grpo": advantages ([batch, seq] or [batch]), logp, ref_logp, beta, mask
                                                          -> A_t + beta (pi_ref/pi_theta - 1)  (k3 KL)
    * "dpo": policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp [pairs], beta
        -> (gc_chosen, gc_rejected), per pair and the same for every token of the sequence:
           s = sigma(beta log pi(o-)/pi_ref(o-) - beta log pi(o+)/pi_ref(o+)); +s on o+, -s on o-.
           With DPO on summed log-probs, d loss / d log pi(o_t) = -beta * GC / pairs (the paper folds the
           constant beta into the learning rate).
    """
    if method == "dpo":
        pc, pr = _f32(inputs["policy_chosen_logp"]), _f32(inputs["policy_rejected_logp"])
        rc, rr = _f32(inputs["ref_chosen_logp"]), _f32(inputs["ref_rejected_logp"])
        beta = inputs["beta"]
        s = jax.nn.sigmoid(beta * (pr - rr) - beta * (pc - rc))
        return s, -s
    m = _f32(inputs["mask"])
    if method == "sft":
        return m
    if method in ("rft", "online_rft"):
        return m * _f32(inputs["correct"])[:, None]
    adv = _f32(inputs["advantages"])
    adv = _on_mask(jnp.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, m.shape), m)
    if method == "ppo":
        return adv * m
    if method == "grpo":
        d = _on_mask(inputs["ref_logp"], m) - _on_mask(inputs["logp"], m)
        return (adv + inputs["beta"] * jnp.expm1(d)) * m
    raise ValueError(f"unknown method {method!r}; expected sft, rft, online_rft, dpo, ppo or grpo")


# ------------------------------------------------------------------------------------------ log-probs
def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log softmax(logits)[target] in float32: logits [batch, seq, vocab], targets [batch, seq] int ->
    [batch, seq] (position t's logits score targets[t])."""
    logits = _f32(logits)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def token_entropy(logits: jax.Array) -> jax.Array:
    """Entropy of softmax(logits) per position in float32: [batch, seq, vocab] -> [batch, seq]."""
    logits = _f32(logits)
    logz = jax.nn.logsumexp(logits, axis=-1)
    return logz - (jax.nn.softmax(logits, axis=-1) * logits).sum(axis=-1)
