"""The two Beam pipelines of one iteration k (the driver trains the classifier between them).

`build_training_data_pipeline` (before training):

    prepared pages -> negatives: a deterministic sample of the crawl, rate = wanted / pages, by URL hash
                      salted with k                               -> <out>/negatives-*.jsonl.gz {url, text}
                   -> (k > 1) pages under URL paths annotated as math that iteration k-1 did not collect,
                      decontaminated                              -> <out>/seed_additions-*.jsonl.gz {url, text}

`build_iteration_pipeline` (after training):

    prepared pages -> ScorePages (fastText, batched) -> RecallPages (token budget, weighted quantiles)
      collected -> Decontaminate -> join with iteration k-1's collected URLs (first iteration, new/kept)
                -> <out>/corpus/pages-*.jsonl.gz      the corpus: pages.output_record fields
                -> <out>/collected/urls-*.jsonl.gz    {url, tokens, iteration} (what k+1 compares with)
                -> <out>/decontaminated-*.jsonl.gz    {url, benchmarks, ngram, mode}
      all scored pages, flagged collected or not -> DomainStats
                -> <out>/paths.csv (one shard, sorted by the driver)  the annotation CSV
                -> <out>/domains.csv                  math-related domains
                -> <out>/top_domains.json             top domains by collected pages (Top combiner)
      -> <out>/threshold.json                         the recall cut {rank, total_tokens, budget}

Counters: `scored_pages`, `scored_tokens`, `collected_pages`, `collected_tokens`, `corpus_pages`,
`corpus_tokens`, `new_pages`, `new_tokens`, `previous_pages_kept`, `previous_tokens_kept`,
`previous_pages_dropped`, `negatives`, `seed_additions`, plus those of the stages.
"""

from __future__ import annotations

import hashlib
import json

import apache_beam as beam

from dsmath_jax.mining.classifier import ScorePages
from dsmath_jax.mining.decontamination import Decontaminate
from dsmath_jax.mining.domains import DOMAIN_COLUMNS, PATH_COLUMNS, DomainStats, csv_line, under_math_path
from dsmath_jax.mining.files import join, read_jsonl, write_jsonl
from dsmath_jax.mining.metrics import count
from dsmath_jax.mining.pages import Page, output_record
from dsmath_jax.mining.recall import RecallPages


