"""`dsmath quickstart`: the whole pipeline at tiny scale, on a laptop CPU (about 7 minutes on 2 idle cores).

  dsmath quickstart [--workdir=runs/quickstart] [--benchmarks_dir=DIR]

Mines a small math corpus out of a synthetic crawl (mine/), trains a tokenizer and pre-trains a tiny model on
it and on the arithmetic task's text (pretrain/), fine-tunes it on the task (sft/), runs GRPO with held-out
greedy accuracy, maj@k and pass@k before and after (grpo/), and writes results.json, plots/*.png and
report.md. The stage configs are the repository's (configs/mining/deepseekmath_corpus.py:tiny,
configs/pretrain/table1_corpora.py:deepseekmath_corpus,tiny, configs/sft/arithmetic.py:tiny,answer_mix,
configs/rl/grpo_outcome.py:tiny,answer_mix), wired together.

It needs no files and no network: the crawl's math pages are made by the arithmetic task's generator, and the
mined corpus is decontaminated against the held-out problems GRPO is evaluated on. With --benchmarks_dir=DIR
(gsm8k/ and math/, train and test JSONL) they are GSM8K / MATH train problems instead, decontaminated
against GSM8K / MATH test.

Running the same command again resumes: completed stages are skipped, an interrupted one continues from its
last checkpoint. Exit status: 0 when every requested stage completed, 3 when a stage stopped early (run again
to continue it), 2 for bad flags, 1 for an error.

  dsmath quickstart --stages=sft,grpo                       # a subset (earlier stages must have completed)
  dsmath quickstart --steps_scale=0.1 --eval_problems=32    # a shrunk pipeline (a smoke test)
  dsmath quickstart --set=grpo:train.steps_per_iteration=80 --set=sft:optimizer.schedule.peak=1e-3
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from absl import flags

EXIT_STOPPED = 3


def _define_flags(values: flags.FlagValues) -> None:
    from dsmath_jax.quickstart import STAGES
    d: dict[str, Any] = dict(flag_values=values)
    flags.DEFINE_string("workdir", "runs/quickstart", "run directory: mine/, pretrain/, sft/, grpo/, results", **d)
    flags.DEFINE_string("benchmarks_dir", None, "directory with gsm8k/{train,test}.jsonl and math/{train,test}.jsonl "
                        "to make the crawl's math pages of (default: none, the arithmetic task's generator)", **d)
    flags.DEFINE_list("stages", list(STAGES), f"stages to run, in pipeline order: {','.join(STAGES)}", **d)
    flags.DEFINE_float("steps_scale", 1.0, "multiplies every stage's step counts (e.g. 0.1 for a smoke test)", **d)
    flags.DEFINE_integer("eval_samples", 8, "k of maj@k / pass@k in the RL stage's held-out evaluation", **d)
    flags.DEFINE_integer("eval_problems", None, "held-out problems of the RL evaluation (default: the RL config's)",
                         **d)
    flags.DEFINE_integer("mining_iterations", None, "mining iterations at most (default: the mining config's)", **d)
    flags.DEFINE_float("crawl_scale", 1.0, "size of the synthetic crawl relative to the tiny mining config's", **d)
    flags.DEFINE_multi_string("set", [], "a config override of one stage, STAGE:KEY=VALUE (repeatable), "
                              "e.g. grpo:train.stop_after_steps=2", **d)
    flags.DEFINE_string("configs_dir", None, "a configs/ folder to read the stage configs from (default: the "
                        "configs the package carries)", **d)
    flags.DEFINE_bool("plots", True, "draw plots/*.png (needs matplotlib)", **d)
    flags.DEFINE_bool("deterministic", True, "the same numbers on any CPU core count (Linux): XLA's CPU math on "
                      "one thread, single-threaded Eigen (--xla_cpu_multi_thread_eigen=false) and a one-thread "
                      "intra-op pool; --nodeterministic lets it use every core", **d)
    flags.DEFINE_string("log_level", "INFO", "logging level", **d)


def main(argv: list[str]) -> int:
    prog = "dsmath quickstart"
    from dsmath_jax.commands.common import parse_plain_flags
    from dsmath_jax.quickstart import (
        STAGES,
        Options,
        QuickstartError,
        make_cpu_math_deterministic,
        parse_override,
        run_quickstart,
    )
    values = parse_plain_flags(argv, prog, _define_flags, doc=__doc__, module=__name__)
    if isinstance(values, int):
        return values
    if values.deterministic:  # before JAX starts its backends (the stages start them)
        make_cpu_math_deterministic()
    if values.log_level.upper() != "DEBUG":  # Beam's DirectRunner logs every bundle and shard at INFO
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
    try:
        overrides: dict[str, dict] = {}
        for text in values.set:
            stage, key, value = parse_override(text)
            overrides.setdefault(stage, {})[key] = value
        unknown = [s for s in values.stages if s not in STAGES]
        if unknown or not values.stages:
            raise ValueError(f"--stages: unknown stage(s) {unknown}; choose from {','.join(STAGES)}")
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    v = values
    options = Options(benchmarks_dir=v.benchmarks_dir, stages=v.stages, steps_scale=v.steps_scale,
                      eval_samples=v.eval_samples, eval_problems=v.eval_problems,
                      mining_iterations=v.mining_iterations, crawl_scale=v.crawl_scale, overrides=overrides,
                      configs_dir=v.configs_dir, plots=v.plots)
    try:
        results = run_quickstart(v.workdir, options)
    except QuickstartError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    brief = {name: {k: s.get(k) for k in ("status", "seconds", "final_loss", "before", "after", "corpus") if k in s}
             for name, s in results["stages"].items()}
    print(json.dumps({"workdir": results["workdir"], "completed": results["completed"], "stages": brief}, indent=1))
    if results.get("stopped_at"):
        stage = results["stopped_at"]
        print(f"{prog}: stage {stage} stopped with status {results['stages'][stage]['status']!r}; run the same "
              "command again to continue it", file=sys.stderr)
        return EXIT_STOPPED
    print(f"{prog}: report in {results['workdir']}/report.md", file=sys.stderr)
    return 0
