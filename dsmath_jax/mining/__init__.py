"""The DeepSeekMath corpus pipeline (paper §2.1) on Apache Beam.

Modules, in the order data flows through them:

* `crawl_reader`   WARC (HTML responses), WET (plain text) and JSONL pages -> page records, bad input counted
* `html_text`      HTML -> text that keeps the mathematics (MathJax, KaTeX, MathML alttext, `$...$`)
* `urls`, `language`, `tokens`   URL normalisation and domains, language id, token counts
* `dedup`          exact URL dedup, MinHash-LSH near-duplicate removal
* `classifier`     fastText training on seed vs crawl pages, batched scoring
* `recall`         keep the top-scoring pages within a token budget (weighted quantiles, no gathering)
* `domains`        domain / URL-path statistics, the annotation CSV, annotated math paths
* `benchmarks`, `decontamination`   benchmark texts and the n-gram decontamination
* `prepare`, `iteration`, `driver`   the Beam pipelines and the iterative loop around them
* `tfds_builder`   the final corpus as a TFDS ArrayRecord dataset
* `pages`, `files`, `metrics`   the page record, filesystem helpers (atomic writes), Beam counters
* `synthetic_crawl`  a small crawl made of real text (benchmark train files, package documentation)

Page records are plain dicts (so every Beam runner can encode them); their fields are listed in
`dsmath_jax.mining.pages`. Only `dsmath_jax.mining.driver.run_mining` needs a config; every stage
takes plain arguments.
"""
