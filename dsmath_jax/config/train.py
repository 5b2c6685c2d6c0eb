"""The schema of `dsmath pretrain` and `dsmath sft` configs: `base_train_config()` returns a ConfigDict with
all sections and typed defaults; an experiment file under `configs/` changes what its paper result needs, and
`validate(config)` checks what types cannot.

Sections: seed, model (a `ModelConfig` preset + overrides), init (start from a Hugging Face directory or a
checkpoint), tokenizer, data (sources, context length), optimizer (AdamW + schedule), train (steps, batch,
logging, checkpoints), mesh (shape and logical-axis rules), distributed (multi-host start-up).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from dsmath_jax.config.checks import (
    ConfigError,
    at_least,
    check_distributed,
    check_keys_and_types,
    check_mesh,
    check_model,
    check_optimizer,
    counts,
    in_range,
    one_of,
)
from dsmath_jax.data.arithmetic import ANSWER_MIX_SHARE, ARITHMETIC_ANSWER_MIX, ARITHMETIC_TINY
from dsmath_jax.data.pipeline import OVERLONG, PACKINGS
from dsmath_jax.data.sft_data import SFTSource
from dsmath_jax.data.sources import source_name
from dsmath_jax.model.config import COMPUTE_FIELDS, ModelConfig

# Learning-rate schedules (dsmath_jax.train.schedules): name -> the keys it takes besides name, peak, warmup_steps.
SCHEDULES: dict[str, tuple[str, ...]] = {"multi_step": ("boundaries", "factors"), "constant": (),
                                         "cosine": ("final_fraction",)}
# Sub-trees whose keys differ from the base config's: the model (a preset + ModelConfig overrides) and the
# learning-rate schedule (its name's keys); each has its own check in `validate`.
FREE_FORM = ("model", "optimizer.schedule")


def source(kind: str, *, weight: float = 1.0, **fields: Any) -> dict[str, Any]:
    """A data-source spec (see `dsmath_jax.data.sources`)."""
    return dict(kind=kind, weight=weight, **fields)


def _model_field_types() -> dict[str, type]:
    """`ModelConfig`'s public fields and their types (`int | None` -> int)."""
    hints = typing.get_type_hints(ModelConfig)
    out = {}
    for f in dataclasses.fields(ModelConfig):
        if f.name.startswith("_"):
            continue
        kinds = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
        out[f.name] = kinds[0]
    return out


def model_section(**values: Any) -> ml_collections.ConfigDict:
    """A config's `model` section: a preset and overrides (`ModelConfig` fields), with every other field present
    as an unset placeholder (None: the preset's value) so that the command line can set it, the compute settings
    (`--config.model.attention_impl=xla`) and the architecture alike (`--config.model.num_layers=4`)."""
    c = ml_collections.ConfigDict(dict(preset=placeholder(str)))
    for name, kind in _model_field_types().items():
        c[name] = placeholder(kind)
    assert set(COMPUTE_FIELDS) <= set(c), COMPUTE_FIELDS
    c.update(values)
    return c


def base_train_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = model_section(preset="tiny")
    c.init = ml_collections.ConfigDict(dict(hf_dir=placeholder(str), checkpoint=placeholder(str),
                                            step=placeholder(int)))
    c.tokenizer = ml_collections.ConfigDict(dict(path=placeholder(str), train_vocab_size=placeholder(int),
                                                 train_docs=20000))
    c.data = ml_collections.ConfigDict(dict(
        sources=[], seq_len=4096, data_dir=placeholder(str), benchmarks_dir=placeholder(str),
        eval_split=placeholder(str), seed=0, epochs=placeholder(int), packing="concat", overlong="truncate",
        max_drop_fraction=0.99))
    c.optimizer = ml_collections.ConfigDict(dict(
        schedule=dict(name="multi_step", peak=4.2e-4, warmup_steps=2000), b1=0.9, b2=0.95, weight_decay=0.1,
        clip_norm=1.0))
    c.train = ml_collections.ConfigDict(dict(
        steps=1000, batch_size=256, accum_steps=1, log_every=10, eval_every=0, eval_batches=10,
        checkpoint_every=1000, keep_checkpoints=3, max_nonfinite_in_a_row=10, async_checkpoint=True,
        tensorboard=True))
    c.mesh = ml_collections.ConfigDict(dict(shape=dict(data=1, fsdp=-1, tensor=1), rules=placeholder(tuple)))
    c.distributed = ml_collections.ConfigDict(dict(enabled="auto", coordinator_address=placeholder(str),
                                                   num_processes=placeholder(int), process_id=placeholder(int),
                                                   timeout_s=300))
    return c


def deepseek_1_3b_ablation(c: ml_collections.ConfigDict, *, steps: int) -> ml_collections.ConfigDict:
    """The 1.3B setting of the corpus ablations (PAPER.md §2, Table 1, §5.1): the DeepSeek-LLM-style 1.3B
    model from scratch, bf16 compute, context 4K, batch 4M tokens (1,024 x 4,096), multi-step schedule to
    5.3e-4 with 2,000 warm-up steps."""
    c.model.update(preset="deepseek_1_3b", dtype="bfloat16", remat_policy="dots_no_batch", scan_layers=True)
    c.data.seq_len = 4096
    c.optimizer.schedule = dict(name="multi_step", peak=5.3e-4, warmup_steps=2000)
    c.train.update(steps=steps, batch_size=1024, checkpoint_every=1000)
    return c


