"""Stage 0, run once: crawl files -> clean, deduplicated pages (the input of every iteration).

    crawl (WARC / WET / JSONL) -> ReadCrawl (HTML to text with math, language, tokens; bad input counted)
      -> language filter (optional) -> DedupUrls -> NearDedup (MinHash LSH)
      -> <out>/pages-SSSSS-of-NNNNN.jsonl.gz   +   <out>/near_duplicates-*.jsonl.gz ({url, duplicate_of})

Counters (besides the reader's): `language_filtered`, `url_duplicates`, `near_duplicates`,
`prepared_pages`, `prepared_tokens`.
"""

from __future__ import annotations

import apache_beam as beam

from dsmath_jax.mining.crawl_reader import ReadCrawl
from dsmath_jax.mining.dedup import DedupUrls, NearDedup
from dsmath_jax.mining.files import join, write_jsonl
from dsmath_jax.mining.metrics import count
from dsmath_jax.mining.pages import Page


def _count_prepared(page: Page) -> Page:
    count("prepared_pages", 1)
    count("prepared_tokens", int(page["tokens"]))
    return page


def _language_ok(page: Page, languages: tuple[str, ...]) -> bool:
    if not languages or page["language"] in languages:
        return True
    count("language_filtered", 1)
    return False


def build_prepare_pipeline(pipeline: beam.Pipeline, *, patterns: list[str], out_dir: str,
                           max_page_bytes: int = 2_000_000, min_text_chars: int = 200,
                           main_content: bool = True, languages: tuple[str, ...] = (), path_depth: int = 1,
                           tokenizer_path: str | None = None, url_dedup: bool = True, near_dedup: bool = True,
                           num_perm: int = 128, bands: int = 16, shingle_size: int = 5,
                           dedup_threshold: float = 0.8) -> None:
    """Adds the stage-0 transforms to `pipeline` (see the module docstring)."""
    pages = pipeline | "ReadCrawl" >> ReadCrawl(patterns, max_page_bytes=max_page_bytes, min_text_chars=min_text_chars,
                                                tokenizer_path=tokenizer_path, path_depth=path_depth,
                                                main_content=main_content)
    languages = tuple(languages)
    if languages:
        pages = pages | "Language" >> beam.Filter(_language_ok, languages)
    if url_dedup:
        pages = pages | "DedupUrls" >> DedupUrls()
    if near_dedup:
        near = pages | "NearDedup" >> NearDedup(num_perm=num_perm, bands=bands, shingle_size=shingle_size,
                                                threshold=dedup_threshold)
        pages = near["pages"]
        pairs = near["pairs"] | "PairRecords" >> beam.Map(lambda kv: {"url": kv[0], "duplicate_of": kv[1]})
        write_jsonl(pairs, join(out_dir, "near_duplicates"), label="WritePairs")
    pages = pages | "Count" >> beam.Map(_count_prepared)
    write_jsonl(pages, join(out_dir, "pages"), label="WritePages")
