"""Device meshes, logical-axis rules and parameter placement.

The mesh has three axes: `data` (pure data parallelism), `fsdp` (data parallelism with parameters and
optimizer state sharded, ZeRO-3 style) and `tensor` (Megatron-style tensor parallelism over heads, MLP and
vocabulary). Model parameters name their dimensions with logical axes (`embed`, `mlp`, `q_heads`, ...);
the rules, which live in the config, map each logical axis to mesh axes.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or tuple of mesh axes, or None for replicated). FSDP by default: the
# embedding dimension of every matrix is sharded over `fsdp`, heads / MLP / vocabulary over `tensor`.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
    # Activations: batch over the data-parallel axes, features over `tensor` where the weights are.
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)

Rules = Sequence[tuple[str, Any]]
ModuleT = TypeVar("ModuleT", bound=nnx.Module)  # a model class, kept through the helpers that return it


def rules_with(**changes: Any) -> tuple[tuple[str, Any], ...]:
    """DEFAULT_RULES with some logical axes mapped elsewhere, e.g. `rules_with(act_embed="tensor")`: the
    residual stream between blocks split over `tensor` along its width as well (Megatron's sequence-parallel
    layout, by features: the blocks' all-reduces become reduce-scatter + all-gather, and the activations a
    scanned, rematerialised stack keeps for its backward pass shrink by the tensor size)."""
    unknown = set(changes) - {name for name, _ in DEFAULT_RULES}
    if unknown:
        raise KeyError(f"rules_with: unknown logical axes {sorted(unknown)}")
    return tuple((name, changes.get(name, target)) for name, target in DEFAULT_RULES)


def mesh_shape(shape: Mapping[str, int] | None, num_devices: int) -> dict[str, int]:
    """Resolves a mesh shape over `num_devices` devices: fills the one -1 and checks the product."""
    shape = dict(shape or {"fsdp": -1})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; the mesh axes are {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh shape {shape}: sizes must be positive, with at most one -1")
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % known:
            raise ValueError(f"mesh shape {shape}: {num_devices} devices are not divisible by {known}")
        sizes[fill[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh shape {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"but {num_devices} are available")
    return dict(zip(MESH_AXES, sizes))


def make_mesh(shape: Mapping[str, int] | None = None, *, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor); one size may be -1 to take all remaining devices.

    Example: `make_mesh({"fsdp": -1})` is pure FSDP over every device; `make_mesh({"fsdp": 2, "tensor": 4})`.
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = list(mesh_shape(shape, len(devices)).values())
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    from jax.experimental import mesh_utils
    if slices > 1:  # multi-slice: the data axis spans the slices (data-centre network), the rest stays in one
        if sizes[0] % slices:
            raise ValueError(f"mesh shape {dict(zip(MESH_AXES, sizes))} on {slices} slices: the data axis must be "
                             f"a multiple of the number of slices (it is the axis that crosses them)")
        ici = [sizes[0] // slices] + sizes[1:]
        grid = mesh_utils.create_hybrid_device_mesh(ici, [slices, 1, 1], devices=devices)
        return Mesh(grid, MESH_AXES)
    try:  # topology-aware device order on TPU/GPU; plain order where the helper cannot place them
        grid = mesh_utils.create_device_mesh(sizes, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices).reshape(sizes)
    return Mesh(grid, MESH_AXES)


def rules_from_config(rules: Any | None) -> tuple[tuple[str, Any], ...]:
    """Normalises rules from a config (list of pairs, or a mapping) and checks the mesh axes they name."""
    if rules is None:
        return DEFAULT_RULES
    items = list(rules.items()) if isinstance(rules, Mapping) else [tuple(r) for r in rules]
    out = []
    for item in items:
        if len(item) != 2:
            raise ValueError(f"logical-axis rule {item!r} must be a (logical_axis, mesh_axes) pair")
        name, target = item
        targets = target if isinstance(target, (tuple, list)) else (target,)
        bad = [t for t in targets if t is not None and t not in MESH_AXES]
        if bad:
            raise ValueError(f"logical-axis rule for {name!r} names unknown mesh axes {bad}; "
                             f"mesh axes are {MESH_AXES}")
        out.append((name, tuple(target) if isinstance(target, list) else target))
    return tuple(out)


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules = DEFAULT_RULES, *,
                    shape: Sequence[int] | None = None, mesh: Mesh | AbstractMesh | None = None) -> P:
    """Maps logical axis names to a PartitionSpec.

    A mesh axis is used at most once per array (first come, first served), and, when `shape` and `mesh`
    are given, a mesh axis that does not divide the dimension is dropped (that dimension is replicated
    over it) so any model fits any mesh. Only the mesh's axis sizes are read: an `AbstractMesh` will do.
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(logical_axes):
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no rule; add it to the logical-axis rules "
                           f"(known: {sorted(table)})")
        target = table.get(name) if name is not None else None
        targets = target if isinstance(target, tuple) else (target,) if target else ()
        kept = []
        size = 1
        for axis in targets:
            if axis in used:
                continue
            axis_size = mesh.shape[axis] if mesh is not None else 1
            if shape is not None and mesh is not None and shape[dim] % (size * axis_size):
                log.debug("dimension %d (%s, size %d) is not divisible by mesh axis %s (%d): replicated",
                          dim, name, shape[dim], axis, axis_size)
                continue
            kept.append(axis)
            size *= axis_size
            used.add(axis)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return P(*spec)


