"""Deduplication: exact URL dedup, then near-duplicate removal with MinHash LSH.

* Exact: pages are keyed by normalised URL (`urls.normalize_url`); of several fetches of one URL the
  copy from the best source (WARC HTML > JSONL > WET) and then the longest text is kept. A Beam
  combiner, so no URL's copies are ever gathered as a list.
* Near: MinHash (Broder 1997, "On the resemblance and containment of documents") estimates the
  Jaccard similarity of two pages' sets of word 5-gram shingles as the fraction of `num_perm` hash
  functions on which their minimum shingle hash agrees. The hash family is multiply-shift,
  h(x) = ((a*x + b) mod 2^64) >> 32 with random odd a (Dietzfelbinger et al. 1997), over 32-bit
  shingle hashes. LSH banding (Indyk & Motwani 1998; Leskovec, Rajaraman & Ullman, *Mining of Massive
  Datasets* §3.4) splits the signature into `bands` bands of r = num_perm / bands rows; two pages
  become candidates when all rows of some band agree, which happens with probability
  1 - (1 - s^r)^bands for Jaccard s: an S-curve with its threshold near (1/bands)^(1/r)
  (128 perms, 16 bands of 8: ~0.71). Candidates are then verified: a page is a near-duplicate when
  its estimated Jaccard with the bucket's canonical page (the one with the smallest URL hash) is at
  least `threshold`.

Removal keeps every cluster's canonical page: a page is dropped when, in some bucket, it is not the
canonical page and is similar enough to it. The global canonical page of a connected group is the
canonical page of every bucket it is in, so it is never dropped.
"""

from __future__ import annotations

import hashlib
from typing import Any

import apache_beam as beam
import numpy as np

from dsmath_jax.mining.decontamination import ngram_tokens, token_hashes, window_hashes
from dsmath_jax.mining.metrics import count
from dsmath_jax.mining.pages import SOURCE_PRIORITY, Page

_MASK32 = np.uint64(0xFFFFFFFF)


# ------------------------------------------------------------------------------------------- exact URL


def _better(a: Page, b: Page) -> Page:
    """The copy to keep of two fetches of one URL (deterministic: a total order)."""
    ka = (SOURCE_PRIORITY.get(a["source"], -1), len(a["text"]), a["text"])
    kb = (SOURCE_PRIORITY.get(b["source"], -1), len(b["text"]), b["text"])
    return a if ka >= kb else b


class _BestCopy(beam.CombineFn):
    """Accumulator: (best page so far or None, number of copies seen)."""

    def create_accumulator(self):
        return (None, 0)

    def add_input(self, acc, page):
        best, n = acc
        return (page if best is None else _better(best, page), n + 1)

    def merge_accumulators(self, accs):
        best, n = None, 0
        for b, k in accs:
            if b is not None:
                best = b if best is None else _better(best, b)
            n += k
        return (best, n)

    def extract_output(self, acc):
        return acc


def _emit_best(kv: tuple[str, tuple[Page, int]]) -> Page:
    _, (page, n) = kv
    count("url_duplicates", n - 1)
    return page


class DedupUrls(beam.PTransform):
    """Pages -> one page per normalised URL. Counter `url_duplicates`: copies dropped."""

    def expand(self, pages):
        return (pages
                | "KeyByUrl" >> beam.Map(lambda p: (p["url"], p))
                | "BestCopy" >> beam.CombinePerKey(_BestCopy())
                | "Emit" >> beam.Map(_emit_best))


# ------------------------------------------------------------------------------------------- MinHash


def shingle_hashes(text: str, shingle_size: int = 5) -> np.ndarray:
    """[S] uint64 distinct 32-bit hashes of the text's word `shingle_size`-grams (tokens as for
    decontamination: lower-cased words, numbers, CJK characters). Texts shorter than a shingle give one."""
    tokens = ngram_tokens(text)
    if not tokens:
        return np.zeros(0, np.uint64)
    h = window_hashes(token_hashes(tokens), min(shingle_size, len(tokens)))
    return np.unique(h >> np.uint64(32))


