"""The schema of `dsmath mine` configs (the corpus pipeline, paper §2.1): `base_mine_config()` holds every
section with the paper's settings (configs/mining/deepseekmath_corpus.py is it), `tiny_mine_overrides` the CPU
variant on a synthetic crawl, `validate(config)` what types cannot check.

List-valued fields are tuples: override them as `--config.input.patterns="('a/*.warc.gz', 'b/*.wet.gz')"`.
"""

from __future__ import annotations

import os

import ml_collections

from dsmath_jax.config.checks import (
    ConfigError,
    at_least,
    check_keys_and_types,
    counts,
    in_range,
    one_of,
)
from dsmath_jax.data.tasks import problem_spec

SYNTHETIC_SOURCES = ("benchmarks", "arithmetic")  # what a synthetic crawl's math pages are made of
DECONTAMINATION_MODES = ("page", "segment")  # remove the page, or only its matching lines
DIRECT_RUNNING_MODES = ("in_memory", "multi_threading", "multi_processing")  # Beam's DirectRunner
FREE_FORM = ("synthetic.arithmetic",)  # an arithmetic task spec (dsmath_jax.data.tasks), checked by the task loader


def base_mine_config() -> ml_collections.ConfigDict:
    """The paper's settings: seed OpenWebMath vs random crawl pages, fastText (dim 256, lr 0.1, word n-grams 3,
    min count 3, 3 epochs), URL and MinHash dedup, the top 40B tokens in iteration 1, 10% domains, at most 4
    iterations, 10-gram decontamination."""
    c = ml_collections.ConfigDict()

    # Reading the crawl (stage 0).
    c.input = ml_collections.ConfigDict()
    c.input.patterns = ()  # globs of *.warc.gz / *.wet.gz / *.jsonl[.gz] files, any Beam filesystem
    c.input.max_page_bytes = 2_000_000  # larger responses are skipped (counted `pages_too_large`)
    c.input.min_text_chars = 200  # shorter extracted texts are skipped (`pages_too_short`)
    c.input.main_content = True  # Resiliparse main-content heuristics (drop navigation, footers)
    c.input.languages = ()  # keep only these ISO codes; empty keeps all (the paper's corpus is multilingual)
    c.input.path_depth = 1  # URL path segments in the annotation unit: mathoverflow.net /questions/
    c.tokenizer = ""  # sentencepiece .model or tokenizer.json for exact token counts; "" = regex estimate

    # A synthetic crawl built into <workdir>/synthetic when input.patterns is empty (tiny runs, quickstart).
    c.synthetic = ml_collections.ConfigDict()
    c.synthetic.source = "benchmarks"  # "benchmarks": GSM8K / MATH train pages from benchmarks_dir; "arithmetic":
    # pages made by the arithmetic task's generator (no files; decontaminated against the task's held-out split)
    c.synthetic.benchmarks_dir = ""  # directory with gsm8k/ and math/ train (and test) files
    c.synthetic.arithmetic = ml_collections.ConfigDict(  # the arithmetic task (data.tasks spec) of source=arithmetic
        {"n_test": 256, "seed": 0, "knobs": {"max_operand": 9, "max_value": 30, "max_steps": 2}})
    c.synthetic.seed = 0

    # Dedup (stage 0).
    c.dedup = ml_collections.ConfigDict()
    c.dedup.url = True
    c.dedup.near = True
    c.dedup.num_perm = 128  # MinHash permutations
    c.dedup.bands = 16  # LSH bands (8 rows each): candidate threshold ~ (1/16)^(1/8) = 0.71
    c.dedup.shingle_size = 5  # word n-grams per shingle
    c.dedup.threshold = 0.8  # estimated Jaccard at or above which a candidate is a duplicate

    # Seed corpus (positives of the first classifier).
    c.seed = ml_collections.ConfigDict()
    c.seed.paths = ()  # globs of JSONL[.gz] files with `text` (and `url`), e.g. OpenWebMath
    c.seed.max_pages = 500_000

    # fastText classifier (paper settings).
    c.classifier = ml_collections.ConfigDict()
    c.classifier.dim = 256
    c.classifier.lr = 0.1
    c.classifier.word_ngrams = 3
    c.classifier.min_count = 3
    c.classifier.epochs = 3
    c.classifier.bucket = 2_000_000  # fastText's hashed n-gram buckets (2M x 256 floats = 2 GB model)
    c.classifier.negatives = 500_000  # random crawl pages per iteration
    c.classifier.exclude_math_paths_from_negatives = True
    c.classifier.threads = 16
    c.classifier.max_chars = 20_000  # characters of a page the classifier reads
    c.classifier.batch_size = 512  # pages per predict call
    c.classifier.seed = 0

    # Recall: top pages by score within a token budget per iteration (the last value repeats).
    c.recall = ml_collections.ConfigDict()
    c.recall.token_budgets = (40e9, 120e9)  # iteration 1: top 40B tokens; the corpus ends at ~120B
    c.recall.budget_is_fraction = False  # True: budgets are fractions of all scored tokens
    c.recall.min_score = 0.0
    c.recall.num_quantiles = 1001

    # Domains and URL-path annotation.
    c.domains = ml_collections.ConfigDict()
    c.domains.threshold = 0.10  # math-related: more than 10% of a domain's pages collected
    c.domains.sample_titles = 3
    c.domains.top = 20  # domains listed in each iteration's report
    # Annotated CSV of iteration k's paths ("{iteration}" is replaced by k); "" = <workdir>/iter_k/paths_annotated.csv
    c.domains.annotated_csv = ""
    c.domains.require_annotation = True  # stop and ask for the CSV; False: go on without it
    c.domains.auto_annotate_fraction = -1.0  # >= 0: when no CSV, mark paths with this collected fraction as math

    # Iterations.
    c.iterations = ml_collections.ConfigDict()
    c.iterations.max = 4
    c.iterations.stop_new_fraction = 0.02  # stop when an iteration's new tokens are below 2% of its corpus

    # Decontamination.
    c.decontamination = ml_collections.ConfigDict()
    c.decontamination.enabled = True
    c.decontamination.benchmarks_dir = ""  # laid out like the project's benchmark data
    c.decontamination.benchmarks = ()  # names of mining.benchmarks.BENCHMARK_FILES to read; empty: all
    c.decontamination.ngram = 10
    c.decontamination.min_ngram = 3
    c.decontamination.mode = "page"  # "page" removes the page; "segment" removes the matching lines

    # Output.
    c.output = ml_collections.ConfigDict()
    c.output.tfds = True  # write the final corpus as the TFDS dataset dsmath_corpus (ArrayRecord)
    c.output.tfds_with_beam = False  # generate the ArrayRecord shards with the Beam runner below

    # Beam runner: DirectRunner on one machine; DataflowRunner / FlinkRunner / SparkRunner at scale.
    c.beam = ml_collections.ConfigDict()
    c.beam.runner = "DirectRunner"
    c.beam.options = ()  # extra pipeline flags, e.g. ("--project=p", "--region=r", "--temp_location=gs://...")
    c.beam.direct_num_workers = 1  # DirectRunner only: 0 = one per core
    c.beam.direct_running_mode = "in_memory"  # or multi_threading / multi_processing
    return c


