"""The quickstart's own stage configs: the `tiny` variants of the four experiment files it wires together,
carried by the package, so that an installed `dsmath_jax` runs `dsmath quickstart` without a checkout.

    mining/deepseekmath_corpus.py:tiny                   mining_tiny()
    pretrain/table1_corpora.py:deepseekmath_corpus,tiny  pretrain_tiny()
    sft/arithmetic.py:tiny                               sft_tiny()
    rl/grpo_outcome.py:tiny                              grpo_tiny()

Each builds the ConfigDict its file's `get_config` builds, from the same schema functions
(`dsmath_jax.configs`, `dsmath_jax.rl.config`); the mining file is its own schema, so its tiny values are
written out here. `--configs_dir=DIR` (`Options.configs_dir`) reads the files from DIR instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import ml_collections

# `dsmath_jax.configs` and `dsmath_jax.rl.config` import JAX (seconds): they are imported inside the functions
# that use them, so `dsmath quickstart --help` and reading a finished run's results import neither.


def mining_tiny() -> ml_collections.ConfigDict:
    """configs/mining/deepseekmath_corpus.py:tiny: the paper's settings shrunk to a synthetic crawl."""
    benchmarks_dir = os.environ.get("DSMATH_BENCHMARKS_DIR", "")  # as the file's `tiny` reads it
    return ml_collections.ConfigDict({
        "input": {"patterns": (), "max_page_bytes": 1_000_000, "min_text_chars": 200, "main_content": True,
                  "languages": (), "path_depth": 1},
        "tokenizer": "",
        "synthetic": {"source": "benchmarks", "benchmarks_dir": benchmarks_dir,
                      "arithmetic": {"n_test": 256, "seed": 0,
                                     "knobs": {"max_operand": 9, "max_value": 30, "max_steps": 2}},
                      "seed": 0},
        "dedup": {"url": True, "near": True, "num_perm": 128, "bands": 16, "shingle_size": 5, "threshold": 0.8},
        "seed": {"paths": (), "max_pages": 10_000},
        "classifier": {"dim": 256, "lr": 0.5, "word_ngrams": 3, "min_count": 3, "epochs": 10, "bucket": 100_000,
                       "negatives": 150, "exclude_math_paths_from_negatives": True, "threads": 1,
                       "max_chars": 20_000, "batch_size": 512, "seed": 0},
        "recall": {"token_budgets": (0.2, 0.4), "budget_is_fraction": True, "min_score": 0.0,
                   "num_quantiles": 1001},
        "domains": {"threshold": 0.10, "sample_titles": 3, "top": 20, "annotated_csv": "",
                    "require_annotation": False, "auto_annotate_fraction": 0.5},
        "iterations": {"max": 3, "stop_new_fraction": 0.02},
        "decontamination": {"enabled": True, "benchmarks_dir": benchmarks_dir, "benchmarks": (), "ngram": 10,
                            "min_ngram": 3, "mode": "page"},
        "output": {"tfds": True, "tfds_with_beam": False},
        "beam": {"runner": "DirectRunner", "options": (), "direct_num_workers": 1,
                 "direct_running_mode": "in_memory"},
    })


def pretrain_tiny() -> ml_collections.ConfigDict:
    """configs/pretrain/table1_corpora.py:deepseekmath_corpus,tiny: the tiny model on GSM8K + MATH text."""
    from dsmath_jax.configs import base_train_config, source, tiny_overrides  # heavy: see the note on imports
    c = tiny_overrides(base_train_config())
    c.data.sources = [source("gsm8k", weight=0.5), source("math", weight=0.5)]
    c.data.eval_split = "validation"
    return c


def sft_tiny() -> ml_collections.ConfigDict:
    """configs/sft/arithmetic.py:tiny: SFT of the tiny model on the arithmetic task, 450 steps."""
    from dsmath_jax.configs import arithmetic_sft_config  # heavy: see the note on imports
    return arithmetic_sft_config("tiny")


def grpo_tiny() -> ml_collections.ConfigDict:
    """configs/rl/grpo_outcome.py:tiny: GRPO with outcome rewards on the arithmetic task, 40 steps."""
    from dsmath_jax.rl.config import base_rl_config, paper_grpo, tiny_rl_overrides  # heavy: see the note on imports
    return tiny_rl_overrides(paper_grpo(base_rl_config()))


# The experiment file and argument each builds (the quickstart's STAGE_CONFIGS) -> the builder.
STAGE_DEFAULTS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "mining/deepseekmath_corpus.py:tiny": mining_tiny,
    "pretrain/table1_corpora.py:deepseekmath_corpus,tiny": pretrain_tiny,
    "sft/arithmetic.py:tiny": sft_tiny,
    "rl/grpo_outcome.py:tiny": grpo_tiny,
}
