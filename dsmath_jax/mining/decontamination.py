"""Benchmark decontamination (paper §2.1, as in DeepSeek-Coder): a page that contains any 10-gram of a
benchmark text is removed; benchmark texts of 3 to 9 n-gram tokens are matched exactly (as a whole,
anywhere in the page). With `mode="segment"` only the lines holding a match are removed.

N-gram tokens (`ngram_tokens`): the text is lower-cased; punctuation and whitespace only separate
tokens (they are folded away); digits are kept (a number is one token); every CJK ideograph is a token
of its own, so Chinese benchmarks (CMATH, Gaokao) have n-grams too. LaTeX commands become their names
(`\\frac{1}{2}` -> `frac 1 2`), so `$\\frac{1}{2}$` on a page matches `\\frac12`-free variants only when
the tokens agree.

A short text must hold a word of two or more letters or a CJK ideograph: "8 2 24 120" (numbers only) is
not matched, it is everywhere.

The index holds one 64-bit hash per benchmark n-gram: a polynomial rolling hash (Karp & Rabin 1987)
over per-token BLAKE2b values, stable across processes and machines, in a sorted numpy array
(8 bytes an n-gram: all the benchmarks above are ~3M 10-grams, 25 MB). Each hash remembers the first
benchmark it came from, so a removal records which benchmark matched.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from dsmath_jax.mining.metrics import count
from dsmath_jax.mining.pages import Page

logger = logging.getLogger(__name__)

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_NGRAM_TOKEN = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]+|\d+")
_BASE = np.uint64(0x100000001B3)  # odd multiplier of the rolling hash (FNV prime)


def ngram_tokens(text: str) -> list[str]:
    """Lower-cased word / number / CJK-character tokens; punctuation and whitespace dropped."""
    return _NGRAM_TOKEN.findall(text.lower())


@functools.lru_cache(maxsize=1 << 20)
def _token_hash(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")


def token_hashes(tokens: list[str]) -> np.ndarray:
    """[len(tokens)] uint64 per-token hashes."""
    return np.fromiter((_token_hash(t) for t in tokens), dtype=np.uint64, count=len(tokens))


def window_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """[len - n + 1] uint64: the rolling hash of every window of `n` consecutive tokens
    (sum_j h[i+j] * B^(n-1-j) mod 2^64)."""
    if len(hashes) < n:
        return np.zeros(0, dtype=np.uint64)
    m = len(hashes) - n + 1
    acc = hashes[:m].copy()
    with np.errstate(over="ignore"):
        for j in range(1, n):
            acc = acc * _BASE + hashes[j:j + m]
    return acc


@dataclass
class NgramIndex:
    """Hashes of benchmark n-grams.

    ngrams:       [N] uint64 sorted hashes of every `n`-gram of texts with >= n tokens
    ngram_source: [N] int16  index into `benchmarks` of the first text each came from
    short:        {length: ([M] uint64 sorted hashes of whole texts of that length, [M] int16 source)}
                  for texts of `min_n` .. `n - 1` tokens
    """

    n: int
    min_n: int
    benchmarks: list[str]
    ngrams: np.ndarray
    ngram_source: np.ndarray
    short: dict[int, tuple[np.ndarray, np.ndarray]]

    def save(self, path: str) -> None:
        """Writes the index (npz) to any Beam filesystem path, via a temporary name then rename."""
        arrays = {"ngrams": self.ngrams, "ngram_source": self.ngram_source,
                  "meta": np.frombuffer(json.dumps({"n": self.n, "min_n": self.min_n,
                                                    "benchmarks": self.benchmarks}).encode(), dtype=np.uint8)}
        for length, (h, s) in self.short.items():
            arrays[f"short_{length}"], arrays[f"short_source_{length}"] = h, s
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=True, **arrays)  # numpy's default, named so **arrays maps to its **kwds
        tmp = path + ".tmp"
        with FileSystems.create(tmp) as f:
            f.write(buf.getvalue())
        if FileSystems.exists(path):
            FileSystems.delete([path])
        FileSystems.rename([tmp], [path])

    @classmethod
    def load(cls, path: str) -> NgramIndex:
        with FileSystems.open(path) as f:
            data = np.load(io.BytesIO(f.read()))
        meta = json.loads(bytes(data["meta"]).decode())
        short = {int(k.split("_")[1]): (data[k], data[f"short_source_{k.split('_')[1]}"])
                 for k in data.files if k.startswith("short_") and not k.startswith("short_source")}
        return cls(meta["n"], meta["min_n"], meta["benchmarks"], data["ngrams"], data["ngram_source"], short)

    def __len__(self) -> int:
        return len(self.ngrams) + sum(len(h) for h, _ in self.short.values())

    def matches(self, tokens: list[str]) -> list[tuple[int, int, str]]:
        """[(start, length, benchmark)] of the windows of `tokens` that match the index."""
        hashes = token_hashes(tokens)
        found: list[tuple[int, int, str]] = []
        for length, (table, source) in [(self.n, (self.ngrams, self.ngram_source))] + sorted(self.short.items()):
            if len(table) == 0 or len(hashes) < length:
                continue
            windows = window_hashes(hashes, length)
            pos = np.searchsorted(table, windows)
            pos[pos == len(table)] = 0
            hit = np.nonzero(table[pos] == windows)[0]
            found.extend((int(i), length, self.benchmarks[int(source[pos[i]])]) for i in hit)
        return found


def _is_word(token: str) -> bool:
    return len(token) >= 2 and token.isalpha() or bool(re.match(f"[{_CJK}]", token))


def _sorted_unique(hashes: list[np.ndarray], sources: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, np.int16)
    h = np.concatenate(hashes)
    s = np.concatenate(sources)
    order = np.argsort(h, kind="stable")  # stable: the first benchmark of a duplicate hash wins
    h, s = h[order], s[order]
    keep = np.ones(len(h), bool)
    keep[1:] = h[1:] != h[:-1]
    return h[keep], s[keep]


def build_ngram_index(texts: Iterable[tuple[str, str]], *, n: int = 10, min_n: int = 3) -> NgramIndex:
    """Index of every `n`-gram of the benchmark texts, and of whole texts of `min_n`..`n-1` tokens.

    texts: (benchmark name, text) pairs, e.g. `benchmarks.benchmark_texts(dir)`.
    """
    names: list[str] = []
    ngrams, ngram_src = [], []
    short: dict[int, tuple[list, list]] = {}
    n_texts = 0
    for name, text in texts:
        if name not in names:
            names.append(name)
        idx = names.index(name)
        tokens = ngram_tokens(text)
        n_texts += 1
        if len(tokens) >= n:
            h = window_hashes(token_hashes(tokens), n)
            ngrams.append(h)
            ngram_src.append(np.full(len(h), idx, np.int16))
        elif len(tokens) >= min_n and any(_is_word(t) for t in tokens):
            h = window_hashes(token_hashes(tokens), len(tokens))
            lists = short.setdefault(len(tokens), ([], []))
            lists[0].append(h)
            lists[1].append(np.full(1, idx, np.int16))
    grams, grams_src = _sorted_unique(ngrams, ngram_src)
    short_arrays = {length: _sorted_unique(h, s) for length, (h, s) in short.items()}
    index = NgramIndex(n, min_n, names, grams, grams_src, short_arrays)
    logger.info("decontamination index: %d texts from %s -> %d %d-grams, %d short texts",
                n_texts, names, len(grams), n, sum(len(h) for h, _ in short_arrays.values()))
    return index


def find_contamination(text: str, index: NgramIndex) -> list[tuple[str, str]]:
    """[(benchmark, matched n-gram text)] for every match in `text` (empty when clean)."""
    tokens = ngram_tokens(text)
    return [(bench, " ".join(tokens[i:i + length])) for i, length, bench in index.matches(tokens)]


def remove_segments(text: str, index: NgramIndex) -> tuple[str, list[tuple[str, str]]]:
    """`text` without the lines that hold (part of) a matching n-gram, and the matches.
    A match that spans several lines removes all of them."""
    lines = text.split("\n")
    tokens: list[str] = []
    line_of: list[int] = []
    for k, line in enumerate(lines):
        t = ngram_tokens(line)
        tokens.extend(t)
        line_of.extend([k] * len(t))
    found = index.matches(tokens)
    drop: set[int] = set()
    for start, length, _ in found:
        drop.update(range(line_of[start], line_of[start + length - 1] + 1))
    kept = "\n".join(line for k, line in enumerate(lines) if k not in drop)
    return kept.strip(), [(bench, " ".join(tokens[i:i + length])) for i, length, bench in found]


class Decontaminate(beam.DoFn):
    """pages -> clean pages (main output) and, on the tagged output `removed`, one record per
    decontaminated page: {url, benchmarks: [names], ngram: first matched n-gram, mode, segments}.

    Counters: `decontaminated_pages`, `decontaminated_pages_<benchmark>` (the first benchmark matched),
    `decontaminated_segments`, `decontaminated_pages_emptied` (segment mode left too little text).
    """

    REMOVED = "removed"

    def __init__(self, index_path: str, *, mode: str = "page", min_text_chars: int = 200,
                 tokenizer_path: str | None = None):
        if mode not in ("page", "segment"):
            raise ValueError(f"decontamination mode must be 'page' or 'segment', got {mode!r}")
        self.index_path = index_path
        self.mode = mode
        self.min_text_chars = min_text_chars
        self.tokenizer_path = tokenizer_path
        self._index: NgramIndex | None = None  # both loaded by `setup` on the worker
        self._count_tokens: Callable[[str], int] | None = None

    def setup(self):
        from dsmath_jax.mining.tokens import token_counter  # on the Beam worker, where the DoFn is set up

        self._index = NgramIndex.load(self.index_path)
        self._count_tokens = token_counter(self.tokenizer_path)

    def process(self, page: Page):
        index, count_tokens = self._index, self._count_tokens
        assert index is not None and count_tokens is not None, "Beam calls setup() before process()"
        if self.mode == "page":
            found = find_contamination(page["text"], index)
            if not found:
                yield page
                return
            text = ""
        else:
            text, found = remove_segments(page["text"], index)
            if not found:
                yield page
                return
        benchmarks = sorted({b for b, _ in found})
        record = {"url": page["url"], "benchmarks": benchmarks, "ngram": found[0][1], "mode": self.mode}
        if self.mode == "segment" and len(text) >= self.min_text_chars:
            count("decontaminated_segments", 1)
            record["segments_removed"] = True
            yield beam.pvalue.TaggedOutput(self.REMOVED, record)
            yield {**page, "text": text, "tokens": count_tokens(text)}
            return
        count("decontaminated_pages", 1)
        count(f"decontaminated_pages_{found[0][0]}", 1)
        if self.mode == "segment":
            count("decontaminated_pages_emptied", 1)
        yield beam.pvalue.TaggedOutput(self.REMOVED, record)
