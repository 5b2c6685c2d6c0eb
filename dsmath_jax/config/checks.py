"""The checks every config schema shares: keys and value types against the schema's base config, and what
types cannot say (a value from a fixed set, a number in a range, a mesh, an optimizer, a model section).

Each check raises a `ConfigError` naming the dotted key, the bad value and what is allowed; the loader
(`dsmath_jax.config.loader`) puts the config file in front.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from dsmath_jax.model.config import ModelConfig
from dsmath_jax.parallel.mesh import MESH_AXES, rules_from_config

# How a command's sampler schedules its rows (dsmath_jax.generate.make_sampler): "continuous" batching over slots
# (`Engine`: a freed slot takes the next sample at once, one prefill per prompt, shared prefixes prefilled once) or
# "static" batches decoded until their longest row ends (`Sampler`).
BATCHING = ("continuous", "static")


class ConfigError(ValueError):
    """A config that cannot be loaded or does not fit its command's schema; the message names the file
    (where known) and the key."""


def get(config: Any, key: str) -> Any:
    """The value at dotted `key` ("train.steps") of a ConfigDict or dict."""
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _type_name(kind: type) -> str:
    return {ml_collections.ConfigDict: "a section"}.get(kind, kind.__name__)


def _fits(value: Any, kind: type) -> bool:
    """Whether `value` may stand in a field of type `kind` (an int in a float field; never a bool for a number;
    a list or tuple in a sequence field)."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in (tuple, list):
        return isinstance(value, (tuple, list))
    if kind is ml_collections.ConfigDict:
        return isinstance(value, (ml_collections.ConfigDict, dict))
    return isinstance(value, kind)


def check_keys_and_types(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict,
                         free_form: Iterable[str] = ()) -> None:
    """Every key of `config` is a key of `schema` and the other way round, and every value has its schema
    field's type (None only where the schema's default is None: a `placeholder(type)`). Sub-trees named in
    `free_form` ("model", "optimizer.schedule") are only required to be sections; their own checks follow."""
    _walk(config, schema, "", frozenset(free_form))


def _walk(config: Any, schema: ml_collections.ConfigDict, prefix: str, free_form: frozenset[str]) -> None:
    keys, allowed = list(config.keys()), list(schema.keys())
    for key in keys:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            raise ConfigError(f"{prefix}{key}: not a key of the schema (no code reads it)"
                              + (f"; did you mean {prefix}{hint[0]}?" if hint else f"; {prefix or 'the config '}"
                                 f"has {sorted(allowed)}"))
    for key in allowed:
        name = prefix + key
        if key not in keys:
            raise ConfigError(f"{name}: missing; the schema has it (default {schema[key]!r})")
        value, default = config[key], schema[key]
        kind = schema.get_type(key)
        if value is None:
            if default is not None:
                raise ConfigError(f"{name}=None: expected {_type_name(kind)} (the field is not optional)")
            continue
        if kind is type(None):
            raise ConfigError(f"{name}: the schema's field has no type (give its default a placeholder(type))")
        if not _fits(value, kind):
            raise ConfigError(f"{name}={value!r}: expected {_type_name(kind)}, got {type(value).__name__}")
        if isinstance(default, ml_collections.ConfigDict) and name not in free_form:
            _walk(value, default, name + ".", free_form)


def one_of(config: Any, key: str, allowed: Iterable[Any]) -> None:
    """`key`'s value is one of `allowed`."""
    value, allowed = get(config, key), tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {allowed}")


def at_least(config: Any, key: str, low: float, *, note: str = "") -> None:
    """`key`'s value is >= `low` (skipped when None: an unset optional field)."""
    value = get(config, key)
    if value is not None and not value >= low:
        raise ConfigError(f"{key}={value!r}: must be >= {low}" + (f" ({note})" if note else ""))


def above(config: Any, key: str, low: float) -> None:
    """`key`'s value is > `low` (skipped when None)."""
    value = get(config, key)
    if value is not None and not value > low:
        raise ConfigError(f"{key}={value!r}: must be > {low}")


def in_range(config: Any, key: str, low: float, high: float, *, high_open: bool = False) -> None:
    """`key`'s value lies in [low, high] (or [low, high) with `high_open`); skipped when None."""
    value = get(config, key)
    if value is None:
        return
    if not (low <= value < high if high_open else low <= value <= high):
        raise ConfigError(f"{key}={value!r}: must lie in [{low}, {high}{')' if high_open else ']'}")


