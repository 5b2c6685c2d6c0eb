"""Loading a trained model for evaluation, export or RL: from a run directory of ours or a Hugging Face dir."""

from __future__ import annotations

import os
from typing import Any

from etils import epath
from flax import nnx

from dsmath_jax.data.tokenizers import Tokenizer, check_tokenizer_fits, load_tokenizer
from dsmath_jax.model import CausalLM, ModelConfig, load_hf
from dsmath_jax.model.config import COMPUTE_FIELDS
from dsmath_jax.parallel import create_sharded
from dsmath_jax.parallel.mesh import DEFAULT_RULES, get_params, param_shardings, set_params
from dsmath_jax.train.checkpoint import abstract_like, restore_params
from dsmath_jax.train.rundir import read_json

# A run directory's own tokenizer, in the order looked for: our sentencepiece model, or a Hugging Face
# tokenizer.json (with its configs) copied in by `dsmath convert --from_hf` or from an RL run's init run.
RUN_TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
HF_TOKENIZER_CONFIGS = ("tokenizer_config.json", "special_tokens_map.json")  # bos/eos/pad of a tokenizer.json


def run_tokenizer_files(path: str) -> list[str]:
    """Names of the tokenizer files in run directory `path` (local or gs://): ["tokenizer.model"], or
    "tokenizer.json" and those of its configs that exist; [] when it holds no tokenizer."""
    root = epath.Path(path)
    for name in RUN_TOKENIZER_FILES:
        if (root / name).exists():
            extra = HF_TOKENIZER_CONFIGS if name == "tokenizer.json" else ()
            return [name] + [n for n in extra if (root / n).exists()]
    return []


def load_run(path: str, *, mesh=None, rules=DEFAULT_RULES, step: int | None = None,
             **model_overrides: Any) -> tuple[CausalLM, Tokenizer]:
    """(model, tokenizer) of a run directory written by `dsmath pretrain/sft` (its config.json, tokenizer
    and latest checkpoint, or `step`) or of a Hugging Face directory (config.json + safetensors +
    tokenizer.json). `model_overrides` change compute settings (dtype, remat_policy, ...). `path` may be
    local or on an object store (gs://...)."""
    root = epath.Path(path)
    if (root / "checkpoints").exists():
        run = read_json(root / "config.json")
        init = run.get("init") or {}
        if init.get("hf_dir"):
            base = ModelConfig.from_hf_config(init["hf_dir"])
            cfg = base.replace(**{k: v for k, v in run["model"].items() if k in COMPUTE_FIELDS and v is not None})
        else:
            cfg = ModelConfig.from_dict(run["model"])
        cfg = cfg.replace(**model_overrides) if model_overrides else cfg
        own = run_tokenizer_files(path)
        tok_path = os.path.join(path, own[0]) if own else None
        if tok_path is None:
            tok_path = (run.get("tokenizer") or {}).get("path") or init.get("hf_dir")
        if not tok_path:
            raise FileNotFoundError(f"run {path} has no tokenizer.model or tokenizer.json and its config names "
                                    "no tokenizer")
        tokenizer = load_tokenizer(tok_path)
        if mesh is None:
            model = CausalLM(cfg, rngs=nnx.Rngs(0))
            target = abstract_like(get_params(model))
        else:
            model = create_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)), mesh, rules)
            target = abstract_like(get_params(model), param_shardings(model, mesh, rules))
        set_params(model, restore_params(os.path.join(path, "checkpoints"), target, step=step))
    elif (root / "config.json").exists():
        model = load_hf(path, mesh=mesh, rules=rules, **model_overrides)
        tokenizer = load_tokenizer(path)
    else:
        raise FileNotFoundError(f"{path} is neither a run directory (with checkpoints/) nor a Hugging Face model "
                                "directory (with config.json)")
    check_tokenizer_fits(tokenizer, model.config.vocab_size)
    return model, tokenizer
