"""The quickstart's options and stage configs: `Options` (the flags of `dsmath quickstart`), the stage configs
(the package's own, `stage_configs.py`, or the experiment files of a `--configs_dir`), `--set` overrides, step
scaling, and the benchmark directory of the crawl. Stage configs load, take their overrides and are validated
through the shared loader (`dsmath_jax.config.loader`), as `dsmath <command> --config=...` does."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from dsmath_jax.quickstart.stage_configs import STAGE_DEFAULTS

STAGES = ("mine", "pretrain", "sft", "grpo")
STAGE_CONFIGS = {  # the experiment file (under configs/) and argument of each stage's config
    "mine": "mining/deepseekmath_corpus.py:tiny",
    "pretrain": "pretrain/table1_corpora.py:deepseekmath_corpus,tiny",
    "sft": "sft/arithmetic.py:tiny,answer_mix",
    "grpo": "rl/grpo_outcome.py:tiny,answer_mix",
}
BENCHMARK_FILES = ("gsm8k/train.jsonl", "gsm8k/test.jsonl", "math/train.jsonl", "math/test.jsonl")


class QuickstartError(RuntimeError):
    """The quickstart cannot run (a bad configs/, benchmark files, an earlier stage); says what to do."""


@dataclasses.dataclass
class Options:
    """What `run_quickstart` runs; the CLI flags of `dsmath quickstart` have the same names."""

    benchmarks_dir: str | None = None  # gsm8k/, math/ train + test JSONL for the crawl; None: the arithmetic crawl
    stages: Sequence[str] = STAGES
    steps_scale: float = 1.0  # multiplies the step counts (and their log / eval / checkpoint intervals) of every stage
    eval_samples: int = 8  # k of maj@k / pass@k in the RL stage's held-out evaluation
    eval_problems: int | None = None  # held-out problems of the RL evaluation; None: the RL config's
    mining_iterations: int | None = None  # mining iterations at most; None: the mining config's (tiny: 3)
    crawl_scale: float = 1.0  # size of the synthetic crawl relative to the tiny config's (build_crawl's defaults)
    overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)  # {stage: {key: value}}
    configs_dir: str | None = None  # a configs/ folder to read the stage configs from; None: the package's own
    plots: bool = True


# ------------------------------------------------------------------------------------------- configs


def configs_dir(path: str | os.PathLike) -> pathlib.Path:
    """A configs/ directory given as --configs_dir, checked; QuickstartError when it is not one."""
    root = pathlib.Path(path)
    if not (root / "sft" / "arithmetic.py").is_file():
        raise QuickstartError(
            f"--configs_dir={root} is not an experiment configs/ folder: the quickstart reads "
            f"{', '.join(f'configs/{spec}' for spec in STAGE_CONFIGS.values())} there. Leave --configs_dir out "
            "to run the stage configs the package carries, or pass the path of a checkout's configs/")
    return root


def stage_command(stage: str) -> str:
    """The `dsmath` command (and config schema) of a stage: that of its experiment file's folder."""
    from dsmath_jax.config.loader import command_of  # heavy: see stage_configs' note on imports
    command = command_of(STAGE_CONFIGS[stage].partition(":")[0])
    assert command is not None, STAGE_CONFIGS[stage]
    return command


def load_config(spec: str, root: str | os.PathLike | None = None) -> ml_collections.ConfigDict:
    """A stage config by its experiment file and argument ("rl/grpo_outcome.py:tiny"), validated against its
    command's schema: from `root` through the shared loader, as `dsmath <command> --config=configs/<spec>`
    loads it, or, when `root` is None, the package's own (`stage_configs.STAGE_DEFAULTS`, the same config)."""
    from dsmath_jax.config import ConfigError  # heavy: see stage_configs' note on imports
    from dsmath_jax.config.loader import command_of, prepare_config
    from dsmath_jax.config.loader import load_config as load_config_file
    command = command_of(spec.partition(":")[0])
    if root is None and spec not in STAGE_DEFAULTS:
        raise QuickstartError(f"the package carries the quickstart's stage configs only "
                              f"({', '.join(STAGE_DEFAULTS)}), not {spec!r}: pass --configs_dir")
    try:
        if root is None:
            return prepare_config(STAGE_DEFAULTS[spec](), command=command, where=f"the packaged {spec}")
        return load_config_file(spec, command=command, root=configs_dir(root))
    except ConfigError as e:
        raise QuickstartError(str(e)) from e


def parse_override(text: str) -> tuple[str, str, str]:
    """"stage:a.b=value" -> (stage, "a.b", "value"); the value is parsed by the type of its field when it is
    applied (`apply_overrides`)."""
    head, eq, raw = text.partition("=")
    stage, colon, key = head.partition(":")
    if not eq or not colon or not key or stage not in STAGES:
        raise ValueError(f"override {text!r}: expected STAGE:KEY=VALUE with STAGE one of {STAGES}, "
                         "e.g. grpo:train.stop_after_steps=2")
    return stage, key.strip(), raw


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any], stage: str) -> None:
    """Sets dotted keys of a stage's config with the shared loader's override code (a string value is parsed by
    its field's type, as `--config.a.b=value` is) and validates the result against the stage's schema; a key
    the config does not have, or a bad value, is a QuickstartError naming the stage and the key."""
    from dsmath_jax.config import ConfigError  # heavy: see stage_configs' note on imports
    from dsmath_jax.config.loader import apply_overrides as apply_config_overrides
    from dsmath_jax.config.loader import validate
    where = f"the {stage} config"
    try:
        apply_config_overrides(config, overrides, where=where)
        validate(config, stage_command(stage), where=where)
    except ConfigError as e:
        raise QuickstartError(str(e)) from e


