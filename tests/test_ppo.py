"""PPO with a critic (PAPER.md §4.1 Eq. 1-2): per-token KL rewards, GAE + whitening, value alignment, the
critic's training and the policy step, each against a numpy reference or a hand-worked example."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dsmath_jax.generate.sampler import Completion
from dsmath_jax.model import CausalLM, ScalarHeadModel, get_params, get_preset
from dsmath_jax.parallel import create_sharded, make_mesh
from dsmath_jax.rl.grpo import rollout_batch, sequence_logprobs
from dsmath_jax.rl.losses import PolicyLossConfig
from dsmath_jax.rl.ppo import (
    critic_from_policy,
    critic_from_reward_model,
    critic_loss_fn,
    make_ppo_steps,
    ppo_advantages,
    ppo_batch,
    ppo_policy_loss_fn,
    ppo_token_rewards,
    values_for_batch,
)
from dsmath_jax.train.step import make_train_step


def _tiny():
    return get_preset("tiny", initializer_range=0.1, max_seq_len=64)


def _np_gae(rewards, values, mask, gamma, lam):
    """Textbook GAE, one row at a time over the response tokens only (reference for `ppo_advantages`)."""
    adv = np.zeros_like(rewards)
    for r in range(rewards.shape[0]):
        steps = np.flatnonzero(mask[r])
        next_value, next_adv = 0.0, 0.0
        for t in steps[::-1]:
            delta = rewards[r, t] + gamma * next_value - values[r, t]
            next_adv = delta + gamma * lam * next_adv
            next_value = values[r, t]
            adv[r, t] = next_adv
    return adv, (adv + values) * mask


def test_ppo_token_rewards_hand_example():
    mask = np.array([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], np.float32)
    old = np.array([[9.0, -1.0, -0.5, -2.0, 9.0], [-0.2, -0.3, 9, 9, 9], [9, 9, 9, 9, 9]], np.float32)
    ref = np.array([[0.0, -1.5, -0.5, -1.0, 0.0], [-0.7, -0.1, 0, 0, 0], [0, 0, 0, 0, 0]], np.float32)
    scores = np.array([1.0, -0.5, 3.0], np.float32)
    got = np.asarray(ppo_token_rewards(scores, old, ref, mask, kl_coef=0.1))
    # Row 0: -0.1 * (old - ref) = [., -0.05, 0, +0.1, .], the score 1.0 on the last response token (index 3).
    # Row 1: [-0.05, +0.02 - 0.5]. Row 2 has no response token: all zero, its score dropped.
    want = np.array([[0, -0.05, 0.0, 0.1 + 1.0, 0], [-0.05, 0.02 - 0.5, 0, 0, 0], [0, 0, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="scores must be"):
        ppo_token_rewards(scores[:2], old, ref, mask, kl_coef=0.1)


def test_ppo_advantages_gae_and_whitening_match_numpy():
    rng = np.random.default_rng(0)
    mask = np.zeros((4, 9), np.float32)
    for r, (a, b) in enumerate([(2, 9), (0, 5), (3, 4), (1, 8)]):
        mask[r, a:b] = 1
    rewards = (rng.normal(size=mask.shape) * mask).astype(np.float32)
    values = rng.normal(size=mask.shape).astype(np.float32) * mask
    raw, ret = ppo_advantages(rewards, values, mask, gamma=0.9, lam=0.8, whiten=False)
    want_adv, want_ret = _np_gae(rewards, values, mask, 0.9, 0.8)
    np.testing.assert_allclose(np.asarray(raw), want_adv, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), want_ret, atol=1e-5)

    adv, ret_w = ppo_advantages(rewards, values, mask, gamma=0.9, lam=0.8, whiten=True)
    on = mask > 0
    expected = np.zeros_like(want_adv)
    expected[on] = (want_adv[on] - want_adv[on].mean()) / want_adv[on].std()
    np.testing.assert_allclose(np.asarray(adv), expected, atol=1e-5)
    assert abs(np.asarray(adv)[on].mean()) < 1e-6 and abs(np.asarray(adv)[on].std() - 1) < 1e-5
    np.testing.assert_allclose(np.asarray(ret_w), want_ret, atol=1e-5)  # returns are not whitened


def test_values_for_batch_is_the_critic_before_each_target():
    mesh = make_mesh({"fsdp": 8})
    policy = create_sharded(lambda: CausalLM(_tiny(), rngs=nnx.Rngs(0)), mesh)
    critic = critic_from_policy(policy, mesh, seed=3)
    # The trunk is a copy of the policy's; the head is new.
    np.testing.assert_array_equal(np.asarray(get_params(critic)["decoder"]["embed"]),
                                  np.asarray(get_params(policy)["decoder"]["embed"]))
    assert float(jnp.abs(critic.head[...]).sum()) > 0
    # Ouyang et al.'s initialisation: a critic copied from a reward model, head included.
    from_rm = critic_from_reward_model(critic, mesh)
    np.testing.assert_array_equal(np.asarray(from_rm.head[...]), np.asarray(critic.head[...]))
    assert from_rm.head[...] is not critic.head[...]

    prompts = [[5, 6, 7], [9]]
    comps = [[Completion(0, 0, [1, 2], [-0.1, -0.2], "", "length")],
             [Completion(1, 0, [3, 4, 8], [-0.3, -0.4, -0.5], "", "length")]]
    batch = rollout_batch(prompts, comps, seq_len=6)
    graphdef, params = nnx.split(critic)
    values = np.asarray(jax.jit(values_for_batch, static_argnums=0)(graphdef, params, batch))
    score_of = jax.jit(lambda p, ids: nnx.merge(graphdef, p)(ids))
    for r, (prompt, group) in enumerate(zip(prompts, comps)):
        tokens = np.asarray(prompt + group[0].tokens, np.int32)
        scores = np.asarray(score_of(params, tokens[None]))[0]  # one unpadded row: score after tokens[:i+1]
        want = np.zeros(6, np.float32)
        # Target t is the completion token tokens[t+1]; the state before it ends with tokens[t].
        first = len(prompt) - 1
        want[first:len(tokens) - 1] = scores[first:len(tokens) - 1]
        np.testing.assert_allclose(values[r], want, atol=1e-5)
    # Row 0: V of the state "prompt" (read through its last token, 7) comes first, at input position 2.
    assert values[0, 2] != 0 and values[0, :2].tolist() == [0, 0] and values[0, 4:].tolist() == [0, 0]


def test_critic_training_reduces_value_error():
    mesh = make_mesh({"fsdp": 8})
    policy = create_sharded(lambda: CausalLM(_tiny(), rngs=nnx.Rngs(1)), mesh)
    critic = critic_from_policy(policy, mesh, seed=0)
    rng = np.random.default_rng(1)
    rows, seq = 8, 12
    tokens = rng.integers(1, 256, (rows, seq + 1)).astype(np.int32)
    weights = np.zeros((rows, seq), np.float32)
    weights[:, 3:] = 1  # a 4-token prompt, 9 response tokens
    score = rng.choice([0.0, 1.0], rows).astype(np.float32)
    returns = np.where(weights > 0, score[:, None], 0.0).astype(np.float32)  # gamma = 1, outcome reward only
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights,
             "segment_ids": np.ones((rows, seq), np.int32), "returns": returns}
    fns = make_train_step(critic, optax.adam(3e-3), mesh, loss_fn=critic_loss_fn(clip_eps=0.2))
    graphdef, _ = nnx.split(critic)
    values_of = jax.jit(values_for_batch, static_argnums=0)

    def error(params):
        v = np.asarray(values_of(graphdef, params, batch))
        return float((((v - returns) * weights) ** 2).sum() / weights.sum())

    state = fns.init_state(get_params(critic))
    before = error(state.params)
    for _ in range(30):  # each step is a fresh "rollout": old values are the critic's current ones
        batch["old_values"] = np.asarray(values_of(graphdef, state.params, batch))
        state, metrics = fns.train_step(state, batch)
        assert int(metrics["finite"]) == 1
    after = error(state.params)
    assert after < before / 10, (before, after)


def test_ppo_policy_loss_rejects_a_kl_in_the_loss():
    with pytest.raises(ValueError, match="in the reward"):
        ppo_policy_loss_fn(PolicyLossConfig(beta=0.04))
    ppo_policy_loss_fn(PolicyLossConfig(beta=0.0))


def test_a_ppo_update_raises_the_log_prob_of_a_sample_with_positive_advantages():
    mesh = make_mesh({"fsdp": 8})
    policy = create_sharded(lambda: CausalLM(_tiny(), rngs=nnx.Rngs(0)), mesh)
    critic = critic_from_policy(policy, mesh, seed=1)
    fns = make_ppo_steps(policy, critic, optax.sgd(0.05), optax.sgd(0.05), mesh,
                         loss_config=PolicyLossConfig(beta=0.0), value_clip=0.2)
    # One sample (row 0); rows 1..7 are empty padding rows and must count nowhere.
    prompts = [[5, 6, 7]] + [[1]] * 7
    comps = [[Completion(0, 0, [40, 41, 42, 43], [0.0] * 4, "", "length")]] + [[Completion(i, 0, [], [], "", "length")]
                                                                               for i in range(1, 8)]
    batch = rollout_batch(prompts, comps, seq_len=8)
    params = get_params(policy)
    ref_logp = fns.reference_logprobs(params, batch)  # pi_old = pi_ref = pi_theta
    batch["old_logp"] = np.asarray(ref_logp) * batch["weights"]
    values = fns.values(get_params(critic), batch)
    assert (np.asarray(values)[~(batch["weights"] > 0)] == 0).all() and (np.asarray(values)[0, 2:6] != 0).all()
    # A high score: every GAE advantage of the sample is positive, whatever the fresh critic says.
    ppo = ppo_batch(batch, np.r_[5.0, np.zeros(7)].astype(np.float32), ref_logp, values, kl_coef=0.05,
                    whiten=False)
    on = batch["weights"] > 0
    assert (np.asarray(ppo["advantages"])[on] > 0).all(), ppo["advantages"]

    graphdef, _ = nnx.split(policy)
    before = float((np.asarray(ref_logp) * batch["weights"])[0].sum())
    policy_state, metrics = fns.policy.train_step(fns.policy.init_state(params), ppo)
    assert abs(float(metrics["ratio_mean"]) - 1) < 1e-5 and int(metrics["finite"]) == 1
    assert float(metrics["tokens"]) == 1  # one sequence
    after_logp = jax.jit(lambda p, b: sequence_logprobs(nnx.merge(graphdef, p), b))(policy_state.params, batch)
    after = float((np.asarray(after_logp) * batch["weights"])[0].sum())
    assert after > before + 0.05, (before, after)

    # The critic (a copy, not an alias, of the donated policy's trunk) still trains after the policy step.
    critic_state, critic_metrics = fns.critic.train_step(fns.critic.init_state(get_params(critic)), ppo)
    assert int(critic_metrics["finite"]) == 1 and float(critic_metrics["loss"]) > 0
    assert isinstance(critic, ScalarHeadModel)
