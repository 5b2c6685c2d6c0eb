"""Reading run directories and drawing their figures: what the notebooks in `notebooks/` call.

One module per topic (`files`, `figures`, `training`, `rl`, `paradigm`, `mining`); every public name is
re-exported here, so notebooks use `from dsmath_jax import analysis as A` and `A.load_rl_run(...)`.

Pure functions over the files that runs write, no state and no pandas: loaders return plain dicts, lists
and numpy arrays; `*_figure` functions return matplotlib `Figure`s (not registered with pyplot, so a
notebook shows them with `display(fig)` and nothing leaks); `save_figure` writes one as a PNG.

    mining     a `dsmath mine` work directory (dsmath_jax/mining/driver.py): pages/stats.json (stage 0),
               iter_k/stats.json (one report per iteration), iter_k/{domains,paths,paths_annotated}.csv,
               iter_k/corpus/pages-*.jsonl.gz, iter_k/classifier.bin, stats.json (written at the end)
    training   a `dsmath pretrain` / `dsmath sft` run directory: metrics.jsonl, config.json, summary.json
    rl         a `dsmath rl` run directory: metrics.jsonl (step rows and eval_* rows), summary.json,
               evals/step_<step>.jsonl (each held-out problem's verdicts at an evaluation)
    paradigm   the results JSON of experiments/rl_paradigm_tiny.py

A directory that is not what a loader expects raises `RunDirError` naming the path and the file it looked
for; an optional input that is missing (no eval rows, no MFU on a CPU, no annotated CSV) gives an empty
result that the figures mark with a note. Paths are local (copy a bucket's run directory first).
"""

from __future__ import annotations

from dsmath_jax.analysis.figures import new_figure, note, save_figure
from dsmath_jax.analysis.files import (
    Curve,
    ResultsFormatError,
    RunDirError,
    format_table,
    iter_jsonl_shards,
    number,
    read_csv,
    read_json,
    read_json_if_exists,
    require_file,
    resolve_dir,
    series,
)
from dsmath_jax.analysis.mining import (
    ANNOTATION_TRUE,
    MINING_WHAT,
    classifier_scores,
    corpus_scores,
    decontamination_counts,
    dedup_counts,
    dedup_figure,
    domain_rows,
    domains_figure,
    load_mining_run,
    mining_iteration_table,
    mining_iterations_figure,
    path_rows,
    paths_figure,
    score_histograms_figure,
    score_threshold,
)
from dsmath_jax.analysis.paradigm import (
    load_paradigm_results,
    mcnemar_p_value,
    paradigm_arms,
    paradigm_curves,
    paradigm_figure,
    paradigm_maj_pass,
    paradigm_table,
)
from dsmath_jax.analysis.rl import (
    RL_CURVES,
    eval_accuracy_figure,
    eval_history,
    eval_k,
    load_eval_rows,
    load_rl_run,
    maj_pass_before_after,
    maj_pass_figure,
    paired_change,
    rl_curves,
    rl_summary,
    rl_training_figure,
)
from dsmath_jax.analysis.training import (
    TRAINING_CURVES,
    load_training_run,
    tokens_per_step,
    training_curves,
    training_figure,
    training_summary,
)

__all__ = [
    "ANNOTATION_TRUE",
    "Curve",
    "MINING_WHAT",
    "RL_CURVES",
    "ResultsFormatError",
    "RunDirError",
    "TRAINING_CURVES",
    "classifier_scores",
    "corpus_scores",
    "decontamination_counts",
    "dedup_counts",
    "dedup_figure",
    "domain_rows",
    "domains_figure",
    "eval_accuracy_figure",
    "eval_history",
    "eval_k",
    "format_table",
    "iter_jsonl_shards",
    "load_mining_run",
    "load_eval_rows",
    "load_paradigm_results",
    "load_rl_run",
    "load_training_run",
    "maj_pass_before_after",
    "maj_pass_figure",
    "mcnemar_p_value",
    "mining_iteration_table",
    "mining_iterations_figure",
    "new_figure",
    "note",
    "number",
    "paired_change",
    "paradigm_arms",
    "paradigm_curves",
    "paradigm_figure",
    "paradigm_maj_pass",
    "paradigm_table",
    "path_rows",
    "paths_figure",
    "read_csv",
    "read_json",
    "read_json_if_exists",
    "require_file",
    "resolve_dir",
    "rl_curves",
    "rl_summary",
    "rl_training_figure",
    "save_figure",
    "score_histograms_figure",
    "score_threshold",
    "series",
    "tokens_per_step",
    "training_curves",
    "training_figure",
    "training_summary",
]
