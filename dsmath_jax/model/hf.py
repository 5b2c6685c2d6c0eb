"""Hugging Face interop: `LlamaForCausalLM` safetensors <-> our `CausalLM`.

Loading streams one parameter at a time: each Hugging Face tensor is read from its safetensors file,
transposed to our layout, cast, and placed directly into its shards on the mesh
(`jax.make_array_from_callback`, so on a multi-host pod each host only uploads its own shards), then the
host copy is dropped. A 7B model therefore never needs two full copies in host memory.

Rotary convention: Hugging Face Llama checkpoints (DeepSeek's included) store q/k projections in the
half-split layout that `transformers`' `rotate_half` expects (dimension j pairs with j + head_dim/2); our
`apply_rope` uses the same layout, so these load unpermuted. Checkpoints whose q/k rows are in Meta's
interleaved layout (pairs 2j, 2j+1) are loaded with `rope_layout="interleaved"`, which applies the
permutation of `interleaved_to_half`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.numpy import save_file

from dsmath_jax.model.config import DTYPES, ModelConfig, dtype_name
from dsmath_jax.model.params import get_params, set_params
from dsmath_jax.model.transformer import CausalLM
from dsmath_jax.parallel.mesh import DEFAULT_RULES, param_shardings, rules_from_config

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointFormatError(ValueError):
    """A Hugging Face checkpoint that does not hold what its config describes."""


# ------------------------------------------------------------------------------ rotary layouts
def interleaved_to_half(w: np.ndarray, num_heads: int, head_dim: int) -> np.ndarray:
    """Permutes the output rows of a q/k projection [heads*head_dim, d] from the interleaved rotary
    layout (pairs 2j, 2j+1) to the half-split layout (pairs j, j + head_dim/2)."""
    d_in = w.shape[1]
    return w.reshape(num_heads, head_dim // 2, 2, d_in).transpose(0, 2, 1, 3).reshape(num_heads * head_dim, d_in)


def half_to_interleaved(w: np.ndarray, num_heads: int, head_dim: int) -> np.ndarray:
    """Inverse of `interleaved_to_half`."""
    d_in = w.shape[1]
    return w.reshape(num_heads, 2, head_dim // 2, d_in).transpose(0, 2, 1, 3).reshape(num_heads * head_dim, d_in)


# ------------------------------------------------------------------------------ name/layout map
class _Param:
    """One of our parameters and how it relates to Hugging Face tensors."""

    def __init__(self, path: tuple, hf_name: str, to_ours: Callable[[np.ndarray], np.ndarray],
                 to_hf: Callable[[np.ndarray], np.ndarray]):
        self.path, self.hf_name, self.to_ours, self.to_hf = path, hf_name, to_ours, to_hf


def _param_map(cfg: ModelConfig, rope_layout: str = "half") -> list[tuple[tuple, list[_Param]]]:
    """[(our path, [per-layer _Param ...])]; non-layer params have a one-element list."""
    if rope_layout not in ("half", "interleaved"):
        raise ValueError(f"rope_layout must be 'half' or 'interleaved', got {rope_layout!r}")
    d, h, k, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    assert k is not None and hd is not None  # derived in ModelConfig.__post_init__
    ident = lambda w: w  # noqa: E731

    def qk(heads):
        if rope_layout == "half":
            return (lambda w: w.T.reshape(d, heads, hd),
                    lambda w: w.reshape(d, heads * hd).T)
        return (lambda w: interleaved_to_half(w, heads, hd).T.reshape(d, heads, hd),
                lambda w: half_to_interleaved(w.reshape(d, heads * hd).T, heads, hd))

    per_layer = [
        (("attn_norm", "scale"), "input_layernorm.weight", ident, ident),
        (("attn", "q_proj"), "self_attn.q_proj.weight", *qk(h)),
        (("attn", "k_proj"), "self_attn.k_proj.weight", *qk(k)),
        (("attn", "v_proj"), "self_attn.v_proj.weight", lambda w: w.T.reshape(d, k, hd),
         lambda w: w.reshape(d, k * hd).T),
        (("attn", "o_proj"), "self_attn.o_proj.weight", lambda w: w.T.reshape(h, hd, d),
         lambda w: w.reshape(h * hd, d).T),
        (("mlp_norm", "scale"), "post_attention_layernorm.weight", ident, ident),
        (("mlp", "gate_proj"), "mlp.gate_proj.weight", lambda w: w.T, lambda w: w.T),
        (("mlp", "up_proj"), "mlp.up_proj.weight", lambda w: w.T, lambda w: w.T),
        (("mlp", "down_proj"), "mlp.down_proj.weight", lambda w: w.T, lambda w: w.T),
    ]
    out: list[tuple[tuple, list[_Param]]] = [
        (("decoder", "embed"), [_Param(("decoder", "embed"), "model.embed_tokens.weight", ident, ident)])]
    for sub, name, to_ours, to_hf in per_layer:
        params = [_Param(("decoder", "layers", i) + sub, f"model.layers.{i}.{name}", to_ours, to_hf)
                  for i in range(cfg.num_layers)]
        out.append((("decoder", "layers") + sub, params))
    out.append((("decoder", "final_norm", "scale"),
                [_Param(("decoder", "final_norm", "scale"), "model.norm.weight", ident, ident)]))
    out.append((("lm_head",), [_Param(("lm_head",), "lm_head.weight", lambda w: w.T, lambda w: w.T)]))
    return out


def _expected_shape(p: _Param, cfg: ModelConfig) -> tuple[int, ...]:
    d, h, k, hd, f, v = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    assert k is not None and hd is not None  # derived in ModelConfig.__post_init__
    name = p.hf_name
    for suffix, shape in (("embed_tokens.weight", (v, d)), ("lm_head.weight", (v, d)), ("norm.weight", (d,)),
                          ("layernorm.weight", (d,)), ("q_proj.weight", (h * hd, d)),
                          ("k_proj.weight", (k * hd, d)), ("v_proj.weight", (k * hd, d)),
                          ("o_proj.weight", (d, h * hd)), ("gate_proj.weight", (f, d)),
                          ("up_proj.weight", (f, d)), ("down_proj.weight", (d, f))):
        if name.endswith(suffix):
            return shape
    raise AssertionError(name)


# ------------------------------------------------------------------------------ reading
class _SafetensorsReader:
    """Reads tensors by name from a single-file or sharded (index.json) safetensors checkpoint."""

    def __init__(self, directory: str):
        self.directory = directory
        index = os.path.join(directory, INDEX_FILE)
        single = os.path.join(directory, SINGLE_FILE)
        if os.path.exists(index):
            with open(index, encoding="utf-8") as f:
                try:
                    self.weight_map = dict(json.load(f)["weight_map"])
                except (json.JSONDecodeError, KeyError) as e:
                    raise CheckpointFormatError(f"{index} is not a safetensors index (needs 'weight_map'): {e}") from e
        elif os.path.exists(single):
            with safe_open(single, framework="np") as f:
                self.weight_map = {name: SINGLE_FILE for name in f.keys()}
        else:
            raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}")
        self._open: dict[str, Any] = {}

    def get(self, name: str) -> np.ndarray:
        if name not in self.weight_map:
            raise CheckpointFormatError(f"tensor {name!r} is missing from the checkpoint in {self.directory}")
        file = self.weight_map[name]
        if file not in self._open:
            path = os.path.join(self.directory, file)
            if not os.path.exists(path):
                raise CheckpointFormatError(f"{INDEX_FILE} in {self.directory} points {name!r} at {file}, "
                                            "which does not exist")
            self._open[file] = safe_open(path, framework="np")
        return self._open[file].get_tensor(name)

    def close(self):
        self._open.clear()


def _place(array: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _resolve_dir(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        return path
    if os.path.isfile(path) and os.path.basename(path) == "config.json":
        return os.path.dirname(path)
    raise FileNotFoundError(f"{path} is not a Hugging Face model directory (expected config.json + safetensors)")


def load_hf(path: str | os.PathLike, *, dtype: Any = "float32", param_dtype: Any = None,
            mesh: Mesh | None = None, rules=None, scan_layers: bool = False, remat_policy: str = "none",
            rope_layout: str = "half", **config_overrides: Any) -> CausalLM:
    """Loads a Hugging Face `LlamaForCausalLM` directory (config.json + safetensors) into a `CausalLM`.

    dtype: compute dtype; param_dtype: storage dtype (default: float32 master weights for training; pass "bfloat16" to
    halve memory for inference); both as names or dtype objects (`jnp.bfloat16`). With `mesh`, parameters are sharded
    by the logical-axis `rules`; without, they go to the default device. The returned model's `.config` describes it.
    """
    directory = _resolve_dir(path)
    cfg = ModelConfig.from_hf_config(directory, dtype=dtype, param_dtype=param_dtype or "float32",
                                     scan_layers=scan_layers, remat_policy=remat_policy, **config_overrides)
    model = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, get_params(model))
    else:
        shardings = param_shardings(model, mesh, rules_from_config(rules) if rules is not None else DEFAULT_RULES)
    np_dtype = np.dtype(DTYPES[cfg.param_dtype])
    reader = _SafetensorsReader(directory)
    loaded: dict[tuple, jax.Array] = {}
    try:
        for our_path, params in _param_map(cfg, rope_layout):
            tensors = []
            for p in params:
                w = reader.get(p.hf_name)
                if tuple(w.shape) != _expected_shape(p, cfg):
                    raise CheckpointFormatError(
                        f"tensor {p.hf_name!r} in {directory} has shape {tuple(w.shape)}, but config.json implies "
                        f"{_expected_shape(p, cfg)}")
                tensors.append(np.ascontiguousarray(p.to_ours(w)).astype(np_dtype))
                del w
            if "layers" not in our_path:
                loaded[our_path] = _place(tensors[0], _get(shardings, our_path))
            elif cfg.scan_layers:
                stacked = np.stack(tensors)
                del tensors
                loaded[our_path] = _place(stacked, _get(shardings, our_path))
                del stacked
            else:
                for p, t in zip(params, tensors):
                    loaded[p.path] = _place(t, _get(shardings, p.path))
            log.debug("loaded %s", "/".join(map(str, our_path)))
    finally:
        reader.close()
    pure = get_params(model)
    for param_path, value in loaded.items():
        _set(pure, param_path, value)
    set_params(model, pure)
    extra = set(reader.weight_map) - {p.hf_name for _, ps in _param_map(cfg) for p in ps}
    extra = {n for n in extra if not n.endswith("rotary_emb.inv_freq")}
    if extra:
        log.warning("ignored %d tensors of %s that a LlamaForCausalLM does not have: %s", len(extra), directory,
                    sorted(extra)[:5])
    return model


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


# ------------------------------------------------------------------------------ writing
def _host(x: jax.Array) -> np.ndarray:
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _hf_tensors(model: CausalLM, np_dtype, rope_layout: str) -> Iterator[tuple[str, np.ndarray]]:
    cfg = model.config
    pure = get_params(model)
    for our_path, params in _param_map(cfg, rope_layout):
        if cfg.scan_layers and len(params) > 1:
            stacked = _host(_get(pure, our_path))
            for i, p in enumerate(params):
                yield p.hf_name, np.ascontiguousarray(p.to_hf(stacked[i])).astype(np_dtype)
            del stacked
        else:
            for p in params:
                yield p.hf_name, np.ascontiguousarray(p.to_hf(_host(_get(pure, p.path)))).astype(np_dtype)


def save_hf(model: CausalLM, path: str | os.PathLike, *, dtype: Any = None,
            max_shard_bytes: int = 5 * 2**30, rope_layout: str = "half") -> str:
    """Writes `model` as a Hugging Face `LlamaForCausalLM` directory that `transformers` loads.

    Tensors are written in shards of at most `max_shard_bytes` (with `model.safetensors.index.json` when
    there is more than one). The directory is written under a temporary name and renamed at the end, so a
    crash never leaves a half-written model. Only process 0 writes on a multi-host run.
    """
    cfg = model.config
    dtype = cfg.param_dtype if dtype is None else dtype_name(dtype, "save_hf dtype")
    np_dtype = np.dtype(DTYPES[dtype])
    path = os.fspath(path)
    writer = jax.process_index() == 0
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-save_hf-", dir=parent) if writer else None
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    files: list[str] = []
    weight_map: dict[str, str] = {}
    total = 0

    def flush():
        nonlocal shards, size
        if shards[-1]:
            name = f"shard-{len(files):05d}.safetensors"
            if writer:
                save_file(shards[-1], os.path.join(tmp, name), metadata={"format": "pt"})
            files.append(name)
            for key in shards[-1]:
                weight_map[key] = name
        shards = [{}]
        size = 0

    try:
        for name, tensor in _hf_tensors(model, np_dtype, rope_layout):
            if size and size + tensor.nbytes > max_shard_bytes:
                flush()
            shards[-1][name] = tensor
            size += tensor.nbytes
            total += tensor.nbytes
        flush()
        if not writer:
            return path
        assert tmp is not None  # made above whenever there is something to write
        if len(files) == 1:
            os.replace(os.path.join(tmp, files[0]), os.path.join(tmp, SINGLE_FILE))
        else:
            final = {f: f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i, f in enumerate(files)}
            for old, new in final.items():
                os.replace(os.path.join(tmp, old), os.path.join(tmp, new))
            index = {"metadata": {"total_size": total}, "weight_map": {k: final[v] for k, v in weight_map.items()}}
            with open(os.path.join(tmp, INDEX_FILE), "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2, sort_keys=True)
        hf_config = cfg.to_hf_config()
        hf_config["torch_dtype"] = dtype
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_config, f, indent=2)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return path
