"""The iterative mining loop (paper §2.1): a Python driver around Beam pipelines.

    stage 0   crawl -> pages (read, HTML to text, language, URL dedup, near dedup)     <workdir>/pages/
    index     benchmark n-gram index for decontamination                 <workdir>/decontamination_index.npz
    iteration k = 1, 2, ...                                                          <workdir>/iter_k/
      k > 1: read the annotated path CSV of iteration k-1 (math paths)
      Beam: negatives sampled from the crawl; uncollected pages under math paths (new seed)
      driver: fastText on seed (+ all seed additions so far) vs negatives -> classifier.bin
      Beam: score every page, recall within the token budget, decontaminate, compare with k-1,
            domain / path statistics -> corpus/, collected/, paths.csv, domains.csv, stats.json
      stop when k = iterations.max or the new tokens of iteration k are < stop_new_fraction of its corpus
    output    TFDS dataset `dsmath_corpus` (ArrayRecord) of the last iteration's corpus  <workdir>/tfds/
              <workdir>/stats.json: stage 0 counters, one report per iteration, the final corpus

Every stage writes into `<name>.tmp/` and is renamed into place when complete, with its `stats.json`
as completion marker; a rerun skips completed stages, so the loop is resumable (for example after
the annotation CSV of an iteration was filled in).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import ml_collections
from apache_beam.options.pipeline_options import PipelineOptions
from tqdm import tqdm

from dsmath_jax.mining import files
from dsmath_jax.mining.benchmarks import benchmark_texts
from dsmath_jax.mining.classifier import train_classifier, write_training_file
from dsmath_jax.mining.decontamination import build_ngram_index
from dsmath_jax.mining.domains import read_annotated_paths, sort_csv
from dsmath_jax.mining.iteration import build_iteration_pipeline, build_training_data_pipeline
from dsmath_jax.mining.metrics import collect_counters
from dsmath_jax.mining.prepare import build_prepare_pipeline

logger = logging.getLogger(__name__)

AWAITING_ANNOTATION = "awaiting_annotation"
DONE = "done"


class MiningConfigError(ValueError):
    """A config that cannot run; the message names the field."""


# ------------------------------------------------------------------------------------------- Beam


def pipeline_options(beam_cfg: ml_collections.ConfigDict) -> PipelineOptions:
    """PipelineOptions from the config's `beam` section (runner, extra flags, DirectRunner workers)."""
    flags = [f"--runner={beam_cfg.runner}"] + [str(o) for o in beam_cfg.options]
    if beam_cfg.runner in ("DirectRunner", "direct"):
        flags += [f"--direct_num_workers={beam_cfg.direct_num_workers}",
                  f"--direct_running_mode={beam_cfg.direct_running_mode}"]
    return PipelineOptions(flags)


def run_pipeline(build, options: PipelineOptions, name: str, **kwargs) -> dict[str, int]:
    """Builds a pipeline with `build(pipeline, **kwargs)`, runs it to completion, returns its counters."""
    start = time.time()
    pipeline = beam.Pipeline(options=options)
    build(pipeline, **kwargs)
    result = pipeline.run()
    result.wait_until_finish()
    counters = collect_counters(result)
    logger.info("pipeline %s finished in %.1fs", name, time.time() - start)
    return counters


# ------------------------------------------------------------------------------------------- inputs


def resolve_inputs(config: ml_collections.ConfigDict, workdir: str) -> tuple[list[str], list[str]]:
    """(crawl patterns, seed patterns); builds the synthetic crawl when the config asks for it."""
    patterns, seeds = list(config.input.patterns), list(config.seed.paths)
    if patterns:
        if not seeds:
            raise MiningConfigError("seed.paths is empty: the first classifier needs seed pages (JSONL with `text`)")
        return patterns, seeds
    out = synthetic_dir(workdir)
    if not files.exists(files.join(out, "manifest.json")):
        if not files.is_local(out):
            raise MiningConfigError("the synthetic crawl is built on local disk only: use a local --workdir")
        from dsmath_jax.mining.synthetic_crawl import build_crawl  # heavy: builds the crawl only for `synthetic`
        build_crawl(synthetic_crawl_source(config, workdir), out, seed=config.synthetic.seed)
    return [files.join(out, "crawl", "*")], seeds or [files.join(out, "seed.jsonl")]


def synthetic_dir(workdir: str) -> str:
    """Where the synthetic crawl is built (when input.patterns is empty)."""
    return files.join(workdir, "synthetic")


