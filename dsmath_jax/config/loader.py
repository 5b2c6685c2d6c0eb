"""The one config loader: `dsmath <command> --config=...`, the quickstart and the sweeps load through it.

  config = load_config("configs/rl/grpo_outcome.py:tiny", ["train.steps_per_iteration=2"], command="rl")

imports the experiment file, calls its `get_config(arg)` (or `get_config()`), applies the overrides, locks
the config (no key can be added) and, given the command, validates it against `SCHEMAS[command]`. Overrides
are `"a.b=value"` strings or a {"a.b": value} mapping; a string value is parsed by the type of the field it
replaces, as ml_collections' config_flags parses `--config.a.b=value` (`parse_value`). Every error is a
`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import pathlib
import re
import types
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections
from absl import flags
from ml_collections.config_flags import tuple_parser

from dsmath_jax.config.checks import ConfigError
from dsmath_jax.config.schemas import SCHEMAS

# The command that runs an experiment file, by its folder under configs/.
FOLDER_COMMANDS = {"pretrain": "pretrain", "sft": "sft", "rl": "rl", "rm": "rm", "eval": "eval", "mining": "mine"}

Overrides = Iterable[str] | Mapping[str, Any]

# How config_flags parses `--config.a.b=text` for a field of each type; other types take a Python literal.
_PARSERS: dict[type, flags.ArgumentParser] = {bool: flags.BooleanParser(), int: flags.IntegerParser(),
                                              float: flags.FloatParser(), tuple: tuple_parser.TupleParser()}


def command_of(path: str | os.PathLike) -> str | None:
    """The command of an experiment file by its folder ("configs/rl/x.py" -> "rl"); None for another folder."""
    return FOLDER_COMMANDS.get(pathlib.PurePath(path).parent.name)


def split_spec(spec: str | os.PathLike) -> tuple[str, str | None]:
    """"path/to/file.py:arg" -> ("path/to/file.py", "arg"); without an argument (or an empty one) -> (path, None)."""
    path, _, arg = str(spec).partition(":")
    return path, arg or None


def config_file(path: str | os.PathLike, root: str | os.PathLike | None = None) -> pathlib.Path:
    """The experiment file at `path`, relative to `root` when given; a ConfigError when there is none."""
    file = pathlib.Path(path)
    if root is not None and not file.is_absolute():
        file = pathlib.Path(root) / file
    if not file.is_file():
        raise ConfigError(f"config file {file} not found")
    return file


def config_module(path: str | os.PathLike, root: str | os.PathLike | None = None) -> types.ModuleType:
    """An experiment file (relative to `root` when given) imported as a module of its own, not registered in
    sys.modules; its constants (e.g. CORPORA) and docstring are read from it."""
    file = config_file(path, root)
    spec = importlib.util.spec_from_file_location("dsmath_config_" + re.sub(r"\W", "_", file.stem), file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"config file {file} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (ImportError, SyntaxError) as e:
        raise ConfigError(f"config file {file} cannot be imported: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {file} has no get_config()")
    return module


def load_config(spec: str | os.PathLike, overrides: Overrides = (), *, command: str | None = None,
                root: str | os.PathLike | None = None) -> ml_collections.ConfigDict:
    """The config of `spec` ("path/to/file.py" or "path/to/file.py:arg", relative to `root` when given) with
    `overrides` applied, locked, and validated against `SCHEMAS[command]` when `command` is given."""
    path, arg = split_spec(spec)
    module = config_module(path, root)
    where = f"{config_file(path, root)}" + (f":{arg}" if arg is not None else "")
    try:
        config = module.get_config() if arg is None else module.get_config(arg)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(f"{where}: get_config failed: {type(e).__name__}: {e}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{where}: get_config returned a {type(config).__name__}, not an ml_collections.ConfigDict")
    return prepare_config(config, overrides, command=command, where=where)


def prepare_config(config: ml_collections.ConfigDict, overrides: Overrides = (), *, command: str | None = None,
                   where: str = "the config") -> ml_collections.ConfigDict:
    """What `load_config` does once `get_config` has built the config (and what a config built in code, such as
    the quickstart's packaged ones, goes through): lock, apply `overrides`, validate for `command`. `where` names
    the config in errors."""
    config.lock()
    apply_overrides(config, overrides, where=where)
    if command is not None:
        validate(config, command, where=where)
    return config


def validate(config: ml_collections.ConfigDict, command: str, *, where: str = "the config") -> None:
    """Checks `config` against the schema of `command` (`SCHEMAS`); a ConfigError names `where` and the key."""
    if command not in SCHEMAS:
        raise ConfigError(f"no config schema for the command {command!r}; the commands are {sorted(SCHEMAS)}")
    try:
        SCHEMAS[command].validate(config)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def apply_overrides(config: ml_collections.ConfigDict, overrides: Overrides, *, where: str = "the config") -> None:
    """Sets each override's dotted key; a key the config does not have, or a value its field cannot hold, is a
    ConfigError naming `where` and the key. String values are parsed by the field's type (`parse_value`)."""
    for key, value in _pairs(overrides, where):
        holder, name = _field(config, key, where)
        if isinstance(value, str):
            try:
                value = parse_value(value, holder.get_type(name))
            except ValueError as e:
                raise ConfigError(f"{where}: override {key}={value!r}: not a valid {holder.get_type(name).__name__} "
                                  f"({e})") from None
        try:
            holder[name] = value
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ConfigError(f"{where}: override {key}={value!r}: {e}") from None


def parse_value(text: str, kind: type) -> Any:
    """`text` as the value of a field of type `kind`, parsed as config_flags parses `--config.a.b=text`: a bool
    ("true", "false", "1", "0"), an int, a float, a str as given, a tuple (a Python literal; a single item
    otherwise); list, dict and untyped fields take a Python literal, else the string. "None" is None in any
    field (the schema says which fields may be None). ValueError when `text` does not parse."""
    if text == "None":
        return None
    if kind is str:
        return text
    if kind in _PARSERS:
        return _PARSERS[kind].parse(text)
    try:
        value = ast.literal_eval(text.capitalize() if text in ("true", "false") else text)
    except (ValueError, SyntaxError):
        return text
    if kind is list and isinstance(value, tuple):
        return list(value)
    if kind is ml_collections.ConfigDict and isinstance(value, dict):
        return ml_collections.ConfigDict(value)
    return value


def has_key(config: Any, key: str) -> bool:
    """Whether `config` has the dotted `key` ("train.steps")."""
    node = config
    for part in key.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, Mapping)) or part not in node:
            return False
        node = node[part]
    return True


def _pairs(overrides: Overrides, where: str) -> list[tuple[str, Any]]:
    if isinstance(overrides, Mapping):
        return [(str(k).strip(), v) for k, v in overrides.items()]
    out = []
    for text in overrides:
        key, eq, raw = text.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"{where}: override {text!r}: expected KEY=VALUE (e.g. train.steps=50)")
        out.append((key.strip(), raw))
    return out


def _field(config: ml_collections.ConfigDict, key: str, where: str) -> tuple[ml_collections.ConfigDict, str]:
    """(the section holding dotted `key`, the field's name); a ConfigError when the config has no such key."""
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            options = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            hint = difflib.get_close_matches(part, options, n=1)
            near = ".".join(parts[:i] + hint[:1])
            raise ConfigError(f"override {key}: {where} has no {key!r}"
                              + (f" (did you mean {near!r}?)" if hint else ""))
        if i < len(parts) - 1:
            node = node[part]
    return node, parts[-1]
