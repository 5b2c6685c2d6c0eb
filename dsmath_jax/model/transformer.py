"""The decoder-only language model (DeepSeek-Coder / DeepSeekMath, a Llama-style architecture), its
scalar-head variant for reward models and critics, and the KV cache used for sampling.

Calling conventions (all shapes static under `jax.jit`):
  model(input_ids [batch, seq], positions=None, segment_ids=None) -> logits [batch, seq, vocab] float32
  model(input_ids, positions=None, segment_ids=None, cache=cache) -> (logits, new_cache)

`segment_ids` (int, 0 = padding) make packed sequences attend only within their own document;
`positions` default to the index within each segment, so a packed row gives each document the logits it
would get alone.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from dsmath_jax.model.attention import segment_mask
from dsmath_jax.model.config import ModelConfig
from dsmath_jax.model.layers import Block, RMSNorm, param, remat_policy
from dsmath_jax.model.logprobs import token_logprobs
from dsmath_jax.parallel.mesh import constrain

Array = jax.Array


class KVCache(NamedTuple):
    """A preallocated key/value cache shared by the rows of a batch.

    Slots are written left to right for every row at once (`index` is shared); padding slots are marked
    invalid in `mask`, and every row carries its own rotary position in `next_positions`, so left- and
    right-padded prompts decode correctly side by side.
    """

    k: Array  # [layers, batch, kv_heads, max_len, head_dim] (heads-major: decoding reads it without a transpose)
    v: Array  # [layers, batch, kv_heads, max_len, head_dim]
    mask: Array  # [batch, max_len] bool: slot holds a real token
    # [] int32: next slot to write. mypy rejects a NamedTuple field that shadows a tuple method (tuple.index);
    # the field is the cache's API (`KVCache(index=...)`, `cache.index`), and Python allows it.
    index: Array  # type: ignore[assignment]
    next_positions: Array  # [batch] int32: rotary position of each row's next real token

    @property
    def max_len(self) -> int:
        return self.k.shape[3]


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache for `batch` rows of up to `max_len` tokens (prompt + generation)."""
    dtype = dtype or cfg.compute_dtype
    shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), mask=jnp.zeros((batch, max_len), bool),
                   index=jnp.zeros((), jnp.int32), next_positions=jnp.zeros((batch,), jnp.int32))


def segment_positions(segment_ids: Array) -> Array:
    """Position of every token inside its segment: [batch, seq] -> [batch, seq] int32."""
    seq = segment_ids.shape[1]
    idx = jnp.arange(seq, dtype=jnp.int32)[None, :]
    changed = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    starts = jax.lax.cummax(jnp.where(changed, idx, 0), axis=1)
    return idx - starts


packed_attention_mask = segment_mask  # [batch, seq] segment ids -> [batch, 1, seq, seq] bool (the XLA path's)


