"""Batched sampling with a KV cache (prefill + decode), stop criteria and sampled-token log-probs: the static
`Sampler` and the continuous-batching `Engine` (same `generate` API)."""

from dsmath_jax.generate.engine import Engine, make_sampler
from dsmath_jax.generate.sampler import Completion, Sampler, SamplingParams, filter_logits, sample_tokens

__all__ = ["Completion", "Engine", "Sampler", "SamplingParams", "filter_logits", "make_sampler", "sample_tokens"]
