"""Checkpoints: a thin layer over Orbax's ``CheckpointManager``.

A checkpoint step holds an open set of named items (``params``, ``opt_state``, ``rng``, later a
Grain iterator, ...), each a pytree saved with ``StandardSave``, plus a JSON item ``metadata``.
Writes are atomic as Orbax does them (a ``<step>.orbax-checkpoint-tmp`` directory renamed when
complete locally, a ``commit_success.txt`` marker on GCS), so unfinished steps are never listed.

Typed PRNG keys are stored as their ``key_data`` (uint32) and rebuilt on restore from the key
paths and key impls recorded in the metadata item. Every failure to find or read a checkpoint is
raised as :class:`CheckpointError`, naming the directory, step and item.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

logger = logging.getLogger(__name__)

PyTree = Any
METADATA_ITEM = "metadata"
RESERVED_ITEMS = frozenset({METADATA_ITEM, "step"})
_BOOKKEEPING = "_checkpointer"  # reserved key inside the JSON metadata
_FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, read or matched against a restore target."""


def _path_str(path: tuple) -> str:
    """Container-agnostic key path ('opt/0/mu'): namedtuples restore as dicts, tuples as lists."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):  # DictKey / FlattenedIndexKey, SequenceKey, GetAttrKey
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _short(e: BaseException, limit: int = 600) -> str:
    """One-line summary of a chained error (tensorstore messages embed whole specs)."""
    msg = " ".join(f"{type(e).__name__}: {e}".split())
    return msg if len(msg) <= limit else msg[:limit] + " ..."


def _is_prng_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def abstract_like(tree: PyTree, shardings: PyTree | None = None) -> PyTree:
    """Tree of ``jax.ShapeDtypeStruct`` for the array leaves of ``tree`` (other leaves kept).

    The sharding comes from the matching leaf of ``shardings`` (same structure, ``None`` leaves
    allowed) if given, else from the array's own ``.sharding`` (numpy arrays get none).
    """
    def one(x: Any, s: Any = None) -> Any:
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            return x
        s = s if s is not None else getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    # tree.map flattens `shardings` up to `tree`'s structure, so None leaves of `shardings` are kept as leaves
    return jax.tree.map(one, tree) if shardings is None else jax.tree.map(one, tree, shardings)


def _is_data_iterator(x: Any) -> bool:
    """A Grain dataset iterator: checkpointed through Grain's own Orbax handler (one file per process)."""
    return callable(getattr(x, "get_state", None)) and callable(getattr(x, "set_state", None))


def _restore_target(x: Any) -> Any:
    """Maps a target leaf to what Orbax restores into (typed keys become their key data)."""
    if _is_prng_key(x):
        data = jax.eval_shape(jax.random.key_data, x)
        return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=getattr(x, "sharding", None))
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x  # ShapeDtypeStruct, np.ndarray (restored as numpy) or python scalar