def scaled(n: int, scale: float) -> int:
    """`n` steps scaled by `scale`, at least 1."""
    return max(1, int(round(int(n) * float(scale))))


def _interval(every: int, steps: int, old_steps: int) -> int:
    """An interval (eval, checkpoint, log) of a run of `old_steps` moved to `steps`, kept in 1..steps."""
    every = int(every or 0)
    if every <= 0:
        return every
    return max(1, min(steps, int(round(every * steps / max(old_steps, 1)))))


def scale_train(c: ml_collections.ConfigDict, scale: float, steps_key: str = "train.steps",
                intervals: Sequence[str] = ("train.log_every", "train.eval_every", "train.checkpoint_every")) -> None:
    """Multiplies the step count `steps_key` by `scale`, moving the `intervals` (and a shortened warm-up) with it."""
    section, name = steps_key.split(".")
    old = c[section][name]
    steps = scaled(old, scale)
    c[section][name] = steps
    for key in intervals:
        sec, k = key.split(".")
        c[sec][k] = _interval(c[sec][k], steps, old)
    schedule = c.optimizer.schedule
    if "warmup_steps" in schedule and steps < old:  # a shrunk run still gets most of its steps at the peak
        schedule.warmup_steps = min(schedule.warmup_steps, steps // 4)


# ------------------------------------------------------------------------------------------- determinism

# XLA's CPU matrix products run on Eigen, whose multi-threaded contraction splits a product's reduction by the
# size of its thread pool (the machine's cores), so 2 and 16 cores sum in different orders and a run's numbers
# drift apart in the last bits, then in sampled tokens. Single-threaded Eigen sums in one order on any core
# count. XLA's CPU client also runs library fusions (YNNPACK dots, e.g. the weight gradients, whose reduction is
# over batch x sequence) and parallel loops on its own intra-op thread pool, sized by the cores the process may
# use when the client starts and split by that size: `start_xla_cpu_on_one_thread` starts the client while the
# process may use one core, so the pool has one thread on any machine, then gives every thread back the cores it
# had. (Everything else of the pipeline is seeded.)
DETERMINISTIC_XLA_FLAGS = ("--xla_cpu_multi_thread_eigen=false",)


def start_xla_cpu_on_one_thread() -> bool:
    """Starts JAX's backends with the process limited to one core, so XLA's CPU client sizes its intra-op thread
    pool at one thread, then restores every thread's cores (the pool's thread included: it runs on any core, alone).
    Returns False, changing nothing, where a process cannot set its cores (no `os.sched_setaffinity`: not Linux)
    or JAX's backends have started already."""
    import sys
    bridge = sys.modules.get("jax._src.xla_bridge")
    if not hasattr(os, "sched_setaffinity") or (bridge is not None and bridge.backends_are_initialized()):
        return False
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        import jax
        jax.devices()  # starts the backends (the CPU client and its thread pool) under one core
    finally:
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), cores)
            except OSError:  # a thread that ended meanwhile
                pass
    return True


def make_cpu_math_deterministic(environ: dict | None = None) -> bool:
    """Adds `DETERMINISTIC_XLA_FLAGS` to XLA_FLAGS (of `environ`, default os.environ) unless it sets them
    already and, for this process (no `environ`), starts JAX with a one-thread intra-op pool
    (`start_xla_cpu_on_one_thread`); returns whether both are in effect (with `environ`: the flags). When JAX's
    backends started before (XLA reads its flags and sizes its pool once), it changes nothing (processes this one
    starts would inherit flags it does not run with), logs a warning and returns False. `dsmath quickstart` calls
    it first thing (`--deterministic`)."""
    import logging
    import sys
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    missing = [f for f in DETERMINISTIC_XLA_FLAGS if f.split("=")[0] not in flags]
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None and bridge.backends_are_initialized():
        if missing or environ is None:
            logging.getLogger(__name__).warning(
                "JAX started before its CPU math was made deterministic (%s, a one-thread pool): this process's "
                "CPU numbers depend on its thread count", " ".join(missing) or "flags set")
            return False
        return True
    if missing:
        env["XLA_FLAGS"] = " ".join([flags, *missing]).strip()
    if environ is None and not start_xla_cpu_on_one_thread():
        logging.getLogger(__name__).warning(
            "this platform cannot limit a process to one core (no os.sched_setaffinity): XLA's CPU thread pool has "
            "one thread per core, and numbers depend on the core count")
        return False
    return True


# ------------------------------------------------------------------------------------------- benchmarks


def check_benchmarks_dir(path: str, where: str) -> str:
    missing = [f for f in BENCHMARK_FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise QuickstartError(f"{where}={path} lacks {', '.join(missing)}: the quickstart reads GSM8K and MATH "
                              "train and test files there, one JSON object per line (GSM8K as published; MATH with "
                              "`problem`, `answer` or `solution`, and `subject` or `type`). Leave --benchmarks_dir "
                              "out to mine an offline crawl made by the arithmetic task's generator")
    return os.path.abspath(path)


def resolve_benchmarks_dir(path: str | None = None) -> str | None:
    """The benchmark directory the synthetic crawl is made from (`path`, --benchmarks_dir, checked), or None:
    the offline crawl of the arithmetic task (`mining.synthetic_crawl.arithmetic_source`), which needs no
    files or network."""
    return check_benchmarks_dir(path, "--benchmarks_dir") if path else None