def synthetic_crawl_source(config: ml_collections.ConfigDict, workdir: str):
    """What the synthetic crawl is made of (`synthetic.source`): a benchmarks directory, or the arithmetic
    task's CrawlSource, whose benchmark file is written under <workdir>/synthetic/benchmarks."""
    source = config.synthetic.get("source", "benchmarks")
    if source not in ("benchmarks", "arithmetic"):
        raise MiningConfigError(f"synthetic.source={source!r}: expected 'benchmarks' or 'arithmetic'")
    if source == "arithmetic":
        from dsmath_jax.mining.synthetic_crawl import arithmetic_source  # heavy: as above
        return arithmetic_source(config.synthetic.arithmetic.to_dict(), files.join(synthetic_dir(workdir),
                                 "benchmarks"), seed=config.synthetic.seed)
    if not config.synthetic.benchmarks_dir:
        raise MiningConfigError("input.patterns is empty and synthetic.benchmarks_dir is not set: "
                                "give crawl files (--config.input.patterns=\"('crawl/*.warc.gz',)\"), a benchmarks "
                                "directory to build a synthetic crawl from, or --config.synthetic.source=arithmetic "
                                "(a crawl made by the arithmetic task's generator, no files needed)")
    return config.synthetic.benchmarks_dir


def decontamination_benchmarks(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, tuple[str, ...] | None]:
    """(benchmarks dir, benchmark names or None for all) that decontamination reads: the config's, or, when
    decontamination.benchmarks_dir is empty and the run builds an arithmetic synthetic crawl, that crawl's
    own benchmark (the arithmetic task's held-out split)."""
    names = tuple(config.decontamination.get("benchmarks", ()) or ()) or None
    if config.decontamination.benchmarks_dir:
        return config.decontamination.benchmarks_dir, names
    if not config.input.patterns and config.synthetic.get("source", "benchmarks") == "arithmetic":
        return files.join(synthetic_dir(workdir), "benchmarks"), names or ("arithmetic",)
    return "", names


def seed_texts(patterns: list[str], max_pages: int) -> Iterator[str]:
    """The `text` of up to `max_pages` seed pages from JSONL[.gz] files matching the patterns."""
    n = 0
    for pattern in patterns:
        paths = files.match(pattern)
        if not paths:
            raise FileNotFoundError(f"no seed files match {pattern!r}")
        for path in paths:
            for lineno, line in enumerate(files.iter_lines(path), 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{lineno}: a seed page must be a JSON object with `text` ({e})") from None
                if n >= max_pages:
                    return
                n += 1
                yield text


# ------------------------------------------------------------------------------------------- stages


def prepare(config: ml_collections.ConfigDict, workdir: str, patterns: list[str], options: PipelineOptions) -> dict:
    """Stage 0 (skipped when `<workdir>/pages/stats.json` exists); returns its stats."""
    final = files.join(workdir, "pages")
    marker = files.join(final, "stats.json")
    if files.exists(marker):
        logger.info("stage 0 already done: %s", final)
        return files.read_json(marker)
    tmp = final + ".tmp"
    files.remove_tree(tmp)
    counters = run_pipeline(
        build_prepare_pipeline, options, "prepare", patterns=patterns, out_dir=tmp,
        max_page_bytes=config.input.max_page_bytes, min_text_chars=config.input.min_text_chars,
        main_content=config.input.main_content, languages=tuple(config.input.languages),
        path_depth=config.input.path_depth, tokenizer_path=config.tokenizer or None, url_dedup=config.dedup.url,
        near_dedup=config.dedup.near, num_perm=config.dedup.num_perm, bands=config.dedup.bands,
        shingle_size=config.dedup.shingle_size, dedup_threshold=config.dedup.threshold)
    stats = {"patterns": patterns, "pages": counters.get("prepared_pages", 0),
             "tokens": counters.get("prepared_tokens", 0), "url_duplicates": counters.get("url_duplicates", 0),
             "near_duplicates": counters.get("near_duplicates", 0), "counters": counters}
    files.write_json(files.join(tmp, "stats.json"), stats)
    files.commit_dir(tmp, final)
    logger.info("stage 0: %d pages, %d tokens (%d URL duplicates, %d near-duplicates removed)", stats["pages"],
                stats["tokens"], stats["url_duplicates"], stats["near_duplicates"])
    return stats


def decontamination_index(config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """Path of the benchmark n-gram index (built once), or None when decontamination is off."""
    if not config.decontamination.enabled:
        return None
    path = files.join(workdir, "decontamination_index.npz")
    if files.exists(path):
        return path
    benchmarks_dir, names = decontamination_benchmarks(config, workdir)
    if not benchmarks_dir:
        raise MiningConfigError("decontamination.benchmarks_dir is not set (or set decontamination.enabled=False)")
    index = build_ngram_index(benchmark_texts(benchmarks_dir, benchmarks=names),
                              n=config.decontamination.ngram, min_n=config.decontamination.min_ngram)
    if len(index) == 0:
        raise MiningConfigError(f"no benchmark texts found under decontamination.benchmarks_dir={benchmarks_dir!r}")
    index.save(path)
    return path


def annotation_path(config: ml_collections.ConfigDict, workdir: str, iteration: int) -> str:
    """Where the annotated path CSV of `iteration` is looked for."""
    template = config.domains.annotated_csv
    if template:
        return template.format(iteration=iteration)
    return files.join(workdir, f"iter_{iteration}", "paths_annotated.csv")


def auto_annotate(paths_csv: str, out_csv: str, min_fraction: float) -> None:
    """Writes `out_csv`: `paths_csv` with is_math=1 where the path's collected fraction >= min_fraction
    (for unattended runs; the paper's annotation is by hand)."""
    with files.FileSystems.open(paths_csv) as f:
        reader = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline=""))
        rows = list(reader)
        header = reader.fieldnames or []
    for row in rows:
        row["is_math"] = "1" if float(row["collected_fraction"]) >= min_fraction else "0"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files.write_bytes(out_csv, buf.getvalue().encode("utf-8"))


