"""A rollout engine: continuous batching over a fixed number of slots, one prefill per prompt shared by its
samples, incremental stop strings, and per-row sampling keys.

The static `Sampler` decodes a batch until its longest row ends, so a row that stops early idles in its slot;
here a slot that frees up takes the next waiting sample at once, while the other slots keep decoding
(iteration-level scheduling, as in Orca (Yu et al., OSDI 2022) and vLLM (Kwon et al., SOSP 2023)).

- KV cache: one contiguous region per slot, k/v [layers, slots, kv_heads, max_len, head_dim]. Each slot has
  its own length (= its write index = the rotary position of its next token); decoding writes every slot's new
  key/value at its own index (a scatter of one head_dim row per slot and head, in place: no relayout of the
  cache, no second copy in the decode loop) and masks each slot's attention to its own length. The model's
  `KVCache` shares one write index across rows, so the decode step lives here, built from the model's own
  modules (norms, projections, `apply_rope`, `cached_attention`, MLP, LM head).
- Prefill: a prompt is prefilled once (right-padded to a power-of-two bucket, prompts of a bucket batched) into
  a scratch cache through the model's own cached forward; its keys/values are then copied into the slots of
  its `n` samples, and each sample draws its first token from the one set of last-position logits.
- Prefix caching: the tokens every prompt of a call starts with (a few-shot evaluation's exemplars, a shared
  instruction) are prefilled once; each prompt's prefill then runs only over its own suffix, on top of the
  shared keys/values (keys/values of a position depend only on the tokens up to it, so this is exact).
- Decoding runs in jitted chunks of up to `chunk_size` steps (`lax.while_loop`); a chunk ends early once
  enough slots are free to take waiting samples. Between chunks the host refills free slots and searches only
  each row's new text for stop strings (incremental detokenization as in vLLM, with the last
  `longest stop - 1` characters carried over), so the cost is linear in the generated length.
- Keys: token t of sample s of prompt p is drawn with fold_in(row_key(seed, p, s), t) (`row_key`), so a
  completion does not depend on the slot or the moment it was scheduled; the static `Sampler` draws the same
  tokens with `SamplingParams(row_keys=True)` (the default).

Compiled: the slot insertion once per (slots, max_len), sampling settings and prefill shape; the decode chunk
once per attention window (a few: `min_window` doubled up to `max_len`) and sampling settings; the prefill once
per (prompt bucket, prefill rows, shared prefix length), prefill rows a power of two up to `prefill_rows`. With
`max_len=None` each `generate` call sizes the slots to its longest prompt + budget, rounded up to a multiple of
`min_window` (one set of executables per size).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from dsmath_jax.data.tokenizers import Tokenizer
from dsmath_jax.generate.sampler import (
    Completion,
    Sampler,
    SamplingParams,
    _bucket,
    row_key,
    sample_row_tokens,
    sample_tokens,
)
from dsmath_jax.model.layers import apply_rope, cached_attention
from dsmath_jax.model.loops import scan_unroll
from dsmath_jax.model.transformer import CausalLM, init_cache
from dsmath_jax.parallel.mesh import DEFAULT_RULES, Rules, constrain

log = logging.getLogger(__name__)

Array = jax.Array
CACHE_AXES = ("layers", "batch", "act_kv_heads", "length", None)
_DEFAULT_PARAMS = SamplingParams()  # what `Sampler.generate` defaults to (a frozen dataclass)


# ------------------------------------------------------------------------------------------------ device side


def slot_decode_step(model: CausalLM, token: Array, length: Array, k_all: Array, v_all: Array,
                     window: int | None = None):
    """One token for every slot, each at its own position, against a per-slot cache.

    token [slots] int32: each slot's last token (not yet in the cache); length [slots] int32: tokens in each
    slot's cache, which is also the token's rotary position and the index its key/value are written at;
    k_all, v_all [layers, slots, kv_heads, max_len, head_dim]. Slot i attends to its entries 0..length[i];
    attention reads only the first `window` entries of every slot (default max_len; static): the caller
    keeps every active slot's length below it. Returns (logits [slots, vocab] float32, k_all, v_all). A slot
    whose length is max_len writes nothing.
    """
    cfg = model.config
    dec = model.decoder
    dt = cfg.compute_dtype
    slots, window = k_all.shape[1], window or k_all.shape[3]
    rows, heads = jnp.arange(slots)[:, None], jnp.arange(k_all.shape[2])[None, :]  # with length[:, None]: [slots, kv]
    positions = length[:, None]  # [slots, 1]
    mask = (jnp.arange(window)[None, :] <= length[:, None])[:, None, None, :]  # [slots, 1, 1, window]
    h = jnp.take(dec.embed[...], token[:, None], axis=0).astype(dt)
    h = constrain(h, ("batch", "length", "act_embed"))

    def layer(carry, block, index):
        """A decoder block (`layers.Block`) whose attention writes and reads the per-slot cache."""
        x, k_all, v_all = carry
        attn = block.attn
        y = block.attn_norm(x).astype(dt)
        q = jnp.einsum("btd,dhk->bthk", y, attn.q_proj[...].astype(dt))
        k = jnp.einsum("btd,dhk->bthk", y, attn.k_proj[...].astype(dt))
        v = jnp.einsum("btd,dhk->bthk", y, attn.v_proj[...].astype(dt))
        q = constrain(apply_rope(q, positions, attn.rope_theta), ("batch", "length", "act_heads", None))
        k = constrain(apply_rope(k, positions, attn.rope_theta), ("batch", "length", "act_kv_heads", None))
        # One head_dim row per (slot, head) at (layer, slot, head, length): the update's only window dim is the
        # cache's minor one, so the scatter writes in place (with (heads, head_dim) windows, XLA on TPU copied
        # the cache into a token-major layout and back every step, and the decode loop held a second copy).
        k_all = k_all.at[index, rows, heads, length[:, None]].set(k[:, 0].astype(k_all.dtype), mode="drop")
        v_all = v_all.at[index, rows, heads, length[:, None]].set(v[:, 0].astype(v_all.dtype), mode="drop")
        # The layer's first `window` entries as one slice (a layer slice then a window slice was materialised
        # whole: [slots, kv_heads, max_len, head_dim] per layer and step).
        size = (1, slots, k_all.shape[2], window, k_all.shape[4])
        keys = jax.lax.dynamic_slice(k_all, (index, 0, 0, 0, 0), size)[0]
        values = jax.lax.dynamic_slice(v_all, (index, 0, 0, 0, 0), size)[0]
        out = cached_attention(q, keys.astype(dt), values.astype(dt), mask)
        x = x + jnp.einsum("bthk,hkd->btd", out, attn.o_proj[...].astype(dt))
        x = x + block.mlp(block.mlp_norm(x))
        return constrain(x, ("batch", "length", "act_embed")), k_all, v_all

    carry = (h, k_all, v_all)
    if cfg.scan_layers:  # stacked blocks, as `Decoder._run_blocks` runs them
        def step(carry, block, index):
            return layer(carry, block, index), None
        carry, _ = nnx.scan(step, in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))(
            carry, dec.layers, jnp.arange(cfg.num_layers, dtype=jnp.int32))
    else:
        for i, block in enumerate(dec.layers):
            carry = layer(carry, block, i)
    h, k_all, v_all = carry
    logits = model.logits(dec.final_norm(h))[:, 0]
    return logits, constrain(k_all, CACHE_AXES), constrain(v_all, CACHE_AXES)


def _draw(logits: Array, keys: Array | None, steps: Array, temperature: float, top_k: int, top_p: float):
    """Tokens [rows] and log-probs: greedy, or row r drawn with fold_in(keys[r], steps[r])."""
    if temperature == 0.0 or keys is None:
        return sample_tokens(jax.random.key(0), logits, 0.0, top_k, top_p)
    return sample_row_tokens(keys, steps, logits, temperature, top_k, top_p)


# ------------------------------------------------------------------------------------------------ host side


@dataclasses.dataclass
class _Row:
    """A sample in a slot: what it generated so far and the state of its incremental detokenization."""

    prompt: int
    sample: int
    budget: int
    tokens: list[int]
    logprobs: list[float]
    tail: str = ""  # the last (longest stop string - 1) characters of its text
    prefix_offset: int = 0  # the text from prefix_offset to read_offset has been read
    read_offset: int = 0


def scan_stop_strings(tokenizer: Tokenizer, row: _Row, stop_strings: Sequence[str], *,
                      final: bool = False) -> tuple[str, int] | None:
    """Searches the text that `row`'s tokens after `row.read_offset` add, plus the carried tail.

    Returns (stop string, number of tokens up to and including the one completing it), or None after moving
    the row's state past the new tokens. The new text is decode(tokens[prefix:]) minus decode(tokens[prefix:
    read]) (vLLM's incremental detokenization: decoding from the previous read position keeps leading-space
    and multi-byte rules as in a full decode); a trailing incomplete character waits for the next tokens unless
    `final`. The stop string is the one completed first (the shortest token prefix containing any), the
    earliest-starting one if several complete at the same token, earlier-listed on ties.
    """
    tokens, start, read = row.tokens, row.prefix_offset, row.read_offset
    prefix_text = tokenizer.decode(tokens[start:read])
    full = tokenizer.decode(tokens[start:])
    if not final and (full.endswith("\ufffd") or len(full) <= len(prefix_text)):
        return None
    window_text = row.tail + full[len(prefix_text):]
    if any(stop in window_text for stop in stop_strings):
        for n in range(read + 1, len(tokens) + 1):
            text_n = row.tail + tokenizer.decode(tokens[start:n])[len(prefix_text):]
            hits = [(text_n.find(stop), i, stop) for i, stop in enumerate(stop_strings) if stop in text_n]
            if hits:
                return min(hits)[2], n
    longest = max(len(stop) for stop in stop_strings)
    row.tail = window_text[max(0, len(window_text) - (longest - 1)):]
    row.prefix_offset, row.read_offset = read, len(tokens)
    return None


@dataclasses.dataclass
class _Prefilled:
    """A batch of prefilled prompts on device, referenced until every sample of its prompts is in a slot."""

    k: Array  # [layers, rows, kv_heads, n, head_dim]
    v: Array
    logits: Array  # [rows, vocab] float32: next-token logits after each prompt


class Engine(Sampler):
    """Continuous-batching generation over `slots` cache slots of `max_len` tokens (prompt + new tokens).

    `generate(prompts, params, max_new_tokens=None)` returns what `Sampler.generate` returns (the same
    `Completion`s for greedy decoding and, with `params.row_keys` (the default), for sampling: the engine
    always draws with per-row keys). Weights are handled as by the `Sampler` (its own compute-dtype copy on
    `decode_mesh(mesh)`, `update_params` / `release_params`). `prefill_rows` bounds how many prompts are
    prefilled in one call; `min_refill` (default slots // 8, at least 1) is how many free slots end a chunk
    early while samples wait. A decode chunk's attention reads only the first W entries of each slot, W the
    smallest of `min_window`, 2 x `min_window`, ..., `max_len` that holds every active row through the chunk
    (rows are short most of the time; reading all `max_len` entries from the first step was the static
    sampler's cost).
    `max_len` (tokens per slot: prompt + new tokens) fixes the cache size for every call; None sizes it per
    call. `prefix_caching`: prompts of a call sharing their first `min_prefix` or more tokens prefill those once.
    """

    def __init__(self, model: CausalLM, tokenizer: Tokenizer | None, *, slots: int, max_len: int | None = None,
                 chunk_size: int = 16, prefill_chunk: int = 256, prefill_rows: int = 8, min_refill: int | None = None,
                 min_window: int = 128, prefix_caching: bool = True, min_prefix: int = 32, mesh: Mesh | None = None,
                 rules: Rules = DEFAULT_RULES, add_bos: bool = True, tensor_parallel: int | None = None):
        if slots < 1 or (max_len is not None and max_len < 2) or chunk_size < 1 or min_window < 1:
            raise ValueError(f"Engine needs slots >= 1, max_len >= 2 (or None), chunk_size >= 1 and min_window >= 1; "
                             f"got slots={slots}, max_len={max_len}, chunk_size={chunk_size}, min_window={min_window}")
        if prefill_rows < 1 or prefill_rows & (prefill_rows - 1):
            raise ValueError(f"Engine prefill_rows must be a power of two >= 1, got {prefill_rows}")
        super().__init__(model, tokenizer, batch_size=slots, chunk_size=chunk_size, prefill_chunk=prefill_chunk,
                         mesh=mesh, rules=rules, add_bos=add_bos, tensor_parallel=tensor_parallel)
        self.slots, self.max_len, self.prefill_rows = slots, max_len, prefill_rows
        self.min_refill = max(1, min_refill if min_refill is not None else slots // 8)
        self.min_window = min_window
        self.prefix_caching, self.min_prefix = prefix_caching, max(1, min_prefix)
        self._engine_fns: dict[Any, Any] = {}
        self.stats: dict[str, int] = {}

    def windows(self, max_len: int) -> list[int]:
        """Attention windows for slots of `max_len`: min_window * 2^k below max_len, and max_len (one decode
        executable each)."""
        return [w for w in (self.min_window << k for k in range(max_len.bit_length())) if w < max_len] + [max_len]

    def fit_max_len(self, longest: int) -> int:
        """Slot length for a call whose longest prompt + budget is `longest`: the engine's fixed `max_len`, or
        `longest` rounded up to a multiple of `min_window`."""
        if self.max_len is not None:
            return self.max_len
        return -(-longest // self.min_window) * self.min_window

    # ---------------------------------------------------------------------------------- jitted parts
    def _cache_spec(self, shape):
        return self._sharding(CACHE_AXES, shape)

    def _prefill_fn(self, n: int):
        """prefill(params, tokens [rows, bucket], lengths [rows], pre_k, pre_v) -> (k, v [layers, rows, kv, n,
        hd], logits [rows, vocab]); prompts right-padded, each of `lengths` tokens, n <= P + bucket.
        pre_k, pre_v [layers, 1, kv, P, hd] (or None: P = 0): keys/values of a prefix that every row continues;
        the rows' tokens then sit at positions P, P + 1, ..."""
        if ("prefill", n) in self._engine_fns:
            return self._engine_fns["prefill", n]
        graphdef, cfg = self.graphdef, self.config

        def prefill(model_params, tokens, lengths, pre_k, pre_v):
            rows, bucket = tokens.shape
            step = min(self.prefill_chunk, bucket)  # both powers of two
            valid = (jnp.arange(bucket)[None, :] < lengths[:, None]).astype(jnp.int32)
            chunks = (tokens.reshape(rows, -1, step).swapaxes(0, 1), valid.reshape(rows, -1, step).swapaxes(0, 1),
                      jnp.arange(bucket // step, dtype=jnp.int32))
            last_chunk, last_at = (lengths - 1) // step, (lengths - 1) % step
            with self._context():
                def body(carry, chunk):
                    cache, last = carry
                    model = nnx.merge(graphdef, model_params)  # inside the loop body: scanned layers need it
                    h, cache = model.decoder(chunk[0], None, chunk[1], cache)
                    here = jnp.take_along_axis(h, last_at[:, None, None], axis=1)[:, 0]
                    return (cache, jnp.where((last_chunk == chunk[2])[:, None], here, last)), None

                last = jnp.zeros((rows, cfg.d_model), cfg.compute_dtype)
                if pre_k is None:
                    cache = init_cache(cfg, rows, bucket)
                else:  # the prefix's keys/values in every row's first P entries, then the rows' own tokens
                    plen = pre_k.shape[3]
                    cache = init_cache(cfg, rows, plen + bucket)
                    head = (cfg.num_layers, rows, cfg.num_kv_heads, plen, cfg.head_dim)
                    cache = cache._replace(
                        k=cache.k.at[:, :, :, :plen].set(jnp.broadcast_to(pre_k, head).astype(cache.k.dtype)),
                        v=cache.v.at[:, :, :, :plen].set(jnp.broadcast_to(pre_v, head).astype(cache.v.dtype)),
                        mask=cache.mask.at[:, :plen].set(True), index=jnp.int32(plen),
                        next_positions=jnp.full((rows,), plen, jnp.int32))
                (cache, last), _ = jax.lax.scan(body, (cache, last), chunks, unroll=scan_unroll())
                logits = nnx.merge(graphdef, model_params).logits(last[:, None])[:, 0]
                return constrain(cache.k[:, :, :, :n], CACHE_AXES), constrain(cache.v[:, :, :, :n], CACHE_AXES), \
                    logits

        fn = jax.jit(prefill)
        self._engine_fns["prefill", n] = fn
        return fn

    def _slot_fns(self, params: SamplingParams, max_len: int):
        """(insert, decode, decode_step) jitted for these sampling settings and slots of `max_len`."""
        key = (params.temperature, params.top_k, params.top_p, max_len)
        if key in self._engine_fns:
            return self._engine_fns[key]
        graphdef = self.graphdef
        temperature, top_k, top_p = params.temperature, params.top_k, params.top_p
        greedy = temperature == 0.0
        chunk = self.chunk_size

        def insert(k_all, v_all, pre_k, pre_v, logits, dst, src, count, new_p, new_s, seed):
            """Copies prefilled row src[i] into slot dst[i] (positions 0..n-1) for i < count, and draws each
            new row's first token (index 0) from its prompt's logits with the row's key (p = new_p[i],
            s = new_s[i]). dst, src, new_p, new_s: [slots] int32, entries from `count` on unused."""
            def body(i, kv):
                k_all, v_all = kv
                at = (0, dst[i], 0, 0, 0)
                k_all = jax.lax.dynamic_update_slice(k_all, jax.lax.dynamic_slice_in_dim(pre_k, src[i], 1, 1), at)
                v_all = jax.lax.dynamic_update_slice(v_all, jax.lax.dynamic_slice_in_dim(pre_v, src[i], 1, 1), at)
                return k_all, v_all

            with self._context():
                k_all, v_all = jax.lax.fori_loop(0, count, body, (k_all, v_all))
                # [slots, vocab] float32 split like the decode's logits (slots over data, vocabulary over tensor):
                # replicated, every chip would hold and sample all of them.
                rows_logits = constrain(jnp.take(logits, jnp.clip(src, 0, logits.shape[0] - 1), axis=0),
                                        ("batch", "act_vocab"))
                keys = None if greedy else row_key(seed, new_p, new_s)
                token, logprob = _draw(rows_logits, keys, jnp.zeros_like(new_p), temperature, top_k, top_p)
                return constrain(k_all, CACHE_AXES), constrain(v_all, CACHE_AXES), token, logprob

        def step(model_params, k_all, v_all, token, length, keys, t, window):
            """One step of every slot: (drawn tokens [slots], their log-probs, k_all, v_all). The logits are
            drawn from where they are computed (split over `tensor` by vocabulary); only tokens leave."""
            with self._context():
                logits, k_all, v_all = slot_decode_step(nnx.merge(graphdef, model_params), token, length, k_all,
                                                        v_all, window)
            nxt, logprob = _draw(logits, keys, t, temperature, top_k, top_p)
            return nxt, logprob, k_all, v_all

        def decode_step(model_params, k_all, v_all, token, length, t, row_p, row_s, seed, window=None):
            """One step of the decode loop alone, the cache donated as the loop updates it in place:
            (tokens [slots], log-probs [slots], k_all, v_all)."""
            return step(model_params, k_all, v_all, token, length, None if greedy else row_key(seed, row_p, row_s),
                        t, window)

        def decode(model_params, k_all, v_all, token, length, t, done, budget, row_p, row_s, seed, stop_ids,
                   free_target, window=None):
            """Up to `chunk` steps; ends early once `free_target` slots are done; attention reads the first
            `window` cache entries (static). Returns the slot state, the chunk's tokens / log-probs [slots,
            chunk] (-1 / 0 where a row was done) and the steps run."""
            slots = token.shape[0]
            keys = None if greedy else row_key(seed, row_p, row_s)

            def cond(carry):
                i, done = carry[0], carry[6]
                return (i < chunk) & (jnp.sum(done) < free_target)

            def body(carry):
                i, k_all, v_all, token, length, t, done, out_t, out_l = carry
                nxt, logprob, k_all, v_all = step(model_params, k_all, v_all, token, length, keys, t, window)
                active = ~done
                out_t = out_t.at[:, i].set(jnp.where(active, nxt, -1))
                out_l = out_l.at[:, i].set(jnp.where(active, logprob, 0.0))
                length, t = length + active, t + active
                done = done | (active & (jnp.isin(nxt, stop_ids) | (t >= budget)))
                token = jnp.where(active, nxt, token)
                return i + 1, k_all, v_all, token, length, t, done, out_t, out_l

            out_t = jnp.full((slots, chunk), -1, jnp.int32)
            out_l = jnp.zeros((slots, chunk), jnp.float32)
            carry = (jnp.int32(0), k_all, v_all, token, length, t, done, out_t, out_l)
            i, k_all, v_all, token, length, t, done, out_t, out_l = jax.lax.while_loop(cond, body, carry)
            return k_all, v_all, token, length, t, done, out_t, out_l, i

        if self.mesh is None:
            fns = (jax.jit(insert, donate_argnums=(0, 1)),
                   jax.jit(decode, donate_argnums=(1, 2), static_argnames=("window",)),
                   jax.jit(decode_step, donate_argnums=(1, 2), static_argnames=("window",)))
        else:
            cache_sh = self._cache_spec((self.config.num_layers, self.slots, self.config.num_kv_heads, max_len,
                                         self.config.head_dim))
            rep = self._sharding((), ())
            fns = (jax.jit(insert, donate_argnums=(0, 1), out_shardings=(cache_sh, cache_sh, rep, rep)),
                   jax.jit(decode, donate_argnums=(1, 2), out_shardings=(cache_sh, cache_sh) + (rep,) * 7,
                           static_argnames=("window",)),
                   jax.jit(decode_step, donate_argnums=(1, 2), out_shardings=(rep, rep, cache_sh, cache_sh),
                           static_argnames=("window",)))
        self._engine_fns[key] = fns
        return fns

    def _empty_cache(self, max_len: int):
        """Zeroed k, v [layers, slots, kv_heads, max_len, head_dim] in the compute dtype."""
        if ("empty", max_len) not in self._engine_fns:
            cfg = self.config
            shape = (cfg.num_layers, self.slots, cfg.num_kv_heads, max_len, cfg.head_dim)
            self._engine_fns["empty", max_len] = jax.jit(lambda: jnp.zeros(shape, cfg.compute_dtype),
                                                         out_shardings=self._cache_spec(shape))
        fn = self._engine_fns["empty", max_len]
        return fn(), fn()

    def executables(self, prompt_len: int, params: SamplingParams,
                    max_len: int | None = None) -> list[tuple[str, Any, tuple]]:
        """(name, jitted function, abstract arguments) of what `generate` compiles for prompts in the
        `prompt_len` bucket and slots of `max_len` (default: the engine's, else prompt_len + max_new_tokens
        fitted): `prefill` (`prefill_rows` prompts), `insert` (copying them into slots), `decode` (one call: up
        to `chunk_size` steps of every slot) and `decode_step` (one step alone, the cache donated and the tokens
        drawn as in the loop, for FLOP and byte counts a loop would hide). For compile-only planning."""
        cfg, s, rows = self.config, self.slots, self.prefill_rows
        max_len = max_len or self.fit_max_len(prompt_len + params.max_new_tokens)
        bucket = _bucket(prompt_len)
        n = min(bucket, max_len)
        insert, decode, decode_step = self._slot_fns(params, max_len)
        rep = self._sharding((), ())

        def spec(shape, dtype, sharding=None):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding if sharding is not None else rep)

        cache_shape = (cfg.num_layers, s, cfg.num_kv_heads, max_len, cfg.head_dim)
        cache = spec(cache_shape, cfg.compute_dtype, self._cache_spec(cache_shape))
        pre_shape = (cfg.num_layers, rows, cfg.num_kv_heads, n, cfg.head_dim)
        pre = spec(pre_shape, cfg.compute_dtype, self._cache_spec(pre_shape))
        ints, flags, scalar = spec((s,), jnp.int32), spec((s,), jnp.bool_), spec((), jnp.int32)
        ids, lengths = spec((rows, bucket), jnp.int32), spec((rows,), jnp.int32)
        return [("prefill", self._prefill_fn(n), (self.params_shape, ids, lengths, None, None)),
                ("insert", insert, (cache, cache, pre, pre, spec((rows, cfg.vocab_size), jnp.float32), ints, ints,
                                    scalar, ints, ints, scalar)),
                ("decode", decode, (self.params_shape, cache, cache, ints, ints, ints, flags, ints, ints, ints, scalar,
                                    spec((1,), jnp.int32), scalar)),
                ("decode_step", decode_step, (self.params_shape, cache, cache, ints, ints, ints, ints, ints, scalar))]

    # ---------------------------------------------------------------------------------- host side
    def generate(self, prompts: Sequence[str | Sequence[int]], params: SamplingParams = _DEFAULT_PARAMS,
                 *, max_new_tokens: Sequence[int] | None = None, progress: bool = False) -> list[list[Completion]]:
        """Completions for each prompt (a string, or token ids), `params.n` per prompt, in order.

        max_new_tokens: one budget per prompt (default `params.max_new_tokens` for all). Each prompt's tokens
        plus its budget must fit the engine's `max_len` (when it has one).
        """
        encoded = self.encode_prompts(prompts)
        budgets = self._budgets(encoded, params, max_new_tokens)
        if self.params is None:
            raise RuntimeError("Engine.generate: the engine holds no weights: call update_params(params) first")
        stop_ids = params.stop_token_ids
        if stop_ids is None:
            eos_id = self._require_tokenizer().eos_id
            stop_ids = () if eos_id is None else (eos_id,)
        if params.stop_strings:
            self._require_tokenizer()
        max_len = self.fit_max_len(max(len(ids) + b for ids, b in zip(encoded, budgets)))
        run = _Run(self, encoded, budgets, params, tuple(stop_ids), max_len)
        return run.loop(progress)

    def _budgets(self, encoded: list[list[int]], params: SamplingParams,
                 max_new_tokens: Sequence[int] | None) -> list[int]:
        if max_new_tokens is None:
            budgets = [params.max_new_tokens] * len(encoded)
        else:
            budgets = [int(m) for m in max_new_tokens]
            if len(budgets) != len(encoded):
                raise ValueError(f"Engine.generate: max_new_tokens has {len(budgets)} entries for {len(encoded)} "
                                 "prompts (one per prompt)")
        for i, (ids, budget) in enumerate(zip(encoded, budgets)):
            if not ids:
                raise ValueError(f"Engine.generate: prompt {i} is empty (no tokens)")
            if budget < 1:
                raise ValueError(f"Engine.generate: max_new_tokens[{i}]={budget} must be >= 1")
            if self.max_len is not None and len(ids) + budget > self.max_len:
                raise ValueError(f"Engine.generate: prompt {i} has {len(ids)} tokens and max_new_tokens={budget}: "
                                 f"{len(ids) + budget} exceed the engine's max_len={self.max_len} (cache length "
                                 "per slot)")
            if len(ids) + budget > self.config.max_seq_len:
                log.warning("prompt %d (%d tokens) + max_new_tokens (%d) exceed the model context (%d)", i, len(ids),
                            budget, self.config.max_seq_len)
        return budgets


def make_sampler(batching: str, model: CausalLM, tokenizer: Tokenizer | None, *, rows: int, max_len: int | None = None,
                 chunk_size: int = 32, mesh: Mesh | None = None, rules: Rules = DEFAULT_RULES,
                 tensor_parallel: int | None = None) -> Sampler:
    """The sampler a command's config names (`config.checks.BATCHING`): the continuous-batching `Engine` over
    `rows` slots of `max_len` tokens (None: sized per call), or the static `Sampler` decoding batches of `rows`."""
    if batching == "continuous":
        return Engine(model, tokenizer, slots=rows, max_len=max_len, chunk_size=chunk_size, mesh=mesh, rules=rules,
                      tensor_parallel=tensor_parallel)
    if batching == "static":
        return Sampler(model, tokenizer, batch_size=rows, chunk_size=chunk_size, mesh=mesh, rules=rules,
                       tensor_parallel=tensor_parallel)
    raise ValueError(f"batching={batching!r}: expected 'continuous' (the engine) or 'static' (the sampler)")


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many first tokens all `prompts` share, leaving each at least one token of its own (the prefill of
    its last token gives its first sample's logits)."""
    first = np.asarray(prompts[0])
    length = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        differ = np.flatnonzero(np.asarray(p[:length]) != first[:length])
        if len(differ):
            length = int(differ[0])
    return max(length, 0)


class _Run:
    """The host loop of one `Engine.generate` call: slot state, the work list, refills and finished rows."""

    def __init__(self, engine: Engine, encoded: list[list[int]], budgets: list[int], params: SamplingParams,
                 stop_ids: tuple[int, ...], max_len: int):
        self.engine, self.encoded, self.budgets, self.params, self.stop_ids = engine, encoded, budgets, params, stop_ids
        self.max_len, self.windows = max_len, engine.windows(max_len)
        self.insert, self.decode, _ = engine._slot_fns(params, max_len)
        s = engine.slots
        self.token = np.zeros(s, np.int32)
        self.length = np.zeros(s, np.int32)
        self.t = np.zeros(s, np.int32)
        self.done = np.ones(s, bool)
        self.budget = np.ones(s, np.int32)
        self.row_p = np.zeros(s, np.int32)
        self.row_s = np.zeros(s, np.int32)
        self.rows: list[_Row | None] = [None] * s
        self.work = collections.deque((p, i) for p in range(len(encoded)) for i in range(params.n))
        self.prefilled: dict[int, tuple[_Prefilled, int]] = {}  # prompt -> (its prefill batch, row in it)
        self.results: list[list[Completion | None]] = [[None] * params.n for _ in encoded]
        self.seed = engine._put(np.int32(params.seed))
        stops = np.full(max(8, 1 << (len(stop_ids) - 1).bit_length()), -1, np.int32)  # few shapes: few compiles
        stops[:len(stop_ids)] = stop_ids
        self.stop_arr = engine._put(stops)
        self.k_all, self.v_all = engine._empty_cache(max_len)
        self.stats: collections.Counter[str] = collections.Counter()
        self.bar: Any = None
        # The shared prefix: its length and its keys/values [layers, 1, kv_heads, length, head_dim].
        self.prefix_len, self.prefix_kv = 0, None  # type: tuple[int, tuple[Array, Array] | None]
        if engine.prefix_caching and len(encoded) > 1:
            self.prefill_prefix(common_prefix_length(encoded))

    def prefill_prefix(self, length: int) -> None:
        """Prefills the first `length` tokens that every prompt shares, once, if there are enough of them: a
        multiple of `min_prefix` of them, so that calls whose prompts share a few more or fewer words (an RL step's
        questions after a common template) reuse one compiled prefill instead of compiling one per length."""
        engine = self.engine
        length -= length % engine.min_prefix
        if length < engine.min_prefix:
            return
        bucket = _bucket(length)
        tokens = np.full((1, bucket), engine.pad_id, np.int32)
        tokens[0, :length] = self.encoded[0][:length]
        lengths = np.full(1, length, np.int32)
        k, v, _ = engine._prefill_fn(length)(engine.params, engine._put(tokens), engine._put(lengths), None, None)
        self.prefix_len, self.prefix_kv = length, (k, v)
        self.stats["prefix_tokens"] = length
        self.stats["prefill_tokens"] += bucket

    def loop(self, progress: bool) -> list[list[Completion]]:
        if progress:
            from tqdm.auto import tqdm  # optional dependency of progress bars only
            self.bar = tqdm(total=len(self.work), desc="sampling", unit="sample")
        while True:
            self.refill()
            if self.done.all():
                break
            self.decode_chunk()
        if self.bar is not None:
            self.bar.close()
        self.engine.stats = dict(self.stats)
        self.k_all = self.v_all = None
        return self.results  # type: ignore[return-value]

    # ---------------------------------------------------------------------------------- refill
    def refill(self) -> None:
        """Gives every free slot the next waiting sample (rows that finish at their first token free theirs
        again at once)."""
        while self.work and self.done.any():
            take: list[tuple[int, int, int]] = []
            for j in np.flatnonzero(self.done)[:len(self.work)]:
                p, sample = self.work.popleft()
                take.append((int(j), p, sample))
            self.prefill([p for _, p, _ in take if p not in self.prefilled])
            by_batch: dict[int, list[tuple[int, int, int]]] = {}
            for j, p, s in take:
                by_batch.setdefault(id(self.prefilled[p][0]), []).append((j, p, s))
            for items in by_batch.values():
                self.insert_rows(items)

    def prefill(self, prompts: list[int]) -> None:
        """Prefills these prompts (once each, batched by length bucket): past the shared prefix, if any."""
        engine, skip = self.engine, self.prefix_len
        pre_k, pre_v = self.prefix_kv if self.prefix_kv is not None else (None, None)
        buckets: dict[int, list[int]] = {}
        for p in dict.fromkeys(prompts):
            buckets.setdefault(_bucket(len(self.encoded[p]) - skip), []).append(p)
        for bucket, group in sorted(buckets.items()):
            prefill = engine._prefill_fn(min(skip + bucket, self.max_len))
            for start in range(0, len(group), engine.prefill_rows):
                batch = group[start:start + engine.prefill_rows]
                rows = 1
                while rows < len(batch):
                    rows *= 2
                tokens = np.full((rows, bucket), engine.pad_id, np.int32)
                lengths = np.ones(rows, np.int32)  # dummy rows: one pad token
                for r, p in enumerate(batch):
                    ids = self.encoded[p][skip:]
                    tokens[r, :len(ids)] = ids
                    lengths[r] = len(ids)
                k, v, logits = prefill(engine.params, engine._put(tokens), engine._put(lengths), pre_k, pre_v)
                handle = _Prefilled(k=k, v=v, logits=logits)
                for r, p in enumerate(batch):
                    self.prefilled[p] = (handle, r)
                self.stats["prefill_calls"] += 1
                self.stats["prefill_prompts"] += len(batch)
                self.stats["prefill_tokens"] += rows * bucket

    def insert_rows(self, items: list[tuple[int, int, int]]) -> None:
        """Copies the prefilled prompts of one prefill batch into slots and records each row's first token."""
        engine, s = self.engine, self.engine.slots
        handle = self.prefilled[items[0][1]][0]
        dst, src, new_p, new_s = (np.zeros(s, np.int32) for _ in range(4))
        for i, (j, p, sample) in enumerate(items):
            dst[i], src[i], new_p[i], new_s[i] = j, self.prefilled[p][1], p, sample
        put = engine._put
        self.k_all, self.v_all, token, logprob = self.insert(
            self.k_all, self.v_all, handle.k, handle.v, handle.logits, put(dst), put(src), put(np.int32(len(items))),
            put(new_p), put(new_s), self.seed)
        token, logprob = np.asarray(token), np.asarray(logprob)
        self.stats["inserted"] += len(items)
        for i, (j, p, sample) in enumerate(items):
            row = _Row(prompt=p, sample=sample, budget=self.budgets[p], tokens=[int(token[i])],
                       logprobs=[float(logprob[i])])
            self.rows[j] = row
            self.token[j], self.length[j], self.t[j], self.done[j] = token[i], len(self.encoded[p]), 1, False
            self.budget[j], self.row_p[j], self.row_s[j] = row.budget, p, sample
            if sample == self.params.n - 1:  # the prompt's last sample: its prefill is no longer needed
                del self.prefilled[p]
            self.check(j, device_done=bool(token[i] in self.stop_ids or row.budget == 1))

    # ---------------------------------------------------------------------------------- decode
    def decode_chunk(self) -> None:
        engine = self.engine
        waiting = len(self.work)
        done_now = int(self.done.sum())
        free_target = engine.slots if not waiting else min(engine.slots, done_now + min(waiting, engine.min_refill))
        reach = int(self.length[~self.done].max()) + engine.chunk_size  # the longest active row after this chunk
        window = next(w for w in self.windows if w >= reach or w == self.max_len)
        active_before = ~self.done
        put = engine._put
        (self.k_all, self.v_all, token, length, t, done, out_t, out_l, steps) = self.decode(
            engine.params, self.k_all, self.v_all, put(self.token), put(self.length), put(self.t), put(self.done),
            put(self.budget), put(self.row_p), put(self.row_s), self.seed, self.stop_arr, put(np.int32(free_target)),
            window=window)
        self.token, self.length, self.t = np.array(token), np.array(length), np.array(t)
        device_done = np.asarray(done)
        steps = int(steps)
        out_t, out_l = np.asarray(out_t)[:, :steps], np.asarray(out_l)[:, :steps]
        self.stats["decode_chunks"] += 1
        self.stats["decode_steps"] += steps
        self.stats["slot_steps"] += steps * engine.slots
        self.stats["attended_entries"] += steps * engine.slots * window
        for j in np.flatnonzero(active_before):
            row = self.rows[j]
            assert row is not None
            new = out_t[j] >= 0
            row.tokens.extend(out_t[j][new].tolist())
            row.logprobs.extend(out_l[j][new].tolist())
            self.stats["generated"] += int(new.sum())
            self.check(int(j), device_done=bool(device_done[j]))
        self.done |= device_done

    def check(self, j: int, *, device_done: bool) -> None:
        """Finishes slot j's row if it stopped (a stop token or its budget on device, a stop string here)."""
        row = self.rows[j]
        assert row is not None
        hit = None
        if self.params.stop_strings:
            hit = scan_stop_strings(self.engine._require_tokenizer(), row, self.params.stop_strings, final=device_done)
        if hit is None and not device_done:
            return
        self.finish(row, hit)
        self.rows[j] = None
        self.done[j] = True

    def finish(self, row: _Row, hit: tuple[str, int] | None) -> None:
        tokens, logprobs = row.tokens, row.logprobs
        reason: str = "length"
        stop: str | int | None = None
        if hit is not None:
            stop, end = hit
            tokens, logprobs, reason = tokens[:end], logprobs[:end], "stop_string"
        elif tokens[-1] in self.stop_ids:
            reason, stop = "stop_token", tokens[-1]
        text = self.engine._require_tokenizer().decode(tokens[:-1] if reason == "stop_token" else tokens)
        if isinstance(stop, str):  # ended by a stop string: the text ends before it (as `Sampler` cuts it)
            text = text[:text.find(stop)]
        self.results[row.prompt][row.sample] = Completion(
            prompt_index=row.prompt, sample_index=row.sample, tokens=tokens, logprobs=logprobs, text=text,
            finish_reason=reason, stop=stop)
        self.stats["useful_tokens"] += len(tokens)
        if self.bar is not None:
            self.bar.update(1)


__all__ = ["Engine", "common_prefix_length", "make_sampler", "slot_decode_step", "scan_stop_strings"]
