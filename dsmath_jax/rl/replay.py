r"""The replay buffer of iterative RL's reward-model training (PAPER.md §4, Algorithm 1).

After each RL iteration the paper continues training the reward model "on the new policy's samples with a
replay mechanism that incorporates 10% of historical data". :class:`ReplayBuffer` keeps those samples:
during an iteration the newly labelled examples are added as *pending* (:meth:`ReplayBuffer.add_pending`);
:meth:`ReplayBuffer.training_set` is the pending examples plus historical ones drawn so that history is
``history_fraction`` of the result; :meth:`ReplayBuffer.commit` ends the iteration, moving pending into
history (first in, first out, up to ``capacity``). :meth:`ReplayBuffer.add_history` seeds the history
before the first iteration (iterative RL seeds it with the reward model's own training data, so the first
retraining already mixes it in).

Examples are dicts of numpy values (reward-model examples, :mod:`dsmath_jax.rl.reward_model`): scalar fields
(``prompt_len``, ``label``) and 1-d array fields of any length (``tokens``, ``step_ends``, ...). All examples
of a buffer have the same fields. :func:`pack_examples` / :func:`unpack_examples` turn a list of them into
flat numpy arrays (ragged fields as concatenated values plus offsets) and back, bitwise; the buffer's
:meth:`~ReplayBuffer.state_arrays` uses them, so a checkpoint (``Checkpointer.save(step, {"replay":
buffer.state_arrays()})``) holds pending, history and the sampling state, and
:meth:`ReplayBuffer.from_arrays` rebuilds the same buffer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ReplayBuffer", "pack_examples", "unpack_examples", "history_count"]

_VALUES, _OFFSETS = ".values", ".offsets"


def _normalise(example: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for key, value in example.items():
        if not isinstance(key, str) or not key or "." in key or "/" in key:
            raise ValueError(f"{where}: field name {key!r} must be a non-empty str without '.' or '/'")
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise ValueError(f"{where}: field {key!r} must be numeric (got dtype {arr.dtype})")
        if arr.ndim > 1:
            raise ValueError(f"{where}: field {key!r} must be a scalar or 1-d array, got shape {arr.shape}")
        out[key] = arr[()] if arr.ndim == 0 else arr
    return out


def _schema(example: Mapping[str, Any]) -> dict[str, tuple[bool, np.dtype]]:
    """field -> (ragged?, dtype)."""
    return {k: (np.ndim(v) == 1, np.asarray(v).dtype) for k, v in sorted(example.items())}


def pack_examples(examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """A list of examples with the same fields -> flat numpy arrays: ``<field>`` [n] for scalar fields,
    ``<field>.values`` (concatenated) and ``<field>.offsets`` [n + 1] int64 for 1-d fields. Dtypes are
    kept; :func:`unpack_examples` inverts it bitwise. An empty list gives ``{}``."""
    if not examples:
        return {}
    examples = [_normalise(ex, f"example {i}") for i, ex in enumerate(examples)]
    schema = _schema(examples[0])
    out: dict[str, np.ndarray] = {}
    for i, ex in enumerate(examples):
        got = _schema(ex)
        if got != schema:
            raise ValueError(f"example {i} has fields {_describe(got)} but example 0 has {_describe(schema)}: "
                             "all examples of a set must have the same fields, shapes (scalar / 1-d) and dtypes")
    for key, (ragged, dtype) in schema.items():
        if ragged:
            lengths = np.asarray([len(ex[key]) for ex in examples], np.int64)
            out[key + _OFFSETS] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            out[key + _VALUES] = (np.concatenate([ex[key] for ex in examples]).astype(dtype, copy=False)
                                  if lengths.sum() else np.zeros((0,), dtype))
        else:
            out[key] = np.asarray([ex[key] for ex in examples], dtype)
    return out


def _describe(schema: Mapping[str, tuple[bool, np.dtype]]) -> str:
    return "{" + ", ".join(f"{k}: {'1-d ' if r else ''}{d}" for k, (r, d) in schema.items()) + "}"


def unpack_examples(arrays: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The examples of :func:`pack_examples`' arrays (numpy scalars for scalar fields, arrays for 1-d ones)."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    fields: dict[str, bool] = {}
    for key in arrays:
        if key.endswith(_VALUES) or key.endswith(_OFFSETS):
            name = key.rsplit(".", 1)[0]
            if name + _VALUES not in arrays or name + _OFFSETS not in arrays:
                raise ValueError(f"packed examples: field {name!r} needs both {name + _VALUES!r} and "
                                 f"{name + _OFFSETS!r} (got {sorted(arrays)})")
            fields[name] = True
        else:
            fields[key] = False
    if not fields:
        return []
    sizes = {k: (len(arrays[k + _OFFSETS]) - 1 if ragged else len(arrays[k])) for k, ragged in fields.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"packed examples: fields hold different numbers of examples: {sizes}")
    n = next(iter(sizes.values()))
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, ragged in sorted(fields.items()):
        if ragged:
            offsets, values = arrays[key + _OFFSETS], arrays[key + _VALUES]
            if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != len(values):
                raise ValueError(f"packed examples: {key + _OFFSETS!r} must rise from 0 to len(values) = "
                                 f"{len(values)}, got {offsets.tolist()[:10]}...")
            for i in range(n):
                out[i][key] = values[offsets[i]:offsets[i + 1]].copy()
        else:
            for i in range(n):
                out[i][key] = arrays[key][i]
    return out


def history_count(pending: int, available: int, history_fraction: float) -> int:
    """How many historical examples join ``pending`` new ones so that history is ``history_fraction`` of the
    result: ``round(pending * f / (1 - f))``, at most ``available`` (e.g. 90 new + 10 old at f = 0.1)."""
    if pending == 0 or history_fraction == 0.0:
        return 0
    wanted = math.floor(pending * history_fraction / (1.0 - history_fraction) + 0.5 + 1e-9)
    return min(wanted, available)


class ReplayBuffer:
    """Pending (this iteration's) and historical examples for continual reward-model training.

    ``capacity``: the most historical examples kept (the oldest leave first). ``history_fraction``: the share
    of history in :meth:`training_set` (the paper's 10%). Which historical examples are drawn depends only on
    ``seed`` and the number of commits so far, so :meth:`training_set` is the same however often it is called
    within an iteration, and after a restore from :meth:`state_arrays`.
    """

    def __init__(self, capacity: int, history_fraction: float = 0.1, seed: int = 0):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if not 0.0 <= history_fraction < 1.0:
            raise ValueError(f"history_fraction must be in [0, 1), got {history_fraction}")
        self.capacity, self.history_fraction, self.seed = int(capacity), float(history_fraction), int(seed)
        self.pending: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self.commits = 0  # iterations committed: with `seed`, the state of the history draw
        self._schema: dict[str, tuple[bool, np.dtype]] | None = None

    def __repr__(self) -> str:
        return (f"ReplayBuffer(pending={len(self.pending)}, history={len(self.history)}/{self.capacity}, "
                f"history_fraction={self.history_fraction}, commits={self.commits})")

    def _check(self, examples: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for i, ex in enumerate(examples):
            ex = _normalise(ex, f"ReplayBuffer example {i}")
            schema = _schema(ex)
            if self._schema is None:
                self._schema = schema
            elif schema != self._schema:
                raise ValueError(f"ReplayBuffer example {i} has fields {_describe(schema)} but the buffer holds "
                                 f"{_describe(self._schema)}")
            out.append(ex)
        return out

    def add_pending(self, examples: Sequence[Mapping[str, Any]]) -> None:
        """Adds this iteration's newly labelled examples."""
        self.pending.extend(self._check(examples))

    def add_history(self, examples: Sequence[Mapping[str, Any]]) -> None:
        """Adds examples straight to the history (first in, first out, at most ``capacity`` kept), e.g. the
        reward model's own training data, so that the first :meth:`training_set` already replays them."""
        self.history.extend(self._check(examples))
        if len(self.history) > self.capacity:
            self.history = self.history[len(self.history) - self.capacity:]

    def history_sample(self) -> list[int]:
        """Indices into :attr:`history` of the examples :meth:`training_set` mixes in (without replacement)."""
        k = history_count(len(self.pending), len(self.history), self.history_fraction)
        if k == 0:
            return []
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.commits])
        return rng.choice(len(self.history), size=k, replace=False).tolist()

    def training_set(self) -> list[dict[str, Any]]:
        """The pending examples followed by the drawn historical ones (history is ``history_fraction`` of
        the result, or all of history when there is less)."""
        return list(self.pending) + [self.history[i] for i in self.history_sample()]

    def commit(self) -> None:
        """Ends an iteration: pending joins history (first in, first out, at most ``capacity`` kept)."""
        self.history.extend(self.pending)
        if len(self.history) > self.capacity:
            self.history = self.history[len(self.history) - self.capacity:]
        self.pending = []
        self.commits += 1

    # ---- checkpointing -------------------------------------------------------------------------
    def state_arrays(self) -> dict[str, Any]:
        """The whole buffer as a pytree of numpy arrays (a Checkpointer item): ``pending`` and ``history``
        packed by :func:`pack_examples` (plus ``count``; every array but the offsets carries one trailing
        filler element, since Orbax cannot save zero-size arrays), and ``state`` (capacity,
        history_fraction, seed, commits)."""
        state = {"capacity": np.asarray(self.capacity, np.int64), "seed": np.asarray(self.seed, np.int64),
                 "commits": np.asarray(self.commits, np.int64),
                 "history_fraction": np.asarray(self.history_fraction, np.float64)}
        return {"pending": self._pack(self.pending), "history": self._pack(self.history), "state": state}

    def _pack(self, examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        if examples or self._schema is None:
            packed = pack_examples(examples)
        else:
            packed = {}
            for key, (ragged, dtype) in self._schema.items():  # keep the fields (and dtypes) of an empty set
                if ragged:
                    packed[key + _VALUES], packed[key + _OFFSETS] = np.zeros((0,), dtype), np.zeros((1,), np.int64)
                else:
                    packed[key] = np.zeros((0,), dtype)
        # Orbax cannot save zero-size arrays: every array but the offsets gets one trailing filler element
        # (from_arrays drops it), and `count` says how many examples there are.
        out = {k: v if k.endswith(_OFFSETS) else np.concatenate([v, np.zeros((1,), v.dtype)])
               for k, v in packed.items()}
        out["count"] = np.asarray(len(examples), np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], *, capacity: int | None = None,
                    history_fraction: float | None = None, seed: int | None = None) -> ReplayBuffer:
        """The buffer of :meth:`state_arrays` (e.g. as restored by ``Checkpointer.restore``, target None).
        ``capacity`` / ``history_fraction`` / ``seed``, when given, replace the saved settings (a resumed run
        whose config changed; a smaller capacity drops the oldest history)."""
        missing = {"pending", "history", "state"} - set(arrays)
        if missing:
            raise ValueError(f"replay buffer arrays lack {sorted(missing)} (got {sorted(arrays)}): not written "
                             "by ReplayBuffer.state_arrays?")
        state = {k: np.asarray(v) for k, v in arrays["state"].items()}
        buf = cls(int(state["capacity"]), float(state["history_fraction"]), int(state["seed"]))
        buf.commits = int(state["commits"])
        for name in ("history", "pending"):
            stored = {k: np.asarray(v) for k, v in (arrays[name] or {}).items()}
            if "count" not in stored:
                raise ValueError(f"replay buffer arrays: {name!r} has no 'count' (keys {sorted(stored)})")
            stored.pop("count")
            packed = {k: v if k.endswith(_OFFSETS) else v[:-1] for k, v in stored.items()}
            examples = unpack_examples(packed)
            if examples:
                getattr(buf, name).extend(buf._check(examples))
            elif packed and buf._schema is None:
                buf._schema = {(k.rsplit(".", 1)[0]): (k.endswith(_VALUES) or k.endswith(_OFFSETS),
                                                         v.dtype) for k, v in packed.items()
                               if not k.endswith(_OFFSETS)}
        if capacity is not None:
            buf.capacity = int(capacity)
            buf.history = buf.history[max(len(buf.history) - buf.capacity, 0):]
        if history_fraction is not None:
            if not 0.0 <= history_fraction < 1.0:
                raise ValueError(f"history_fraction must be in [0, 1), got {history_fraction}")
            buf.history_fraction = float(history_fraction)
        if seed is not None:
            buf.seed = int(seed)
        return buf