def param_flat_state(model: nnx.Module):
    return nnx.to_flat_state(nnx.state(model, nnx.Param))


def get_params(model: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def set_params(model: ModuleT, params: dict) -> ModuleT:
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def _nest(flat: dict[tuple, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def logical_axes(model: nnx.Module) -> dict:
    """The logical axes of every parameter, as a nested dict shaped like the params' pure dict.

    Blocks stacked for `nnx.scan` have one more dimension than their names; it is the `layers` axis.
    """
    flat = {}
    for path, var in param_flat_state(model):
        axes = tuple(var.get_metadata().get("logical_axes", ()))
        if var.shape != () and len(axes) == len(var.shape) - 1:
            axes = ("layers",) + axes
        if len(axes) != len(var.shape):
            raise ValueError(f"parameter {'/'.join(map(str, path))} of shape {var.shape} has logical axes {axes}")
        flat[path] = axes
    return _nest(flat)


def param_shardings(model: nnx.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> dict:
    """NamedSharding of every parameter (nested dict shaped like `get_params(model)`)."""
    shapes = {path: var.shape for path, var in param_flat_state(model)}
    flat_axes = {path: axes for path, axes in _flatten(logical_axes(model))}
    return _nest({path: NamedSharding(mesh, logical_to_spec(flat_axes[path], rules, shape=shape, mesh=mesh))
                  for path, shape in shapes.items()})


def _flatten(tree: dict, prefix: tuple = ()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.Module:
    """Places the parameters of an existing model on the mesh (in place); returns the model."""
    shardings = param_shardings(model, mesh, rules)
    return set_params(model, jax.tree.map(jax.device_put, get_params(model), shardings))


def create_sharded(make_model: Callable[[], ModuleT], mesh: Mesh, rules: Rules = DEFAULT_RULES) -> ModuleT:
    """Builds a model with every parameter created directly in its shard (no full host copy).

    `make_model` builds the model (seeded through its own `nnx.Rngs`); it is traced once abstractly to
    find the shapes, then run under `jax.jit` with the parameter shardings as output shardings.
    """
    abstract = nnx.eval_shape(make_model)
    shardings = param_shardings(abstract, mesh, rules)
    params = jax.jit(lambda: get_params(make_model()), out_shardings=shardings)()
    return set_params(abstract, params)


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES, ndim: int = 2) -> NamedSharding:
    """Sharding of a [batch, ...] array: batch over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules))


_ACTIVATION_CONTEXT: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "dsmath_activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Within this context (active while a step is traced), `constrain` pins activations to the mesh."""
    token = _ACTIVATION_CONTEXT.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _ACTIVATION_CONTEXT.reset(token)


def activation_context() -> tuple[Mesh, Rules] | None:
    """(mesh, rules) of the enclosing `activation_sharding` context, or None outside one."""
    return _ACTIVATION_CONTEXT.get()


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical axis names; the identity outside `activation_sharding`."""
    context = _ACTIVATION_CONTEXT.get()
    if context is None:
        return x
    mesh, rules = context
    spec = logical_to_spec(logical, rules, shape=x.shape, mesh=mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
