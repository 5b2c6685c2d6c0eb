"""Parameters as plain nested dicts: what optimizers, checkpoints and converters work on."""

from __future__ import annotations

from typing import Any

from flax import nnx


def get_params(model: nnx.Module) -> dict[str, Any]:
    """The model's parameters as a nested dict of arrays (`nnx.Param` values only)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def set_params(model: nnx.Module, params: dict[str, Any]) -> nnx.Module:
    """Replaces the model's parameters (in place) with `params` (same structure as `get_params`)."""
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def param_flat_state(model: nnx.Module):
    """(path, nnx.Param) pairs of every parameter, with their metadata."""
    return nnx.to_flat_state(nnx.state(model, nnx.Param))
