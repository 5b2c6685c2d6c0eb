"""RL advantages and losses (PAPER.md §4, §5 Table 10, §8) against independent float64 numpy references
written here from the paper's formulas, finite-difference gradients, and hand-worked examples."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsmath_jax.rl import (
    K3_MAX,
    LOG_RATIO_CLAMP,
    PolicyLossConfig,
    dpo_loss,
    gae,
    gradient_coefficient,
    group_advantages,
    kl_k1,
    kl_k2,
    kl_k3,
    outcome_token_rewards,
    policy_loss,
    process_advantages,
    rft_loss,
    sequence_logprob,
    sft_loss,
    step_end_flags,
    step_end_indices,
    token_advantages,
    token_entropy,
    token_logprobs,
    value_loss,
)

G = 3
LENGTHS = [7, 3, 5, 1, 6, 4]  # two groups of G = 3 outputs, ragged
SEQ = 7
# log(pi_theta / pi_old) per token, cycled: values outside [log 0.8, log 1.2] hit the clips on both sides;
# 0.22 (ratio 1.246) is clipped by eps = 0.2 but not by DAPO's eps_high = 0.28.
LOG_RATIOS = [-0.5, 0.5, -0.05, 0.22, 0.3, -0.3, 0.0]


def make_batch(seed=0, lengths=LENGTHS, seq=SEQ, garbage=True):
    """Random log-probs with controlled ratios, per-sequence advantages of both signs, ragged masks.
    Padding positions hold garbage log-probs (-1e4 / 1e4) that must not leak into losses or gradients."""
    rng = np.random.default_rng(seed)
    b = len(lengths)
    mask = (np.arange(seq)[None, :] < np.array(lengths)[:, None]).astype(np.float64)
    logp = np.log(rng.uniform(0.05, 0.95, (b, seq)))
    log_ratio = np.array([[LOG_RATIOS[(i + t) % len(LOG_RATIOS)] for t in range(seq)] for i in range(b)])
    old = logp - log_ratio
    ref = logp + rng.normal(0.0, 0.4, (b, seq))
    adv_seq = np.array([1.3, -0.7, 0.4, -1.1, 0.9, -0.2])[:b]
    if garbage:
        logp = np.where(mask > 0, logp, -1e4)
        old = np.where(mask > 0, old, 1e4)
        ref = np.where(mask > 0, ref, 1e4)
    return logp, old, ref, adv_seq, mask


def np_policy_objective(logp, old, ref, adv, mask, *, eps_low=0.2, eps_high=0.2, beta=0.04, kl="k3",
                        aggregation="sequence_mean", ratio="token", max_len=None):
    """The negative GRPO objective of PAPER.md §4 Eq. 3 (and the §8 variants), loops in float64.
    adv: per sequence [batch] or per token [batch, seq]."""
    b = logp.shape[0]
    seq_terms, token_terms, n_seq = [], [], 0
    for i in range(b):
        idx = np.nonzero(mask[i])[0]
        if len(idx) == 0:
            continue
        n_seq += 1
        lp, lo, lr = logp[i, idx], old[i, idx], ref[i, idx]
        a = adv[i] if np.ndim(adv) == 1 else adv[i, idx]
        a = np.broadcast_to(a, lp.shape)
        if ratio == "token":
            r = np.exp(lp - lo)
        else:  # GSPO: one length-normalised ratio per sequence
            r = np.full(lp.shape, np.exp(np.mean(lp - lo)))
        surrogate = np.minimum(r * a, np.clip(r, 1 - eps_low, 1 + eps_high) * a)
        if kl == "k3":
            k = np.exp(lr - lp) - (lr - lp) - 1
        elif kl == "k2":
            k = 0.5 * (lp - lr) ** 2
        else:
            k = lp - lr
        per_token = surrogate - beta * k
        seq_terms.append(per_token.mean())
        token_terms.extend(per_token)
    if aggregation == "sequence_mean":
        return -np.mean(seq_terms)
    if aggregation == "token_mean":
        return -np.sum(token_terms) / len(token_terms)
    return -np.sum(token_terms) / (n_seq * max_len)


def fd_grad(fn, x, mask, h=1e-6):
    """Central finite differences of a float64 scalar function at the masked positions of x."""
    g = np.zeros_like(x)
    for i, t in zip(*np.nonzero(mask)):
        xp, xm = x.copy(), x.copy()
        xp[i, t] += h
        xm[i, t] -= h
        g[i, t] = (fn(xp) - fn(xm)) / (2 * h)
    return g


@functools.partial(jax.jit, static_argnames="config")
def _policy_value_and_grad(logp, old, ref, adv, mask, config):
    def loss(lp):
        total, weight, metrics = policy_loss(lp, old, ref, adv, mask, config=config)
        return total / weight, metrics
    return jax.value_and_grad(loss, has_aux=True)(logp)


def jax_loss_and_grad(logp, old, ref, adv, mask, config):
    """Loss total/weight, its gradient w.r.t. logp, and the metrics, from the jitted float32 loss."""
    (value, metrics), grad = _policy_value_and_grad(logp, old, ref, adv, mask, config)
    return float(value), np.asarray(grad, np.float64), metrics


def f32(*xs):
    return [jnp.asarray(x, jnp.float32) for x in xs]


# ------------------------------------------------------------------------------------------ advantages
def test_group_advantages_match_numpy_population_std():
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=(4, 5))
    mean = rewards.mean(axis=1, keepdims=True)
    std = np.sqrt(((rewards - mean) ** 2).mean(axis=1, keepdims=True))  # ddof = 0
    expected = ((rewards - mean) / (std + 1e-6)).reshape(-1)
    np.testing.assert_allclose(group_advantages(jnp.asarray(rewards, jnp.float32)), expected, rtol=1e-5, atol=1e-6)
    flat = group_advantages(jnp.asarray(rewards.reshape(-1), jnp.float32), group_size=5)
    np.testing.assert_allclose(flat, expected, rtol=1e-5, atol=1e-6)
    bessel = ((rewards - mean) / (rewards.std(axis=1, ddof=1, keepdims=True) + 1e-6)).reshape(-1)
    np.testing.assert_allclose(group_advantages(jnp.asarray(rewards, jnp.float32), ddof=1), bessel, rtol=1e-5,
                               atol=1e-6)
    # a group of two with rewards {0, 1}: population std 0.5 -> advantages -1, +1
    np.testing.assert_allclose(group_advantages(jnp.array([[0.0, 1.0]])), [-1.0, 1.0], rtol=1e-5)


def test_group_advantages_identical_rewards_are_zero_and_dr_grpo_only_centres():
    rewards = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    adv = np.asarray(group_advantages(rewards, group_size=4))
    assert np.all(np.isfinite(adv))
    np.testing.assert_array_equal(adv[:4], 0.0)
    np.testing.assert_allclose(adv[4:], np.array([-0.25, 0.75, -0.25, -0.25]) / (np.sqrt(0.1875) + 1e-6), rtol=1e-5)
    np.testing.assert_allclose(group_advantages(rewards, group_size=4, scale=False),
                               [0, 0, 0, 0, -0.25, 0.75, -0.25, -0.25], atol=1e-7)
    mask = jnp.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(token_advantages(jnp.array([2.0, -1.0]), mask), [[2, 2, 0], [-1, 0, 0]])
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(rewards, group_size=3)


def test_process_advantages_hand_worked_example():
    """One group of G = 2 outputs (PAPER.md §4 process supervision), 6 token positions.

    Output A: 4 response tokens, 2 steps ending at tokens 1 and 3, step rewards 0.7, 0.6.
    Output B: 6 response tokens, 3 steps ending at tokens 0, 2 and 5, step rewards 0.3, 0.4, 0.5.
    Joint mean of the 5 step rewards: 2.5 / 5 = 0.5; deviations .2, .1, -.2, -.1, 0; population variance
    (.04 + .01 + .04 + .01) / 5 = 0.02, std = 0.1 * sqrt(2). Normalised: A = [sqrt2, 1/sqrt2],
    B = [-sqrt2, -1/sqrt2, 0]. A token's advantage sums the normalised rewards of the steps ending at or after it:
      A: t0, t1 -> sqrt2 + 1/sqrt2 = 3/sqrt2; t2, t3 -> 1/sqrt2; t4, t5 off the mask -> 0.
      B: t0 -> -sqrt2 - 1/sqrt2 + 0 = -3/sqrt2; t1, t2 -> -1/sqrt2 + 0; t3, t4, t5 -> 0.
    A second group, the same rewards shifted by +10, must give the same advantages (groups are separate).
    """
    s2 = math.sqrt(2.0)
    step_rewards = np.array([[0.7, 0.6, 0.0], [0.3, 0.4, 0.5]])
    step_ends = np.array([[1, 3, -1], [0, 2, 5]])
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    expected = np.array([[3 / s2, 3 / s2, 1 / s2, 1 / s2, 0, 0], [-3 / s2, -1 / s2, -1 / s2, 0, 0, 0]])
    rewards2 = np.concatenate([step_rewards, step_rewards + 10.0])
    rewards2[0, 2] = 123.0  # an absent step's reward is ignored
    got = jax.jit(process_advantages, static_argnums=3, static_argnames="eps")(
        jnp.asarray(rewards2, jnp.float32), jnp.asarray(np.tile(step_ends, (2, 1))), None, 2,
        jnp.asarray(np.tile(mask, (2, 1))), eps=0.0)
    np.testing.assert_allclose(got, np.tile(expected, (2, 1)), rtol=1e-4, atol=1e-5)
    # the step ends recovered from "a step ends here" flags
    flags = np.zeros((2, 6), bool)
    flags[0, [1, 3]] = True
    flags[1, [0, 2, 5]] = True
    np.testing.assert_array_equal(step_end_indices(jnp.asarray(flags), 3), step_ends)
    np.testing.assert_array_equal(step_end_indices(jnp.asarray(flags), 2), [[1, 3], [0, 2]])  # extra steps drop
    # step-end flags from delimiter tokens (9 = newline), plus the last response token of each row
    tokens = jnp.array([[5, 9, 5, 5, 0, 0], [9, 5, 9, 5, 5, 5]])
    np.testing.assert_array_equal(jax.jit(step_end_flags)(tokens, jnp.array([9]), jnp.asarray(mask)), flags)
    got_jit = jax.jit(process_advantages, static_argnums=3)(
        jnp.asarray(step_rewards, jnp.float32), jnp.asarray(step_ends), None, 2, jnp.asarray(mask))
    np.testing.assert_allclose(got_jit, expected, rtol=1e-4, atol=1e-4)


def np_gae(rewards, values, mask, gamma, lam):
    """Reverse GAE loop over each row's response tokens (Schulman et al. 2016)."""
    adv = np.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        idx = np.nonzero(mask[i])[0]
        last = 0.0
        for k in reversed(range(len(idx))):
            t = idx[k]
            next_value = values[i, idx[k + 1]] if k + 1 < len(idx) else 0.0
            delta = rewards[i, t] + gamma * next_value - values[i, t]
            last = delta + gamma * lam * last
            adv[i, t] = last
    return adv, (adv + values) * mask