def sample_fraction(url: str, salt: int) -> float:
    """A URL's position in [0, 1) for deterministic sampling (different for every salt)."""
    h = hashlib.blake2b(f"{salt}:{url}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def _negative(page: Page, rate: float, salt: int, math_paths: dict[str, list[str]]):
    if sample_fraction(page["url"], salt) >= rate:
        return
    if math_paths and under_math_path(page, math_paths):
        return
    count("negatives", 1)
    yield {"url": page["url"], "text": page["text"]}


def _uncollected(kv):
    _, grouped = kv
    if next(iter(grouped["previous"]), None) is not None:
        return
    for page in grouped["page"]:
        count("seed_additions_candidates", 1)
        yield page


def build_training_data_pipeline(pipeline: beam.Pipeline, *, pages_pattern: str, out_dir: str, iteration: int,
                                 negatives: int, total_pages: int, math_paths: dict[str, list[str]] | None = None,
                                 previous_collected: str | None = None, index_path: str | None = None,
                                 exclude_math_paths_from_negatives: bool = True, min_text_chars: int = 200) -> None:
    """Adds the training-data transforms of iteration `iteration` (see the module docstring)."""
    pages = read_jsonl(pipeline, pages_pattern, label="ReadPages")
    rate = min(1.0, negatives / max(total_pages, 1))
    math_paths = dict(math_paths or {})
    excluded_paths = math_paths if exclude_math_paths_from_negatives else {}
    negs = pages | "SampleNegatives" >> beam.FlatMap(_negative, rate, iteration, excluded_paths)
    write_jsonl(negs, join(out_dir, "negatives"), label="WriteNegatives")
    if not math_paths:
        return
    under = (pages
             | "UnderMathPaths" >> beam.Filter(under_math_path, math_paths)
             | "KeyUnder" >> beam.Map(lambda p: (p["url"], p)))
    if previous_collected:
        collected = read_jsonl(pipeline, previous_collected, label="ReadPrevious")
    else:  # nothing collected before (what read_jsonl gives when no file matches)
        collected = pipeline | "ReadPreviousEmpty" >> beam.Create([])
    previous = collected | "KeyPrevious" >> beam.Map(lambda r: (r["url"], r["iteration"]))
    additions = ({"page": under, "previous": previous}
                 | "JoinPrevious" >> beam.CoGroupByKey()
                 | "Uncollected" >> beam.FlatMap(_uncollected))
    if index_path:
        decon = additions | "DecontaminateSeed" >> beam.ParDo(
            Decontaminate(index_path, mode="page", min_text_chars=min_text_chars)).with_outputs(
                Decontaminate.REMOVED, main="clean")
        additions = decon["clean"]
    additions = additions | "CountAdditions" >> beam.Map(_count_addition)
    write_jsonl(additions, join(out_dir, "seed_additions"), label="WriteAdditions")


def _count_addition(page: Page) -> dict:
    count("seed_additions", 1)
    return {"url": page["url"], "text": page["text"], "domain": page["domain"], "path": page["path"]}


def _count_scored(page: Page) -> Page:
    count("scored_pages", 1)
    count("scored_tokens", int(page["tokens"]))
    return page


def _first_iteration(kv, iteration: int):
    """Sets `iteration` (first collected) and counts new / kept / dropped pages against k-1."""
    _, grouped = kv
    previous = next(iter(grouped["previous"]), None)
    for page in grouped["page"]:
        if previous is None:
            count("new_pages", 1)
            count("new_tokens", int(page["tokens"]))
            yield {**page, "iteration": iteration}
        else:
            count("previous_pages_kept", 1)
            count("previous_tokens_kept", int(page["tokens"]))
            yield {**page, "iteration": int(previous)}
        return
    if previous is not None:
        count("previous_pages_dropped", 1)


def _count_corpus(page: Page) -> Page:
    count("corpus_pages", 1)
    count("corpus_tokens", int(page["tokens"]))
    return page


def build_iteration_pipeline(pipeline: beam.Pipeline, *, pages_pattern: str, out_dir: str, iteration: int,
                             model_path: str, budget: float, budget_is_fraction: bool = False,
                             min_score: float = 0.0, num_quantiles: int = 1001,
                             previous_collected: str | None = None, index_path: str | None = None,
                             decontamination_mode: str = "page", min_text_chars: int = 200,
                             domain_threshold: float = 0.10, n_sample_titles: int = 3, top_domains: int = 20,
                             batch_size: int = 512, max_chars: int = 20_000, tokenizer_path: str | None = None) -> None:
    """Adds the scoring / recall / decontamination / domain transforms (see the module docstring)."""
    pages = read_jsonl(pipeline, pages_pattern, label="ReadPages")
    scored = (pages
              | "Batch" >> beam.BatchElements(min_batch_size=min(64, batch_size), max_batch_size=batch_size)
              | "Score" >> beam.ParDo(ScorePages(model_path, max_chars=max_chars))
              | "CountScored" >> beam.Map(_count_scored))
    recall = scored | "Recall" >> RecallPages(budget, budget_is_fraction=budget_is_fraction, min_score=min_score,
                                              num_quantiles=num_quantiles)
    cut = recall["threshold"]
    cut | "ThresholdJson" >> beam.Map(json.dumps) | "WriteThreshold" >> beam.io.WriteToText(
        join(out_dir, "threshold"), file_name_suffix=".json", num_shards=1, shard_name_template="")
    flagged = recall["pages"]
    collected = flagged | "Collected" >> beam.Filter(lambda p: p["collected"])

    if index_path:
        decon = collected | "Decontaminate" >> beam.ParDo(
            Decontaminate(index_path, mode=decontamination_mode, min_text_chars=min_text_chars,
                          tokenizer_path=tokenizer_path)).with_outputs(Decontaminate.REMOVED, main="clean")
        clean = decon["clean"]
        write_jsonl(decon[Decontaminate.REMOVED], join(out_dir, "decontaminated"), label="WriteRemoved")
    else:
        clean = collected

    keyed = clean | "KeyCorpus" >> beam.Map(lambda p: (p["url"], p))
    if previous_collected:
        previous = (read_jsonl(pipeline, previous_collected, label="ReadPrevious")
                    | "KeyPrevious" >> beam.Map(lambda r: (r["url"], r["iteration"])))
        corpus = ({"page": keyed, "previous": previous}
                  | "JoinPrevious" >> beam.CoGroupByKey()
                  | "FirstIteration" >> beam.FlatMap(_first_iteration, iteration))
    else:
        corpus = keyed | "FirstIteration" >> beam.FlatMap(
            lambda kv: _first_iteration((kv[0], {"page": [kv[1]], "previous": []}), iteration))
    corpus = corpus | "CountCorpus" >> beam.Map(_count_corpus)
    write_jsonl(corpus | "OutputRecord" >> beam.Map(output_record), join(out_dir, "corpus", "pages"),
                label="WriteCorpus")
    write_jsonl(corpus | "UrlRecord" >> beam.Map(
        lambda p: {"url": p["url"], "tokens": p["tokens"], "iteration": p["iteration"]}),
        join(out_dir, "collected", "urls"), label="WriteCollected")

    stats = flagged | "Domains" >> DomainStats(threshold=domain_threshold, n_samples=n_sample_titles)
    (stats["paths"]
     | "PathCsv" >> beam.Map(csv_line, PATH_COLUMNS)
     | "WritePaths" >> beam.io.WriteToText(join(out_dir, "paths"), file_name_suffix=".csv", num_shards=1,
                                           shard_name_template="", header=",".join(PATH_COLUMNS)))
    (stats["math_domains"]
     | "DomainCsv" >> beam.Map(lambda d: csv_line({**d, "collected_fraction": round(d["collected_fraction"], 4)},
                                                  DOMAIN_COLUMNS))
     | "WriteDomains" >> beam.io.WriteToText(join(out_dir, "domains"), file_name_suffix=".csv", num_shards=1,
                                             shard_name_template="", header=",".join(DOMAIN_COLUMNS)))
    (stats["domains"]
     | "TopDomains" >> beam.combiners.Top.Of(top_domains, key=lambda d: (d["collected"], d["pages"], d["domain"]))
     | "TopJson" >> beam.Map(json.dumps)
     | "WriteTop" >> beam.io.WriteToText(join(out_dir, "top_domains"), file_name_suffix=".json", num_shards=1,
                                         shard_name_template=""))
