r"""Math-Shepherd automatic process labels (Wang et al. 2023, "Math-Shepherd: Verify and Reinforce LLMs
Step-by-step without Human Annotations", arXiv 2312.08935), the labels of the paper's process reward model
(PAPER.md §4: "reward model ... Math-Shepherd-style process labels").

A step is good when the solution can still be finished correctly from it. For a completion split into
steps, from each step's prefix (the prompt and the completion's tokens up to and including the step's
last token) :func:`math_shepherd_labels` samples ``n`` continuations with the policy, grades them against
the gold answer, and labels the step

* ``hard``: 1 if any continuation reaches the correct answer, else 0 (Math-Shepherd's HE estimate);
* ``soft``: the fraction of continuations that do (its SE estimate).

The last step (the one that states the final answer) is labelled by the completion's own correctness: no
sampling is needed there. All prefixes of all completions go to the sampler in one call (it batches them)
and all continuations to the grader in one call.

Steps are the non-blank newline-delimited lines of the completion's text (how chain-of-thought solutions,
and the arithmetic task's, are written). A step's last token is the token holding the newline that ends its
line, found by decoding token prefixes (:func:`step_end_tokens`), so a step end is where a reader of the
tokens sees the step finish; the last step ends at the completion's last token (e.g. its eos). The RL loop
reads a process reward model at the same positions (use :func:`step_end_tokens` on rollouts).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from dsmath_jax.config.rm import LABEL_MODES
from dsmath_jax.data.tokenizers import Tokenizer
from dsmath_jax.generate.sampler import SamplingParams

__all__ = ["MODES", "StepSplit", "step_spans", "step_end_tokens", "math_shepherd_labels", "label_steps"]

MODES = LABEL_MODES["prm"]  # Math-Shepherd's hard or soft step labels


@dataclasses.dataclass(frozen=True)
class StepSplit:
    """A completion's steps: its decoded ``text``, the ``(start, end)`` character span of each step line
    (end exclusive, the newline not included) and ``ends``, the index in the completion's tokens of each
    step's last token (strictly increasing; the last is the completion's last token). ``merged`` counts
    step lines that shared their last token with the next step and were joined to it."""

    text: str
    spans: tuple[tuple[int, int], ...]
    ends: tuple[int, ...]
    merged: int = 0


def step_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the non-blank lines of ``text`` (end excludes the newline)."""
    spans, pos = [], 0
    for line in text.split("\n"):
        if line.strip():
            spans.append((pos, pos + len(line)))
        pos += len(line) + 1
    return spans


class _PrefixText:
    """Decoded lengths of token prefixes, memoised (a prefix's text is what the reader has seen so far)."""

    def __init__(self, tokenizer: Tokenizer, tokens: Sequence[int]):
        self.tokenizer, self.tokens = tokenizer, list(tokens)
        self._lengths: dict[int, int] = {}

    def length(self, j: int) -> int:
        """len(decode(tokens[:j]))."""
        if j not in self._lengths:
            self._lengths[j] = len(self.tokenizer.decode(self.tokens[:j]))
        return self._lengths[j]

    def token_of_char(self, char: int, lo: int = 0) -> int:
        """The index of the token that completes character ``char``: the smallest j >= lo with
        len(decode(tokens[:j + 1])) > char (binary search; decoded length grows with the prefix)."""
        hi = len(self.tokens) - 1
        if self.length(hi + 1) <= char:
            return hi
        while lo < hi:
            mid = (lo + hi) // 2
            if self.length(mid + 1) > char:
                hi = mid
            else:
                lo = mid + 1
        return lo


def step_end_tokens(tokenizer: Tokenizer, completion_tokens: Sequence[int]) -> StepSplit:
    """Splits a completion (token ids) into steps and finds each step's last token (module docstring).

    Every step but the last ends at the token holding the newline after its line; the last step ends at
    the last token. A completion without a non-blank line is one step. An empty completion has none."""
    tokens = list(completion_tokens)
    if not tokens:
        return StepSplit("", (), ())
    prefix = _PrefixText(tokenizer, tokens)
    text = tokenizer.decode(tokens)
    spans = step_spans(text) or [(0, len(text))]
    ends: list[int] = []
    kept: list[tuple[int, int]] = []
    merged = 0
    lo = 0
    for k, (start, end) in enumerate(spans):
        last = k == len(spans) - 1
        j = len(tokens) - 1 if last else prefix.token_of_char(end, lo)
        if ends and j <= ends[-1]:  # this line ends inside the previous step's last token: join them
            ends.pop()
            start = kept.pop()[0]
            merged += 1
        ends.append(j)
        kept.append((start, end))
        lo = j
    return StepSplit(text, tuple(kept), tuple(ends), merged)


def label_steps(correct: np.ndarray, mode: str) -> np.ndarray:
    """Step labels from continuation verdicts [steps, n] (bool): ``hard`` any correct, ``soft`` the
    fraction correct. Returns [steps] float32."""
    if mode not in MODES:
        raise ValueError(f"Math-Shepherd label mode must be one of {MODES}, got {mode!r}")
    correct = np.asarray(correct, bool)
    if correct.ndim != 2 or correct.shape[1] == 0:
        raise ValueError(f"verdicts must be [steps, n] with n >= 1, got shape {correct.shape}")
    return np.asarray(correct.any(axis=1) if mode == "hard" else correct.mean(axis=1), np.float32)


