"""The quickstart's four stages (mine, pretrain, sft, grpo): each one's config, wired to the stage before it,
and running them in order into one run directory, resumably (`run_quickstart`)."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from dsmath_jax.data.arithmetic import ARITHMETIC_TINY, texts_for_tokenizer
from dsmath_jax.quickstart.config import (
    STAGE_CONFIGS,
    STAGES,
    Options,
    QuickstartError,
    apply_overrides,
    configs_dir,
    load_config,
    resolve_benchmarks_dir,
    scale_train,
)
from dsmath_jax.quickstart.report import write_outputs
from dsmath_jax.quickstart.state import (
    COMPLETED,
    CORPUS_DATASET,
    State,
    corpus_tfds_dir,
    now,
    read_json,
    stage_completed,
    stage_status,
)
from dsmath_jax.train.rundir import copy_atomic, write_atomic

# The config schemas and the training stack (JAX, Grain, TFDS: seconds to import) and the miner (Apache Beam,
# the `beam` extra) are imported inside the functions that use them, so `dsmath quickstart --help` and reading
# a finished run's results import none of them.

log = logging.getLogger(__name__)

ARITHMETIC_CORPUS = "quickstart_arithmetic"  # the arithmetic task's text as a pre-training corpus
# The sizes of the synthetic crawl (build_crawl's keyword arguments) that `crawl_scale` multiplies.
CRAWL_SIZE_KEYS = ("n_questions", "n_problems", "n_notes", "n_prose", "n_seed", "n_near_duplicates",
                   "n_url_duplicates", "n_contaminated", "warc_files")


def _arithmetic_spec(sft_config: ml_collections.ConfigDict) -> dict:
    """The arithmetic task of the SFT config's data (its first `arithmetic` source), else ARITHMETIC_TINY."""
    def walk(specs):
        for spec in specs or []:
            spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
            if spec.get("kind") == "arithmetic" and spec.get("arithmetic"):
                return dict(spec["arithmetic"], kind="arithmetic")
            found = walk(spec.get("sources"))
            if found:
                return found
        return None

    return walk(sft_config.data.sources) or dict(ARITHMETIC_TINY)


# ------------------------------------------------------------------------------------------- mine


def mine_config(workdir: str, opts: Options,  # noqa: ARG001 - the signature every *_config shares
                benchmarks_dir: str | None) -> ml_collections.ConfigDict:
    """configs/mining/deepseekmath_corpus.py:tiny on the synthetic crawl: of `benchmarks_dir` (GSM8K / MATH),
    or, when None, of the arithmetic task of the GRPO stage, decontaminated against its held-out split."""
    config = load_config(STAGE_CONFIGS["mine"], opts.configs_dir)
    if benchmarks_dir:
        config.synthetic.source = "benchmarks"
        config.synthetic.benchmarks_dir = benchmarks_dir
        config.decontamination.benchmarks_dir = benchmarks_dir
    else:
        problems = load_config(STAGE_CONFIGS["grpo"], opts.configs_dir).data.problems.to_dict()
        if problems.get("kind") != "arithmetic":
            raise QuickstartError(f"the offline crawl is made from the GRPO config's arithmetic task, but its "
                                  f"data.problems is {problems}: pass --benchmarks_dir=DIR")
        config.synthetic.source = "arithmetic"
        config.synthetic.benchmarks_dir = ""
        config.synthetic.arithmetic = ml_collections.ConfigDict(
            {k: problems[k] for k in ("n_test", "seed", "knobs") if k in problems})
        config.decontamination.benchmarks_dir = ""  # the driver uses the crawl's (the held-out split)
    if opts.mining_iterations is not None:
        config.iterations.max = int(opts.mining_iterations)
    apply_overrides(config, opts.overrides.get("mine", {}), "mine")
    return config