def math_paths_for(config: ml_collections.ConfigDict, workdir: str, iteration: int) -> dict[str, list[str]] | None:
    """{domain: [paths]} annotated as math after `iteration`; None when the annotation is required and missing."""
    path = annotation_path(config, workdir, iteration)
    if not files.exists(path):
        if config.domains.auto_annotate_fraction >= 0:
            auto_annotate(files.join(workdir, f"iter_{iteration}", "paths.csv"), path,
                          config.domains.auto_annotate_fraction)
            logger.info("no annotated CSV for iteration %d: annotated %s automatically (collected fraction >= %s)",
                        iteration, path, config.domains.auto_annotate_fraction)
        elif config.domains.require_annotation:
            return None
        else:
            logger.warning("no annotated CSV for iteration %d (%s): no new seed pages", iteration, path)
            return {}
    out: dict[str, list[str]] = {}
    for domain, p in sorted(read_annotated_paths(path)):
        out.setdefault(domain, []).append(p)
    return out


def _budget(config: ml_collections.ConfigDict, iteration: int) -> float:
    budgets = list(config.recall.token_budgets)
    if not budgets:
        raise MiningConfigError("recall.token_budgets is empty")
    return float(budgets[min(iteration, len(budgets)) - 1])


def run_iteration(config: ml_collections.ConfigDict, workdir: str, iteration: int, *, seeds: list[str],
                  prepared: dict, math_paths: dict[str, list[str]], index_path: str | None,
                  options: PipelineOptions) -> dict:
    """Runs iteration `iteration` into `<workdir>/iter_k/` and returns its report."""
    start = time.time()
    final = files.join(workdir, f"iter_{iteration}")
    tmp = final + ".tmp"
    files.remove_tree(tmp)
    pages_pattern = files.join(workdir, "pages", "pages-*.jsonl.gz")
    previous = files.join(workdir, f"iter_{iteration - 1}", "collected", "urls-*.jsonl.gz") if iteration > 1 else None

    counters = run_pipeline(
        build_training_data_pipeline, options, f"training data {iteration}", pages_pattern=pages_pattern,
        out_dir=tmp, iteration=iteration, negatives=config.classifier.negatives, total_pages=prepared["pages"],
        math_paths=math_paths, previous_collected=previous, index_path=index_path,
        exclude_math_paths_from_negatives=config.classifier.exclude_math_paths_from_negatives,
        min_text_chars=config.input.min_text_chars)

    addition_patterns = [files.join(workdir, f"iter_{j}", "seed_additions-*.jsonl.gz") for j in range(2, iteration)]
    addition_patterns.append(files.join(tmp, "seed_additions-*.jsonl.gz"))

    def positives() -> Iterator[str]:
        yield from seed_texts(seeds, config.seed.max_pages)
        for pattern in addition_patterns:
            for record in files.iter_jsonl_shards(pattern):
                yield record["text"]

    negatives = (r["text"] for r in files.iter_jsonl_shards(files.join(tmp, "negatives-*.jsonl.gz")))
    model_path = files.join(tmp, "classifier.bin")
    with tempfile.TemporaryDirectory() as local:
        train_file = os.path.join(local, "train.txt")
        n_pos, n_neg = write_training_file(train_file, positives(), negatives, seed=config.classifier.seed + iteration,
                                           max_chars=config.classifier.max_chars)
        if n_pos == 0 or n_neg == 0:
            raise MiningConfigError(f"iteration {iteration}: {n_pos} positives and {n_neg} negatives: "
                                    "need both to train the classifier (seed.paths, classifier.negatives)")
        train_classifier(train_file, model_path, dim=config.classifier.dim, lr=config.classifier.lr,
                         word_ngrams=config.classifier.word_ngrams, min_count=config.classifier.min_count,
                         epochs=config.classifier.epochs, bucket=config.classifier.bucket,
                         threads=config.classifier.threads, seed=config.classifier.seed)

    counters.update(run_pipeline(
        build_iteration_pipeline, options, f"iteration {iteration}", pages_pattern=pages_pattern, out_dir=tmp,
        iteration=iteration, model_path=model_path, budget=_budget(config, iteration),
        budget_is_fraction=config.recall.budget_is_fraction, min_score=config.recall.min_score,
        num_quantiles=config.recall.num_quantiles, previous_collected=previous, index_path=index_path,
        decontamination_mode=config.decontamination.mode, min_text_chars=config.input.min_text_chars,
        domain_threshold=config.domains.threshold, n_sample_titles=config.domains.sample_titles,
        top_domains=config.domains.top, batch_size=config.classifier.batch_size,
        max_chars=config.classifier.max_chars, tokenizer_path=config.tokenizer or None))

    n_paths = sort_csv(files.join(tmp, "paths.csv"), [("domain_collected_fraction", True, True),
                                                      ("domain", False, False), ("pages", True, True),
                                                      ("path", False, False)])
    n_domains = sort_csv(files.join(tmp, "domains.csv"), [("collected", True, True), ("domain", False, False)])
    report = iteration_report(iteration, counters, tmp, n_pos=n_pos, n_neg=n_neg, n_paths=n_paths,
                              n_math_domains=n_domains, math_paths=math_paths)
    report["seconds"] = round(time.time() - start, 1)
    files.write_json(files.join(tmp, "stats.json"), report)
    files.commit_dir(tmp, final)
    return report


