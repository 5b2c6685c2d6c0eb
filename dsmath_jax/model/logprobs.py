"""Per-token log-probabilities and entropies from hidden states, without the full logits tensor.

The language-model head turns [rows, seq, d_model] hidden states into [rows, seq, vocab] float32 logits: at
DeepSeek's 102,400-piece vocabulary, 10 rows x 4,096 tokens of them are 15.6 GiB per chip, and the
log-softmax, its gradient and the entropy each add as much again. Everything the losses need from the
logits is one number per position (the target's log-probability, the entropy), so the head runs over
chunks of `chunk` positions inside a `lax.scan`: only one chunk's logits exist at a time, and
`jax.checkpoint` makes the backward pass recompute them chunk by chunk instead of saving them (the cost is
one extra head matmul, 2 * rows * seq * d_model * vocab FLOPs, in the backward pass).

With `chunk` >= seq (or 0) the same function runs unchunked, so small models pay nothing. Values and
gradients equal the unchunked computation up to float32 summation order (a test checks both).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsmath_jax.model.loops import scan_unroll
from dsmath_jax.parallel.mesh import constrain

Array = jax.Array


def _head_stats(hidden: Array, lm_head: Array, targets: Array, entropy: bool) -> tuple[Array, Array]:
    """log p(target) and (optionally) the entropy of one block of positions.

    hidden: [rows, n, d] (compute dtype); lm_head: [d, vocab] (compute dtype); targets: [rows, n] int.
    Returns two [rows, n] float32 arrays (the entropy is zeros when not asked for).
    """
    logits = jnp.einsum("btd,dv->btv", hidden, lm_head, preferred_element_type=jnp.float32)
    logits = constrain(logits, ("batch", "length", "act_vocab"))
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    logp = picked - logz
    if not entropy:
        return logp, jnp.zeros_like(logp)
    probs = jnp.exp(logits - logz[..., None])
    return logp, logz - (probs * logits).sum(axis=-1)


def token_logprobs(hidden: Array, lm_head: Array, targets: Array, *, chunk: int = 0,
                   entropy: bool = False) -> tuple[Array, Array | None]:
    """log softmax(hidden @ lm_head)[targets] per position, and the entropy of that softmax if asked.

    hidden: [rows, seq, d_model] in the compute dtype (what the decoder's final norm returns);
    lm_head: [d_model, vocab] cast to the compute dtype; targets: [rows, seq] int (position t scores
    targets[t]). chunk: positions per block of logits (0 or >= seq: one block).
    Returns (logp [rows, seq] float32, entropy [rows, seq] float32 or None).
    """
    rows, seq, _ = hidden.shape
    if chunk < 0:
        raise ValueError(f"logits chunk must be >= 0 (0 = unchunked), got {chunk}")
    if not chunk or chunk >= seq:
        logp, ent = _head_stats(hidden, lm_head, targets, entropy)
        return logp, ent if entropy else None
    blocks = -(-seq // chunk)
    pad = blocks * chunk - seq
    if pad:  # padded positions score target 0 and are cut off below
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    # [blocks, rows, chunk, ...]: the scan walks the blocks; each block's logits are rebuilt in the backward pass.
    h_blocks = hidden.reshape(rows, blocks, chunk, hidden.shape[-1]).swapaxes(0, 1)
    t_blocks = targets.reshape(rows, blocks, chunk).swapaxes(0, 1)
    stats = jax.checkpoint(lambda h, w, t: _head_stats(h, w, t, entropy),
                           policy=jax.checkpoint_policies.nothing_saveable)

    def body(carry, block):
        return carry, stats(block[0], lm_head, block[1])

    _, (logp, ent) = jax.lax.scan(body, None, (h_blocks, t_blocks), unroll=scan_unroll())
    unblock = lambda x: x.swapaxes(0, 1).reshape(rows, blocks * chunk)[:, :seq]  # noqa: E731
    return unblock(logp), unblock(ent) if entropy else None


__all__ = ["token_logprobs"]