def deepseekmath_7b(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The 7B model (PAPER.md §2) as trained at scale: bf16 compute, q/k/v kept under remat, scanned layers."""
    c.model.update(preset="deepseekmath_7b", dtype="bfloat16", remat_policy="save_qkv", scan_layers=True)
    c.data.seq_len = 4096
    return c


def tiny_overrides(c: ml_collections.ConfigDict, *, steps: int = 120, seq_len: int = 128, batch_size: int = 16,
                   lr: float = 3e-3) -> ml_collections.ConfigDict:
    """Shrinks a config to the `tiny` model, a trained 512-piece sentencepiece tokenizer and a CPU-sized run."""
    c.model = model_section(preset="tiny", vocab_size=512, max_seq_len=seq_len)
    c.tokenizer.train_vocab_size = 512
    c.tokenizer.train_docs = 4000
    c.data.seq_len = seq_len
    c.optimizer.schedule = ml_collections.ConfigDict(dict(name="multi_step", peak=lr, warmup_steps=10))
    c.train.update(steps=steps, batch_size=batch_size, log_every=10, eval_every=steps // 2, eval_batches=4,
                   checkpoint_every=steps // 2)
    return c


def arithmetic_sft_config(size: str = "tiny", *, answer_mix: bool = False) -> ml_collections.ConfigDict:
    """SFT on the arithmetic task (configs/sft/arithmetic.py): `tiny` (the tiny model, 450 steps) or `small` (a
    4-layer d256 model, 2,000 steps); `answer_mix` (the quickstart's sft stage): the problems of
    ARITHMETIC_ANSWER_MIX, a share ANSWER_MIX_SHARE of them given as their final answer alone (dsmath_jax.data.
    arithmetic), instead of ARITHMETIC_TINY's worked solutions."""
    if size not in ("tiny", "small"):
        raise ValueError(f"arithmetic SFT sizes are 'tiny' and 'small', got {size!r}")
    task = ARITHMETIC_ANSWER_MIX if answer_mix else ARITHMETIC_TINY
    spec: dict[str, Any] = {"kind": "arithmetic", "arithmetic": {k: v for k, v in task.items() if k != "kind"}}
    if answer_mix:
        spec["answer_only"] = ANSWER_MIX_SHARE
    c = base_train_config()
    tiny_overrides(c, steps=450, seq_len=128, batch_size=32, lr=3e-3)
    c.data.sources = [source("sft", name="arithmetic_sft", sources=[spec], validation_fraction=0.02)]
    c.data.packing = "first_fit"
    c.model.max_seq_len = 256  # RL samples prompt + up to 96 new tokens
    c.data.eval_split = "validation"
    c.tokenizer.train_docs = 4000
    c.optimizer.schedule = dict(name="cosine", peak=3e-3, warmup_steps=20)
    c.optimizer.weight_decay = 0.0
    c.train.update(checkpoint_every=150, eval_every=150, log_every=25)
    if size == "small":
        c.model.update(num_layers=4, d_model=256, num_heads=4, num_kv_heads=4, mlp_dim=688)
        c.train.update(steps=2000, batch_size=64)
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """What types cannot check in a pretrain / SFT config: keys against `base_train_config()`, the model,
    the data sources and the enumerations, counts and ranges; a `ConfigError` names the key."""
    check_keys_and_types(c, base_train_config(), FREE_FORM)
    model = check_model(c, architecture=not c.init.hf_dir)  # from a Hugging Face dir: compute overrides only
    at_least(c, "init.step", 0)
    counts(c, "tokenizer", positive=("train_vocab_size", "train_docs"))
    if model is not None and c.tokenizer.train_vocab_size and c.tokenizer.train_vocab_size > model.vocab_size:
        raise ConfigError(f"tokenizer.train_vocab_size={c.tokenizer.train_vocab_size}: larger than the model's "
                          f"vocabulary ({model.vocab_size})")
    if not c.data.sources:
        raise ConfigError("data.sources is empty: name at least one data source")
    for i, spec in enumerate(c.data.sources):
        _check_source(spec, f"data.sources[{i}]")
    counts(c, "data", positive=("seq_len", "epochs"))
    if model is not None and c.data.seq_len > model.max_seq_len:
        raise ConfigError(f"data.seq_len={c.data.seq_len}: longer than the model's max_seq_len ({model.max_seq_len})")
    one_of(c, "data.packing", PACKINGS)
    one_of(c, "data.overlong", OVERLONG)
    in_range(c, "data.max_drop_fraction", 0.0, 1.0)
    check_optimizer(c, SCHEDULES)
    counts(c, "train", positive=("steps", "batch_size", "accum_steps", "log_every", "eval_batches",
                                 "checkpoint_every", "keep_checkpoints", "max_nonfinite_in_a_row"),
           non_negative=("eval_every",))
    if c.train.batch_size % c.train.accum_steps:
        raise ConfigError(f"train.batch_size={c.train.batch_size}: not divisible by train.accum_steps="
                          f"{c.train.accum_steps}")
    check_mesh(c)
    check_distributed(c)


def _check_source(spec, where: str) -> None:
    """A data source spec as the data layer reads it (`dsmath_jax.data.sources`), with a positive weight; an SFT
    source's own sources too."""
    spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
    try:
        source_name(spec)
        for sub in spec.get("sources") or ():
            SFTSource.parse(dict(sub))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None
    weight = spec.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise ConfigError(f"{where}.weight={weight!r}: must be a number > 0")