def mine_stage(workdir: str, opts: Options, benchmarks_dir: str | None) -> dict:
    """Mines the corpus into <workdir>/mine (resumable); returns the driver's stats."""
    try:
        # Apache Beam, the `beam` extra: see the note on imports
        from dsmath_jax.mining.driver import AWAITING_ANNOTATION, run_mining, synthetic_crawl_source
        from dsmath_jax.mining.synthetic_crawl import build_crawl
    except ImportError as e:
        raise QuickstartError(f"the mine stage needs the mining extra ({e}): pip install -e '.[beam]'") from e

    logging.getLogger("apache_beam.typehints.native_type_compatibility").setLevel(logging.WARNING)
    out = os.path.join(workdir, "mine")
    config = mine_config(workdir, opts, benchmarks_dir)
    synthetic = os.path.join(out, "synthetic")
    if opts.crawl_scale != 1 and not config.input.patterns and \
            not os.path.isfile(os.path.join(synthetic, "manifest.json")):
        # The driver builds the tiny config's crawl (build_crawl's default sizes); a scaled one is built here.
        defaults = inspect.signature(build_crawl).parameters
        sizes: dict[str, Any] = {k: max(1, int(round(defaults[k].default * opts.crawl_scale))) for k in CRAWL_SIZE_KEYS}
        build_crawl(synthetic_crawl_source(config, out), synthetic, seed=config.synthetic.seed, **sizes)
    with contextlib.redirect_stdout(sys.stderr):
        stats = run_mining(config, out)
    if stats["status"] == AWAITING_ANNOTATION:
        raise QuickstartError(f"mining waits for the URL-path annotation {stats['annotated_csv']}: the quickstart "
                              "annotates automatically (domains.auto_annotate_fraction); do not override it")
    return stats


# ------------------------------------------------------------------------------------------- pretrain


def _copy_corpus(workdir: str, data_dir: str) -> None:
    """Copies the mined TFDS corpus into the pre-training run's data_dir (a run reads all its datasets from
    one data_dir, and mine/ stays what the miner wrote)."""
    src, dst = corpus_tfds_dir(workdir), os.path.join(data_dir, CORPUS_DATASET)
    if os.path.isdir(dst):
        return
    if not os.path.isdir(src):
        raise QuickstartError(f"no mined corpus at {src}: run the mine stage first (--stages=mine,pretrain,...)")
    tmp = dst + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    os.replace(tmp, dst)


def _write_arithmetic_texts(path: str, spec: Mapping[str, Any]) -> int:
    """The arithmetic task's train problems as the SFT model sees them, one {"text"} per line."""
    from dsmath_jax.data.tasks import arithmetic_split  # heavy: see the note on imports
    if os.path.isfile(path):
        return 0
    train, _ = arithmetic_split(spec)
    lines = [json.dumps({"text": t, "id": f"arithmetic/train/{i}"}) for i, t in enumerate(texts_for_tokenizer(train))]
    write_atomic(path, "\n".join(lines) + "\n")
    return len(lines)


def pretrain_config(workdir: str, opts: Options) -> ml_collections.ConfigDict:
    """Table 1's tiny pre-training config on the quickstart's data: the mined corpus and the arithmetic task's
    text half and half, a tokenizer trained on both, and the model of the SFT config."""
    from dsmath_jax.config.train import source  # heavy: see the note on imports
    out = os.path.join(workdir, "pretrain")
    c = load_config(STAGE_CONFIGS["pretrain"], opts.configs_dir)
    sft = load_config(STAGE_CONFIGS["sft"], opts.configs_dir)
    c.model = ml_collections.ConfigDict(sft.model.to_dict())  # the model SFT and RL continue
    c.tokenizer.train_vocab_size = sft.model.vocab_size
    texts = os.path.join(out, "data", "arithmetic_train.jsonl")
    c.data.sources = [source("tfds", name=CORPUS_DATASET, weight=0.5),
                      source("corpus", name=ARITHMETIC_CORPUS, files=[texts], weight=0.5)]
    c.data.data_dir = os.path.join(out, "tfds")
    c.data.eval_split = None  # the mined corpus has a train split only
    scale_train(c, opts.steps_scale)
    apply_overrides(c, opts.overrides.get("pretrain", {}), "pretrain")
    return c