def math_shepherd_labels(sampler, grader, prompt_ids: Sequence[Sequence[int]],
                         completion_tokens: Sequence[Sequence[int]], golds: Sequence[str],
                         kinds: Sequence[str] | str, tokenizer: Tokenizer, *, n: int = 8, mode: str = "hard",
                         sampling: SamplingParams | None = None, stats: collections.Counter | None = None,
                         progress: bool = False) -> list[dict[str, Any]]:
    """PRM training examples with Math-Shepherd step labels, one per completion (in order).

    ``prompt_ids[i]`` (token ids, as the sampler got them, bos included) and ``completion_tokens[i]`` (the
    sampled tokens, stop token included) are example i; ``golds[i]`` its gold answer and ``kinds[i]`` (or
    one ``kinds`` for all) the grader's answer kind. ``sampler`` has ``generate(prompts, SamplingParams)``
    (:class:`~dsmath_jax.generate.Sampler` of the policy); ``grader`` has ``grade([(completion, gold,
    kind, options)])`` (:class:`~dsmath_jax.evals.grader.Grader`). ``sampling`` sets how continuations
    are sampled (its ``n`` is replaced by ``n``; default temperature 0.7, 512 new tokens); ``mode`` is
    ``hard`` or ``soft`` (module docstring).

    Returns dicts ``{"tokens": int32 prompt + completion, "prompt_len", "step_ends": int32 [k] (indices
    into tokens), "step_labels": float32 [k], "label": float32 (the completion's own correctness)}``.
    Empty completions are skipped (counted in ``stats["empty_completions"]``); ``stats`` also counts
    ``steps``, ``prefixes``, ``continuations``, ``continuations_correct`` and ``merged_steps``.
    """
    if mode not in MODES:
        raise ValueError(f"Math-Shepherd label mode must be one of {MODES}, got {mode!r}")
    if n < 1:
        raise ValueError(f"need n >= 1 continuations per step, got {n}")
    count = len(completion_tokens)
    kinds = [kinds] * count if isinstance(kinds, str) else list(kinds)
    if not len(prompt_ids) == count == len(golds) == len(kinds):
        raise ValueError(f"{len(prompt_ids)} prompts, {count} completions, {len(golds)} golds and {len(kinds)} "
                         "kinds: one each per completion")
    stats = stats if stats is not None else collections.Counter()
    sampling = dataclasses.replace(sampling or SamplingParams(max_new_tokens=512, temperature=0.7), n=n)

    splits = [step_end_tokens(tokenizer, c) for c in completion_tokens]
    # Every intermediate step's prefix (prompt + completion up to and including the step's last token).
    owners: list[tuple[int, int]] = []  # (completion, step) of each prefix
    prefixes: list[list[int]] = []
    for i, split in enumerate(splits):
        stats["merged_steps"] += split.merged
        for k, end in enumerate(split.ends[:-1]):
            owners.append((i, k))
            prefixes.append(list(prompt_ids[i]) + list(completion_tokens[i][:end + 1]))
    stats["prefixes"] += len(prefixes)
    extra = {"progress": True} if progress else {}
    continuations = sampler.generate(prefixes, sampling, **extra) if prefixes else []

    # One grading call: every completion (its last step's label), then every continuation.
    items = [(s.text, golds[i], kinds[i], None) for i, s in enumerate(splits)]
    for (i, k), group in zip(owners, continuations):
        if len(group) != n:
            raise ValueError(f"the sampler returned {len(group)} continuations for prefix ({i}, step {k}); "
                             f"expected n={n}")
        head = tokenizer.decode(list(completion_tokens[i][:splits[i].ends[k] + 1]))
        items.extend((head + c.text, golds[i], kinds[i], None) for c in group)
    verdicts = [bool(v.correct) for v in grader.grade(items)] if items else []
    own, cont = verdicts[:count], np.asarray(verdicts[count:], bool).reshape(-1, n)
    stats["continuations"] += cont.size
    stats["continuations_correct"] += int(cont.sum())

    step_labels: list[list[float]] = [[0.0] * len(s.ends) for s in splits]
    if len(cont):
        labels = label_steps(cont, mode)
        for (i, k), value in zip(owners, labels):
            step_labels[i][k] = float(value)
    out = []
    for i, split in enumerate(splits):
        if not split.ends:
            stats["empty_completions"] += 1
            continue
        step_labels[i][-1] = float(own[i])
        offset = len(prompt_ids[i])
        stats["steps"] += len(split.ends)
        out.append({"tokens": np.asarray(list(prompt_ids[i]) + list(completion_tokens[i]), np.int32),
                    "prompt_len": offset,
                    "step_ends": np.asarray(split.ends, np.int32) + np.int32(offset),
                    "step_labels": np.asarray(step_labels[i], np.float32),
                    "label": np.float32(own[i])})
    return out
