"""One GRPO update (PAPER.md §4.1, Eq. 3): from sampled groups to a policy step on the shared train step.

  completions = sampler.generate(prompts, SamplingParams(n=G, temperature=...))    # old policy's samples
  batch = rollout_batch(prompt_ids, completions, seq_len=..., pad_id=...)         # tokens, masks, old log-probs
  batch["ref_logp"] = reference_logprobs(graphdef, ref_params, batch)             # frozen reference
  batch["advantages"] = token_advantages(group_advantages(rewards, G), batch["weights"])
  state, metrics = step_fns.train_step(state, batch)                              # the clipped objective + KL

The old policy's log-probs are the sampler's (it reports the log-probability of every sampled token under
the model that sampled it), or, with `rollout.old_logprobs="recompute"` (the default under bf16, where the
cached decode does not reproduce the training forward), one forward of the training model over the sampled
rows (`old_policy_logprobs`), so that the first of mu updates has ratio exactly 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from dsmath_jax.generate.sampler import Completion
from dsmath_jax.model.transformer import CausalLM
from dsmath_jax.parallel.mesh import DEFAULT_RULES, Rules
from dsmath_jax.rl.losses import PolicyLossConfig, policy_loss
from dsmath_jax.train.step import make_forward

Batch = Mapping[str, jax.Array]


def rollout_batch(prompt_ids: Sequence[Sequence[int]], completions: Sequence[Sequence[Completion]], *,
                  seq_len: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Sampled groups as a training batch; rows are prompt-major (the G samples of a prompt are consecutive).

    Each row is prompt + completion, shifted for next-token prediction and right-padded to `seq_len`:
    `inputs`, `targets` [rows, seq_len] int32; `weights` 1 where the target is a completion token (the loss
    mask); `old_logp` the sampler's log-prob of that token; `segment_ids` 1 on real tokens. Completions that
    do not fit are truncated (`truncated` counts the rows).
    """
    rows = sum(len(group) for group in completions)
    out = {"inputs": np.full((rows, seq_len), pad_id, np.int32), "targets": np.full((rows, seq_len), pad_id, np.int32),
           "weights": np.zeros((rows, seq_len), np.float32), "old_logp": np.zeros((rows, seq_len), np.float32),
           "segment_ids": np.zeros((rows, seq_len), np.int32)}
    truncated = 0
    r = 0
    for prompt, group in zip(prompt_ids, completions):
        for c in group:
            tokens = list(prompt) + list(c.tokens)
            n = min(len(tokens) - 1, seq_len)
            truncated += len(tokens) - 1 > seq_len
            out["inputs"][r, :n] = tokens[:n]
            out["targets"][r, :n] = tokens[1:n + 1]
            out["segment_ids"][r, :n] = 1
            first = len(prompt) - 1  # position whose target is the first completion token
            count = max(0, n - first)
            out["weights"][r, first:first + count] = 1.0
            out["old_logp"][r, first:first + count] = np.asarray(c.logprobs[:count], np.float32)
            r += 1
    out["truncated"] = np.asarray(truncated)
    return out


