"""The methods of the unified paradigm (PAPER.md §5, Table 10), one registry entry per row: where its data
come from, what it trains on (the batch builder) and its loss (the gradient coefficient).

  method       data source           batch                                        loss
  sft          gold responses        the responses                                sft_loss
  rft          the initial policy    the samples, marked correct or not            rft_loss (correct ones only)
  online_rft   the current policy    as rft                                       rft_loss
  dpo          the initial policy    (correct, wrong) pairs of a group             dpo_loss
  ppo          the current policy    the samples; the critic role adds GAE         the clipped surrogate (beta 0)
  grpo         the current policy    the samples with group-relative advantages   the GRPO objective (Eq. 3)
                                     (outcome or process supervision)

``METHOD_REGISTRY[name]`` is a :class:`Method`; the RL loop reads the data source, builds the batch and the
loss from it and never branches on the method's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from dsmath_jax.config.rl import METHODS
from dsmath_jax.rl import losses
from dsmath_jax.rl.advantages import group_advantages, process_advantages, token_advantages
from dsmath_jax.rl.grpo import Batch, grpo_loss_fn, rollout_batch
from dsmath_jax.rl.losses import PolicyLossConfig
from dsmath_jax.rl.ppo import ppo_policy_loss_fn
from dsmath_jax.rl.rollout import Rollout
from dsmath_jax.train.step import LossFn

SOURCES = ("gold", "initial", "policy")  # Table 10's data sources: gold responses, pi_sft, pi_theta


# ------------------------------------------------------------------------------------------ losses
def _logprobs(model, batch: Batch):
    """[rows, seq] log-probs of a rollout batch's targets (chunked over positions: no full logits)."""
    return model.token_logprobs(batch["inputs"], batch["targets"], None, batch.get("segment_ids"))[0]


def rft_loss_fn(aggregation: str = "sequence_mean", max_len: int | None = None) -> LossFn:
    """RFT / online RFT: SFT on the correct samples (`correct` [rows, 1])."""

    def loss(model, batch):
        return losses.rft_loss(_logprobs(model, batch), batch["weights"], batch["correct"][:, 0],
                               aggregation=aggregation, max_len=max_len)

    return loss


def sft_loss_fn(aggregation: str = "sequence_mean", max_len: int | None = None) -> LossFn:
    """SFT on the batch's responses."""

    def loss(model, batch):
        return losses.sft_loss(_logprobs(model, batch), batch["weights"], aggregation=aggregation, max_len=max_len)

    return loss


def dpo_loss_fn(beta: float) -> LossFn:
    """DPO on interleaved pairs: rows 2j (chosen) and 2j + 1 (rejected); `pair_valid` [rows, 1] marks real
    pairs (set on both rows). Micro-batches must hold whole pairs (an even number of rows each)."""

    def loss(model, batch):
        seq = losses.sequence_logprob(_logprobs(model, batch), batch["weights"])
        ref = losses.sequence_logprob(batch["ref_logp"], batch["weights"])
        return losses.dpo_loss(seq[0::2], seq[1::2], ref[0::2], ref[1::2], beta=beta,
                               valid=batch["pair_valid"][0::2, 0])

    return loss


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """What a method's loss is built from (the ``loss`` section of an RL config, resolved)."""

    policy: PolicyLossConfig
    entropy_metric: bool = True
    dpo_beta: float = 0.1


# ------------------------------------------------------------------------------------------ batches
@dataclasses.dataclass(frozen=True)
class BatchSettings:
    """How rollouts become training rows: the row length, the padding token, G, and GRPO's advantage scaling."""

    seq_len: int
    pad_id: int
    group_size: int
    scale_advantages: bool = True
    length_buckets: int = 1