class Checkpointer:
    """Saves and restores named pytree items per step under one run directory (local or gs://)."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
                 save_interval_steps: int = 1, async_save: bool = True, create: bool = True,
                 read_only: bool = False) -> None:
        if "://" not in os.fspath(directory):  # a local path: orbax's writers need it absolute
            directory = os.path.abspath(directory)
        self.directory = epath.Path(directory)  # epath handles gs://
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
            create=create and not read_only, enable_async_checkpointing=async_save,
            read_only=read_only)
        self._mngr = ocp.CheckpointManager(self.directory, options=options)

    # ---- saving -------------------------------------------------------------------------------
    def save(self, step: int, items: Mapping[str, PyTree], *, metadata: Mapping | None = None,
             force: bool = False) -> bool:
        """Saves every item (StandardSave) plus ``metadata`` as the JSON item "metadata".

        Typed PRNG keys are saved as ``jax.random.key_data``; their key paths and impls are
        recorded in the metadata. Async: returns once the save is started (``wait()`` blocks).
        Returns False when ``save_interval_steps`` skips this step (unless ``force``; Orbax
        always saves the first step when the directory has no checkpoint yet).
        """
        if not items:
            raise ValueError("Checkpointer.save needs at least one item")
        bad = sorted(RESERVED_ITEMS.intersection(items))
        if bad:
            raise ValueError(f"item names {bad} are reserved (reserved: {sorted(RESERVED_ITEMS)})")
        for name in items:
            if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
                raise ValueError(f"item name {name!r} must be a non-empty str usable as a dir name")
        meta = dict(metadata or {})
        if _BOOKKEEPING in meta:
            raise ValueError(f"metadata key {_BOOKKEEPING!r} is reserved")
        encoded, prng_keys, iterators = {}, {}, []
        for name, tree in items.items():
            if _is_data_iterator(tree):
                iterators.append(name)
                continue
            keys: dict[str, str] = {}

            def enc(path: tuple, x: Any, keys: dict = keys) -> Any:
                if _is_prng_key(x):
                    keys[_path_str(path)] = str(jax.random.key_impl(x))
                    return jax.random.key_data(x)
                return x

            encoded[name] = jax.tree_util.tree_map_with_path(enc, tree)
            if keys:
                prng_keys[name] = keys
        meta[_BOOKKEEPING] = {"version": _FORMAT_VERSION, "step": int(step),
                              "items": sorted(items), "prng_keys": prng_keys, "data_iterators": iterators}
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            raise TypeError(f"checkpoint metadata must be JSON serialisable: {e}") from e
        args = {n: ocp.args.StandardSave(t) for n, t in encoded.items()}
        if iterators:
            import grain
            args.update({n: grain.checkpoint.CheckpointSave(items[n]) for n in iterators})
        args[METADATA_ITEM] = ocp.args.JsonSave(meta)
        saved = self._mngr.save(int(step), args=ocp.args.Composite(**args), force=force)
        if saved:
            logger.info("checkpoint step %d (%s) started in %s", step, ", ".join(sorted(items)),
                        self.directory)
        return bool(saved)

    # ---- listing ------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Committed steps, ascending; leftover tmp (interrupted) steps are never listed.

        Cached by Orbax as of construction plus this object's own saves (an async save in flight
        is listed at once; ``restore`` waits for it). ``restore`` re-reads the directory, so
        steps written by another process are found there.
        """
        return sorted(self._mngr.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def _resolve_step(self, step: int | None) -> int:
        self.wait()  # a restore never races this process's own async save
        if step is None or step not in self._mngr.all_steps():
            self._mngr.reload()  # pick up steps written by other processes since we were created
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}: expected step "
                                  "subdirectories written by Checkpointer.save")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise CheckpointError(f"step {step} not found in {self.directory}; available steps: "
                                  f"{steps}")
        return int(step)

    def _where(self, step: int, item: str) -> str:
        return f"item {item!r} of step {step} in {self.directory}"

    # ---- restoring ----------------------------------------------------------------------------
    def _read_metadata(self, step: int) -> dict:
        try:
            meta = self._mngr.restore(step, args=ocp.args.Composite(
                **{METADATA_ITEM: ocp.args.JsonRestore()}))[METADATA_ITEM]
        except Exception as e:  # anything Orbax/epath raises means unreadable
            raise CheckpointError(f"cannot read {self._where(step, METADATA_ITEM)} (expected the "
                                  f"JSON written by Checkpointer.save): {_short(e)}") from e
        if not isinstance(meta, dict) or _BOOKKEEPING not in meta:
            raise CheckpointError(f"{self._where(step, METADATA_ITEM)} was not written by "
                                  f"Checkpointer.save (no {_BOOKKEEPING!r} entry)")
        return meta

    def metadata(self, step: int | None = None) -> dict:
        """The user JSON metadata of ``step`` (default: latest)."""
        step = self._resolve_step(step)
        meta = self._read_metadata(step)
        meta.pop(_BOOKKEEPING)
        return meta

    def item_names(self, step: int | None = None) -> list[str]:
        """Names of the pytree items saved at ``step`` (default: latest)."""
        step = self._resolve_step(step)
        return list(self._read_metadata(step)[_BOOKKEEPING]["items"])

    def _validate(self, step: int, item: str, target: PyTree) -> None:
        """Raises CheckpointError at the first key path whose structure/shape/dtype differs."""
        try:
            saved_tree = ocp.StandardCheckpointHandler().metadata(
                self.directory / str(step) / item).tree
        except Exception as e:
            raise CheckpointError(f"cannot read the array metadata of {self._where(step, item)} "
                                  f"(corrupt or incomplete checkpoint): {_short(e)}") from e
        saved = {_path_str(p): m for p, m in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
        for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
            m = saved.pop(_path_str(path), None)
            where = f"{self._where(step, item)} at key path {jax.tree_util.keystr(path)}"
            if m is None:
                raise CheckpointError(f"{where}: target has a leaf the checkpoint does not "
                                      f"(saved paths: {sorted(saved)[:20]})")
            shape, dtype = getattr(m, "shape", None), getattr(m, "dtype", None)
            want_shape = tuple(np.shape(leaf))
            if shape is not None and tuple(shape) != want_shape:
                raise CheckpointError(f"{where}: expected shape {want_shape}, checkpoint has "
                                      f"{tuple(shape)}")
            if (dtype is not None and hasattr(leaf, "dtype")
                    and np.dtype(dtype) != np.dtype(leaf.dtype)):
                raise CheckpointError(f"{where}: expected dtype {np.dtype(leaf.dtype)}, "
                                      f"checkpoint has {np.dtype(dtype)}")
        if saved:
            raise CheckpointError(f"{self._where(step, item)} at key path "
                                  f"{sorted(saved)[0]!r}: checkpoint has leaves the target lacks")

    def restore(self, step: int | None = None,
                targets: Mapping[str, PyTree] | None = None) -> dict:
        """Restores ``step`` (default: latest) -> {"step", "metadata", <item>: pytree, ...}.

        ``targets`` maps item name -> abstract pytree (``jax.ShapeDtypeStruct`` leaves with a
        ``sharding``, or concrete arrays whose shape/dtype/sharding are used); only those items
        are read. ``None`` restores every saved item as saved (a ``None`` target: that item).
        """
        step = self._resolve_step(step)
        meta = self._read_metadata(step)
        book = meta.pop(_BOOKKEEPING)
        saved_items = list(book["items"])
        if targets is None:  # everything as saved, except data iterators (they need a target to restore into)
            targets = dict.fromkeys(i for i in saved_items if i not in book.get("data_iterators", []))
        else:
            targets = dict(targets)
        out: dict[str, Any] = {"step": step, "metadata": meta}
        for item, target in targets.items():
            if item in RESERVED_ITEMS:
                raise ValueError(f"{item!r} is reserved and always returned; not a target")
            if item not in saved_items:
                raise CheckpointError(f"{self._where(step, item)} does not exist; saved items: "
                                      f"{saved_items}")
            if not (self.directory / str(step) / item).exists():
                raise CheckpointError(f"{self._where(step, item)} is missing its files: expected "
                                      f"directory {self.directory / str(step) / item}")
            if item in book.get("data_iterators", []):
                if not _is_data_iterator(target):
                    raise CheckpointError(f"{self._where(step, item)} is a data-iterator state: pass the "
                                          "freshly built iterator as its target (it is restored in place)")
                import grain
                try:
                    self._mngr.restore(step, args=ocp.args.Composite(
                        **{item: grain.checkpoint.CheckpointRestore(target)}))
                except Exception as e:
                    raise CheckpointError(f"cannot restore {self._where(step, item)} into the data iterator "
                                          f"(was the dataset or its config changed?): {_short(e)}") from e
                out[item] = target
                continue
            abstract = None
            if target is not None:
                abstract = jax.tree.map(_restore_target, target)
                self._validate(step, item, abstract)
            try:
                tree = self._mngr.restore(step, args=ocp.args.Composite(
                    **{item: ocp.args.StandardRestore(abstract)}))[item]
            except Exception as e:  # tensorstore/Orbax errors on corrupt data
                raise CheckpointError(f"cannot read {self._where(step, item)} (corrupt or "
                                      f"incomplete checkpoint): {type(e).__name__}: {e}") from e
            keys = book["prng_keys"].get(item, {})
            if keys:
                tree = jax.tree_util.tree_map_with_path(
                    lambda p, x, keys=keys: (jax.random.wrap_key_data(x, impl=keys[_path_str(p)])
                                             if _path_str(p) in keys else x), tree)
            out[item] = tree
        logger.info("restored step %d (%s) from %s", step, ", ".join(targets), self.directory)
        return out

    # ---- lifecycle ----------------------------------------------------------------------------
    def wait(self) -> None:
        """Blocks until any async save has finished (and re-raises its errors)."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def restore_params(directory: str | os.PathLike, target: PyTree, *, step: int | None = None,
                   item: str = "params") -> PyTree:
    """Params-only restore from a run directory (latest step unless ``step``), e.g. to initialise
    from a pretrained checkpoint; other items (optimizer state, ...) are not read."""
    if not epath.Path(directory).exists():
        raise CheckpointError(f"no checkpoint in {directory}: expected step subdirectories "
                              "written by Checkpointer.save (directory does not exist)")
    with Checkpointer(directory, read_only=True, async_save=False, max_to_keep=None) as ckpt:
        return ckpt.restore(step, {item: target})[item]
