"""Rewards: rule rewards through the grader, the format reward, reward-model read-outs, combinations."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsmath_jax.data.arithmetic import generate_problems
from dsmath_jax.evals.grader import Grader
from dsmath_jax.model import ScalarHeadModel, get_preset
from dsmath_jax.rl.advantages import process_advantages, step_end_indices
from dsmath_jax.rl.rewards import combine_rewards, format_rewards, outcome_scores, process_scores, rule_rewards


def test_rule_rewards_use_the_equivalence_checker():
    problems = generate_problems(3, seed=1)
    completions = [problems[0].response,  # the reference solution: right
                   problems[1].response.replace(f"\\boxed{{{problems[1].answer}}}",
                                                f"\\boxed{{{int(problems[1].answer) + 1}}}"),  # off by one
                   "I think it is \\boxed{" + problems[2].answer + ".0}"]  # same number, another spelling
    with Grader(max_workers=1) as grader:
        got = rule_rewards(grader, completions, [p.answer for p in problems], kind="number")
        assert got.tolist() == [1.0, 0.0, 1.0]
        assert rule_rewards(grader, ["\\boxed{\\frac{1}{2}}"], ["0.5"]).tolist() == [1.0]
        with pytest.raises(ValueError, match="2 completions but 1 gold"):
            rule_rewards(grader, ["a", "b"], ["1"])


def test_format_reward():
    texts = ["So 3 + 4 = 7.\nThe final answer is $\\boxed{7}$.", "The answer is 7.", "\\boxed{7} and then more words",
             "cut off \\boxed{7", "\\boxed{}", "Done: \\boxed{12}"]
    assert format_rewards(texts).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert format_rewards(texts[:1], ["length"]).tolist() == [0.0]  # hit the length limit


def test_reward_model_read_outs_and_process_advantages():
    scores = jnp.asarray([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                          [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], jnp.float32)
    mask = jnp.asarray([[0, 0, 1, 1, 1, 0],   # completion = positions 2..4
                        [0, 1, 1, 0, 0, 0]], jnp.float32)
    np.testing.assert_allclose(outcome_scores(scores, mask), [0.5, 3.0])
    assert float(outcome_scores(scores, jnp.zeros_like(mask))[0]) == 0.0
    # Steps end at tokens 3 and 4 (row 0) and 2 (row 1).
    flags = jnp.asarray([[0, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0]], bool)
    ends = step_end_indices(flags, max_steps=2)
    steps, valid = process_scores(scores, ends)
    np.testing.assert_allclose(steps, [[0.4, 0.5], [3.0, 0.0]])
    assert valid.tolist() == [[True, True], [True, False]]
    # Feeds process advantages: one group of the two rows; rewards 0.4, 0.5, 3.0 normalised jointly.
    adv = process_advantages(steps, ends, valid, 2, mask)
    r = np.array([0.4, 0.5, 3.0])
    z = (r - r.mean()) / (r.std() + 1e-6)
    np.testing.assert_allclose(np.asarray(adv)[0, 2:5], [z[0] + z[1], z[0] + z[1], z[1]], atol=1e-5)
    np.testing.assert_allclose(np.asarray(adv)[1, 1:3], [z[2], z[2]], atol=1e-5)


def test_scores_come_from_a_scalar_head_model():
    rm = ScalarHeadModel(get_preset("tiny"), rngs=nnx.Rngs(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 6)), jnp.int32)
    mask = jnp.asarray([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]], jnp.float32)
    scores = rm(ids)
    np.testing.assert_allclose(outcome_scores(scores, mask), [scores[0, 4], scores[1, 2]])


def test_combined_rewards():
    rule, fmt = np.array([1.0, 0.0, 1.0]), np.array([1.0, 1.0, 0.0])
    np.testing.assert_allclose(combine_rewards({"rule": rule, "format": fmt}, {"rule": 1.0, "format": 0.1}),
                               [1.1, 0.1, 1.0])
    with pytest.raises(KeyError, match=r"\['orm'\] have weights but were not computed"):
        combine_rewards({"rule": rule}, {"rule": 1.0, "orm": 0.5})
    with pytest.raises(ValueError, match="different shapes"):
        combine_rewards({"rule": rule, "format": fmt[:2]}, {"rule": 1.0, "format": 1.0})
