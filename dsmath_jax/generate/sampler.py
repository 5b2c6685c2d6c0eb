"""Batched sampling on the KV cache: jitted prefill and decode, greedy / temperature / top-p / top-k, n
samples per prompt, stop tokens and stop strings, per-row early finish, and the log-probabilities of the
sampled tokens (what RL keeps as the old policy's log-probs).

Shapes are static: every call runs `batch_size` rows (the last chunk is padded with dummy rows), prompts
are left-padded to a length bucket and the cache holds `prompt bucket + max_new_tokens` slots, so the
sampler compiles once per (batch, prompt bucket, max_new_tokens). Decoding runs in jitted chunks of
`chunk_size` steps; between chunks the host checks stop strings, so a row that printed a stop string
finishes early even when the string is split across tokens, and the loop ends when every row is done.

Log-probabilities are those of the model's own distribution (log-softmax of the logits, temperature 1,
no truncation): exactly what a full forward pass over the same tokens gives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from dsmath_jax.data.tokenizers import Tokenizer
from dsmath_jax.model.loops import scan_unroll
from dsmath_jax.model.transformer import CausalLM, KVCache, init_cache
from dsmath_jax.parallel.mesh import (
    DEFAULT_RULES,
    Rules,
    activation_sharding,
    get_params,
    logical_to_spec,
    make_mesh,
    param_shardings,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 is greedy decoding; top_k 0 and top_p 1 disable those filters."""

    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    stop_token_ids: tuple[int, ...] | None = None  # None: the tokenizer's eos
    stop_strings: tuple[str, ...] = ()
    seed: int = 0
    # Per-row keys: token t of sample s of prompt p is drawn with `row_key(seed, p, s)` folded with t, so a
    # row's draws do not depend on its batch or slot, and the static `Sampler` and the rollout engine (which
    # always draws so) give the same completions. False: one key stream per static batch.
    row_keys: bool = True

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.n < 1:
            raise ValueError(f"max_new_tokens and n must be >= 1 ({self})")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0 ({self})")


@dataclasses.dataclass
class Completion:
    """One sampled continuation of one prompt."""

    prompt_index: int
    sample_index: int
    tokens: list[int]  # generated tokens, up to and including the stop token / the token completing a stop string
    logprobs: list[float]  # log pi(token) under the model, one per token
    text: str  # decoded tokens, cut before the first stop string
    finish_reason: str  # "stop_token", "stop_string" or "length"
    stop: str | int | None = None  # the stop string or token that ended it


