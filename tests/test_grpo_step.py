"""One GRPO update: rollout batches, old/reference log-probs, and a step that moves the policy toward
rewarded samples."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dsmath_jax.generate import Sampler, SamplingParams
from dsmath_jax.generate.sampler import Completion
from dsmath_jax.model import CausalLM, get_params, get_preset
from dsmath_jax.parallel import create_sharded, make_mesh
from dsmath_jax.rl.advantages import group_advantages, token_advantages
from dsmath_jax.rl.grpo import grpo_loss_fn, reference_logprobs, rollout_batch, sequence_logprobs
from dsmath_jax.rl.losses import PolicyLossConfig
from dsmath_jax.train.step import make_train_step


class IdTokenizer:
    bos_id, eos_id, pad_id, vocab_size = None, None, 0, 256

    def encode(self, text, add_bos=False, add_eos=False):  # noqa: ARG002 - the tokenizer interface
        return [ord(ch) % 256 for ch in text]

    def decode(self, ids, skip_special_tokens=True):  # noqa: ARG002 - the tokenizer interface
        return "".join(chr(i) for i in ids)


def test_rollout_batch_layout():
    prompts = [[5, 6, 7], [9]]
    comps = [[Completion(0, 0, [1, 2], [-0.1, -0.2], "", "length")],
             [Completion(1, 0, [3, 4, 8], [-0.3, -0.4, -0.5], "", "length")]]
    b = rollout_batch(prompts, comps, seq_len=5)
    np.testing.assert_array_equal(b["inputs"][0], [5, 6, 7, 1, 0])
    np.testing.assert_array_equal(b["targets"][0], [6, 7, 1, 2, 0])
    np.testing.assert_array_equal(b["weights"][0], [0, 0, 1, 1, 0])  # targets 1 and 2 are the completion
    np.testing.assert_allclose(b["old_logp"][0], [0, 0, -0.1, -0.2, 0])
    np.testing.assert_array_equal(b["inputs"][1], [9, 3, 4, 0, 0])
    np.testing.assert_array_equal(b["weights"][1], [1, 1, 1, 0, 0])
    np.testing.assert_allclose(b["old_logp"][1], [-0.3, -0.4, -0.5, 0, 0])
    assert int(b["truncated"]) == 0
    short = rollout_batch(prompts, comps, seq_len=3)
    assert int(short["truncated"]) == 1 and short["weights"][0].tolist() == [0, 0, 1]


def test_a_grpo_step_moves_the_policy_toward_rewarded_samples():
    cfg = get_preset("tiny", initializer_range=0.1, max_seq_len=64)
    mesh = make_mesh({"fsdp": 8})
    model = create_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)), mesh)
    prompts = ["2+3=", "7*4="]
    G = 8
    sampler = Sampler(model, IdTokenizer(), batch_size=16)
    completions = sampler.generate(prompts, SamplingParams(max_new_tokens=6, temperature=1.0, n=G, seed=0,
                                                           stop_token_ids=()))
    prompt_ids = [IdTokenizer().encode(p) for p in prompts]
    batch = rollout_batch(prompt_ids, completions, seq_len=16)
    graphdef, _ = nnx.split(model)
    params = get_params(model)
    # The sampler's log-probs are the policy's: the training forward on the rollout rows agrees.
    ref = jax.jit(reference_logprobs, static_argnums=0)(graphdef, params, batch)
    mask = batch["weights"] > 0
    np.testing.assert_allclose(np.asarray(ref)[mask], batch["old_logp"][mask], atol=1e-4)

    # Rewards: the first half of each group is right. One update on the GRPO objective (pi_old = pi_ref =
    # pi_theta here, so the ratio is 1 and the KL 0 at the start).
    rewards = np.tile(np.r_[np.ones(G // 2), np.zeros(G // 2)], len(prompts)).astype(np.float32)
    batch["advantages"] = np.asarray(token_advantages(group_advantages(jnp.asarray(rewards), G),
                                                      jnp.asarray(batch["weights"])))
    batch["ref_logp"] = np.asarray(ref)
    batch = {k: v for k, v in batch.items() if k != "truncated"}
    fns = make_train_step(model, optax.sgd(0.05), mesh, loss_fn=grpo_loss_fn(PolicyLossConfig(beta=0.04)))
    state, metrics = fns.train_step(fns.init_state(params), batch)
    assert abs(float(metrics["ratio_mean"]) - 1.0) < 1e-4 and abs(float(metrics["kl"])) < 1e-6
    after = np.asarray(jax.jit(lambda p, b: sequence_logprobs(nnx.merge(graphdef, p), b))(state.params, batch))
    gain = ((after - np.asarray(ref)) * batch["weights"]).sum(1) / batch["weights"].sum(1)
    rewarded, unrewarded = gain[rewards == 1], gain[rewards == 0]
    # A small step of gradient ascent on the objective: advantage-weighted log-likelihood goes up, the
    # rewarded samples become likelier relative to the others.
    advantages = np.asarray(group_advantages(jnp.asarray(rewards), G))
    assert (advantages * gain).mean() > 0
    assert rewarded.mean() > unrewarded.mean() + 0.2, (rewarded, unrewarded)