@jax.jit
def _nonfinite_rows(logp: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.any(~jnp.isfinite(logp) & (weights > 0), axis=1)


def check_response_logprobs(name: str, logp: Any, weights: Any,
                            describe: Callable[[int], str] = lambda r: f"row {r}") -> None:
    """Raises ValueError naming the rows where `logp` [rows, seq] is not finite on a response token
    (`weights` > 0): a sampled token the `name` model gives probability 0 (or a NaN from its forward). The
    clamped loss would stay finite, but such a row's ratio or KL term is meaningless, so the step stops
    instead of training on it. Works on numpy arrays and on (multi-host) global jax arrays."""
    if isinstance(logp, np.ndarray):
        bad = np.any(~np.isfinite(logp) & (np.asarray(weights) > 0), axis=1)
    else:
        bad = _nonfinite_rows(logp, weights)
        bad = np.asarray(bad if bad.is_fully_addressable else multihost_utils.process_allgather(bad, tiled=True))
    rows = np.flatnonzero(bad)
    if rows.size:
        named = "; ".join(describe(int(r)) for r in rows[:8]) + (f"; ... {rows.size - 8} more" if rows.size > 8 else "")
        raise ValueError(f"{name} log-probs: -inf/NaN on a response token in {rows.size} row(s): {named}. The {name} "
                         f"model gives probability 0 to a sampled token (a sampler/model mismatch: vocabulary, "
                         f"dtype, masked logits) or its forward produced NaN")


def sequence_logprobs(model: CausalLM, batch: Batch) -> jax.Array:
    """Per-token log-probs [rows, seq] of `batch["targets"]` under `model` (float32), from the LM head in
    blocks of positions (`CausalLM.token_logprobs`), so the full logits never exist."""
    return model.token_logprobs(batch["inputs"], batch["targets"], None, batch.get("segment_ids"))[0]


def make_reference_forward(model: nnx.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES, *,
                           micro_batches: int = 1) -> Callable[[Any, Batch], jax.Array]:
    """`forward(ref_params, batch) -> [rows, seq]` log-probs of the batch's targets under frozen params with
    `model`'s structure: jitted, sharded like the train step's activations, one micro-batch at a time
    (`dsmath_jax.train.step.make_forward`). Only the entries a forward pass reads go to the device."""
    jitted = make_forward(model, sequence_logprobs, mesh, rules, micro_batches=micro_batches)
    return on_forward_inputs(jitted)


FORWARD_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")


def on_forward_inputs(jitted):
    """`jitted(params, batch)` fed only the batch entries a forward pass reads (a rollout batch's other
    entries, e.g. the scalar `truncated`, would not fit the row sharding); `.lower` is kept for AOT use."""
    select = lambda batch: {k: batch[k] for k in FORWARD_KEYS if k in batch}  # noqa: E731

    def call(params, batch):
        return jitted(params, select(batch))

    call.lower = lambda params, batch: jitted.lower(params, select(batch))
    return call


@jax.jit
def logprob_gap(sampler_logp: jax.Array, trainer_logp: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and max |sampler - trainer| log-prob of the response tokens (``weights`` > 0): how far the
    sampler's numbers are from the training forward's."""
    m = weights > 0
    gap = jnp.where(m, jnp.abs(sampler_logp - trainer_logp), 0.0)
    return gap.sum() / jnp.maximum(m.sum(), 1), gap.max()


@functools.partial(jax.jit, static_argnames="cap")
def truncated_is_weights(sampler_logp: jax.Array, trainer_logp: jax.Array, weights: jax.Array, *,
                         cap: float) -> jax.Array:
    """Truncated importance weights ``min(exp(trainer - sampler), cap)`` on the response tokens, 0 elsewhere
    (`losses.policy_loss`'s `is_weights`)."""
    w = jnp.minimum(jnp.exp(jnp.clip(trainer_logp - sampler_logp, -20.0, 20.0)), cap)
    return jnp.where(weights > 0, w, 0.0)


def reference_logprobs(graphdef: nnx.GraphDef, ref_params: Any, batch: Batch) -> jax.Array:
    """Log-probs under the frozen reference model (jit this, or call inside a jitted function)."""
    return sequence_logprobs(nnx.merge(graphdef, ref_params), batch)


def grpo_loss_fn(config: PolicyLossConfig = PolicyLossConfig(), entropy: bool = True):  # noqa: B008 - frozen
    """The GRPO objective (PAPER.md §4.1, Eq. 3) on a rollout batch with `old_logp`, `ref_logp`,
    `advantages` ([rows, seq] or [rows]), `weights` as the completion mask and optional `is_weights`
    (truncated importance weights, `losses.policy_loss`): the loss `dsmath rl` trains with (and, with beta 0
    and GAE advantages, PPO's policy loss), for `make_train_step`. With `entropy`, the policy's mean entropy
    over the response tokens is a metric (no gradient)."""

    def loss(model: CausalLM, batch: Batch):
        logp, ent = model.token_logprobs(batch["inputs"], batch["targets"], None, batch.get("segment_ids"),
                                         entropy=entropy)
        total, weight, metrics = policy_loss(logp, batch["old_logp"], batch.get("ref_logp"), batch["advantages"],
                                             batch["weights"], config=config, is_weights=batch.get("is_weights"))
        if ent is not None:  # computed when `entropy` is set
            m = batch["weights"].astype(jnp.float32)
            ent = jax.lax.stop_gradient(ent)
            metrics = dict(metrics, entropy=(ent * m).sum() / jnp.maximum(m.sum(), 1.0))
        return total, weight, metrics

    return loss


__all__ = ["rollout_batch", "sequence_logprobs", "reference_logprobs", "make_reference_forward", "on_forward_inputs",
           "grpo_loss_fn", "logprob_gap", "truncated_is_weights"]