def pretrain_stage(workdir: str, opts: Options) -> dict:
    from dsmath_jax.train.loop import train  # heavy: see the note on imports
    config = pretrain_config(workdir, opts)
    out = os.path.join(workdir, "pretrain")
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    _write_arithmetic_texts(config.data.sources[1]["files"][0],
                            _arithmetic_spec(load_config(STAGE_CONFIGS["sft"], opts.configs_dir)))
    _copy_corpus(workdir, config.data.data_dir)
    return train(config, out, task="pretrain")


# ------------------------------------------------------------------------------------------- sft


def sft_config(workdir: str, opts: Options) -> ml_collections.ConfigDict:
    """configs/sft/arithmetic.py:tiny,answer_mix from the pre-trained checkpoint, with its tokenizer and model."""
    pre = os.path.abspath(os.path.join(workdir, "pretrain"))
    c = load_config(STAGE_CONFIGS["sft"], opts.configs_dir)
    if os.path.isfile(os.path.join(pre, "config.json")):  # the model pre-training built (else the same, to be)
        c.model = ml_collections.ConfigDict(read_json(os.path.join(pre, "config.json"))["model"])
    c.init.checkpoint = os.path.join(pre, "checkpoints")
    c.tokenizer.path = os.path.join(pre, "tokenizer.model")
    c.tokenizer.train_vocab_size = None
    scale_train(c, opts.steps_scale)
    apply_overrides(c, opts.overrides.get("sft", {}), "sft")
    return c


def require_completed(workdir: str, stage: str, before: str, what: str) -> None:
    """QuickstartError unless the stage `stage` starts from (`before`, whose `what` it needs) has completed."""
    if not stage_completed(workdir, before):
        raise QuickstartError(f"the {stage} stage starts from the {before} stage's {what}, which has not completed: "
                              f"run the {before} stage first (--stages={before},{stage})")


def sft_stage(workdir: str, opts: Options) -> dict:
    from dsmath_jax.train.loop import train  # heavy: see the note on imports
    require_completed(workdir, "sft", "pretrain", "checkpoint")
    config = sft_config(workdir, opts)
    out = os.path.join(workdir, "sft")
    os.makedirs(out, exist_ok=True)
    own = os.path.join(out, "tokenizer.model")  # the run directory carries its tokenizer (RL and eval read it)
    if not os.path.isfile(own):
        copy_atomic(config.tokenizer.path, own)
    return train(config, out, task="sft")


# ------------------------------------------------------------------------------------------- grpo


def grpo_config(workdir: str, opts: Options) -> ml_collections.ConfigDict:
    """configs/rl/grpo_outcome.py:tiny,answer_mix from the SFT run, with maj@k / pass@k (k = eval_samples)."""
    c = load_config(STAGE_CONFIGS["grpo"], opts.configs_dir)
    c.init.run_dir = os.path.abspath(os.path.join(workdir, "sft"))
    scale_train(c, opts.steps_scale, "train.steps_per_iteration",
                ("train.log_every", "train.checkpoint_every", "eval.every"))
    c.eval.samples = int(opts.eval_samples)
    c.eval.at_start = True
    if opts.eval_problems is not None:
        c.eval.n_problems = int(opts.eval_problems)
    apply_overrides(c, opts.overrides.get("grpo", {}), "grpo")
    return c


def grpo_stage(workdir: str, opts: Options) -> dict:
    from dsmath_jax.rl.loop import run_rl  # heavy: see the note on imports
    require_completed(workdir, "grpo", "sft", "policy")
    return run_rl(grpo_config(workdir, opts), os.path.join(workdir, "grpo"))


STAGE_FUNCTIONS: dict[str, Callable[..., dict]] = {
    "mine": lambda workdir, opts, bdir: mine_stage(workdir, opts, bdir),
    "pretrain": lambda workdir, opts, _bdir: pretrain_stage(workdir, opts),
    "sft": lambda workdir, opts, _bdir: sft_stage(workdir, opts),
    "grpo": lambda workdir, opts, _bdir: grpo_stage(workdir, opts),
}


# ------------------------------------------------------------------------------------------- the run


