"""`dsmath info`: what a model is and what it costs on a mesh, without allocating it.

  dsmath info --preset deepseekmath_7b --devices 256 --mesh fsdp=-1
  dsmath info --hf path/to/deepseek-math-7b-base --mesh fsdp=8,tensor=4 --devices 32
"""

from __future__ import annotations

import argparse
import json
import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh

from dsmath_jax.model import CausalLM, ModelConfig, get_preset
from dsmath_jax.model.config import PRESETS
from dsmath_jax.parallel.mesh import DEFAULT_RULES, MESH_AXES, logical_axes, logical_to_spec, mesh_shape


def parse_mesh(text: str) -> dict[str, int]:
    shape = {}
    for part in filter(None, text.split(",")):
        name, _, size = part.partition("=")
        if not size:
            raise argparse.ArgumentTypeError(f"mesh entry {part!r} must look like fsdp=8")
        shape[name.strip()] = int(size)
    return shape


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def describe(cfg: ModelConfig, shape: dict[str, int], num_devices: int, seq_len: int) -> dict:
    sizes = mesh_shape(shape, num_devices)
    mesh = AbstractMesh(tuple(sizes.values()), MESH_AXES)
    model = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
    flat_axes = jax.tree.leaves(logical_axes(model), is_leaf=lambda x: isinstance(x, tuple))
    from dsmath_jax.model import get_params
    leaves = jax.tree.leaves(get_params(model))
    per_device = 0
    total = 0
    for leaf, axes in zip(leaves, flat_axes):
        spec = logical_to_spec(axes, DEFAULT_RULES, shape=leaf.shape, mesh=mesh)
        shard = list(leaf.shape)
        for dim, entry in enumerate(spec):
            for axis in (entry if isinstance(entry, tuple) else (entry,) if entry else ()):
                shard[dim] //= sizes[axis]
        total += math.prod(leaf.shape)
        per_device += math.prod(shard)
    param_bytes = np.dtype(cfg.weight_dtype).itemsize
    return {
        "config": cfg.to_dict(),
        "parameters": total,
        "parameters_without_embedding": cfg.num_params(include_embedding=False),
        "train_flops_per_token": cfg.flops_per_token(seq_len),
        "mesh": sizes,
        "params_bytes_per_device": per_device * param_bytes,
        "params_and_adam_bytes_per_device": per_device * (param_bytes + 8),  # + two float32 moments
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dsmath info", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="deepseekmath_7b", choices=sorted(PRESETS))
    source.add_argument("--hf", help="a Hugging Face LlamaForCausalLM directory (only config.json is read)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a ModelConfig field, e.g. --set param_dtype=bfloat16")
    parser.add_argument("--mesh", type=parse_mesh, default={"fsdp": -1}, help="e.g. fsdp=-1 or fsdp=8,tensor=4")
    parser.add_argument("--devices", type=int, default=None, help="device count (default: this host's)")
    parser.add_argument("--seq-len", type=int, default=None, help="sequence length for the FLOPs (default: context)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r} must look like KEY=VALUE")
        overrides[key] = parse_value(value)
    cfg = ModelConfig.from_hf_config(args.hf, **overrides) if args.hf else get_preset(args.preset, **overrides)
    info = describe(cfg, args.mesh, args.devices or jax.device_count(), args.seq_len or cfg.max_seq_len)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    gib = 2 ** 30
    print(f"model: {args.hf or args.preset}")
    for key, value in info["config"].items():
        print(f"  {key:<18} {value}")
    print(f"parameters:          {info['parameters'] / 1e9:.3f} B")
    print(f"train FLOPs / token: {info['train_flops_per_token']:.3e}")
    print(f"mesh:                {info['mesh']}")
    print(f"params / device:     {info['params_bytes_per_device'] / gib:.2f} GiB "
          f"({info['params_and_adam_bytes_per_device'] / gib:.2f} GiB with AdamW moments)")
    return 0
