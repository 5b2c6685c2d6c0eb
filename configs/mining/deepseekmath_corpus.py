"""The DeepSeekMath Corpus (paper §2.1): iterative fastText recall of math pages from Common Crawl.

Mirrors the paper's settings: seed OpenWebMath (500K positives) vs 500K random crawl pages; fastText
dim 256, lr 0.1, word n-grams 3, min count 3, 3 epochs; URL dedup and MinHash near-dedup before
recall; the top 40B tokens in iteration 1; domains with more than 10% of their pages collected go to
URL-path annotation; 4 iterations at most, stopping when an iteration adds less than 2% new data;
10-gram decontamination (3-9 gram benchmark texts matched exactly). Result in the paper: 35.5M pages,
120B tokens.

Full run (Common Crawl WARC files on GCS, Dataflow; see dsmath_jax/mining/README.md for Flink/Spark):

  dsmath mine --config=configs/mining/deepseekmath_corpus.py \
    --config.input.patterns="('gs://BUCKET/cc/CC-MAIN-2023-50/segments/*/warc/*.warc.gz',)" \
    --config.seed.paths="('gs://BUCKET/openwebmath/*.jsonl.gz',)" \
    --config.decontamination.benchmarks_dir=gs://BUCKET/benchmarks \
    --config.beam.runner=DataflowRunner \
    --config.beam.options="('--project=PROJECT', '--region=us-central1', '--temp_location=gs://BUCKET/tmp', \
      '--machine_type=n2-highmem-16', '--max_num_workers=1000', '--experiments=use_runner_v2', \
      '--sdk_container_image=IMAGE_WITH_DSMATH_JAX')" \
    --workdir=gs://BUCKET/dsmath_corpus

Hardware and cost (estimates from the measured per-page costs scaled to real page sizes; see
dsmath_jax/mining/README.md, "Scale, on paper"): for the paper's 40B deduplicated pages, stage 0 (read,
HTML to text, dedup) is ~40K vCPU-hours and each iteration's scoring ~11K vCPU-hours, ~85K vCPU-hours
for 4 iterations; on 1,000 n2-highmem-16 Dataflow workers that is ~2.5 hours for stage 0 and ~45
minutes per iteration (~$7K of Dataflow compute at list prices, plus shuffle, storage and reading
~600 TB of WARC), with the human URL-path annotation between iterations.

List-valued fields are tuples: override them as `--config.input.patterns="('a/*.warc.gz', 'b/*.wet.gz')"`.

Tiny variant: a synthetic crawl of real text (benchmark *train* files and standard-library
docstrings), built by the pipeline itself; runs on a CPU in a few minutes, unattended (paths whose
pages were mostly collected are annotated automatically):

  dsmath mine --config=configs/mining/deepseekmath_corpus.py:tiny --workdir=runs/mine_tiny \
    --config.synthetic.benchmarks_dir=DIR --config.decontamination.benchmarks_dir=DIR
(DIR holds gsm8k/ and math/ train and test files; or set DSMATH_BENCHMARKS_DIR=DIR.)

Without files (what `dsmath quickstart` mines): math pages made by the arithmetic task's generator,
decontaminated against the task's held-out split:

  dsmath mine --config=configs/mining/deepseekmath_corpus.py:tiny --workdir=runs/mine_tiny \
    --config.synthetic.source=arithmetic
"""

from __future__ import annotations

import os

import ml_collections


def _benchmarks_dir() -> str:
    """A local benchmark directory (gsm8k/, math/, ... as the public harness lays them out) from
    $DSMATH_BENCHMARKS_DIR; empty when unset, and the run then asks for --config.*.benchmarks_dir."""
    return os.environ.get("DSMATH_BENCHMARKS_DIR", "")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = (arg or "full").lower()
    if variant not in ("full", "tiny"):
        raise ValueError(f"unknown variant {arg!r}: expected 'full' (default) or 'tiny'")
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

    if variant == "tiny":
        c.synthetic.benchmarks_dir = _benchmarks_dir()
        c.decontamination.benchmarks_dir = _benchmarks_dir()
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
