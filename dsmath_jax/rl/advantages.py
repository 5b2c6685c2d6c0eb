"""Advantages for policy-gradient RL: GRPO outcome and process supervision (PAPER.md §4) and GAE for PPO.

Shapes at the boundary: a batch holds ``num_groups * G`` rows, grouped consecutively (row ``i`` answers
question ``i // G``); token arrays are ``[batch, seq]`` and ``mask`` is 1 on response (completion) tokens.
Every function is pure, float32 and jit-able (group sizes and step counts are static).

* Outcome supervision (:func:`group_advantages`): ``A_i = (r_i - mean(r)) / (std(r) + eps)`` within each
  group of G outputs, broadcast to every response token by :func:`token_advantages`.
  The std is the *population* std (``ddof=0``): the advantages of a group then have unit variance, and a
  group of two with rewards {0, 1} gets {-1, +1}. The paper does not say which std it uses; note that TRL
  (``rewards.view(-1, G).std(dim=1)``) and verl call ``torch.std``, which is Bessel-corrected (``ddof=1``):
  pass ``ddof=1`` to match them (the difference is a factor ``sqrt((G-1)/G)``, tiny at the paper's G = 64).
  ``scale=False`` gives Dr. GRPO's mean-only centering (Liu et al. 2025, "Understanding R1-Zero-Like
  Training"). A group whose rewards are all equal gets zero advantages (``0 / (0 + eps)``), never NaN.
* Process supervision (:func:`process_advantages`): all step rewards of a group are normalised by their
  joint mean and std; a token's advantage is the sum of the normalised rewards of the steps that end at or
  after it (PAPER.md §4).
* GAE (:func:`gae`, Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation") for PPO, with outcome rewards placed on the last response token (:func:`outcome_token_rewards`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["group_advantages", "token_advantages", "process_advantages", "step_end_indices", "step_end_flags",
           "outcome_token_rewards", "gae"]


def _grouped(x: jax.Array, group_size: int | None, name: str) -> jax.Array:
    """[num_groups, G] view of `x` given as [num_groups, G] or as [batch] with `group_size`."""
    if x.ndim == 2 and group_size is None:
        return x
    if x.ndim != 1 and not (x.ndim == 2 and x.shape[1] == group_size):
        raise ValueError(f"{name}: expected [num_groups, G] or [batch] with group_size, got shape {x.shape}")
    if group_size is None or group_size < 1:
        raise ValueError(f"{name}: a flat [batch] array needs group_size >= 1, got {group_size}")
    if x.shape[0] % group_size:
        raise ValueError(f"{name}: batch of {x.shape[0]} rows is not a multiple of group_size {group_size}")
    return x.reshape(-1, group_size)


def group_advantages(rewards: jax.Array, group_size: int | None = None, *, eps: float = 1e-6, scale: bool = True,
                     ddof: int = 0) -> jax.Array:
    """Outcome-supervision advantages ``(r_i - mean(r)) / (std(r) + eps)`` within each group.

    rewards: [num_groups, G] or [batch] (then `group_size` = G is required). Returns [batch] float32,
    row-major (group 0's G outputs first). `scale=False`: ``r_i - mean(r)`` (Dr. GRPO). `ddof`: 0 for the
    population std (default), 1 for the Bessel-corrected std that TRL/verl use.
    """
    r = _grouped(jnp.asarray(rewards, jnp.float32), group_size, "group_advantages")
    centred = r - r.mean(axis=1, keepdims=True)
    if scale:
        if r.shape[1] - ddof <= 0:
            raise ValueError(f"group_advantages: ddof={ddof} needs groups larger than {ddof}, got G={r.shape[1]}")
        std = jnp.sqrt(jnp.sum(centred ** 2, axis=1, keepdims=True) / (r.shape[1] - ddof))
        centred = centred / (std + eps)
    return centred.reshape(-1)


def token_advantages(advantages: jax.Array, mask: jax.Array) -> jax.Array:
    """Broadcasts per-sequence advantages [batch] to the response tokens: [batch, seq], 0 off the mask."""
    return jnp.asarray(advantages, jnp.float32)[:, None] * jnp.asarray(mask, jnp.float32)


def step_end_flags(tokens: jax.Array, delimiter_ids, mask: jax.Array) -> jax.Array:
    """[batch, seq] bool: response tokens that end a reasoning step, i.e. that are one of `delimiter_ids`
    (a newline token, or a step tag such as Math-Shepherd's), plus the last response token of each row
    (the final step ends where the response ends)."""
    mask = jnp.asarray(mask) > 0
    flags = jnp.isin(tokens, jnp.asarray(delimiter_ids)) & mask
    last = _last_token_index(mask)
    is_last = (jnp.arange(mask.shape[1])[None, :] == last[:, None]) & mask
    return flags | is_last


def step_end_indices(step_end_flags: jax.Array, max_steps: int) -> jax.Array:
    """Token indices where steps end, from a [batch, seq] "a step ends here" boolean array.

    Returns [batch, max_steps] int32: the end index of step k of each row in increasing order, -1 where
    the row has fewer steps (the step mask is ``step_ends >= 0``). Steps beyond `max_steps` are dropped:
    size `max_steps` for the longest solution.
    """
    flags = jnp.asarray(step_end_flags) > 0
    batch, seq = flags.shape
    rank = jnp.cumsum(flags, axis=1) - 1  # step number ending at each flagged token
    slot = jnp.where(flags, rank, max_steps)  # unflagged tokens go to an out-of-range slot and are dropped
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], (batch, seq))
    cols = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32)[None, :], (batch, seq))
    out = jnp.full((batch, max_steps), -1, jnp.int32)
    return out.at[rows, slot].set(cols, mode="drop")


def process_advantages(step_rewards: jax.Array, step_ends: jax.Array, step_mask: jax.Array | None,
                       group_size: int, mask: jax.Array, *, eps: float = 1e-6, scale: bool = True,
                       ddof: int = 0) -> jax.Array:
    """Process-supervision advantages (PAPER.md §4).

    step_rewards: [batch, max_steps] reward-model scores at the end of each step; step_ends: [batch,
    max_steps] int token index where each step ends (-1 = no step); step_mask: [batch, max_steps], 1 on real
    steps (None: ``step_ends >= 0``); mask: [batch, seq] response tokens.
    All real step rewards of a group (its G outputs together) are normalised by their joint mean and std
    (population std unless `ddof=1`; `scale=False` only centres); the advantage of token t of output i is
    ``sum_j norm_r_ij`` over the steps j of output i with ``step_ends[i, j] >= t``. Returns [batch, seq]
    float32, 0 off the mask (and on tokens after the last step end).
    """
    r = jnp.asarray(step_rewards, jnp.float32)
    ends = jnp.asarray(step_ends, jnp.int32)
    m = (ends >= 0) if step_mask is None else (jnp.asarray(step_mask) > 0) & (ends >= 0)
    m = m.astype(jnp.float32)
    batch, max_steps = r.shape
    seq = mask.shape[1]
    if group_size < 1 or batch % group_size:
        raise ValueError(f"process_advantages: batch of {batch} rows is not a multiple of group_size {group_size}")
    rg = r.reshape(batch // group_size, group_size * max_steps)  # all steps of a group's G outputs
    mg = m.reshape(rg.shape)
    count = mg.sum(axis=1, keepdims=True)
    mean = (rg * mg).sum(axis=1, keepdims=True) / jnp.maximum(count, 1.0)
    normed = (rg - mean) * mg
    if scale:
        var = (normed ** 2).sum(axis=1, keepdims=True) / jnp.maximum(count - ddof, 1.0)
        normed = normed / (jnp.sqrt(var) + eps)
    normed = normed.reshape(batch, max_steps)
    # Place each step's normalised reward on its end token, then a reverse cumulative sum gives, at token t,
    # the sum over steps ending at or after t.
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], (batch, max_steps))
    cols = jnp.where(m > 0, ends, seq)  # absent steps go out of range and are dropped
    placed = jnp.zeros((batch, seq), jnp.float32).at[rows, cols].add(normed, mode="drop")
    adv = jnp.flip(jnp.cumsum(jnp.flip(placed, axis=1), axis=1), axis=1)
    return adv * jnp.asarray(mask, jnp.float32)


def _last_token_index(mask: jax.Array) -> jax.Array:
    """[batch] index of the last nonzero of each row of `mask` (-1 for an empty row)."""
    mask = jnp.asarray(mask) > 0
    seq = mask.shape[1]
    last = seq - 1 - jnp.argmax(jnp.flip(mask, axis=1), axis=1)
    return jnp.where(mask.any(axis=1), last, -1)


def outcome_token_rewards(reward: jax.Array, mask: jax.Array) -> jax.Array:
    """Places each sequence's outcome reward [batch] on its last response token: [batch, seq] float32."""
    last = _last_token_index(mask)
    pos = jnp.arange(mask.shape[1])[None, :]
    return jnp.where(pos == last[:, None], jnp.asarray(reward, jnp.float32)[:, None], 0.0)


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over the response tokens (Schulman et al. 2016).

    rewards, values, mask: [batch, seq]. Only response tokens (mask 1) are steps of the episode: with
    ``V_next`` the value of the next response token (0 after the last), ``delta_t = r_t + gamma V_next -
    V_t`` and ``A_t = delta_t + gamma lam A_next``; tokens off the mask are skipped (advantage 0), so a
    gap in the mask (e.g. tool output) joins the steps on either side. Returns (advantages, returns =
    advantages + values), both [batch, seq] float32 and 0 off the mask. Computed with a reverse `lax.scan`.
    """
    r = jnp.asarray(rewards, jnp.float32)
    v = jnp.asarray(values, jnp.float32)
    m = jnp.asarray(mask, jnp.float32)

    def step(carry, x):
        next_value, next_adv = carry
        r_t, v_t, m_t = x
        adv = r_t + gamma * next_value - v_t + gamma * lam * next_adv
        keep = m_t > 0
        carry = (jnp.where(keep, v_t, next_value), jnp.where(keep, adv, next_adv))
        return carry, jnp.where(keep, adv, 0.0)

    zeros = jnp.zeros(r.shape[0], jnp.float32)
    _, adv = jax.lax.scan(step, (zeros, zeros), (r.T, v.T, m.T), reverse=True)
    adv = adv.T
    return adv, jnp.where(m > 0, adv + v, 0.0)