def test_gae_matches_numpy_reverse_loop_with_outcome_reward_on_last_token():
    rng = np.random.default_rng(2)
    b, seq = 4, 9
    mask = np.zeros((b, seq))
    for i, (start, end) in enumerate([(2, 9), (3, 6), (0, 4), (5, 6)]):  # prompt tokens before, padding after
        mask[i, start:end] = 1
    outcome = np.array([1.0, 0.0, -1.0, 1.0])
    token_rewards = np.asarray(outcome_token_rewards(jnp.asarray(outcome), jnp.asarray(mask)))
    expected_rewards = np.zeros((b, seq))
    for i, last in enumerate([8, 5, 3, 5]):
        expected_rewards[i, last] = outcome[i]
    np.testing.assert_array_equal(token_rewards, expected_rewards)
    gae_jit = jax.jit(gae, static_argnames=("gamma", "lam"))
    rewards = token_rewards + 0.05 * rng.normal(size=(b, seq)) * mask  # e.g. a per-token KL penalty
    values = rng.normal(size=(b, seq))
    for gamma, lam in [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0)]:
        adv, ret = gae_jit(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32), jnp.asarray(mask),
                       gamma=gamma, lam=lam)
        ref_adv, ref_ret = np_gae(rewards, values, mask, gamma, lam)
        np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-5)
    # lam = gamma = 1: the advantage is the return to go minus the value
    adv, _ = gae_jit(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32), jnp.asarray(mask),
                 gamma=1.0, lam=1.0)
    to_go = np.flip(np.cumsum(np.flip(rewards * mask, 1), 1), 1)
    np.testing.assert_allclose(adv, (to_go - values) * mask, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ KL
def test_kl_estimators():
    rng = np.random.default_rng(3)
    logp = rng.normal(-2.0, 2.0, 1000)
    ref = logp + rng.normal(0.0, 3.0, 1000)
    d = ref - logp
    np.testing.assert_allclose(kl_k1(logp, ref), logp - ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kl_k2(logp, ref), 0.5 * (logp - ref) ** 2, rtol=1e-5, atol=1e-5)
    k3 = np.asarray(kl_k3(logp, ref))
    exact = np.exp(d) - d - 1
    assert (exact > K3_MAX).any() and (exact <= K3_MAX).any()  # both sides of the cap are exercised
    np.testing.assert_allclose(k3, np.minimum(exact, K3_MAX), rtol=1e-4, atol=1e-5)
    assert np.all(k3 >= 0)
    np.testing.assert_array_equal(kl_k3(logp, logp), 0.0)
    # k1 and k3 are unbiased for KL(p || q) under samples of p: check on a small discrete distribution
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.5, 0.3])
    exact = np.sum(p * np.log(p / q))
    lp, lq = np.log(p), np.log(q)
    assert float(np.sum(p * np.asarray(kl_k1(lp, lq)))) == pytest.approx(exact, rel=1e-5)
    assert float(np.sum(p * np.asarray(kl_k3(lp, lq)))) == pytest.approx(exact, rel=1e-5)