def bucket_length(used: int, seq_len: int, buckets: int) -> int:
    """The shortest of `buckets` row lengths (seq_len * k / buckets for k = 1..buckets, rounded up to a multiple
    of 16, at most seq_len) that holds `used` tokens."""
    for k in range(1, buckets + 1):
        share = -(-seq_len * k // buckets)  # ceil(seq_len * k / buckets)
        length = min(seq_len, -(-share // 16) * 16)
        if length >= used:
            return length
    return seq_len


def fit_length(batch: dict[str, np.ndarray], s: BatchSettings) -> dict[str, np.ndarray]:
    """The batch with its [rows, seq_len] arrays cut to the shortest bucket length (`bucket_length`) holding its
    longest row: the padding every row carries past the longest one is not trained on, nor run through the
    reference forward. Right-padded causal rows: the kept positions see what they saw before. One train step
    (and reference forward) is compiled per bucket length used."""
    if s.length_buckets <= 1:
        return batch
    used = np.flatnonzero(batch["segment_ids"].any(axis=0))
    length = bucket_length(int(used[-1]) + 1 if len(used) else 1, s.seq_len, s.length_buckets)
    return {k: v[:, :length] if v.ndim >= 2 and v.shape[1] == s.seq_len and k != "truncated" else v
            for k, v in batch.items()}


def _rows(ro: Rollout, s: BatchSettings) -> dict[str, np.ndarray]:
    """Every sampled output as a row; rows of groups that do not train (``ro.keep``) get no loss weight."""
    batch = rollout_batch(ro.prompt_ids, ro.completions, seq_len=s.seq_len, pad_id=s.pad_id)
    batch["weights"] *= np.repeat(ro.keep, len(ro.completions[0])).astype(np.float32)[:, None]
    return batch


def sft_batch(ro: Rollout, s: BatchSettings) -> dict[str, np.ndarray]:
    """The gold responses (a rollout of one output per question, :meth:`Roller.gold`)."""
    return rollout_batch(ro.prompt_ids, ro.completions, seq_len=s.seq_len, pad_id=s.pad_id)


def rft_batch(ro: Rollout, s: BatchSettings) -> dict[str, np.ndarray]:
    """The samples with ``correct`` [rows, 1]: RFT's gradient coefficient is 1 on correct outputs, 0 otherwise."""
    batch = _rows(ro, s)
    keep = np.repeat(ro.keep, s.group_size).astype(np.float32)
    batch["correct"] = ((ro.correct > 0).astype(np.float32) * keep)[:, None]
    return batch


def grpo_batch(ro: Rollout, s: BatchSettings) -> dict[str, np.ndarray]:
    """The samples with GRPO's advantages (PAPER.md §4.1.2-4.1.3): group-normalised outcome rewards on every
    token, or with process rewards the sum of the normalised step rewards from each token's step on."""
    batch = _rows(ro, s)
    if ro.step_rewards is not None and ro.step_ends is not None:
        adv = process_advantages(jnp.asarray(ro.step_rewards), jnp.asarray(ro.step_ends), None, s.group_size,
                                 jnp.asarray(batch["weights"]), scale=s.scale_advantages)
    else:
        adv = token_advantages(group_advantages(jnp.asarray(ro.rewards), s.group_size, scale=s.scale_advantages),
                               jnp.asarray(batch["weights"]))
    batch["advantages"] = np.asarray(adv, np.float32)
    return batch


def dpo_batch(ro: Rollout, s: BatchSettings) -> dict[str, np.ndarray]:
    """G/2 (correct, wrong) pairs per group as interleaved rows (chosen 2j, rejected 2j + 1); ``pair_valid``
    [rows, 1] is 0 on the padding pairs of groups with fewer correct or wrong outputs."""
    G = s.group_size
    prompts, comps, valid = [], [], []
    for q, (ids, group) in enumerate(zip(ro.prompt_ids, ro.completions)):
        ok = [i for i in range(G) if ro.correct[q * G + i] > 0]
        bad = [i for i in range(G) if ro.correct[q * G + i] <= 0]
        for j in range(G // 2):
            real = j < min(len(ok), len(bad)) and ro.keep[q]
            for i in (ok[j], bad[j]) if real else (0, 0):
                prompts.append(ids)
                comps.append([group[i]])
                valid.append(float(real))
    batch = rollout_batch(prompts, comps, seq_len=s.seq_len, pad_id=s.pad_id)
    batch["pair_valid"] = np.asarray(valid, np.float32)[:, None]  # [rows, 1]: batch arrays are 2-d
    batch["weights"] *= batch["pair_valid"]
    return batch


# ------------------------------------------------------------------------------------------ the registry
@dataclasses.dataclass(frozen=True)
class Method:
    """One row of Table 10.

    source: where its data come from (:data:`SOURCES`); build_batch(rollout, settings): its training rows;
    make_loss(settings): its loss for the shared train step; uses_reference(policy loss config): whether the
    step needs the reference's log-probs (``ref_logp``); batch_keys: the per-row arrays its batch holds;
    critic: PPO's value model trains beside the policy (the critic role); process: it accepts process
    rewards; pairs: it pairs outputs within a group (G must be even)."""

    name: str
    source: str
    build_batch: Callable[[Rollout, BatchSettings], dict[str, np.ndarray]]
    make_loss: Callable[[LossSettings], LossFn]
    uses_reference: Callable[[PolicyLossConfig], bool]
    batch_keys: tuple[str, ...]
    critic: bool = False
    process: bool = False
    pairs: bool = False

    def loss_config(self, config: PolicyLossConfig) -> PolicyLossConfig:
        """The policy loss settings this method trains with (PPO's KL is in the reward: beta 0 in the loss)."""
        return dataclasses.replace(config, beta=0.0) if self.critic and config.beta != 0 else config


_ROW = ("inputs", "targets", "weights", "segment_ids")
_never = lambda _: False  # noqa: E731
_always = lambda _: True  # noqa: E731

METHOD_REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("sft", "gold", sft_batch, lambda s: sft_loss_fn(s.policy.aggregation, s.policy.max_len), _never, _ROW),
    Method("rft", "initial", rft_batch, lambda s: rft_loss_fn(s.policy.aggregation, s.policy.max_len), _never,
           _ROW + ("correct",)),
    Method("online_rft", "policy", rft_batch, lambda s: rft_loss_fn(s.policy.aggregation, s.policy.max_len),
           _never, _ROW + ("correct",)),
    Method("dpo", "initial", dpo_batch, lambda s: dpo_loss_fn(s.dpo_beta), _always,
           _ROW + ("ref_logp", "pair_valid"), pairs=True),
    Method("ppo", "policy", _rows, lambda s: ppo_policy_loss_fn(s.policy), _always,
           _ROW + ("old_logp", "ref_logp", "advantages", "old_values", "returns", "token_rewards"), critic=True),
    Method("grpo", "policy", grpo_batch, lambda s: grpo_loss_fn(s.policy, s.entropy_metric),
           lambda c: c.beta != 0, _ROW + ("old_logp", "ref_logp", "advantages"), process=True),
)}
if tuple(METHOD_REGISTRY) != METHODS:
    raise ImportError(f"the method registry {tuple(METHOD_REGISTRY)} and the config schema's {METHODS} differ")


def get_method(name: str) -> Method:
    """The registry entry of ``name``; ValueError naming the methods there are."""
    if name not in METHOD_REGISTRY:
        raise ValueError(f"config.method {name!r} is not one of {tuple(METHOD_REGISTRY)}")
    return METHOD_REGISTRY[name]


__all__ = ["SOURCES", "Method", "METHOD_REGISTRY", "get_method", "LossSettings", "BatchSettings", "rft_loss_fn",
           "sft_loss_fn", "dpo_loss_fn", "sft_batch", "rft_batch", "grpo_batch", "dpo_batch",
           "bucket_length", "fit_length"]