def iteration_report(iteration: int, counters: dict[str, int], out_dir: str, *, n_pos: int, n_neg: int,
                     n_paths: int, n_math_domains: int, math_paths: dict[str, list[str]]) -> dict[str, Any]:
    """The per-iteration report: pages, tokens, new vs previous, top domains, decontamination."""
    threshold = files.read_json(files.join(out_dir, "threshold.json"))
    top_path = files.join(out_dir, "top_domains.json")
    top = files.read_json(top_path) if files.exists(top_path) else []
    corpus_tokens = counters.get("corpus_tokens", 0)
    new_tokens = counters.get("new_tokens", 0)
    decontaminated = {k[len("decontaminated_pages_"):]: v for k, v in counters.items()
                      if k.startswith("decontaminated_pages_") and k != "decontaminated_pages_emptied"}
    return {
        "iteration": iteration,
        "classifier": {"positives": n_pos, "negatives": n_neg, "seed_additions": counters.get("seed_additions", 0),
                       "math_paths": {d: p for d, p in sorted(math_paths.items())}},
        "threshold": threshold,
        "scored": {"pages": counters.get("scored_pages", 0), "tokens": counters.get("scored_tokens", 0)},
        "collected": {"pages": counters.get("collected_pages", 0), "tokens": counters.get("collected_tokens", 0)},
        "decontaminated": {"pages": counters.get("decontaminated_pages", 0), "by_benchmark": decontaminated,
                           "segments": counters.get("decontaminated_segments", 0)},
        "corpus": {"pages": counters.get("corpus_pages", 0), "tokens": corpus_tokens},
        "new": {"pages": counters.get("new_pages", 0), "tokens": new_tokens,
                "fraction": round(new_tokens / corpus_tokens, 6) if corpus_tokens else 0.0},
        "previous": {"pages_kept": counters.get("previous_pages_kept", 0),
                     "tokens_kept": counters.get("previous_tokens_kept", 0),
                     "pages_dropped": counters.get("previous_pages_dropped", 0)},
        "math_domains": n_math_domains,
        "annotation_paths": n_paths,
        "top_domains": top,
        "counters": counters,
    }


