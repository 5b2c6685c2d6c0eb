r"""`dsmath quickstart`: the whole pipeline at tiny scale in one run directory, on a laptop CPU.

    mine/       corpus mining (paper §2.1) on a synthetic crawl of math pages and prose:
                configs/mining/deepseekmath_corpus.py:tiny, run by dsmath_jax.mining.driver.run_mining;
                the corpus is the TFDS dataset `dsmath_corpus` in mine/tfds/. Offline by default: the
                math pages are made by the arithmetic task's generator and the crawl is decontaminated
                against the held-out problems GRPO is evaluated on; with `benchmarks_dir` they are GSM8K /
                MATH *train* problems, decontaminated against GSM8K / MATH test
    pretrain/   a sentencepiece tokenizer trained on, and the tiny model pre-trained on, a mixture of the
                mined corpus and the arithmetic task's text (configs/pretrain/table1_corpora.py:
                deepseekmath_corpus,tiny with the model of configs/sft/arithmetic.py:tiny,answer_mix)
    sft/        SFT on the arithmetic task (configs/sft/arithmetic.py:tiny,answer_mix: level 1, half of the rows
                the final answer alone) from the pre-trained checkpoint, with its tokenizer
    grpo/       GRPO with outcome rewards (configs/rl/grpo_outcome.py:tiny,answer_mix) from the SFT policy;
                held-out greedy accuracy, maj@k and pass@k before and after (`eval.samples` = k), each held-out
                problem's greedy response and verdicts (grpo/evals/)
    results.json, plots/*.png, report.md     the numbers of every stage, figures, a Markdown report
    run.json                                 the run directory, seconds and throughput per stage

The stage configs are those experiment files' `tiny` variants as the package carries them
(`stage_configs.py`), so an installed package needs no checkout; `configs_dir` (`--configs_dir`) reads the
files of a configs/ folder instead (an edited checkout). On top come the pipeline's wiring (benchmark files,
the data of one stage fed to the next, k) and `steps_scale` multiplying every stage's step counts (tests
shrink the pipeline with it). Extra overrides per stage: `overrides={"grpo": {"train.stop_after_steps": 2}}`
(`--set=grpo:train.stop_after_steps=2`).

Resumable: a stage whose summary says it completed is skipped; one that was interrupted runs again and its
loop continues from its last checkpoint (mining resumes from its last finished stage). The seconds spent
per stage, over all invocations, are kept in quickstart_state.json.

One module per job; every name is re-exported here (`from dsmath_jax import quickstart as Q`):

    config          `Options`, loading the stage configs, `--set` overrides, step scaling, benchmark files,
                    deterministic CPU math
    stage_configs   the four stage configs the package carries
    stages          each stage's config and run, and `run_quickstart` (running them in order, resumably)
    state           the run directory: which stage completed, quickstart_state.json
    report          results.json, run.json, plots/*.png and report.md from what the stages left
"""

from __future__ import annotations

from dsmath_jax.quickstart.config import (
    BENCHMARK_FILES,
    DETERMINISTIC_XLA_FLAGS,
    STAGE_CONFIGS,
    STAGES,
    Options,
    QuickstartError,
    apply_overrides,
    check_benchmarks_dir,
    configs_dir,
    load_config,
    make_cpu_math_deterministic,
    parse_override,
    resolve_benchmarks_dir,
    scale_train,
    scaled,
)
from dsmath_jax.quickstart.report import (
    PLOTS_DIR,
    REPORT_FILE,
    RESULTS_FILE,
    RUN_FILE,
    STAGE_RESULTS,
    collect_results,
    command_line,
    make_plots,
    render_report,
    split_results,
    tokenizer_coverage,
    write_outputs,
)
from dsmath_jax.quickstart.stage_configs import STAGE_DEFAULTS
from dsmath_jax.quickstart.stages import (
    ARITHMETIC_CORPUS,
    CRAWL_SIZE_KEYS,
    STAGE_FUNCTIONS,
    grpo_config,
    grpo_stage,
    mine_config,
    mine_stage,
    pretrain_config,
    pretrain_stage,
    run_quickstart,
    sft_config,
    sft_stage,
)
from dsmath_jax.quickstart.state import (
    COMPLETED,
    CORPUS_DATASET,
    MINING_DONE,
    STATE_FILE,
    corpus_tfds_dir,
    read_summary,
    stage_completed,
    stage_status,
)

__all__ = [
    "ARITHMETIC_CORPUS",
    "BENCHMARK_FILES",
    "COMPLETED",
    "CORPUS_DATASET",
    "CRAWL_SIZE_KEYS",
    "DETERMINISTIC_XLA_FLAGS",
    "MINING_DONE",
    "Options",
    "PLOTS_DIR",
    "QuickstartError",
    "REPORT_FILE",
    "RESULTS_FILE",
    "RUN_FILE",
    "STAGES",
    "STAGE_CONFIGS",
    "STAGE_DEFAULTS",
    "STAGE_FUNCTIONS",
    "STAGE_RESULTS",
    "STATE_FILE",
    "apply_overrides",
    "check_benchmarks_dir",
    "collect_results",
    "command_line",
    "configs_dir",
    "corpus_tfds_dir",
    "grpo_config",
    "grpo_stage",
    "load_config",
    "make_cpu_math_deterministic",
    "make_plots",
    "mine_config",
    "mine_stage",
    "parse_override",
    "pretrain_config",
    "pretrain_stage",
    "read_summary",
    "render_report",
    "resolve_benchmarks_dir",
    "run_quickstart",
    "scale_train",
    "scaled",
    "split_results",
    "sft_config",
    "sft_stage",
    "stage_completed",
    "stage_status",
    "tokenizer_coverage",
    "write_outputs",
]