# ------------------------------------------------------------------------------------------ GRPO
def test_grpo_loss_and_gradient_match_numpy():
    logp, old, ref, adv, mask = make_batch()
    cfg = PolicyLossConfig(clip_eps=0.2, beta=0.04)
    value, grad, metrics = jax_loss_and_grad(*f32(logp, old, ref, adv, mask), cfg)
    fn = lambda lp: np_policy_objective(lp, old, ref, adv, mask)  # noqa: E731
    assert value == pytest.approx(fn(logp), rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(grad, fd_grad(fn, logp, mask), rtol=1e-4, atol=1e-6)
    assert np.all(grad[mask == 0] == 0)
    # the batch hits both clips with advantages of both signs
    r = np.exp(logp - old)
    a = np.broadcast_to(adv[:, None], r.shape)
    on = mask > 0
    for case in [(r > 1.2) & (a > 0), (r > 1.2) & (a < 0), (r < 0.8) & (a < 0), (r < 0.8) & (a > 0)]:
        assert np.any(case & on)
    assert float(metrics["clip_frac_low"]) == pytest.approx(np.mean(((r < 0.8) & (a < 0))[on]), rel=1e-6)
    assert float(metrics["clip_frac_high"]) == pytest.approx(np.mean(((r > 1.2) & (a > 0))[on]), rel=1e-6)
    assert float(metrics["ratio_mean"]) == pytest.approx(np.mean(r[on]), rel=1e-5)
    d = (ref - logp)[on]
    assert float(metrics["kl"]) == pytest.approx(np.mean(np.exp(d) - d - 1), rel=1e-5)
    pg = np_policy_objective(logp, old, ref, adv, mask, beta=0.0)
    assert float(metrics["pg_loss"]) == pytest.approx(pg, rel=1e-5)
    # clipped tokens get no policy-gradient signal: with beta = 0 their gradient is exactly zero
    _, grad0, _ = jax_loss_and_grad(*f32(logp, old, ref, adv, mask), PolicyLossConfig(beta=0.0))
    clipped = (((r > 1.2) & (a > 0)) | ((r < 0.8) & (a < 0))) & on
    assert np.all(grad0[clipped] == 0) and np.all(grad0[~clipped & on] != 0)


@pytest.mark.parametrize("kl", ["k1", "k2"])
def test_grpo_other_kl_estimators(kl):
    logp, old, ref, adv, mask = make_batch(seed=4)
    cfg = PolicyLossConfig(beta=0.1, kl_estimator=kl)
    value, grad, _ = jax_loss_and_grad(*f32(logp, old, ref, adv, mask), cfg)
    fn = lambda lp: np_policy_objective(lp, old, ref, adv, mask, beta=0.1, kl=kl)  # noqa: E731
    assert value == pytest.approx(fn(logp), rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(grad, fd_grad(fn, logp, mask), rtol=1e-4, atol=1e-6)


def test_grpo_per_token_advantages_process_supervision():
    logp, old, ref, _, mask = make_batch(seed=5)
    adv = np.random.default_rng(5).normal(size=logp.shape) * mask
    value, grad, _ = jax_loss_and_grad(*f32(logp, old, ref, adv, mask), PolicyLossConfig())
    fn = lambda lp: np_policy_objective(lp, old, ref, adv, mask)  # noqa: E731
    assert value == pytest.approx(fn(logp), rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(grad, fd_grad(fn, logp, mask), rtol=1e-4, atol=1e-6)


def test_grpo_gradient_is_the_gradient_coefficient_of_table_10():
    """With pi_old = pi_theta (first of mu updates), d loss / d log pi_t = -(1/(G|o_i|)) GC_t with
    GC_t = A_t + beta (pi_ref/pi_theta - 1) (PAPER.md §5 Table 10, k3 KL). And through the logits:
    d loss / d z = -sum_t 1/(G|o_i|) GC_t (onehot(o_t) - softmax(z_t))."""
    rng = np.random.default_rng(6)
    lengths, seq, vocab, beta = [5, 2, 4, 3], 5, 11, 0.04
    g = len(lengths)
    mask = (np.arange(seq)[None, :] < np.array(lengths)[:, None]).astype(np.float64)
    logits = rng.normal(size=(g, seq, vocab))
    targets = rng.integers(0, vocab, (g, seq))
    ref_logits = logits + 0.5 * rng.normal(size=logits.shape)
    logsm = lambda z: z - np.log(np.exp(z).sum(-1, keepdims=True))  # noqa: E731
    logp = np.take_along_axis(logsm(logits), targets[..., None], -1)[..., 0]
    ref = np.take_along_axis(logsm(ref_logits), targets[..., None], -1)[..., 0]
    rewards = np.array([1.0, 0.0, 0.0, 1.0])
    adv = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
    gc = (adv[:, None] + beta * (np.exp(ref - logp) - 1)) * mask
    np.testing.assert_allclose(
        gradient_coefficient("grpo", advantages=adv, logp=logp, ref_logp=ref, beta=beta, mask=mask), gc,
        rtol=1e-5, atol=1e-6)
    cfg = PolicyLossConfig(beta=beta)
    _, grad, _ = jax_loss_and_grad(*f32(logp, logp, ref, adv, mask), cfg)
    expected = -gc / (g * np.maximum(mask.sum(1, keepdims=True), 1))
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)

    def loss_of_logits(z):
        lp = token_logprobs(z, jnp.asarray(targets))
        total, weight, _ = policy_loss(lp, jax.lax.stop_gradient(lp), jnp.asarray(ref, jnp.float32),
                                       jnp.asarray(adv, jnp.float32), jnp.asarray(mask), config=cfg)
        return total / weight

    grad_z = np.asarray(jax.jit(jax.grad(loss_of_logits))(jnp.asarray(logits, jnp.float32)))
    softmax = np.exp(logsm(logits))
    grad_log_pi = np.eye(vocab)[targets] - softmax  # d log pi(o_t) / d z_t
    np.testing.assert_allclose(grad_z, expected[..., None] * grad_log_pi, rtol=1e-4, atol=1e-6)


def test_dr_grpo_matches_formula():
    """Dr. GRPO: advantages r - mean(r) (no std), loss = sum over tokens / (G * max_len) (no 1/|o|)."""
    logp, old, ref, _, mask = make_batch(seed=7)
    rewards = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    adv_np = rewards - rewards.reshape(-1, G).mean(1).repeat(G)
    adv = np.asarray(group_advantages(jnp.asarray(rewards, jnp.float32), group_size=G, scale=False))
    np.testing.assert_allclose(adv, adv_np, atol=1e-6)
    cfg = PolicyLossConfig(beta=0.04, aggregation="sum_constant", max_len=10)
    value, grad, _ = jax_loss_and_grad(*f32(logp, old, ref, adv_np, mask), cfg)
    fn = lambda lp: np_policy_objective(lp, old, ref, adv_np, mask, aggregation="sum_constant",  # noqa: E731
                                        max_len=10)
    assert value == pytest.approx(fn(logp), rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(grad, fd_grad(fn, logp, mask), rtol=1e-4, atol=1e-6)


def test_dapo_clip_higher_token_mean_matches_formula():
    logp, old, ref, adv, mask = make_batch(seed=8)
    cfg = PolicyLossConfig(clip_eps=0.2, clip_eps_high=0.28, beta=0.0, aggregation="token_mean")
    value, grad, metrics = jax_loss_and_grad(*f32(logp, old), None, *f32(adv, mask), cfg)
    fn = lambda lp: np_policy_objective(lp, old, ref, adv, mask, eps_high=0.28, beta=0.0,  # noqa: E731
                                        aggregation="token_mean")
    assert value == pytest.approx(fn(logp), rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(grad, fd_grad(fn, logp, mask), rtol=1e-4, atol=1e-6)
    # ratio 1.246 with A > 0 is clipped symmetrically but not with eps_high = 0.28
    r, a = np.exp(logp - old), np.broadcast_to(adv[:, None], logp.shape)
    between = (r > 1.2) & (r < 1.28) & (a > 0) & (mask > 0)
    assert np.any(between) and np.all(grad[between] != 0)
    assert float(metrics["clip_frac_high"]) == pytest.approx(np.mean(((r > 1.28) & (a > 0))[mask > 0]))
    _, grad_sym, _ = jax_loss_and_grad(*f32(logp, old), None, *f32(adv, mask),
                                       PolicyLossConfig(beta=0.0, aggregation="token_mean"))
    assert np.all(grad_sym[between] == 0)


def test_gspo_sequence_ratio_matches_formula():
    """GSPO: s_i = exp(mean_t log(pi_theta/pi_old)), objective min(s_i A_i, clip(s_i) A_i) per sequence."""
    logp, old, ref, adv, mask = make_batch(seed=9)
    rng = np.random.default_rng(9)
    shift = np.array([-0.4, 0.3, 0.0, 0.1, -0.1, 0.5])[:, None]  # some sequences clip, some do not
    old = np.where(mask > 0, logp - shift - 0.05 * rng.normal(size=logp.shape), old)
    s = np.array([np.exp(np.mean((logp - old)[i, mask[i] > 0])) for i in range(len(LENGTHS))])
    assert np.any(s > 1.2) and np.any(s < 0.8) and np.any((s > 0.8) & (s < 1.2))
    for beta in (0.0, 0.04):
        cfg = PolicyLossConfig(beta=beta, ratio="sequence")
        value, grad, metrics = jax_loss_and_grad(*f32(logp, old, ref, adv, mask), cfg)
        fn = lambda lp: np_policy_objective(lp, old, ref, adv, mask, beta=beta, ratio="sequence")  # noqa: E731, B023
        assert value == pytest.approx(fn(logp), rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(grad, fd_grad(fn, logp, mask), rtol=1e-4, atol=1e-6)
    seq_means = [-min(s[i] * adv[i], np.clip(s[i], 0.8, 1.2) * adv[i]) for i in range(len(s))]
    assert float(metrics["pg_loss"]) == pytest.approx(np.mean(seq_means), rel=1e-5)
    # GSPO-token (token-level advantages): s_it = sg(s_i) pi_t / sg(pi_t), so on sequences whose ratio is not
    # clipped d loss / d log pi_t = -s_i A_it / (N |o_i|)
    adv_tok = np.random.default_rng(1).normal(size=logp.shape) * mask
    _, grad, _ = jax_loss_and_grad(*f32(logp, old), None, *f32(adv_tok, mask),
                                   PolicyLossConfig(beta=0.0, ratio="sequence"))
    inside = (s > 0.8) & (s < 1.2)
    expected = -s[:, None] * adv_tok / (len(s) * mask.sum(1, keepdims=True))
    np.testing.assert_allclose(grad[inside], expected[inside], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cfg", [
    PolicyLossConfig(),
    PolicyLossConfig(aggregation="token_mean", clip_eps_high=0.28),
    PolicyLossConfig(aggregation="sum_constant", max_len=16),
    PolicyLossConfig(ratio="sequence", kl_estimator="k2"),
], ids=["sequence_mean", "token_mean", "sum_constant", "gspo"])
def test_policy_loss_total_and_weight_split_exactly(cfg):
    """(t1 + t2) / (w1 + w2) over two halves equals the whole batch's loss (gradient accumulation stays
    exact), with an empty padding row in the second half; and the loss jits with the config static."""
    logp, old, ref, adv, mask = make_batch(seed=10, lengths=[7, 3, 5, 1, 0, 4])
    args = f32(logp, old, ref, adv, mask)
    loss = jax.jit(policy_loss, static_argnames="config")
    t, w, _ = loss(*args, config=cfg)
    t1, w1, _ = loss(*[a[:3] for a in args], config=cfg)
    t2, w2, _ = loss(*[a[3:] for a in args], config=cfg)
    assert float((t1 + t2) / (w1 + w2)) == pytest.approx(float(t / w), rel=1e-6)
    expected_weight = {"sequence_mean": 5, "token_mean": 20, "sum_constant": 5 * 16}[cfg.aggregation]
    assert float(w) == expected_weight
    ref_loss = np_policy_objective(logp, old, ref, adv, mask, eps_high=cfg.eps_high, kl=cfg.kl_estimator,
                                   aggregation=cfg.aggregation, ratio=cfg.ratio, max_len=cfg.max_len)
    assert float(t / w) == pytest.approx(ref_loss, rel=1e-5)


def test_policy_loss_config_validation():
    with pytest.raises(ValueError, match="max_len"):
        PolicyLossConfig(aggregation="sum_constant")
    with pytest.raises(ValueError, match="kl_estimator"):
        PolicyLossConfig(kl_estimator="k4")
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(*f32(np.zeros((1, 2)), np.zeros((1, 2))), None, *f32(np.zeros(1), np.ones((1, 2))))


# ------------------------------------------------------------------------------------------ PPO value loss
def test_value_loss_matches_formula_and_splits():
    rng = np.random.default_rng(11)
    b, seq, eps = 4, 6, 0.2
    mask = (np.arange(seq)[None, :] < np.array([6, 2, 4, 3])[:, None]).astype(np.float64)
    values, old, returns = rng.normal(size=(3, b, seq))
    v_clip = old + np.clip(values - old, -eps, eps)
    per_token = 0.5 * np.maximum((values - returns) ** 2, (v_clip - returns) ** 2)
    expected = (per_token * mask).sum() / mask.sum()
    args = f32(values, old, returns, mask)
    total, weight, metrics = jax.jit(value_loss)(*args, clip_eps=eps)
    assert float(total / weight) == pytest.approx(expected, rel=1e-5)
    t1, w1, _ = value_loss(*[a[:2] for a in args], clip_eps=eps)
    t2, w2, _ = value_loss(*[a[2:] for a in args], clip_eps=eps)
    assert float((t1 + t2) / (w1 + w2)) == pytest.approx(expected, rel=1e-5)
    frac = np.mean(((v_clip - returns) ** 2 > (values - returns) ** 2)[mask > 0])
    assert float(metrics["value_clip_frac"]) == pytest.approx(frac)
    grad = np.asarray(jax.jit(jax.grad(lambda v: value_loss(v, *args[1:], clip_eps=eps)[0]))(args[0]))
    use_clipped = (v_clip - returns) ** 2 > (values - returns) ** 2
    inside = np.abs(values - old) < eps
    expected_grad = np.where(use_clipped, np.where(inside, v_clip - returns, 0.0), values - returns) * mask
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ DPO
def test_dpo_loss_matches_formula_and_gradient_coefficient():
    rng = np.random.default_rng(12)
    n, beta = 5, 0.1
    pc, pr, rc, rr = rng.normal(-20.0, 5.0, (4, n))
    margin = beta * ((pc - rc) - (pr - rr))
    expected = np.mean(np.log1p(np.exp(-margin)))
    args = f32(pc, pr, rc, rr)
    total, weight, metrics = dpo_loss(*args, beta=beta)
    assert float(total / weight) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["reward_accuracy"]) == pytest.approx(np.mean(margin > 0))
    assert float(metrics["reward_margin"]) == pytest.approx(np.mean(margin), rel=1e-5)
    assert float(metrics["chosen_reward"]) == pytest.approx(np.mean(beta * (pc - rc)), rel=1e-5)
    g_c, g_r = jax.grad(lambda a, b: (lambda t, w, _: t / w)(*dpo_loss(a, b, *args[2:], beta=beta)),
                        argnums=(0, 1))(*args[:2])
    gc_chosen, gc_rejected = gradient_coefficient("dpo", policy_chosen_logp=pc, policy_rejected_logp=pr,
                                                  ref_chosen_logp=rc, ref_rejected_logp=rr, beta=beta)
    sig = 1 / (1 + np.exp(-(beta * (pr - rr) - beta * (pc - rc))))
    np.testing.assert_allclose(gc_chosen, sig, rtol=1e-5)
    np.testing.assert_allclose(gc_rejected, -sig, rtol=1e-5)
    np.testing.assert_allclose(g_c, -beta * sig / n, rtol=1e-4)  # + on o+
    np.testing.assert_allclose(g_r, beta * sig / n, rtol=1e-4)  # - on o-
    # padding pairs do not count; halves add up
    valid = jnp.array([1, 1, 1, 0, 1.0])
    t, w, _ = dpo_loss(*args, beta=beta, valid=valid)
    assert float(t / w) == pytest.approx(np.mean(np.log1p(np.exp(-margin))[[0, 1, 2, 4]]), rel=1e-5)
    t1, w1, _ = dpo_loss(*[a[:2] for a in args], beta=beta, valid=valid[:2])
    t2, w2, _ = dpo_loss(*[a[2:] for a in args], beta=beta, valid=valid[2:])
    assert float((t1 + t2) / (w1 + w2)) == pytest.approx(float(t / w), rel=1e-6)
    # sequence log-probs: sums (or means) over the response tokens
    logp = rng.normal(size=(2, 4))
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1.0]])
    np.testing.assert_allclose(sequence_logprob(*f32(logp, mask)), (logp * mask).sum(1), rtol=1e-5)
    np.testing.assert_allclose(sequence_logprob(*f32(logp, mask), normalize=True), (logp * mask).sum(1) / [2, 4],
                               rtol=1e-5)


