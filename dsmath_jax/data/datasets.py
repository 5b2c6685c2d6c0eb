"""Reading our TFDS datasets (ArrayRecord) without TensorFlow.

Every dataset of this project is a TFDS dataset stored as ArrayRecord files under a ``data_dir``
(``<data_dir>/<name>/<version>/``), written by one of:

* :func:`~dsmath_jax.data.corpus.build_text_corpus` -- pre-training text from JSONL/Parquet files,
  features ``{"text", "source"}``;
* :func:`~dsmath_jax.data.sft_data.build_sft_dataset` -- SFT examples,
  features ``{"question", "response", "format", "source"}``;
* :func:`~dsmath_jax.data.benchmarks_tfds.prepare_benchmark` -- GSM8K (``dsmath_gsm8k``) and MATH
  (``dsmath_math``) train/test, kept in the order of the source files.

They are read with :func:`data_source`, a random-access ``tfds.data_source`` (no TensorFlow is
imported), which Grain consumes directly::

    src = data_source("my_corpus", "train", data_dir=data_dir)
    ds = grain.MapDataset.source(src).map(decode_example)
    ds[0]  # {"text": "...", "source": "..."}

TFDS returns ``Text`` features as UTF-8 ``bytes``; :func:`decode_example` turns an element into
``str`` values (and numpy scalars into Python ones).

This module is the light reader the builders themselves use; it imports none of them (import a builder
from its own module).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from etils import epath

__all__ = ["data_source", "decode_example"]


def data_source(name: str, split: str, *, data_dir: str | os.PathLike):
    """The random-access source of split ``split`` of TFDS dataset ``name`` in ``data_dir``.

    ``len(src)`` is the number of examples and ``src[i]`` a dict of numpy values (``Text`` as
    ``bytes``; see :func:`decode_example`). Never downloads or builds anything: a dataset that is not
    there raises ``FileNotFoundError`` naming the datasets that are. ``name`` may carry a version,
    ``"my_corpus:1.0.0"``; without one the newest version in ``data_dir`` is read.
    """
    import tensorflow_datasets as tfds  # imported here: a second or so, and only readers need it

    root = epath.Path(data_dir)
    dataset_dir = root / name.split(":")[0].split("/")[0]
    if not _has_prepared_version(dataset_dir):
        present = sorted(p.name for p in root.iterdir() if _has_prepared_version(p)) if root.is_dir() else []
        raise FileNotFoundError(
            f"no TFDS dataset {name!r} in {root} (datasets there: {present}); build it first "
            "(build_text_corpus / build_sft_dataset / prepare_benchmark)")
    return tfds.data_source(name, split=split, data_dir=os.fspath(data_dir), download=False)


def _has_prepared_version(dataset_dir: epath.Path) -> bool:
    """Whether ``dataset_dir`` holds a finished version (``<version>/dataset_info.json``, configs allowed)."""
    if not dataset_dir.is_dir():
        return False
    for pattern in ("*/dataset_info.json", "*/*/dataset_info.json"):
        if any("incomplete." not in os.fspath(p) for p in dataset_dir.glob(pattern)):
            return True
    return False


def decode_example(example: Mapping[str, Any]) -> dict[str, Any]:
    """A TFDS element with ``bytes`` decoded as UTF-8 ``str`` and numpy scalars as Python scalars.

    Nested dicts are decoded recursively; arrays of bytes become lists of ``str``; other arrays are
    returned unchanged.
    """
    out: dict[str, Any] = {}
    for key, value in example.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, Mapping):
            value = decode_example(value)
        elif isinstance(value, np.ndarray) and value.dtype.kind in "SO":
            value = [v.decode("utf-8") if isinstance(v, bytes) else v for v in value.tolist()]
        elif isinstance(value, np.generic):
            value = value.item()
            if isinstance(value, bytes):
                value = value.decode("utf-8")
        out[key] = value
    return out
