"""The quickstart's own stage configs: the `tiny` variants of the four experiment files it wires together,
carried by the package, so that an installed `dsmath_jax` runs `dsmath quickstart` without a checkout.

    mining/deepseekmath_corpus.py:tiny                   mining_tiny()
    pretrain/table1_corpora.py:deepseekmath_corpus,tiny  pretrain_tiny()
    sft/arithmetic.py:tiny,answer_mix                    sft_tiny()
    rl/grpo_outcome.py:tiny,answer_mix                   grpo_tiny()

Each builds the ConfigDict its file's `get_config` builds, from the same schema functions (`dsmath_jax.config`).
`--configs_dir=DIR` (`Options.configs_dir`) reads the files from DIR instead.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

# `dsmath_jax.config` imports JAX (seconds): it is imported inside the functions that use it, so that
# `dsmath quickstart --help` and reading a finished run's results do not import it.


def mining_tiny() -> ml_collections.ConfigDict:
    """configs/mining/deepseekmath_corpus.py:tiny: the paper's settings shrunk to a synthetic crawl."""
    from dsmath_jax.config.mine import base_mine_config, tiny_mine_overrides  # heavy: see the note on imports
    return tiny_mine_overrides(base_mine_config())


def pretrain_tiny() -> ml_collections.ConfigDict:
    """configs/pretrain/table1_corpora.py:deepseekmath_corpus,tiny: the tiny model on GSM8K + MATH text."""
    from dsmath_jax.config.train import base_train_config, source, tiny_overrides  # heavy: see the note on imports
    c = tiny_overrides(base_train_config())
    c.data.sources = [source("gsm8k", weight=0.5), source("math", weight=0.5)]
    c.data.eval_split = "validation"
    return c


def sft_tiny() -> ml_collections.ConfigDict:
    """configs/sft/arithmetic.py:tiny,answer_mix: SFT of the tiny model on the arithmetic task (level 1, half of
    its rows answer-only), 450 steps."""
    from dsmath_jax.config.train import arithmetic_sft_config  # heavy: see the note on imports
    return arithmetic_sft_config("tiny", answer_mix=True)


def grpo_tiny() -> ml_collections.ConfigDict:
    """configs/rl/grpo_outcome.py:tiny,answer_mix: GRPO with outcome rewards on the arithmetic task (level 1), 40
    steps."""
    from dsmath_jax.config.rl import base_rl_config, paper_grpo, tiny_rl_overrides  # heavy: see the note on imports
    from dsmath_jax.data.arithmetic import ARITHMETIC_ANSWER_MIX
    return tiny_rl_overrides(paper_grpo(base_rl_config()), problems=ARITHMETIC_ANSWER_MIX)


# The experiment file and argument each builds (the quickstart's STAGE_CONFIGS) -> the builder.
STAGE_DEFAULTS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "mining/deepseekmath_corpus.py:tiny": mining_tiny,
    "pretrain/table1_corpora.py:deepseekmath_corpus,tiny": pretrain_tiny,
    "sft/arithmetic.py:tiny,answer_mix": sft_tiny,
    "rl/grpo_outcome.py:tiny,answer_mix": grpo_tiny,
}
