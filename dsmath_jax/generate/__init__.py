"""Batched sampling with a KV cache (prefill + decode), stop criteria and sampled-token log-probs."""

from dsmath_jax.generate.sampler import Completion, Sampler, SamplingParams, filter_logits, sample_tokens

__all__ = ["Completion", "Sampler", "SamplingParams", "filter_logits", "sample_tokens"]