class MinHasher:
    """`num_perm` multiply-shift hash functions; `signature(shingles)` -> [num_perm] uint32."""

    def __init__(self, num_perm: int = 128, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)

    def signature(self, shingles: np.ndarray, block: int = 2048) -> np.ndarray:
        """[num_perm] uint32 minimum of each hash function over the shingles (all ones when empty)."""
        sig = np.full(self.num_perm, 0xFFFFFFFF, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for start in range(0, len(shingles), block):
                x = shingles[start:start + block]
                h = (self.a[:, None] * x[None, :] + self.b[:, None]) >> np.uint64(32)
                np.minimum(sig, h.min(axis=1), out=sig)
        return sig.astype(np.uint32)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of MinHash rows on which two signatures agree (an unbiased estimate of Jaccard)."""
    return float(np.mean(sig_a == sig_b))


def band_keys(signature: np.ndarray, bands: int) -> list[bytes]:
    """One bucket key per band: the band index and a 64-bit hash of its rows."""
    rows = len(signature) // bands
    return [bytes([i]) + hashlib.blake2b(signature[i * rows:(i + 1) * rows].tobytes(), digest_size=8).digest()
            for i in range(bands)]


def _url_rank(url: str) -> int:
    return int.from_bytes(hashlib.blake2b(url.encode(), digest_size=8).digest(), "little")


class _Signatures(beam.DoFn):
    """page -> main output (band key, (URL rank, url)) per band; tagged `signatures`: (url, signature)."""

    SIGNATURES = "signatures"

    def __init__(self, num_perm: int, bands: int, shingle_size: int, seed: int):
        self.num_perm, self.bands, self.shingle_size, self.seed = num_perm, bands, shingle_size, seed
        self._hasher: MinHasher | None = None

    def setup(self):
        self._hasher = MinHasher(self.num_perm, self.seed)

    def process(self, page: Page):
        shingles = shingle_hashes(page["text"], self.shingle_size)
        if len(shingles) == 0:
            return
        assert self._hasher is not None  # made in setup()
        sig = self._hasher.signature(shingles)
        member = (_url_rank(page["url"]), page["url"])
        for key in band_keys(sig, self.bands):
            yield key, member
        yield beam.pvalue.TaggedOutput(self.SIGNATURES, (page["url"], sig.tobytes()))


def _bucket_candidates(kv: tuple[bytes, Any]):
    """(member url, canonical url) for every member of an LSH bucket but its canonical page (the
    smallest URL rank). Two passes over the bucket's values: GroupByKey values are streamed and
    re-iterable on every runner, never a list; almost all buckets hold one page and yield nothing."""
    _, members = kv
    canonical = min(members, default=None)
    if canonical is None:
        return
    for member in members:
        if member[1] != canonical[1]:
            yield member[1], canonical[1]


def _with_member_signature(kv: tuple[str, dict[str, Any]]):
    url, grouped = kv
    signature = next(iter(grouped["signature"]), None)
    if signature is None:
        return
    for canonical in set(grouped["canonical"]):  # a pair found in several bands counts once
        yield canonical, (url, signature)


def _verified(kv: tuple[str, dict[str, Any]], threshold: float):
    canonical, grouped = kv
    signature = next(iter(grouped["signature"]), None)
    if signature is None:
        return
    canon = np.frombuffer(signature, dtype=np.uint32)
    for url, sig in grouped["members"]:
        if estimated_jaccard(np.frombuffer(sig, dtype=np.uint32), canon) >= threshold:
            yield url, canonical


def _keep_unless_duplicate(kv: tuple[str, dict[str, Any]]):
    _, grouped = kv
    pages = list(grouped["page"])  # exactly one page per URL after URL dedup
    if next(iter(grouped["duplicate_of"]), None) is not None:
        count("near_duplicates", len(pages))
        return
    yield from pages


class NearDedup(beam.PTransform):
    """Pages with unique URLs -> {"pages": pages without near-duplicates, "pairs": (removed url,
    canonical url)} (see the module docstring). Counter `near_duplicates`: pages removed.

    Shuffles: one GroupByKey of (band key, (rank, url)) -- small values, `bands` per page -- then two
    joins of the few candidate pairs with the signatures (one per page) for verification."""

    def __init__(self, *, num_perm: int = 128, bands: int = 16, shingle_size: int = 5, threshold: float = 0.8,
                 seed: int = 1):
        super().__init__()
        if num_perm % bands:
            raise ValueError(f"dedup.num_perm ({num_perm}) must be a multiple of dedup.bands ({bands})")
        if bands > 255:
            raise ValueError(f"dedup.bands must be at most 255, got {bands}")
        self.args = (num_perm, bands, shingle_size, seed)
        self.threshold = threshold

    def expand(self, pages):
        out = pages | "Signatures" >> beam.ParDo(_Signatures(*self.args)).with_outputs(
            _Signatures.SIGNATURES, main="bands")
        signatures = out[_Signatures.SIGNATURES]
        candidates = (out["bands"]
                      | "Buckets" >> beam.GroupByKey()
                      | "Candidates" >> beam.FlatMap(_bucket_candidates))
        by_canonical = ({"canonical": candidates, "signature": signatures}
                        | "JoinMember" >> beam.CoGroupByKey()
                        | "MemberSignature" >> beam.FlatMap(_with_member_signature))
        pairs = ({"members": by_canonical, "signature": signatures}
                 | "JoinCanonical" >> beam.CoGroupByKey()
                 | "Verify" >> beam.FlatMap(_verified, threshold=self.threshold))
        duplicate_of = pairs | "OnePerUrl" >> beam.CombinePerKey(min)
        kept = ({"page": pages | "KeyByUrl" >> beam.Map(lambda p: (p["url"], p)), "duplicate_of": duplicate_of}
                | "JoinPages" >> beam.CoGroupByKey()
                | "Drop" >> beam.FlatMap(_keep_unless_duplicate))
        return {"pages": kept, "pairs": duplicate_of}