# ------------------------------------------------------------------------------------------- loop


def run_mining(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the whole mining loop; returns the stats also written to `<workdir>/stats.json`.
    `status` is "done", or "awaiting_annotation" with `annotate` naming the CSV to fill in."""
    workdir = workdir.rstrip("/")
    if files.is_local(workdir):
        os.makedirs(workdir, exist_ok=True)
    options = pipeline_options(config.beam)
    patterns, seeds = resolve_inputs(config, workdir)
    prepared = prepare(config, workdir, patterns, options)
    if prepared["pages"] == 0:
        raise MiningConfigError(f"no pages survived reading and dedup of {patterns}: see {workdir}/pages/stats.json")
    index_path = decontamination_index(config, workdir)

    reports: list[dict] = []
    stats: dict[str, Any] = {"status": DONE, "workdir": workdir, "prepare": prepared, "iterations": reports}
    with tqdm(total=config.iterations.max, desc="mining iterations", unit="iteration") as bar:
        for k in range(1, config.iterations.max + 1):
            marker = files.join(workdir, f"iter_{k}", "stats.json")
            if files.exists(marker):
                report = files.read_json(marker)
                logger.info("iteration %d already done", k)
            else:
                math_paths: dict[str, list[str]] = {}
                if k > 1:
                    found = math_paths_for(config, workdir, k - 1)
                    if found is None:
                        csv_path = files.join(workdir, f"iter_{k - 1}", "paths.csv")
                        wanted = annotation_path(config, workdir, k - 1)
                        logger.warning("iteration %d needs the URL-path annotation of iteration %d: fill the `is_math` "
                                       "column of %s and save it as %s, then run the same command again",
                                       k, k - 1, csv_path, wanted)
                        stats.update(status=AWAITING_ANNOTATION, annotate=csv_path, annotated_csv=wanted)
                        break
                    math_paths = found
                report = run_iteration(config, workdir, k, seeds=seeds, prepared=prepared, math_paths=math_paths,
                                       index_path=index_path, options=options)
                _log_report(report)
            reports.append(report)
            bar.update(1)
            if k > 1 and report["new"]["fraction"] < config.iterations.stop_new_fraction:
                logger.info("iteration %d added %.2f%% new tokens (< %.2f%%): stopping", k,
                            100 * report["new"]["fraction"], 100 * config.iterations.stop_new_fraction)
                stats["stopped_early"] = True
                break

    if stats["status"] == DONE and reports:
        last = reports[-1]["iteration"]
        corpus_dir = files.join(workdir, f"iter_{last}", "corpus")
        stats["final"] = {"iteration": last, "corpus": corpus_dir, "pages": reports[-1]["corpus"]["pages"],
                          "tokens": reports[-1]["corpus"]["tokens"]}
        if config.output.tfds:
            from dsmath_jax.mining.tfds_builder import build_corpus_dataset  # tensorflow-datasets: only for output.tfds

            beam_kwargs = {"beam_options": options} if config.output.tfds_with_beam else {}
            with contextlib.redirect_stdout(sys.stderr):  # TFDS prints progress to stdout
                stats["final"]["tfds_dir"] = build_corpus_dataset(corpus_dir, files.join(workdir, "tfds"),
                                                                  **beam_kwargs)
    files.write_json(files.join(workdir, "stats.json"), stats)
    return stats


def _log_report(r: dict) -> None:
    top = ", ".join(f'{d["domain"]} ({d["collected"]}/{d["pages"]})' for d in r["top_domains"][:5])
    logger.info("iteration %d: classifier %d+/%d-; corpus %d pages, %d tokens; new %d pages (%.1f%% of tokens); "
                "%d decontaminated; %d math domains; top: %s", r["iteration"], r["classifier"]["positives"],
                r["classifier"]["negatives"], r["corpus"]["pages"], r["corpus"]["tokens"], r["new"]["pages"],
                100 * r["new"]["fraction"], r["decontaminated"]["pages"], r["math_domains"], top)
