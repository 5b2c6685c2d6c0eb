"""Loading a trained model for evaluation, export or RL: from a run directory of ours or a Hugging Face dir."""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
from etils import epath
from flax import nnx

from dsmath_jax.data.tokenizers import Tokenizer, check_tokenizer_fits, load_tokenizer
from dsmath_jax.model import CausalLM, ModelConfig, load_hf
from dsmath_jax.model.config import COMPUTE_FIELDS
from dsmath_jax.parallel import create_sharded
from dsmath_jax.parallel.mesh import DEFAULT_RULES, get_params, param_shardings, set_params
from dsmath_jax.train.checkpoint import Checkpointer, abstract_like, restore_params
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


def relayout_layers(params: dict, scan: bool) -> dict:
    """A CausalLM's params with its blocks stacked on a leading axis (as `scan_layers=True` stores them) from
    one entry per block, or (scan False) back."""
    layers = params["decoder"]["layers"]
    if scan:
        layers = jax.tree.map(lambda *xs: jnp.stack(xs), *[layers[k] for k in sorted(layers, key=int)])
    else:
        n = jax.tree.leaves(layers)[0].shape[0]
        layers = {i: jax.tree.map(lambda x, i=i: x[i], layers) for i in range(n)}
    return {**params, "decoder": {**params["decoder"], "layers": layers}}


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
        elif "method" in run:  # an RL run: its config's model section only overrides compute settings
            with Checkpointer(os.path.join(path, "checkpoints"), read_only=True, async_save=False) as ckpt:
                cfg = ModelConfig.from_dict(ckpt.metadata(step)["model"])  # what RLRun saves: the policy's config
        else:
            cfg = ModelConfig.from_dict(run["model"])
        saved_scan = cfg.scan_layers  # the checkpoint holds the blocks as the run saved them
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
        else:
            model = create_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)), mesh, rules)
        shardings = param_shardings(model, mesh, rules) if mesh is not None else None
        saved = model
        if saved_scan != cfg.scan_layers:  # restore in the saved layout, then stack or unstack the blocks
            saved = nnx.eval_shape(lambda: CausalLM(cfg.replace(scan_layers=saved_scan), rngs=nnx.Rngs(0)))
        target = abstract_like(get_params(saved), param_shardings(saved, mesh, rules) if mesh is not None else None)
        params = restore_params(os.path.join(path, "checkpoints"), target, step=step)
        if saved is not model:
            params = jax.jit(functools.partial(relayout_layers, scan=cfg.scan_layers), out_shardings=shardings)(params)
        set_params(model, params)
    elif (root / "config.json").exists():
        model = load_hf(path, mesh=mesh, rules=rules, **model_overrides)
        tokenizer = load_tokenizer(path)
    else:
        raise FileNotFoundError(f"{path} is neither a run directory (with checkpoints/) nor a Hugging Face model "
                                "directory (with config.json)")
    check_tokenizer_fits(tokenizer, model.config.vocab_size)
    return model, tokenizer