class Decoder(nnx.Module):
    """Token embedding, the stack of blocks, and the final norm: the trunk every head shares."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.embed = param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg.weight_dtype,
                           std=cfg.initializer_range)
        if cfg.scan_layers:
            @nnx.split_rngs(splits=cfg.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make_blocks(rngs):
                return Block(cfg, rngs=rngs)

            self.layers = make_blocks(rngs)
        else:
            self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.rms_norm_eps, dtype=cfg.compute_dtype,
                                  param_dtype=cfg.weight_dtype, rngs=rngs)

    def __call__(self, input_ids: Array, positions: Array | None = None, segment_ids: Array | None = None,
                 cache: KVCache | None = None):
        """Returns (hidden [batch, seq, d_model] after the final norm, new cache or None)."""
        cfg = self.config
        batch, seq = input_ids.shape
        if segment_ids is None:
            segment_ids = jnp.ones((batch, seq), jnp.int32)
        if cache is None:
            if positions is None:
                positions = segment_positions(segment_ids)
            mask = segment_ids  # the attention builds what it needs from them (no seq x seq mask for kernels)
            kv = None
        else:
            valid = segment_ids != 0
            if positions is None:
                positions = cache.next_positions[:, None] + jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1
                positions = jnp.maximum(positions, 0)
            cache_mask = jax.lax.dynamic_update_slice(cache.mask, valid, (0, cache.index))
            slots = cache.index + jnp.arange(seq, dtype=jnp.int32)  # [seq]
            keys = jnp.arange(cache.max_len, dtype=jnp.int32)
            causal = keys[None, :] <= slots[:, None]  # [seq, max_len]
            itself = keys[None, :] == slots[:, None]  # padding queries attend to themselves: no empty rows
            mask = ((cache_mask[:, None, :] & causal[None]) | itself[None])[:, None]
            kv = (cache.k, cache.v)

        h = jnp.take(self.embed[...], input_ids, axis=0).astype(cfg.compute_dtype)
        h = constrain(h, ("batch", "length", "act_embed"))
        h, kv = self._run_blocks(h, positions, mask, kv, None if cache is None else cache.index)
        h = self.final_norm(h)
        if cache is None:
            return h, None
        last = jnp.max(jnp.where(valid, positions, -1), axis=1)
        next_positions = jnp.where(last >= 0, last + 1, cache.next_positions)
        return h, KVCache(k=kv[0], v=kv[1], mask=cache_mask, index=cache.index + seq,
                          next_positions=next_positions.astype(jnp.int32))

    def _run_blocks(self, h, positions, mask, kv, index):
        """Runs the blocks; with a cache, `kv` = (k_all, v_all) is threaded through them and updated in place."""
        cfg = self.config
        policy = remat_policy(cfg.remat_policy) if cfg.remat_policy != "none" else None

        if kv is None:
            def body(x, block):
                return block(x, positions, mask)[0]

            if cfg.remat_policy != "none":
                body = nnx.remat(body, policy=policy, prevent_cse=not cfg.scan_layers)
            if cfg.scan_layers:
                def step(x, block):
                    return body(x, block), None
                h, _ = nnx.scan(step, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))(h, self.layers)
                return h, None
            for block in self.layers:
                h = body(h, block)
            return h, None

        def cached(carry, block, layer):
            x, k_all, v_all = carry
            x, (k_all, v_all, _) = block(x, positions, mask, (k_all, v_all, layer), index)
            return (x, k_all, v_all)

        carry = (h, kv[0], kv[1])
        if cfg.scan_layers:
            def cached_step(carry, block, layer):
                return cached(carry, block, layer), None
            layers = jnp.arange(cfg.num_layers, dtype=jnp.int32)
            carry, _ = nnx.scan(cached_step, in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))(
                carry, self.layers, layers)
        else:
            for i, block in enumerate(self.layers):
                carry = cached(carry, block, i)
        h, k_all, v_all = carry
        return h, (k_all, v_all)


class CausalLM(nnx.Module):
    """Decoder + untied LM head. `model(input_ids, positions=None, segment_ids=None)` -> float32 logits."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.decoder = Decoder(cfg, rngs=rngs)
        self.lm_head = param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.weight_dtype,
                             std=cfg.initializer_range)

    def __call__(self, input_ids: Array, positions: Array | None = None, segment_ids: Array | None = None, *,
                 cache: KVCache | None = None):
        h, new_cache = self.decoder(input_ids, positions, segment_ids, cache)
        logits = self.logits(h)
        return logits if cache is None else (logits, new_cache)

    def token_logprobs(self, input_ids: Array, targets: Array, positions: Array | None = None,
                       segment_ids: Array | None = None, *, entropy: bool = False) -> tuple[Array, Array | None]:
        """log pi(targets[t] | inputs[:t+1]) per position, [batch, seq] float32, and the entropy of the
        next-token distribution when asked (else None), computed from the LM head in blocks of
        `config.logits_chunk` positions so that the [batch, seq, vocab] logits never exist at once
        (`dsmath_jax.model.logprobs`). What every loss and log-prob of training and RL uses."""
        h, _ = self.decoder(input_ids, positions, segment_ids)
        dt = self.config.compute_dtype
        return token_logprobs(h.astype(dt), self.lm_head[...].astype(dt), targets, chunk=self.config.logits_chunk,
                              entropy=entropy)

    def logits(self, hidden: Array) -> Array:
        """[batch, seq, d_model] hidden states -> [batch, seq, vocab] float32 logits."""
        dt = self.config.compute_dtype
        logits = jnp.einsum("btd,dv->btv", hidden.astype(dt), self.lm_head[...].astype(dt),
                            preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "length", "act_vocab"))


class ScalarHeadModel(nnx.Module):
    """The same trunk with a scalar head: a score per token, for reward models and PPO critics.

    `model(input_ids, positions=None, segment_ids=None)` -> [batch, seq] float32. An outcome reward model
    reads the score at the last token, a process reward model at the end of every step.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.decoder = Decoder(cfg, rngs=rngs)
        self.head = param(rngs, (cfg.d_model,), ("embed",), cfg.weight_dtype, std=cfg.initializer_range)
        self.head_bias = nnx.Param(jnp.zeros((), cfg.weight_dtype), logical_axes=())

    @classmethod
    def from_lm(cls, lm: CausalLM, *, rngs: nnx.Rngs) -> ScalarHeadModel:
        """A scalar-head model whose trunk is (a copy of) a language model's trunk, e.g. a reward model
        initialised from DeepSeekMath-Base; the head is freshly initialised."""
        model = nnx.eval_shape(lambda: cls(lm.config, rngs=nnx.Rngs(0)))
        model.decoder = nnx.clone(lm.decoder)
        model.head = param(rngs, (lm.config.d_model,), ("embed",), lm.config.weight_dtype,
                           std=lm.config.initializer_range)
        model.head_bias = nnx.Param(jnp.zeros((), lm.config.weight_dtype), logical_axes=())
        return model

    def __call__(self, input_ids: Array, positions: Array | None = None,
                 segment_ids: Array | None = None) -> Array:
        h, _ = self.decoder(input_ids, positions, segment_ids)
        return (jnp.einsum("btd,d->bt", h.astype(jnp.float32), self.head[...].astype(jnp.float32))
                + self.head_bias[...].astype(jnp.float32))
