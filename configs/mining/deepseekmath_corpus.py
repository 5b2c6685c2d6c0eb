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

import ml_collections

from dsmath_jax.config.mine import base_mine_config, tiny_mine_overrides


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = (arg or "full").lower()
    if variant not in ("full", "tiny"):
        raise ValueError(f"unknown variant {arg!r}: expected 'full' (default) or 'tiny'")
    c = base_mine_config()
    return tiny_mine_overrides(c) if variant == "tiny" else c
