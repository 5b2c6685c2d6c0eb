"""The Flax NNX DeepSeek/Llama decoder, its KV cache, scalar heads and Hugging Face interop."""

from dsmath_jax.model.config import PRESETS, ConfigError, ModelConfig, get_preset
from dsmath_jax.model.hf import CheckpointFormatError, load_hf, save_hf
from dsmath_jax.model.params import get_params, param_flat_state, set_params
from dsmath_jax.model.transformer import (
    CausalLM,
    Decoder,
    KVCache,
    ScalarHeadModel,
    init_cache,
    packed_attention_mask,
    segment_positions,
)

__all__ = [
    "CausalLM", "Decoder", "KVCache", "ScalarHeadModel", "init_cache", "packed_attention_mask", "segment_positions",
    "PRESETS", "ConfigError", "ModelConfig", "get_preset", "CheckpointFormatError", "load_hf", "save_hf",
    "get_params", "param_flat_state", "set_params",
]