# ------------------------------------------------------------------------------------------ SFT / RFT
def test_sft_and_rft_losses_and_coefficients():
    logp, _, _, _, mask = make_batch(seed=13)
    correct = np.array([1, 0, 1, 1, 0, 0])
    on = mask > 0
    per_seq = np.array([-logp[i, on[i]].mean() for i in range(len(LENGTHS))])
    total, weight, _ = sft_loss(*f32(logp, mask))
    assert float(total / weight) == pytest.approx(per_seq.mean(), rel=1e-5)
    total, weight, _ = sft_loss(*f32(logp, mask), aggregation="token_mean")
    assert float(total / weight) == pytest.approx(-logp[on].mean(), rel=1e-5)

    def rft(lp):
        total, weight, _ = rft_loss(lp, *f32(mask, correct))
        return total / weight
    value, grad = jax.jit(jax.value_and_grad(rft))(jnp.asarray(logp, jnp.float32))
    assert float(value) == pytest.approx(per_seq[correct == 1].mean(), rel=1e-5)
    grad = np.asarray(grad)
    assert np.all(grad[correct == 0] == 0)  # incorrect samples are ignored
    gc = np.asarray(gradient_coefficient("rft", mask=mask, correct=correct))
    np.testing.assert_array_equal(gc, mask * correct[:, None])
    # d loss / d log pi_t = -(1/(N_correct |o|)) GC_t
    np.testing.assert_allclose(grad, -gc / (correct.sum() * np.maximum(mask.sum(1, keepdims=True), 1)),
                               rtol=1e-5, atol=1e-7)
    grad_sft = np.asarray(jax.jit(jax.grad(lambda lp: (lambda t, w, _: t / w)(*sft_loss(lp, jnp.asarray(mask)))))(
        jnp.asarray(logp, jnp.float32)))
    gc_sft = np.asarray(gradient_coefficient("sft", mask=mask))
    np.testing.assert_allclose(grad_sft, -gc_sft / (len(LENGTHS) * mask.sum(1, keepdims=True)), rtol=1e-5)
    gae_adv = np.random.default_rng(0).normal(size=mask.shape)
    np.testing.assert_allclose(gradient_coefficient("ppo", advantages=gae_adv, mask=mask), gae_adv * mask,
                               rtol=1e-6)
    for agg in ("sequence_mean", "token_mean"):
        fn = functools.partial(rft_loss, aggregation=agg)
        args = f32(logp, mask, correct)
        t, w, _ = fn(*args)
        t1, w1, _ = fn(*[a[:2] for a in args])
        t2, w2, _ = fn(*[a[2:] for a in args])
        assert float((t1 + t2) / (w1 + w2)) == pytest.approx(float(t / w), rel=1e-6)