def tiny_mine_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The CPU variant: a synthetic crawl (of the benchmark files in $DSMATH_BENCHMARKS_DIR, when set), budgets
    as fractions, a small deterministic classifier, paths annotated automatically, 3 iterations."""
    benchmarks_dir = os.environ.get("DSMATH_BENCHMARKS_DIR", "")  # empty: the run asks for *.benchmarks_dir
    c.synthetic.benchmarks_dir = benchmarks_dir
    c.decontamination.benchmarks_dir = benchmarks_dir
    c.input.max_page_bytes = 1_000_000
    c.seed.max_pages = 10_000
    c.classifier.bucket = 100_000
    c.classifier.negatives = 150
    c.classifier.threads = 1  # deterministic training
    # 3 epochs at lr 0.1 over ~500 documents leave fastText near its initialisation (P(math) within
    # 1e-4 of 0.5, although the ranking is already right); the paper trains on 1M documents.
    c.classifier.epochs = 10
    c.classifier.lr = 0.5
    c.recall.token_budgets = (0.2, 0.4)
    c.recall.budget_is_fraction = True
    c.domains.require_annotation = False
    c.domains.auto_annotate_fraction = 0.5
    c.iterations.max = 3
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """What types cannot check in a mining config: keys against `base_mine_config()`, the synthetic source,
    decontamination mode and runner mode, the arithmetic task, counts, fractions and budgets; a `ConfigError`
    names the key."""
    check_keys_and_types(c, base_mine_config(), FREE_FORM)
    counts(c, "input", positive=("max_page_bytes", "path_depth"), non_negative=("min_text_chars",))
    one_of(c, "synthetic.source", SYNTHETIC_SOURCES)
    try:
        problem_spec(dict(c.synthetic.arithmetic, kind="arithmetic"))
    except ValueError as e:
        raise ConfigError(f"synthetic.arithmetic: {e}") from None
    counts(c, "dedup", positive=("num_perm", "bands", "shingle_size"))
    if c.dedup.num_perm % c.dedup.bands:
        raise ConfigError(f"dedup.bands={c.dedup.bands}: must divide dedup.num_perm={c.dedup.num_perm} (rows per band)")
    in_range(c, "dedup.threshold", 0.0, 1.0)
    counts(c, "seed", positive=("max_pages",))
    counts(c, "classifier", positive=("dim", "word_ngrams", "min_count", "epochs", "bucket", "negatives", "threads",
                                      "max_chars", "batch_size"))
    at_least(c, "classifier.lr", 0.0)
    budgets = c.recall.token_budgets
    if not budgets or not all(isinstance(b, (int, float)) and 0 < b for b in budgets) or \
            (c.recall.budget_is_fraction and any(b > 1 for b in budgets)):
        raise ConfigError(f"recall.token_budgets={budgets!r}: expected numbers > 0 (fractions in (0, 1] with "
                          "recall.budget_is_fraction)")
    in_range(c, "recall.min_score", 0.0, 1.0)
    at_least(c, "recall.num_quantiles", 2)
    in_range(c, "domains.threshold", 0.0, 1.0)
    counts(c, "domains", positive=("top",), non_negative=("sample_titles",))
    if c.domains.auto_annotate_fraction > 1:
        raise ConfigError(f"domains.auto_annotate_fraction={c.domains.auto_annotate_fraction}: a fraction in [0, 1], "
                          "or < 0 for no automatic annotation")
    counts(c, "iterations", positive=("max",))
    in_range(c, "iterations.stop_new_fraction", 0.0, 1.0)
    counts(c, "decontamination", positive=("ngram", "min_ngram"))
    if c.decontamination.min_ngram > c.decontamination.ngram:
        raise ConfigError(f"decontamination.min_ngram={c.decontamination.min_ngram}: larger than "
                          f"decontamination.ngram={c.decontamination.ngram}")
    one_of(c, "decontamination.mode", DECONTAMINATION_MODES)
    at_least(c, "beam.direct_num_workers", 0, note="0: one per core")
    one_of(c, "beam.direct_running_mode", DIRECT_RUNNING_MODES)
