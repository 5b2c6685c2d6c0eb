"""Grain input pipelines for pre-training and SFT.

Every pipeline is: random-access sources (a `tfds.data_source` split, or any sequence of dicts)
-> per-source deterministic shuffle from a seed and repetition over epochs -> tokenisation into
`{inputs, targets, weights}` (next-token pairs inside each document, so nothing is predicted across a
document boundary) -> a weighted mixture -> this host's slice (`[process_index::process_count]`) ->
packing to the context length with segment ids and positions -> batches of the per-host batch size.

Batches are dicts of numpy arrays, each [batch, seq]: `inputs`, `targets` (int32), `weights` (float32: 1
where the target counts in the loss), `segment_ids` (int32, 0 = padding) and `positions` (int32).
The iterator (`iter(dataset)`) is a `grain.DatasetIterator` whose state is checkpointed with the model,
so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from dsmath_jax.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)

FEATURES = ("inputs", "targets", "weights")
PACKINGS = ("concat", "first_fit")  # how examples fill rows (`build_dataset`)
OVERLONG = ("truncate", "drop")  # what happens to an SFT example longer than a row (`sft_example_fn`)


class EmptyDatasetError(ValueError):
    """A data source with no examples."""


@dataclasses.dataclass
class PipelineStats:
    """Counts kept while examples flow through this process's pipeline (not checkpointed)."""

    examples: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_empty: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _next_token_example(tokens: np.ndarray, loss_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """[n] tokens -> {inputs, targets, weights}, each [n - 1]: position t predicts token t + 1."""
    tokens = np.asarray(tokens, np.int32)
    weights = np.ones(len(tokens) - 1, np.float32) if loss_mask is None else loss_mask[1:].astype(np.float32)
    return {"inputs": tokens[:-1], "targets": tokens[1:], "weights": weights}


def pretrain_example_fn(tokenizer: Tokenizer, *, text_field: str = "text", stats: PipelineStats | None = None
                        ) -> Callable[[Mapping[str, Any]], dict[str, np.ndarray] | None]:
    """A record's text -> one next-token example: bos + text + eos (empty documents are dropped)."""
    stats = stats if stats is not None else PipelineStats()

    def fn(record):
        text = _text(record[text_field])
        ids = tokenizer.encode(text, add_bos=tokenizer.bos_id is not None, add_eos=tokenizer.eos_id is not None)
        if len(ids) < 2:
            stats.dropped_empty += 1
            return None
        stats.examples += 1
        return _next_token_example(np.asarray(ids, np.int32))

    return fn


def chat_prompt(question: str) -> str:
    """The DeepSeekMath chat format up to the answer: `User: {question}\\n\\nAssistant:` (PAPER.md §3)."""
    return f"User: {question}\n\nAssistant:"


def sft_example_fn(tokenizer: Tokenizer, seq_len: int, *, question_field: str = "question",
                   response_field: str = "response", overlong: str = "truncate", stats: PipelineStats | None = None
                   ) -> Callable[[Mapping[str, Any]], dict[str, np.ndarray] | None]:
    """A {question, response} record -> `User: {question}\\n\\nAssistant: {response}<eos>` with the loss
    only on the response and eos. Examples longer than `seq_len` + 1 tokens are truncated (keeping the
    prompt) or dropped, per `overlong`, and counted."""
    if overlong not in OVERLONG:
        raise ValueError(f"overlong must be one of {OVERLONG}, got {overlong!r}")
    if tokenizer.eos_id is None:
        raise ValueError("SFT needs a tokenizer with an eos token (it ends every response)")
    stats = stats if stats is not None else PipelineStats()

    def fn(record):
        prompt = tokenizer.encode(chat_prompt(_text(record[question_field])), add_bos=tokenizer.bos_id is not None)
        response = tokenizer.encode(" " + _text(record[response_field]), add_eos=True)
        tokens = np.asarray(prompt + response, np.int32)
        mask = np.concatenate([np.zeros(len(prompt), bool), np.ones(len(response), bool)])
        if len(tokens) > seq_len + 1:
            if overlong == "drop" or len(prompt) >= seq_len:
                stats.dropped_overlong += 1
                return None
            stats.truncated += 1
            tokens, mask = tokens[:seq_len + 1], mask[:seq_len + 1]
        stats.examples += 1
        return _next_token_example(tokens, mask)

    return fn


def _finish_batch(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "inputs": batch["inputs"].astype(np.int32),
        "targets": batch["targets"].astype(np.int32),
        "weights": batch["weights"].astype(np.float32),
        "segment_ids": batch["inputs_segment_ids"].astype(np.int32),
        "positions": batch["inputs_positions"].astype(np.int32),
    }


def _source_dataset(source: Sequence, name: str, *, seed: int, shuffle: bool, epochs: int | None) -> grain.MapDataset:
    if len(source) == 0:
        raise EmptyDatasetError(f"data source {name!r} is empty")
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.seed(seed).shuffle()
    return ds.repeat(epochs)


def mix_sources(sources: Sequence[tuple[str, Sequence, float]], *, seed: int = 0, shuffle: bool = True,
                epochs: int | None = None) -> grain.MapDataset:
    """The records of several sources interleaved by weight (each source shuffled and repeated on its own)."""
    if not sources:
        raise EmptyDatasetError("no data sources given")
    weights = np.asarray([w for _, _, w in sources], np.float64)
    if (weights <= 0).any():
        raise ValueError(f"mixture weights must be positive: {dict((n, w) for n, _, w in sources)}")
    datasets = [_source_dataset(src, name, seed=seed + 1000 * i, shuffle=shuffle, epochs=epochs)
                for i, (name, src, _) in enumerate(sources)]
    if len(datasets) == 1:
        return datasets[0]
    return grain.MapDataset.mix(datasets, list(weights / weights.sum()))


def build_dataset(sources: Sequence[tuple[str, Any, float]], example_fn: Callable, *, seq_len: int,
                  batch_size: int, seed: int = 0, shuffle: bool = True, epochs: int | None = None,
                  packing: str = "concat", shard_index: int = 0, shard_count: int = 1,
                  num_packing_bins: int | None = None, max_drop_fraction: float = 0.99) -> grain.IterDataset:
    """The batches of a (mixture of) sources, as a Grain IterDataset.

    sources: [(name, random-access source, weight)]; weights are normalised.
    example_fn: record -> {inputs, targets, weights} or None (skipped).
    packing: "concat" concatenates examples and splits at `seq_len` (pre-training: a document may continue in
      the next row, as a new segment); "first_fit" places whole examples into rows (SFT: an example is never
      split).
    shard_index / shard_count: this host's slice (jax.process_index(), jax.process_count()).
    batch_size: rows per host.
    max_drop_fraction: raise when more than this fraction of a window of examples is dropped (overlong
      or empty), instead of spinning through an unusable dataset.
    """
    ds = mix_sources(sources, seed=seed, shuffle=shuffle, epochs=epochs).map(example_fn)
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    it = ds.to_iter_dataset().filter(lambda ex: ex is not None)
    # A source whose examples are (nearly) all dropped would otherwise spin forever on repeat.
    it = grain.experimental.WithOptionsIterDataset(it, grain.experimental.DatasetOptions(
        filter_warn_threshold_ratio=0.5, filter_raise_threshold_ratio=max_drop_fraction))
    lengths = {name: seq_len for name in FEATURES}
    if packing == "concat":
        it = grain.experimental.ConcatThenSplitIterDataset(it, length_struct=lengths)
    elif packing == "first_fit":
        it = grain.experimental.FirstFitPackIterDataset(it, length_struct=lengths,
                                                        num_packing_bins=num_packing_bins or max(32, 4 * batch_size),
                                                        seed=seed, shuffle_bins=shuffle)
    else:
        raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
    return it.batch(batch_size, drop_remainder=True).map(_finish_batch)