# ------------------------------------------------------------------------------------------ log-probs
def test_token_logprobs_and_entropy_match_numpy():
    rng = np.random.default_rng(14)
    logits = rng.normal(0.0, 3.0, (2, 5, 13))
    targets = rng.integers(0, 13, (2, 5))
    logsm = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = np.take_along_axis(logsm, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(token_logprobs(jnp.asarray(logits, jnp.float32), jnp.asarray(targets)), expected,
                               rtol=1e-5, atol=1e-5)
    entropy = -(np.exp(logsm) * logsm).sum(-1)
    np.testing.assert_allclose(token_entropy(jnp.asarray(logits, jnp.float32)), entropy, rtol=1e-5, atol=1e-5)
    assert token_logprobs(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(targets)).dtype == jnp.float32


# ------------------------------------------------------------------------------------------ clamps
@pytest.mark.parametrize("ratio", ["token", "sequence"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_one_runaway_token_keeps_the_update(ratio, sign):
    """A token whose log-ratio to the old policy is +-100 and whose reference log-prob is 94 nats above the
    policy's (both once gave inf/NaN losses or gradients, and the train step then skipped the whole update):
    the loss and gradient stay finite, the runaway token's clamped terms add no gradient, and every other
    token's gradient is what it is without the runaway token."""
    logp, old, ref, adv, mask = make_batch(garbage=False)
    config = PolicyLossConfig(beta=0.04, ratio=ratio)
    _, base_grad, _ = jax_loss_and_grad(*f32(logp, old, ref, adv, mask), config)
    bad_old, bad_ref = old.copy(), ref.copy()
    bad_old[0, 2] = logp[0, 2] - sign * 100.0  # log-ratio +-100
    bad_ref[0, 4] = logp[0, 4] + 94.0  # k3's exp(94) overflows float32
    value, grad, metrics = jax_loss_and_grad(*f32(logp, bad_old, bad_ref, adv, mask), config)
    assert math.isfinite(value) and np.isfinite(grad).all()
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(np.abs(grad).sum()) > 0
    # the clamped k3 token: exactly K3_MAX in the KL estimate, no KL gradient
    assert float(kl_k3(jnp.float32(logp[0, 4]), jnp.float32(bad_ref[0, 4]))) == K3_MAX
    if ratio == "token":
        # rows other than the runaway tokens' row are untouched (sequence_mean aggregation: rows independent)
        np.testing.assert_allclose(grad[1:], base_grad[1:], rtol=1e-5, atol=1e-7)
        # the runaway ratio token: clamped at exp(+-20), no gradient through the ratio
        r = float(jnp.exp(jnp.clip(jnp.float32(sign * 100.0), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)))
        assert r == pytest.approx(math.exp(sign * LOG_RATIO_CLAMP), rel=1e-5)
        # what is left is the KL term: d(beta k3)/d logp = -beta expm1(ref - logp), times 1/(sequences |o_0|)
        kl_grad_only = -0.04 * float(np.expm1(ref[0, 2] - logp[0, 2])) / (len(LENGTHS) * LENGTHS[0])
        assert grad[0, 2] == pytest.approx(kl_grad_only, rel=1e-4, abs=1e-7)


def test_nonfinite_response_logprob_names_the_row():
    from dsmath_jax.rl.grpo import check_response_logprobs
    logp = np.zeros((4, 5), np.float32)
    weights = np.zeros((4, 5), np.float32)
    weights[:, 2:] = 1.0
    logp[1, 0] = -np.inf  # a prompt position: not a response token, ignored
    check_response_logprobs("reference", logp, weights)
    check_response_logprobs("reference", jnp.asarray(logp), jnp.asarray(weights))
    logp[2, 3] = -np.inf
    logp[3, 4] = np.nan
    for lp, w in ((logp, weights), (jnp.asarray(logp), jnp.asarray(weights))):
        with pytest.raises(ValueError, match=r"reference log-probs: .* 2 row\(s\): row 2 \(q7\); row 3 \(q7\)"):
            check_response_logprobs("reference", lp, w, lambda r: f"row {r} (q7)")