def run_quickstart(workdir: str, options: Options | None = None, **kwargs: Any) -> dict:
    """Runs (or resumes) the stages of `options.stages` in order into `workdir`, then writes results.json,
    plots/ and report.md; returns the results. A stage that completed before is skipped; one that stops
    short of completing (preempted, `train.stop_after_steps`) stops the pipeline there, and the results say
    so (run again to continue). Keyword arguments set fields of `Options`."""
    from tqdm.auto import tqdm

    opts = dataclasses.replace(options or Options(), **kwargs)
    stages = list(opts.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise QuickstartError(f"unknown stage(s) {unknown}: choose from {', '.join(STAGES)}")
    stages = [s for s in STAGES if s in stages]
    unknown_overrides = set(opts.overrides) - set(STAGES)
    if unknown_overrides:
        raise QuickstartError(f"overrides for unknown stage(s) {sorted(unknown_overrides)}: stages are "
                              f"{', '.join(STAGES)}")
    if opts.steps_scale <= 0 or opts.crawl_scale <= 0:
        raise QuickstartError(f"steps_scale and crawl_scale must be > 0, got {opts.steps_scale} and "
                              f"{opts.crawl_scale}")
    if opts.configs_dir is not None:
        configs_dir(opts.configs_dir)  # fail before any work when it is not a configs/ folder
    for stage, items in opts.overrides.items():  # a bad override fails now, not after the earlier stages
        apply_overrides(load_config(STAGE_CONFIGS[stage], opts.configs_dir), items, stage)
    workdir = os.path.abspath(workdir)
    todo = [s for s in stages if not stage_completed(workdir, s)]
    for stage in todo:
        before = STAGES[STAGES.index(stage) - 1] if stage != STAGES[0] else None
        if before and before not in stages and not stage_completed(workdir, before):
            raise QuickstartError(f"stage {stage} starts from the {before} stage, which has not completed in "
                                  f"{workdir}: run it too (--stages={','.join([before] + stages)})")
    benchmarks_dir = resolve_benchmarks_dir(opts.benchmarks_dir) if "mine" in todo else opts.benchmarks_dir
    os.makedirs(workdir, exist_ok=True)
    state = State(workdir)
    previous = state.data.get("options") or {}
    state.data["options"] = {**{k: v for k, v in dataclasses.asdict(opts).items() if k != "overrides"},
                             "stages": stages, "overrides": {k: dict(v) for k, v in opts.overrides.items()},
                             "benchmarks_dir": benchmarks_dir if "mine" in todo else previous.get("benchmarks_dir")}
    state.data["stopped_at"] = None
    bar = tqdm(total=len(stages), desc="quickstart", unit="stage", dynamic_ncols=True)
    try:
        for stage in stages:
            bar.set_postfix(stage=stage)
            record = state.stage(stage)
            if stage not in todo:
                log.info("stage %s already completed in %s: skipped", stage, os.path.join(workdir, stage))
                record["status"] = COMPLETED
                bar.update(1)
                continue
            log.info("stage %s: running into %s", stage, os.path.join(workdir, stage))
            record.update(status="running", started_at=now(), invocations=int(record.get("invocations", 0)) + 1)
            state.save()
            start = time.perf_counter()
            try:
                STAGE_FUNCTIONS[stage](workdir, opts, benchmarks_dir)
            except BaseException:
                record.update(status="failed", seconds=float(record["seconds"]) + time.perf_counter() - start)
                state.data["stopped_at"] = stage
                state.save()
                with contextlib.suppress(Exception):  # results.json and report.md say so; the error goes on up
                    write_outputs(workdir, plots=False)
                raise
            record["seconds"] = float(record["seconds"]) + time.perf_counter() - start
            record["status"] = stage_status(workdir, stage)
            record["finished_at"] = now()
            state.save()
            bar.update(1)
            if record["status"] != COMPLETED:
                state.data["stopped_at"] = stage
                state.save()
                log.warning("stage %s stopped with status %r: run the same command again to continue it", stage,
                            record["status"])
                break
    finally:
        bar.close()
    state.save()
    return write_outputs(workdir, plots=opts.plots)