def _bucket(n: int, minimum: int = 16) -> int:
    """The next power of two >= n (at least `minimum`)."""
    size = minimum
    while size < n:
        size *= 2
    return size


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Masks (to -inf) what top-k and top-p (nucleus, Holtzman et al. 2020) exclude. logits: [batch, vocab]."""
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p: a token is kept if the mass before it is < top_p.
        keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < top_p
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def sample_tokens(key: jax.Array, logits: jax.Array, temperature: float, top_k: int, top_p: float):
    """Next tokens [batch] and their log-probabilities under the unfiltered model distribution."""
    logits = logits.astype(jnp.float32)
    if temperature == 0.0:
        tokens = jnp.argmax(logits, axis=-1)
    else:
        tokens = jax.random.categorical(key, filter_logits(logits / temperature, top_k, top_p), axis=-1)
    logprobs = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None], axis=-1)[:, 0]
    return tokens.astype(jnp.int32), logprobs


def row_key(seed: int | jax.Array, prompt_index, sample_index) -> jax.Array:
    """The key of one row: fold_in(fold_in(key(seed), prompt), sample) (vectorises over int arrays)."""
    fold = jax.random.fold_in
    return jax.vmap(lambda p, s: fold(fold(jax.random.key(seed), p), s))(
        jnp.atleast_1d(jnp.asarray(prompt_index, jnp.uint32)), jnp.atleast_1d(jnp.asarray(sample_index, jnp.uint32)))


def sample_row_tokens(keys: jax.Array, steps: jax.Array, logits: jax.Array, temperature: float, top_k: int,
                      top_p: float):
    """`sample_tokens` with a key per row: row r draws with fold_in(keys[r], steps[r]) (keys [batch] from
    `row_key`, steps [batch] or [] int: the index of the token drawn), so its draw depends on nothing else."""
    keys = jax.vmap(jax.random.fold_in)(keys, jnp.broadcast_to(steps, keys.shape).astype(jnp.uint32))
    tokens, logprobs = jax.vmap(lambda k, x: sample_tokens(k, x[None], temperature, top_k, top_p))(keys, logits)
    return tokens[:, 0], logprobs[:, 0]


def decode_mesh(mesh: Mesh, tensor_parallel: int | None = None) -> Mesh:
    """The mesh the sampler decodes on: the training mesh's devices as (data = rest, fsdp = 1, tensor = tp).

    Training shards parameters over `fsdp` (ZeRO-3), which a forward pass undoes by all-gathering every
    weight where it is used; in a decode loop that would move the whole model over the interconnect for
    every generated token. The sampler instead keeps its own copy of the weights in the compute dtype,
    laid out as a serving mesh would: split over `tensor` (heads, MLP, vocabulary: tp-way tensor parallelism,
    whose per-token traffic is activations only) and replicated over the data-parallel replicas that each
    decode their own rows. `tensor_parallel` defaults to the training mesh's `tensor` size.
    """
    tp = int(tensor_parallel or mesh.shape.get("tensor", 1))
    n = mesh.devices.size
    if tp < 1 or n % tp:
        raise ValueError(f"rollout tensor_parallel={tp} must be a positive divisor of the {n} devices of the mesh")
    return make_mesh({"data": n // tp, "fsdp": 1, "tensor": tp}, devices=list(mesh.devices.flat))


def _is_abstract(tree) -> bool:
    return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


class Sampler:
    """Generates completions for batches of prompts with a `CausalLM` (optionally sharded on a mesh).

    With a mesh, the sampler holds its own copy of the weights in the compute dtype on `decode_mesh(mesh,
    tensor_parallel)` (made by `update_params`, once per set of weights, not per token); `release_params`
    frees it between rollouts. `model` may be abstract (`nnx.eval_shape`): the jitted prefill and decode can
    then be lowered for planning (`executables`) but not run; such a sampler needs no `tokenizer` (None).
    """

    def __init__(self, model: CausalLM, tokenizer: Tokenizer | None, *, batch_size: int = 8, chunk_size: int = 32,
                 prefill_chunk: int = 256, mesh: Mesh | None = None, rules: Rules = DEFAULT_RULES,
                 add_bos: bool = True, tensor_parallel: int | None = None):
        self.tokenizer = tokenizer
        self.config = model.config
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        # Prompts are prefilled this many tokens at a time: attention scores are [batch, heads, chunk, cache]
        # instead of [batch, heads, prompt, cache] (a 4K-token few-shot prompt would need gigabytes).
        if prefill_chunk < 16 or prefill_chunk & (prefill_chunk - 1):
            raise ValueError(f"prefill_chunk must be a power of two >= 16 (prompt buckets are), got {prefill_chunk}")
        self.prefill_chunk = prefill_chunk
        self.rules = rules
        self.mesh = decode_mesh(mesh, tensor_parallel) if mesh is not None else None
        self.add_bos = add_bos and tokenizer is not None and tokenizer.bos_id is not None
        self.graphdef, _ = nnx.split(model)
        self.pad_id = tokenizer.pad_id if tokenizer is not None and tokenizer.pad_id is not None else 0
        self._compiled: dict[Any, Any] = {}
        shapes = jax.eval_shape(lambda: get_params(model))
        dt = self.config.compute_dtype
        self.params_shape = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, dt if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype), shapes)
        self.params_sharding: dict | None = None
        if self.mesh is not None:
            self.params_sharding = param_shardings(model, self.mesh, rules)
            self.params_shape = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                                             self.params_shape, self.params_sharding)
        cast = lambda p: jax.tree.map(  # noqa: E731
            lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, p)
        self._to_layout = jax.jit(cast, out_shardings=self.params_sharding)
        params = get_params(model)
        self.params = None if _is_abstract(params) else self._to_layout(params)

    def update_params(self, params) -> None:
        """Samples from new parameters (same structure) without recompiling: RL calls this every step. The
        weights are cast to the compute dtype and laid out on the decode mesh once, here."""
        self.params = None
        self.params = self._to_layout(params)

    def release_params(self) -> None:
        """Frees the sampler's copy of the weights (until the next `update_params`)."""
        self.params = None

    # ---------------------------------------------------------------------------------- jitted parts
    def _context(self):
        return activation_sharding(self.mesh, self.rules) if self.mesh is not None else contextlib.nullcontext()

    def _sharding(self, logical, shape):
        if self.mesh is None:
            return None
        return NamedSharding(self.mesh, logical_to_spec(logical, self.rules, shape=shape, mesh=self.mesh))

    def _cache_sharding(self, batch: int, max_len: int):
        if self.mesh is None:
            return None
        cache = jax.eval_shape(lambda: init_cache(self.config, batch, max_len))
        kv_axes = ("layers", "batch", "act_kv_heads", "length", None)
        return KVCache(k=self._sharding(kv_axes, cache.k.shape), v=self._sharding(kv_axes, cache.v.shape),
                       mask=self._sharding(("batch", None), cache.mask.shape), index=self._sharding((), ()),
                       next_positions=self._sharding(("batch",), cache.next_positions.shape))

    def _put(self, x, logical=None):
        """A host array on the decode mesh (every process holds the whole batch: each takes its shards)."""
        x = np.asarray(x)
        if self.mesh is None:
            return jnp.asarray(x)
        sharding = self._sharding(logical or (None,) * x.ndim, x.shape)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    def _fns(self, prompt_len: int, max_new: int, params: SamplingParams):
        key = (prompt_len, max_new, params.temperature, params.top_k, params.top_p)
        if key in self._compiled:
            return self._compiled[key]
        graphdef, cfg = self.graphdef, self.config
        temperature, top_k, top_p = params.temperature, params.top_k, params.top_p
        chunk = self.chunk_size
        b = self.batch_size

        step = min(self.prefill_chunk, prompt_len)  # prompt buckets are powers of two, as are chunks

        def prefill(model_params, tokens, segment_ids, rng):
            """Fills the cache with the prompts, `step` tokens at a time; samples the first new token from the
            last position's logits (the only logits computed)."""
            with self._context():
                cache = init_cache(cfg, tokens.shape[0], prompt_len + max_new)
                chunks = (tokens.reshape(tokens.shape[0], -1, step).swapaxes(0, 1),
                          segment_ids.reshape(tokens.shape[0], -1, step).swapaxes(0, 1))

                def body(cache, chunk):
                    model = nnx.merge(graphdef, model_params)  # inside the loop body: scanned layers need it
                    h, cache = model.decoder(chunk[0], None, chunk[1], cache)
                    return cache, h[:, -1]

                cache, last = jax.lax.scan(body, cache, chunks, unroll=scan_unroll())
                logits = nnx.merge(graphdef, model_params).logits(last[-1][:, None])[:, 0]
            token, logprob = draw(rng, jnp.int32(0), logits)
            return cache, token, logprob

        def draw(rng, step, logits):
            """rng: one key (the batch's stream) or per-row keys [batch] (`SamplingParams.row_keys`)."""
            if rng.ndim:
                return sample_row_tokens(rng, step, logits, temperature, top_k, top_p)
            return sample_tokens(rng, logits, temperature, top_k, top_p)

        def decode_one(model_params, cache, token, rng, step=0):
            """One decoding step for every row: (logits' sample, its log-prob, the new cache)."""
            model = nnx.merge(graphdef, model_params)
            with self._context():
                logits, cache = model(token[:, None], cache=cache)
            nxt, logprob = draw(rng, step, logits[:, 0])
            return nxt, logprob, cache

        def decode(model_params, cache, token, done, rng, stop_ids, out_tokens, out_logprobs, step):
            """Runs up to `chunk` steps (fewer if every row is done or the budget ends)."""

            def cond(carry):
                _, _, done, _, _, _, i, s = carry
                return (i < chunk) & (s < max_new) & ~jnp.all(done)

            def body(carry):
                cache, token, done, rng, out_tokens, out_logprobs, i, s = carry
                if rng.ndim:  # per-row keys: token s of each row is drawn with fold_in(row key, s)
                    sub = rng
                else:
                    rng, sub = jax.random.split(rng)
                nxt, logprob, cache = decode_one(model_params, cache, token, sub, s)
                nxt = jnp.where(done, self.pad_id, nxt)
                logprob = jnp.where(done, 0.0, logprob)
                out_tokens = out_tokens.at[:, s].set(nxt)
                out_logprobs = out_logprobs.at[:, s].set(logprob)
                done = done | jnp.isin(nxt, stop_ids)
                return cache, nxt, done, rng, out_tokens, out_logprobs, i + 1, s + 1

            carry = (cache, token, done, rng, out_tokens, out_logprobs, jnp.int32(0), step)
            cache, token, done, rng, out_tokens, out_logprobs, _, step = jax.lax.while_loop(cond, body, carry)
            return cache, token, done, rng, out_tokens, out_logprobs, step

        if self.mesh is None:
            fns = (jax.jit(prefill), jax.jit(decode, donate_argnums=(1, 6, 7)), jax.jit(decode_one))
        else:
            rows = self._sharding(("batch", None), (b, prompt_len))
            rep = self._sharding((), ())
            cache_sh = self._cache_sharding(b, prompt_len + max_new)
            ps = self.params_sharding
            fns = (jax.jit(prefill, in_shardings=(ps, rows, rows, rep), out_shardings=(cache_sh, rep, rep)),
                   # Per-row state (tokens, done, outputs) is small and replicated; the cache stays sharded.
                   jax.jit(decode, in_shardings=(ps, cache_sh, rep, rep, rep, rep, rep, rep, rep),
                           out_shardings=(cache_sh, rep, rep, rep, rep, rep, rep), donate_argnums=(1, 6, 7)),
                   jax.jit(decode_one, in_shardings=(ps, cache_sh, rep, rep), out_shardings=(rep, rep, cache_sh)))
        self._compiled[key] = fns
        return fns

    def executables(self, prompt_len: int, params: SamplingParams) -> list[tuple[str, Any, tuple]]:
        """(name, jitted function, abstract arguments) of what `generate` compiles for one batch of
        `batch_size` rows with prompts in the `prompt_len` bucket: `prefill`, `decode` (one call decodes up
        to `chunk_size` tokens in a loop) and `decode_step` (the loop's body alone: what one generated token
        costs, for FLOP and byte counts that a loop would hide). For compile-only planning."""
        prompt_len = _bucket(prompt_len)
        max_new, b = params.max_new_tokens, self.batch_size
        prefill, decode, decode_one = self._fns(prompt_len, max_new, params)
        rows = self._sharding(("batch", None), (b, prompt_len))
        rep = self._sharding((), ())
        spec = lambda shape, dtype, sh=None: jax.ShapeDtypeStruct(shape, dtype, sharding=sh if sh else rep)  # noqa: E731
        key = jax.eval_shape(lambda: jax.random.key(0))
        key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)
        cache = jax.eval_shape(lambda: init_cache(self.config, b, prompt_len + max_new))
        cache_sh = self._cache_sharding(b, prompt_len + max_new)
        if cache_sh is not None:
            cache = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), cache, cache_sh)
        tokens = spec((b, prompt_len), jnp.int32, rows)
        row_i, row_b = spec((b,), jnp.int32), spec((b,), jnp.bool_)
        out_t, out_l = spec((b, max_new), jnp.int32), spec((b, max_new), jnp.float32)
        step = spec((), jnp.int32)
        stop = spec((1,), jnp.int32)
        return [("prefill", prefill, (self.params_shape, tokens, tokens, key)),
                ("decode", decode, (self.params_shape, cache, row_i, row_b, key, stop, out_t, out_l, step)),
                ("decode_step", decode_one, (self.params_shape, cache, row_i, key))]

    # ---------------------------------------------------------------------------------- host side
    def _require_tokenizer(self) -> Tokenizer:
        """The tokenizer, which encoding prompts and decoding completions need."""
        if self.tokenizer is None:
            raise ValueError("this Sampler was built without a tokenizer (for planning): it cannot generate")
        return self.tokenizer

    def encode_prompts(self, prompts: Sequence[str | Sequence[int]]) -> list[list[int]]:
        return [list(p) if not isinstance(p, str) else self._require_tokenizer().encode(p, add_bos=self.add_bos)
                for p in prompts]

    def generate(self, prompts: Sequence[str | Sequence[int]], params: SamplingParams = SamplingParams(),
                 *, progress: bool = False) -> list[list[Completion]]:
        """Completions for each prompt (a string, or token ids), `params.n` per prompt."""
        encoded = self.encode_prompts(prompts)
        for i, ids in enumerate(encoded):
            if not ids:
                raise ValueError(f"prompt {i} is empty")
        stop_ids = params.stop_token_ids
        if stop_ids is None:
            eos_id = self._require_tokenizer().eos_id
            stop_ids = () if eos_id is None else (eos_id,)
        rows = [(p, s) for p in range(len(encoded)) for s in range(params.n)]
        results: list[list[Completion | None]] = [[None] * params.n for _ in encoded]
        chunks = range(0, len(rows), self.batch_size)
        if progress:
            from tqdm.auto import tqdm
            chunks = tqdm(chunks, desc="sampling", unit="batch")
        for start in chunks:
            batch_rows = rows[start:start + self.batch_size]
            for completion in self._generate_batch(encoded, batch_rows, params, stop_ids, start):
                results[completion.prompt_index][completion.sample_index] = completion
        return results  # type: ignore[return-value]

    def _generate_batch(self, encoded, batch_rows, params: SamplingParams, stop_ids, batch_start: int):
        b = self.batch_size
        longest = max(len(encoded[p]) for p, _ in batch_rows)
        max_len = self.config.max_seq_len
        prompt_len = _bucket(longest)
        max_new = params.max_new_tokens
        if longest + max_new > max_len:
            log.warning("prompt (%d tokens) + max_new_tokens (%d) exceed the model context (%d)", longest, max_new,
                        max_len)
        tokens = np.full((b, prompt_len), self.pad_id, np.int32)
        segments = np.zeros((b, prompt_len), np.int32)
        for r, (p, _) in enumerate(batch_rows):
            ids = encoded[p]
            tokens[r, prompt_len - len(ids):] = ids
            segments[r, prompt_len - len(ids):] = 1
        for r in range(len(batch_rows), b):  # dummy rows keep the batch shape static
            tokens[r, -1] = self.pad_id
            segments[r, -1] = 1
        if self.params is None:
            raise RuntimeError("the sampler holds no weights: call update_params(params) first")
        prefill, decode, _ = self._fns(prompt_len, max_new, params)
        rng = jax.random.fold_in(jax.random.key(params.seed), batch_start)
        rng, first_key = jax.random.split(rng)
        if params.row_keys:  # dummy rows draw with the last real row's key (their tokens are dropped)
            rows = batch_rows + [batch_rows[-1]] * (b - len(batch_rows))
            rng = first_key = row_key(params.seed, [p for p, _ in rows], [s for _, s in rows])
        if self.mesh is not None:  # as decode returns it: otherwise its first call compiles a second executable
            rng = jax.device_put(rng, self._sharding((), ()))
        cache, token, logprob = prefill(self.params, self._put(tokens, ("batch", None)),
                                        self._put(segments, ("batch", None)), first_key)
        token, logprob = np.asarray(token), np.asarray(logprob)
        stop_np = np.asarray(stop_ids or (-1,), np.int32)
        out_tokens = np.full((b, max_new), self.pad_id, np.int32)
        out_tokens[:, 0] = token
        out_logprobs = np.zeros((b, max_new), np.float32)
        out_logprobs[:, 0] = logprob
        done = np.isin(token, stop_np) | (np.arange(b) >= len(batch_rows))
        stop_arr, out_tokens, out_logprobs, done, token = map(self._put, (stop_np, out_tokens, out_logprobs, done,
                                                                          token))
        step = self._put(np.int32(1))
        finished_string: dict[int, tuple[str, int]] = {}
        while True:
            if int(step) >= max_new or bool(np.asarray(done).all()):
                break
            cache, token, done, rng, out_tokens, out_logprobs, step = decode(
                self.params, cache, token, done, rng, stop_arr, out_tokens, out_logprobs, step)
            if params.stop_strings:
                host_tokens, host_done = np.asarray(out_tokens), np.asarray(done)
                newly = []
                for r in range(len(batch_rows)):
                    if host_done[r] or r in finished_string:
                        continue
                    hit = self._find_stop_string(host_tokens[r, :int(step)], params.stop_strings)
                    if hit is not None:
                        finished_string[r] = hit
                        newly.append(r)
                if newly:
                    host_done = host_done.copy()
                    host_done[newly] = True
                    done = self._put(host_done)
        host_tokens, host_logprobs = np.asarray(out_tokens), np.asarray(out_logprobs)
        steps = int(step)
        out = []
        for r, (p, s) in enumerate(batch_rows):
            row = host_tokens[r, :steps].tolist()
            lps = host_logprobs[r, :steps].tolist()
            out.append(self._finish_row(p, s, row, lps, stop_ids, params.stop_strings, finished_string.get(r)))
        return out

    def _find_stop_string(self, row_tokens: np.ndarray, stop_strings: Sequence[str]) -> tuple[str, int] | None:
        """(stop string, number of tokens up to and including the one completing it), or None."""
        text = self._require_tokenizer().decode(row_tokens.tolist())
        first = None
        for stop in stop_strings:
            at = text.find(stop)
            if at >= 0 and (first is None or at < first[1]):
                first = (stop, at)
        if first is None:
            return None
        stop, _ = first
        for n in range(1, len(row_tokens) + 1):  # the shortest token prefix whose text contains it
            if stop in self._require_tokenizer().decode(row_tokens[:n].tolist()):
                return stop, n
        return stop, len(row_tokens)

    def _finish_row(self, p, s, row, lps, stop_ids, stop_strings, string_hit) -> Completion:
        end, reason, stop = len(row), "length", None
        for i, t in enumerate(row):
            if t in stop_ids:
                end, reason, stop = i + 1, "stop_token", t
                break
        if stop_strings:
            hit = string_hit or self._find_stop_string(np.asarray(row[:end]), stop_strings)
            if hit is not None and hit[1] <= end:
                end, reason, stop = hit[1], "stop_string", hit[0]
        tokens, logprobs = row[:end], lps[:end]
        text_tokens = tokens[:-1] if reason == "stop_token" else tokens
        text = self._require_tokenizer().decode(text_tokens)
        if isinstance(stop, str):  # ended by a stop string (a stop token is an int): the text ends before it
            text = text[:text.find(stop)]
        return Completion(prompt_index=p, sample_index=s, tokens=tokens, logprobs=logprobs, text=text,
                          finish_reason=reason, stop=stop)


__all__ = ["Sampler", "SamplingParams", "Completion", "sample_tokens", "sample_row_tokens", "row_key", "filter_logits",
           "decode_mesh"]
