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
from dsmath_jax.model.transformer import CausalLM, KVCache, init_cache
from dsmath_jax.parallel.mesh import DEFAULT_RULES, Rules, activation_sharding, get_params, logical_to_spec

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


class Sampler:
    """Generates completions for batches of prompts with a `CausalLM` (optionally sharded on a mesh)."""

    def __init__(self, model: CausalLM, tokenizer: Tokenizer, *, batch_size: int = 8, chunk_size: int = 32,
                 prefill_chunk: int = 256, mesh: Mesh | None = None, rules: Rules = DEFAULT_RULES,
                 add_bos: bool = True):
        self.tokenizer = tokenizer
        self.config = model.config
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        # Prompts are prefilled this many tokens at a time: attention scores are [batch, heads, chunk, cache]
        # instead of [batch, heads, prompt, cache] (a 4K-token few-shot prompt would need gigabytes).
        if prefill_chunk < 16 or prefill_chunk & (prefill_chunk - 1):
            raise ValueError(f"prefill_chunk must be a power of two >= 16 (prompt buckets are), got {prefill_chunk}")
        self.prefill_chunk = prefill_chunk
        self.mesh, self.rules = mesh, rules
        self.add_bos = add_bos and tokenizer.bos_id is not None
        self.graphdef, _ = nnx.split(model)
        self.params = get_params(model)
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        self._compiled: dict[Any, Any] = {}

    def update_params(self, params) -> None:
        """Samples from new parameters (same structure) without recompiling: RL calls this every step."""
        self.params = params

    # ---------------------------------------------------------------------------------- jitted parts
    def _context(self):
        return activation_sharding(self.mesh, self.rules) if self.mesh is not None else contextlib.nullcontext()

    def _cache_sharding(self, cache: KVCache):
        if self.mesh is None:
            return None
        spec = lambda axes, x: NamedSharding(self.mesh, logical_to_spec(axes, self.rules, shape=x.shape,  # noqa: E731
                                                                        mesh=self.mesh))
        kv_axes = ("layers", "batch", "act_kv_heads", "length", None)
        return KVCache(k=spec(kv_axes, cache.k), v=spec(kv_axes, cache.v), mask=spec(("batch", None), cache.mask),
                       index=spec((), cache.index), next_positions=spec(("batch",), cache.next_positions))

    def _fns(self, prompt_len: int, max_new: int, params: SamplingParams):
        key = (prompt_len, max_new, params.temperature, params.top_k, params.top_p)
        if key in self._compiled:
            return self._compiled[key]
        graphdef, cfg = self.graphdef, self.config
        temperature, top_k, top_p = params.temperature, params.top_k, params.top_p
        chunk = self.chunk_size

        step = min(self.prefill_chunk, prompt_len)  # prompt buckets are powers of two, as are chunks

        def prefill(model_params, tokens, segment_ids, rng):
            with self._context():
                cache = init_cache(cfg, tokens.shape[0], prompt_len + max_new)
                model = nnx.merge(graphdef, model_params)
                chunks = (tokens.reshape(tokens.shape[0], -1, step).swapaxes(0, 1),
                          segment_ids.reshape(tokens.shape[0], -1, step).swapaxes(0, 1))

                def body(cache, chunk):
                    logits, cache = model(chunk[0], segment_ids=chunk[1], cache=cache)
                    return cache, logits[:, -1]

                cache, last = jax.lax.scan(body, cache, chunks)
            token, logprob = sample_tokens(rng, last[-1], temperature, top_k, top_p)
            return cache, token, logprob

        def decode(model_params, cache, token, done, rng, stop_ids, out_tokens, out_logprobs, step):
            """Runs up to `chunk` steps (fewer if every row is done or the budget ends)."""
            model = nnx.merge(graphdef, model_params)

            def cond(carry):
                _, _, done, _, _, _, i, s = carry
                return (i < chunk) & (s < max_new) & ~jnp.all(done)

            def body(carry):
                cache, token, done, rng, out_tokens, out_logprobs, i, s = carry
                rng, sub = jax.random.split(rng)
                with self._context():
                    logits, cache = model(token[:, None], cache=cache)
                nxt, logprob = sample_tokens(sub, logits[:, 0], temperature, top_k, top_p)
                nxt = jnp.where(done, self.pad_id, nxt)
                logprob = jnp.where(done, 0.0, logprob)
                out_tokens = out_tokens.at[:, s].set(nxt)
                out_logprobs = out_logprobs.at[:, s].set(logprob)
                done = done | jnp.isin(nxt, stop_ids)
                return cache, nxt, done, rng, out_tokens, out_logprobs, i + 1, s + 1

            carry = (cache, token, done, rng, out_tokens, out_logprobs, jnp.int32(0), step)
            cache, token, done, rng, out_tokens, out_logprobs, _, step = jax.lax.while_loop(cond, body, carry)
            return cache, token, done, rng, out_tokens, out_logprobs, step

        fns = (jax.jit(prefill), jax.jit(decode, donate_argnums=(1, 6, 7)))
        self._compiled[key] = fns
        return fns

    # ---------------------------------------------------------------------------------- host side
    def encode_prompts(self, prompts: Sequence[str | Sequence[int]]) -> list[list[int]]:
        return [list(p) if not isinstance(p, str) else self.tokenizer.encode(p, add_bos=self.add_bos)
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
            stop_ids = () if self.tokenizer.eos_id is None else (self.tokenizer.eos_id,)
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
        prefill, decode = self._fns(prompt_len, max_new, params)
        rng = jax.random.fold_in(jax.random.key(params.seed), batch_start)
        rng, first_key = jax.random.split(rng)
        cache, token, logprob = prefill(self.params, jnp.asarray(tokens), jnp.asarray(segments), first_key)
        stop_arr = jnp.asarray(np.asarray(stop_ids or (-1,), np.int32))
        out_tokens = jnp.full((b, max_new), self.pad_id, jnp.int32).at[:, 0].set(token)
        out_logprobs = jnp.zeros((b, max_new), jnp.float32).at[:, 0].set(logprob)
        done = jnp.isin(token, stop_arr) | (jnp.arange(b) >= len(batch_rows))
        step = jnp.int32(1)
        finished_string: dict[int, tuple[str, int]] = {}
        while True:
            if int(step) >= max_new or bool(jnp.all(done)):
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
                    done = done.at[jnp.asarray(newly)].set(True)
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
        text = self.tokenizer.decode(row_tokens.tolist())
        first = None
        for stop in stop_strings:
            at = text.find(stop)
            if at >= 0 and (first is None or at < first[1]):
                first = (stop, at)
        if first is None:
            return None
        stop, _ = first
        for n in range(1, len(row_tokens) + 1):  # the shortest token prefix whose text contains it
            if stop in self.tokenizer.decode(row_tokens[:n].tolist()):
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
        text = self.tokenizer.decode(text_tokens)
        if reason == "stop_string":
            text = text[:text.find(stop)]
        return Completion(prompt_index=p, sample_index=s, tokens=tokens, logprobs=logprobs, text=text,
                          finish_reason=reason, stop=stop)


__all__ = ["Sampler", "SamplingParams", "Completion", "sample_tokens", "filter_logits"]
