"""The page record that flows through the mining pipeline: a plain dict (JSON-serialisable, so any
Beam runner encodes it and intermediate shards are JSON lines).

Fields after reading (`make_page`):

    url        str   normalised URL (`urls.normalize_url`)
    domain     str   host without `www.` (the paper's "base URL")
    path       str   the URL's first path segments (`urls.url_path_prefix`), e.g. "/questions/"
    title      str   HTML <title> ("" for WET and JSONL pages without one)
    text       str   extracted text, mathematics kept as LaTeX
    language   str   ISO code from `language.detect_language`, or "unknown"
    tokens     int   token count (`tokens.count_tokens` or a real tokenizer)
    source     str   "warc" | "wet" | "jsonl"

Added by later stages:

    score      float P(math) from the fastText classifier            (classifier.ScorePages)
    iteration  int   the iteration in which the page was first collected  (iteration pipeline)
"""

from __future__ import annotations

from typing import Any

from dsmath_jax.mining.urls import normalize_url, url_domain, url_path_prefix

Page = dict[str, Any]

SOURCE_PRIORITY = {"warc": 2, "jsonl": 1, "wet": 0}
"""When one URL was crawled several times, the copy from the best source wins (HTML keeps math markup
that Common Crawl's WET conversion drops)."""


def make_page(url: str, text: str, *, title: str = "", language: str = "unknown", tokens: int = 0,
              source: str = "warc", path_depth: int = 1) -> Page:
    """A page record with the URL normalised and its domain and path prefix filled in."""
    url = normalize_url(url)
    return {"url": url, "domain": url_domain(url), "path": url_path_prefix(url, path_depth), "title": title,
            "text": text, "language": language, "tokens": int(tokens), "source": source}


def output_record(page: Page) -> Page:
    """The fields of the final corpus (the TFDS dataset): url, domain, text, score, iteration, language, tokens."""
    return {"url": page["url"], "domain": page["domain"], "text": page["text"], "score": float(page["score"]),
            "iteration": int(page["iteration"]), "language": page["language"], "tokens": int(page["tokens"])}
