"""Pieces the benchmark scripts share: the ~100M comparison model, its `transformers` twin, the report."""

from __future__ import annotations

import json

from dsmath_jax.model import ModelConfig

# A ~100M-parameter Llama (134M with embeddings): big enough for matmuls to dominate, small enough for a CPU.
MODEL_100M = ModelConfig(vocab_size=32000, d_model=768, num_layers=12, num_heads=12, mlp_dim=2048, max_seq_len=1024)


def hf_llama(cfg: ModelConfig):
    """A randomly initialised `transformers.LlamaForCausalLM` of the same shape as `cfg`."""
    import transformers
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=False, attn_implementation="sdpa"))


def report(result: dict, output: str | None) -> None:
    """Prints the result as JSON and writes it to `output` when given."""
    print(json.dumps(result, indent=2))
    if output:
        with open(output, "w") as f:
            json.dump(result, f, indent=2)
