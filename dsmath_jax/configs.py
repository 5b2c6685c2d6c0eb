"""The schema every training config starts from: `base_train_config()` returns a ConfigDict with all
sections and defaults; an experiment file under `configs/` changes what its paper result needs.

Sections: seed, model (a `ModelConfig` preset + overrides), init (start from a Hugging Face directory or a
checkpoint), tokenizer, data (sources, context length), optimizer (AdamW + schedule), train (steps, batch,
logging, checkpoints), mesh (shape and logical-axis rules), distributed (multi-host start-up).
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from dsmath_jax.data.arithmetic import ARITHMETIC_TINY
from dsmath_jax.model.config import COMPUTE_FIELDS


def source(kind: str, *, weight: float = 1.0, **fields: Any) -> dict[str, Any]:
    """A data-source spec (see `dsmath_jax.data.sources`)."""
    return dict(kind=kind, weight=weight, **fields)


def model_section(**values: Any) -> ml_collections.ConfigDict:
    """A config's `model` section: a preset and overrides (`ModelConfig` fields), with the compute settings
    present as unset placeholders so that the command line can set them (`--config.model.attention_impl=xla`)."""
    c = ml_collections.ConfigDict(dict(preset=placeholder(str)))
    for name in COMPUTE_FIELDS:
        kind = {"scan_layers": bool, "logits_chunk": int}.get(name, str)
        c[name] = placeholder(kind)
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


def arithmetic_sft_config(size: str = "tiny") -> ml_collections.ConfigDict:
    """SFT on the arithmetic task (configs/sft/arithmetic.py; the quickstart's sft stage): `tiny` (the tiny
    model, 450 steps) or `small` (a 4-layer d256 model, 2,000 steps)."""
    if size not in ("tiny", "small"):
        raise ValueError(f"arithmetic SFT sizes are 'tiny' and 'small', got {size!r}")
    arithmetic = {k: v for k, v in ARITHMETIC_TINY.items() if k != "kind"}
    c = base_train_config()
    tiny_overrides(c, steps=450, seq_len=128, batch_size=32, lr=3e-3)
    c.data.sources = [source("sft", name="arithmetic_sft", sources=[{"kind": "arithmetic", "arithmetic": arithmetic}],
                             validation_fraction=0.02)]
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


def parse_arg(arg: str | None, choices: dict[str, tuple[str, ...]]) -> dict[str, str | bool]:
    """Parses a config argument "a,b" into {group: value} by the allowed values of each group; "tiny" is a
    flag. Example: parse_arg("openwebmath,tiny", {"corpus": ("openwebmath", ...)})."""
    out: dict[str, Any] = {"tiny": False}
    for part in filter(None, (arg or "").split(",")):
        if part == "tiny":
            out["tiny"] = True
            continue
        for group, values in choices.items():
            if part in values:
                out[group] = part
                break
        else:
            allowed = sorted({v for vs in choices.values() for v in vs} | {"tiny"})
            raise ValueError(f"unknown config argument {part!r}; allowed: {allowed}")
    return out