def counts(config: Any, section: str, *, positive: Iterable[str] = (), non_negative: Iterable[str] = ()) -> None:
    """Counts of a section: `positive` ones >= 1, `non_negative` ones >= 0 (where 0 turns a thing off)."""
    for name in positive:
        at_least(config, f"{section}.{name}", 1)
    for name in non_negative:
        at_least(config, f"{section}.{name}", 0, note="0 turns it off")


def check_sampling(config: Any, section: str, *, temperature: str = "temperature", top_p: str | None = "top_p"
                   ) -> None:
    """A sampling section: temperature >= 0 (0 is greedy), top_p in (0, 1]."""
    at_least(config, f"{section}.{temperature}", 0.0)
    if top_p is not None:
        key = f"{section}.{top_p}"
        above(config, key, 0.0)
        in_range(config, key, 0.0, 1.0)


def check_schedule(config: Any, key: str, schedules: Mapping[str, tuple[str, ...]]) -> None:
    """A learning-rate schedule section {name, peak, warmup_steps, <the name's own keys>}: `schedules` maps
    each name to its own keys."""
    schedule = get(config, key)
    one_of(config, f"{key}.name", schedules)
    allowed = {"name", "peak", "warmup_steps", *schedules[schedule["name"]]}
    unknown = sorted(set(schedule.keys()) - allowed)
    if unknown:
        raise ConfigError(f"{key}: {unknown} are not keys of a {schedule['name']!r} schedule; it takes "
                          f"{sorted(allowed)}")
    if "peak" not in schedule or not _fits(schedule["peak"], float):
        raise ConfigError(f"{key}.peak={schedule.get('peak')!r}: the peak learning rate must be a number")
    above(config, f"{key}.peak", 0.0)
    if "warmup_steps" in schedule:
        if not _fits(schedule["warmup_steps"], int):
            raise ConfigError(f"{key}.warmup_steps={schedule['warmup_steps']!r}: expected an int")
        at_least(config, f"{key}.warmup_steps", 0)


def check_optimizer(config: Any, schedules: Mapping[str, tuple[str, ...]]) -> None:
    """The `optimizer` section (AdamW): its schedule, betas in [0, 1), weight decay and clip norm >= 0 (a clip
    norm of 0 turns clipping off)."""
    check_schedule(config, "optimizer.schedule", schedules)
    for beta in ("b1", "b2"):
        in_range(config, f"optimizer.{beta}", 0.0, 1.0, high_open=True)
    at_least(config, "optimizer.weight_decay", 0.0)
    at_least(config, "optimizer.clip_norm", 0.0, note="0 turns clipping off")


def check_mesh(config: Any) -> None:
    """`mesh.shape` sizes are >= 1 with at most one -1 (all remaining devices); `mesh.rules` name mesh axes."""
    shape = dict(get(config, "mesh.shape"))
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ConfigError(f"mesh.shape: unknown mesh axes {unknown}; the mesh axes are {MESH_AXES}")
    bad = {k: v for k, v in shape.items() if not _fits(v, int) or (v < 1 and v != -1)}
    if bad or sum(v == -1 for v in shape.values()) > 1:
        raise ConfigError(f"mesh.shape={shape}: sizes must be ints >= 1, with at most one -1 (the rest of the "
                          "devices)")
    try:
        rules_from_config(get(config, "mesh.rules"))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"mesh.rules: {e}") from None


def check_distributed(config: Any) -> None:
    """The `distributed` section's counts (multi-host start-up)."""
    section = get(config, "distributed")
    at_least(config, "distributed.timeout_s", 1)
    if "num_processes" in section:
        at_least(config, "distributed.num_processes", 1)
        at_least(config, "distributed.process_id", 0)


def check_model(config: Any, key: str = "model", *, architecture: bool = True) -> ModelConfig | None:
    """A model section as `ModelConfig.from_dict` reads it (known fields, valid dtypes, remat policies, ...).
    With `architecture` False it holds compute overrides of a model loaded elsewhere (a run or Hugging Face
    directory): only the fields and values are checked, and None is returned."""
    values = {k: v for k, v in dict(get(config, key)).items() if v is not None}
    if not architecture:
        values.setdefault("preset", "tiny")  # a stand-in architecture, to check the overrides on
    try:
        model = ModelConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from None
    return model if architecture else None
