"""Model configuration: the Llama-style decoder of DeepSeek-Coder / DeepSeekMath (PAPER.md §2).

A `ModelConfig` is validated when it is built, so a bad config fails before any array is allocated,
with a message naming the field. Configs come from presets, from ml-collections dicts
(`ModelConfig.from_dict`, unknown keys rejected) or from a Hugging Face `config.json`
(`ModelConfig.from_hf_config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from dsmath_jax.model.attention import IMPLEMENTATIONS

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_name(dtype: Any, what: str = "dtype") -> str:
    """The name in DTYPES of a dtype given as a string ("bfloat16") or as the objects JAX users pass
    (`jnp.bfloat16`, `np.float32`, `jnp.dtype("float16")`); a clear error for anything else."""
    if isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = jnp.dtype(dtype).name
        except TypeError:
            name = None
    if name not in DTYPES:
        raise ConfigError(f"{what}={dtype!r} is not one of {sorted(DTYPES)} (or the matching jnp/np dtype)")
    return name

# Named rematerialisation policies (see `dsmath_jax.model.layers.remat_policy`).
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attention", "save_qkv")
# Fields that say how the model computes, not what it is: a run may change them when it loads a checkpoint or a
# Hugging Face model (e.g. bf16 compute and scanned layers for training a model that was saved in fp32).
COMPUTE_FIELDS = ("dtype", "param_dtype", "remat_policy", "scan_layers", "attention_impl", "logits_chunk")
# Attention implementations (`dsmath_jax.model.attention`); "auto" picks by the platform.
ATTENTION_IMPLS = IMPLEMENTATIONS


class ConfigError(ValueError):
    """A model config that cannot describe a valid model; the message names the field."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the decoder.

    Attributes:
      vocab_size: rows of the token embedding and columns of the LM head.
      d_model: width of the residual stream.
      num_layers: number of decoder blocks.
      num_heads: query heads.
      mlp_dim: hidden width of the SwiGLU MLP.
      num_kv_heads: key/value heads (grouped-query attention); `None` means `num_heads` (MHA).
      head_dim: width of one head; `None` means `d_model // num_heads`.
      rope_theta: base of the rotary frequencies.
      rms_norm_eps: epsilon of RMSNorm.
      max_seq_len: the longest context the model is meant for (positions beyond it still compute).
      initializer_range: std of the normal initialiser of every matrix.
      dtype: compute dtype ("float32" or "bfloat16"); logits and the loss are always float32.
      param_dtype: storage dtype of the parameters (float32 master weights by default).
      remat_policy: one of REMAT_POLICIES; "none" keeps every activation.
      scan_layers: stack the blocks and run them with `nnx.scan` (one compiled block).
      attention_impl: how training/scoring forwards compute attention (`dsmath_jax.model.attention`):
        "auto" (splash on TPU, cuDNN flash on GPU, XLA on CPU: by the platform of the mesh), "xla",
        "cudnn" or "splash". None means "auto".
      logits_chunk: positions per block when log-probs, the loss and entropies are computed from the LM
        head (`dsmath_jax.model.logprobs`): [rows, seq, vocab] logits never exist at once. 0 = unchunked.
      bos_token_id, eos_token_id, pad_token_id: recorded for export to Hugging Face format.
    """

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_seq_len: int = 4096
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    scan_layers: bool = False
    attention_impl: str | None = None
    logits_chunk: int = 512
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # Fields filled in from others (num_kv_heads, head_dim) so that `replace` derives them again.
    _derived: tuple[str, ...] = dataclasses.field(default=(), compare=False, repr=False)

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "mlp_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        derived = []
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
            derived.append("num_kv_heads")
        if not isinstance(self.num_kv_heads, int) or self.num_kv_heads <= 0:
            raise ConfigError(f"ModelConfig.num_kv_heads must be a positive int, got {self.num_kv_heads!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"ModelConfig.num_kv_heads={self.num_kv_heads} must divide ModelConfig.num_heads={self.num_heads} "
                "(each key/value head serves a whole group of query heads)")
        if self.head_dim is None:
            if self.d_model % self.num_heads:
                raise ConfigError(
                    f"ModelConfig.d_model={self.d_model} is not divisible by ModelConfig.num_heads={self.num_heads}; "
                    "pick a divisor or set ModelConfig.head_dim explicitly")
            object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
            derived.append("head_dim")
        object.__setattr__(self, "_derived", tuple(derived))
        if not isinstance(self.head_dim, int) or self.head_dim <= 0 or self.head_dim % 2:
            raise ConfigError(f"ModelConfig.head_dim must be a positive even int (rotary pairs), got {self.head_dim!r}")
        for name in ("dtype", "param_dtype"):  # dtype objects (jnp.bfloat16) are stored by name
            object.__setattr__(self, name, dtype_name(getattr(self, name), f"ModelConfig.{name}"))
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(f"ModelConfig.remat_policy={self.remat_policy!r} is not one of {REMAT_POLICIES}")
        if self.attention_impl not in (None,) + ATTENTION_IMPLS:
            raise ConfigError(f"ModelConfig.attention_impl={self.attention_impl!r} must be None or one of "
                              f"{ATTENTION_IMPLS}")
        if not isinstance(self.logits_chunk, int) or isinstance(self.logits_chunk, bool) or self.logits_chunk < 0:
            raise ConfigError("ModelConfig.logits_chunk must be an int >= 0 (0 = unchunked), "
                              f"got {self.logits_chunk!r}")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0 or self.initializer_range <= 0:
            raise ConfigError("ModelConfig.rope_theta, rms_norm_eps and initializer_range must be > 0")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ConfigError(f"ModelConfig.{name}={value} is outside the vocabulary [0, {self.vocab_size})")

    # ------------------------------------------------------------------ derived quantities
    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    def num_params(self, *, include_embedding: bool = True) -> int:
        d, h, k, hd, f, v = (self.d_model, self.num_heads, self.num_kv_heads, self.head_dim, self.mlp_dim,
                             self.vocab_size)
        assert k is not None and hd is not None  # derived in __post_init__
        per_layer = d * h * hd + 2 * d * k * hd + h * hd * d + 3 * d * f + 2 * d
        total = self.num_layers * per_layer + d + d * v
        return total + (d * v if include_embedding else 0)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6 N plus the attention term of PaLM's MFU formula."""
        seq_len = seq_len or self.max_seq_len
        n = self.num_params(include_embedding=False)
        assert self.head_dim is not None  # derived in __post_init__
        return 6.0 * n + 12.0 * self.num_layers * self.num_heads * self.head_dim * seq_len

    def replace(self, **changes: Any) -> ModelConfig:
        _check_keys(changes, "ModelConfig.replace")
        rederive: dict[str, Any] = {name: None for name in self._derived if name not in changes}
        return dataclasses.replace(self, **rederive, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Builds a config from a mapping (e.g. an ml-collections ConfigDict); unknown keys are errors.

        A `preset` key starts from that preset and applies the other keys on top of it. A None value means
        "not set" (the preset's or the default value), as config placeholders are.
        """
        values = {k: v for k, v in (values.to_dict() if hasattr(values, "to_dict") else values).items()
                  if v is not None}
        preset = values.pop("preset", None)
        _check_keys(values, "model config")
        if preset is not None:
            return get_preset(preset).replace(**values)
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in values]
        if missing:
            raise ConfigError(f"model config is missing required field(s) {missing} (or give a 'preset')")
        return cls(**values)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any] | str | os.PathLike, **overrides: Any) -> ModelConfig:
        """Reads a Hugging Face `LlamaForCausalLM` config (a dict, a config.json path or its directory)."""
        cfg: Mapping[str, Any]
        if isinstance(hf, Mapping):
            cfg = hf
        else:
            path = os.fspath(hf)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            try:
                with open(path, encoding="utf-8") as f:
                    cfg = json.load(f)
            except FileNotFoundError:
                raise FileNotFoundError(f"no Hugging Face config at {path}: expected a config.json") from None
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path} is not valid JSON: {e}") from e
        arch = cfg.get("architectures") or ["LlamaForCausalLM"]
        model_type = cfg.get("model_type", "llama")
        if model_type != "llama" and "LlamaForCausalLM" not in arch:
            raise ConfigError(f"config.json describes model_type={model_type!r} {arch}; only Llama-style "
                              "decoders (LlamaForCausalLM, as DeepSeek-Coder/DeepSeekMath use) are supported")
        for key, ok in (("tie_word_embeddings", False), ("attention_bias", False), ("mlp_bias", False)):
            if cfg.get(key, ok) != ok:
                raise ConfigError(f"config.json has {key}={cfg[key]!r}; DeepSeek/Llama models here need {key}={ok}")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"config.json has hidden_act={cfg['hidden_act']!r}; the SwiGLU MLP needs 'silu'")
        rope = cfg.get("rope_parameters") or {}
        scaling = cfg.get("rope_scaling")
        rope_type = rope.get("rope_type", "default") if rope else (scaling or {}).get("type", "default")
        if rope_type not in ("default", None):
            raise ConfigError(f"config.json asks for rope scaling {rope_type!r}; only unscaled rotary embeddings "
                              "(DeepSeekMath's) are implemented")
        theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        values = dict(
            vocab_size=cfg["vocab_size"], d_model=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"], num_kv_heads=cfg.get("num_key_value_heads"),
            head_dim=cfg.get("head_dim"), mlp_dim=cfg["intermediate_size"], rope_theta=float(theta),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_seq_len=int(cfg.get("max_position_embeddings", 4096)),
            initializer_range=float(cfg.get("initializer_range", 0.02)),
            bos_token_id=cfg.get("bos_token_id"), eos_token_id=_first(cfg.get("eos_token_id")),
            pad_token_id=cfg.get("pad_token_id"))
        values.update(overrides)
        return cls(**values)

    def to_hf_config(self) -> dict[str, Any]:
        """The `config.json` of the equivalent `LlamaForCausalLM`."""
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": self.vocab_size, "hidden_size": self.d_model, "intermediate_size": self.mlp_dim,
            "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim, "hidden_act": "silu",
            "max_position_embeddings": self.max_seq_len, "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta, "rope_scaling": None, "attention_bias": False,
            "attention_dropout": 0.0, "mlp_bias": False, "tie_word_embeddings": False,
            "initializer_range": self.initializer_range, "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id,
            "torch_dtype": self.param_dtype, "use_cache": True,
        }


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) else value


_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if not f.name.startswith("_"))


def _check_keys(values: Mapping[str, Any], where: str) -> None:
    unknown = [k for k in values if k not in _FIELDS]
    if unknown:
        hints = {k: difflib.get_close_matches(k, _FIELDS, n=1) for k in unknown}
        hint = "; ".join(f"{k!r} (did you mean {h[0]!r}?)" if h else repr(k) for k, h in hints.items())
        raise ConfigError(f"unknown key(s) in {where}: {hint}; valid keys are {list(_FIELDS)}")


# ---------------------------------------------------------------------- presets
PRESETS: dict[str, ModelConfig] = {
    # A few hundred thousand parameters: tests and CPU quick runs. GQA (8 query / 4 kv heads).
    "tiny": ModelConfig(vocab_size=256, d_model=64, num_layers=2, num_heads=8, num_kv_heads=4, mlp_dim=160,
                        max_seq_len=256),
    # The 1.3B DeepSeek-LLM-style model of the corpus ablations (PAPER.md §2, Table 1, §5.1).
    "deepseek_1_3b": ModelConfig(vocab_size=102400, d_model=2048, num_layers=24, num_heads=16, mlp_dim=5504,
                                 max_seq_len=4096, bos_token_id=100000, eos_token_id=100001),
    # DeepSeek-Coder-Base-v1.5 7B / DeepSeekMath 7B (PAPER.md §2).
    "deepseekmath_7b": ModelConfig(vocab_size=102400, d_model=4096, num_layers=30, num_heads=32, mlp_dim=11008,
                                   max_seq_len=4096, rope_theta=10000.0, rms_norm_eps=1e-6,
                                   bos_token_id=100000, eos_token_id=100001),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        hint = difflib.get_close_matches(name, PRESETS, n=1)
        raise ConfigError(f"unknown model preset {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                          + f"; known presets: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
