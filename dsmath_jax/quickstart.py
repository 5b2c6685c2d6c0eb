r"""`dsmath quickstart`: the whole pipeline at tiny scale in one run directory, on a laptop CPU.

    mine/       corpus mining (paper §2.1) on a synthetic crawl of math pages and prose:
                configs/mining/deepseekmath_corpus.py:tiny, run by dsmath_jax.mining.driver.run_mining;
                the corpus is the TFDS dataset `dsmath_corpus` in mine/tfds/. Offline by default: the
                math pages are made by the arithmetic task's generator and the crawl is decontaminated
                against the held-out problems GRPO is evaluated on; with `benchmarks_dir` they are GSM8K /
                MATH *train* problems, decontaminated against GSM8K / MATH test
    pretrain/   a sentencepiece tokenizer trained on, and the tiny model pre-trained on, a mixture of the
                mined corpus and the arithmetic task's text (configs/pretrain/table1_corpora.py:
                deepseekmath_corpus,tiny with the model of configs/sft/arithmetic.py:tiny)
    sft/        SFT on the arithmetic task (configs/sft/arithmetic.py:tiny) from the pre-trained checkpoint,
                with its tokenizer
    grpo/       GRPO with outcome rewards (configs/rl/grpo_outcome.py:tiny) from the SFT policy; held-out
                greedy accuracy, maj@k and pass@k before and after (`eval.samples` = k)
    results.json, plots/*.png, report.md     the numbers of every stage, figures, a Markdown report

The stage configs are the repository's config files, read at run time (so they follow the files), with the
pipeline's wiring on top (benchmark files, the data of one stage fed to the next, k) and `steps_scale`
multiplying every stage's step counts (tests shrink the pipeline with it). Extra overrides per stage:
`overrides={"grpo": {"train.stop_after_steps": 2}}` (`--set=grpo:train.stop_after_steps=2`).

Resumable: a stage whose summary says it completed is skipped; one that was interrupted runs again and its
loop continues from its last checkpoint (mining resumes from its last finished stage). The seconds spent
per stage, over all invocations, are kept in quickstart_state.json.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import datetime
import importlib.util
import inspect
import json
import logging
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

log = logging.getLogger(__name__)

STAGES = ("mine", "pretrain", "sft", "grpo")
STAGE_CONFIGS = {
    "mine": "mining/deepseekmath_corpus.py:tiny",
    "pretrain": "pretrain/table1_corpora.py:deepseekmath_corpus,tiny",
    "sft": "sft/arithmetic.py:tiny",
    "grpo": "rl/grpo_outcome.py:tiny",
}
STATE_FILE = "quickstart_state.json"
RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
CORPUS_DATASET = "dsmath_corpus"  # the mining driver's TFDS dataset (dsmath_jax.mining.tfds_builder.NAME)
ARITHMETIC_CORPUS = "quickstart_arithmetic"  # the arithmetic task's text as a pre-training corpus
# The sizes of the synthetic crawl (build_crawl's keyword arguments) that `crawl_scale` multiplies.
CRAWL_SIZE_KEYS = ("n_questions", "n_problems", "n_notes", "n_prose", "n_seed", "n_near_duplicates",
                   "n_url_duplicates", "n_contaminated", "warc_files")
BENCHMARK_FILES = ("gsm8k/train.jsonl", "gsm8k/test.jsonl", "math/train.jsonl", "math/test.jsonl")
COMPLETED = "completed"
MINING_DONE = "done"  # dsmath_jax.mining.driver.DONE (not imported: reading results needs no Apache Beam)


class QuickstartError(RuntimeError):
    """The quickstart cannot run (missing configs/, benchmark files, an earlier stage); says what to do."""


@dataclasses.dataclass
class Options:
    """What `run_quickstart` runs; the CLI flags of `dsmath quickstart` have the same names."""

    benchmarks_dir: str | None = None  # gsm8k/ and math/ train + test JSONL for the crawl; None: offline arithmetic crawl
    stages: Sequence[str] = STAGES
    steps_scale: float = 1.0  # multiplies the step counts (and their log / eval / checkpoint intervals) of every stage
    eval_samples: int = 8  # k of maj@k / pass@k in the RL stage's held-out evaluation
    eval_problems: int | None = None  # held-out problems of the RL evaluation; None: the RL config's
    mining_iterations: int | None = None  # mining iterations at most; None: the mining config's (tiny: 3)
    crawl_scale: float = 1.0  # size of the synthetic crawl relative to the tiny config's (build_crawl's defaults)
    overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)  # {stage: {key: value}}
    configs_dir: str | None = None  # the repository's configs/; None: beside the package
    plots: bool = True


# ------------------------------------------------------------------------------------------- configs


def configs_dir(path: str | None = None) -> pathlib.Path:
    """The repository's configs/ directory: `path`, else beside the package (a checkout installed with
    `pip install -e .`); QuickstartError when it is not there."""
    root = pathlib.Path(path) if path else pathlib.Path(__file__).resolve().parents[1] / "configs"
    if not (root / "sft" / "arithmetic.py").is_file():
        raise QuickstartError(
            f"the experiment configs are not in {root}: the quickstart reads the repository's configs/ "
            "(configs/mining, configs/pretrain, configs/sft, configs/rl). Install from a checkout with "
            "`pip install -e .`, or pass --configs_dir=path/to/dsmath_jax/configs")
    return root


def load_config(spec: str, root: str | os.PathLike | None = None) -> ml_collections.ConfigDict:
    """A config file as `dsmath <command> --config=configs/<spec>` loads it: "rl/grpo_outcome.py:tiny"."""
    rel, _, arg = spec.partition(":")
    path = configs_dir(os.fspath(root) if root else None) / rel
    if not path.is_file():
        raise QuickstartError(f"config file {path} not found")
    module_spec = importlib.util.spec_from_file_location(f"dsmath_quickstart_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def parse_override(text: str) -> tuple[str, str, Any]:
    """"stage:a.b=value" -> (stage, "a.b", value); the value as a Python literal, else a string."""
    head, eq, raw = text.partition("=")
    stage, colon, key = head.partition(":")
    if not eq or not colon or not key or stage not in STAGES:
        raise ValueError(f"override {text!r}: expected STAGE:KEY=VALUE with STAGE one of {STAGES}, "
                         "e.g. grpo:train.stop_after_steps=2")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return stage, key.strip(), value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any], stage: str) -> None:
    """Sets dotted keys of `config`; a key the config does not have is an error naming the stage and key."""
    for key, value in overrides.items():
        node, parts = config, key.split(".")
        for part in parts[:-1]:
            if part not in node:
                raise QuickstartError(f"override {stage}:{key}: the {stage} config has no {part!r}")
            node = node[part]
        if parts[-1] not in node:
            raise QuickstartError(f"override {stage}:{key}: the {stage} config has no {key!r}")
        try:
            node[parts[-1]] = value
        except (TypeError, ValueError) as e:
            raise QuickstartError(f"override {stage}:{key}={value!r}: {e}") from e


def scaled(n: int, scale: float) -> int:
    """`n` steps scaled by `scale`, at least 1."""
    return max(1, int(round(int(n) * float(scale))))


def _interval(every: int, steps: int, old_steps: int) -> int:
    """An interval (eval, checkpoint, log) of a run of `old_steps` moved to `steps`, kept in 1..steps."""
    every = int(every or 0)
    if every <= 0:
        return every
    return max(1, min(steps, int(round(every * steps / max(old_steps, 1)))))


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


# ------------------------------------------------------------------------------------------- state


def _read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str | os.PathLike, obj: Any) -> None:
    from dsmath_jax.train.rundir import write_json
    write_json(path, obj)


def read_summary(stage_dir: str | os.PathLike) -> dict | None:
    """A stage's own summary: summary.json of a training / RL run, stats.json of a mining run."""
    for name in ("summary.json", "stats.json"):
        path = os.path.join(stage_dir, name)
        if os.path.isfile(path):
            return _read_json(path)
    return None


def stage_completed(workdir: str, stage: str) -> bool:
    """Whether `stage` finished in `workdir`, by its own summary (mining: done with the TFDS corpus)."""
    summary = read_summary(os.path.join(workdir, stage))
    if not summary:
        return False
    if stage == "mine":
        return summary.get("status") == MINING_DONE and os.path.isdir(corpus_tfds_dir(workdir))
    return summary.get("status") == COMPLETED


def corpus_tfds_dir(workdir: str) -> str:
    return os.path.join(workdir, "mine", "tfds", CORPUS_DATASET)


class _State:
    """quickstart_state.json: per stage, its status, the seconds spent (over all invocations), how often it
    ran, when it last started and finished; and the options of the last invocation."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, STATE_FILE)
        self.data = _read_json(self.path) if os.path.isfile(self.path) else {"stages": {}}

    def stage(self, name: str) -> dict:
        return self.data["stages"].setdefault(name, {"status": "pending", "seconds": 0.0, "invocations": 0})

    def save(self) -> None:
        _write_json(self.path, self.data)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------- stages


def _arithmetic_spec(sft_config: ml_collections.ConfigDict) -> dict:
    """The arithmetic task of the SFT config's data (its first `arithmetic` source), else ARITHMETIC_TINY."""
    from dsmath_jax.rl.config import ARITHMETIC_TINY

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


def mine_config(workdir: str, opts: Options, benchmarks_dir: str | None) -> ml_collections.ConfigDict:
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
        sizes = {k: max(1, int(round(defaults[k].default * opts.crawl_scale))) for k in CRAWL_SIZE_KEYS}
        build_crawl(synthetic_crawl_source(config, out), synthetic, seed=int(config.synthetic.seed), **sizes)
    with contextlib.redirect_stdout(sys.stderr):
        stats = run_mining(config, out)
    if stats["status"] == AWAITING_ANNOTATION:
        raise QuickstartError(f"mining waits for the URL-path annotation {stats['annotated_csv']}: the quickstart "
                              "annotates automatically (domains.auto_annotate_fraction); do not override it")
    return stats


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
    from dsmath_jax.rl.arithmetic import texts_for_tokenizer
    from dsmath_jax.rl.tasks import arithmetic_split
    from dsmath_jax.train.rundir import write_atomic
    if os.path.isfile(path):
        return 0
    train, _ = arithmetic_split(spec)
    lines = [json.dumps({"text": t, "id": f"arithmetic/train/{i}"}) for i, t in enumerate(texts_for_tokenizer(train))]
    write_atomic(path, "\n".join(lines) + "\n")
    return len(lines)


def pretrain_config(workdir: str, opts: Options) -> ml_collections.ConfigDict:
    """Table 1's tiny pre-training config on the quickstart's data: the mined corpus and the arithmetic task's
    text half and half, a tokenizer trained on both, and the model of the SFT config."""
    from dsmath_jax.configs import source
    out = os.path.join(workdir, "pretrain")
    c = load_config(STAGE_CONFIGS["pretrain"], opts.configs_dir)
    sft = load_config(STAGE_CONFIGS["sft"], opts.configs_dir)
    c.model = ml_collections.ConfigDict(sft.model.to_dict())  # the model SFT and RL continue
    c.tokenizer.train_vocab_size = int(sft.model.vocab_size)
    texts = os.path.join(out, "data", "arithmetic_train.jsonl")
    c.data.sources = [source("tfds", name=CORPUS_DATASET, weight=0.5),
                      source("corpus", name=ARITHMETIC_CORPUS, files=[texts], weight=0.5)]
    c.data.data_dir = os.path.join(out, "tfds")
    c.data.eval_split = None  # the mined corpus has a train split only
    _scale_train(c, opts.steps_scale)
    apply_overrides(c, opts.overrides.get("pretrain", {}), "pretrain")
    return c


def _scale_train(c: ml_collections.ConfigDict, scale: float, steps_key: str = "train.steps",
                 intervals: Sequence[str] = ("train.log_every", "train.eval_every", "train.checkpoint_every")) -> None:
    """Multiplies the step count `steps_key` by `scale`, moving the `intervals` (and a shortened warm-up) with it."""
    section, name = steps_key.split(".")
    old = int(c[section][name])
    steps = scaled(old, scale)
    c[section][name] = steps
    for key in intervals:
        sec, k = key.split(".")
        c[sec][k] = _interval(c[sec][k], steps, old)
    schedule = c.optimizer.schedule
    if "warmup_steps" in schedule and steps < old:  # a shrunk run still gets most of its steps at the peak
        schedule.warmup_steps = min(int(schedule.warmup_steps), steps // 4)


def pretrain_stage(workdir: str, opts: Options) -> dict:
    from dsmath_jax.train.loop import train
    config = pretrain_config(workdir, opts)
    out = os.path.join(workdir, "pretrain")
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    _write_arithmetic_texts(config.data.sources[1]["files"][0],
                            _arithmetic_spec(load_config(STAGE_CONFIGS["sft"], opts.configs_dir)))
    _copy_corpus(workdir, config.data.data_dir)
    return train(config, out, task="pretrain")


def sft_config(workdir: str, opts: Options) -> ml_collections.ConfigDict:
    """configs/sft/arithmetic.py:tiny from the pre-trained checkpoint, with its tokenizer and model."""
    pre = os.path.abspath(os.path.join(workdir, "pretrain"))
    c = load_config(STAGE_CONFIGS["sft"], opts.configs_dir)
    if os.path.isfile(os.path.join(pre, "config.json")):  # the model pre-training built (else the same, to be)
        c.model = ml_collections.ConfigDict(_read_json(os.path.join(pre, "config.json"))["model"])
    c.init.checkpoint = os.path.join(pre, "checkpoints")
    c.tokenizer.path = os.path.join(pre, "tokenizer.model")
    c.tokenizer.train_vocab_size = None
    _scale_train(c, opts.steps_scale)
    apply_overrides(c, opts.overrides.get("sft", {}), "sft")
    return c


def sft_stage(workdir: str, opts: Options) -> dict:
    from dsmath_jax.train.loop import train
    from dsmath_jax.train.rundir import copy_atomic
    if not stage_completed(workdir, "pretrain"):
        raise QuickstartError("the sft stage starts from the pretrain stage's checkpoint, which has not completed: "
                              "run the pretrain stage first (--stages=pretrain,sft,...)")
    config = sft_config(workdir, opts)
    out = os.path.join(workdir, "sft")
    os.makedirs(out, exist_ok=True)
    own = os.path.join(out, "tokenizer.model")  # the run directory carries its tokenizer (RL and eval read it)
    if not os.path.isfile(own):
        copy_atomic(config.tokenizer.path, own)
    return train(config, out, task="sft")


def grpo_config(workdir: str, opts: Options) -> ml_collections.ConfigDict:
    """configs/rl/grpo_outcome.py:tiny from the SFT run, with maj@k / pass@k (k = eval_samples)."""
    c = load_config(STAGE_CONFIGS["grpo"], opts.configs_dir)
    c.init.run_dir = os.path.abspath(os.path.join(workdir, "sft"))
    _scale_train(c, opts.steps_scale, "train.steps_per_iteration",
                 ("train.log_every", "train.checkpoint_every", "eval.every"))
    c.eval.samples = int(opts.eval_samples)
    c.eval.at_start = True
    if opts.eval_problems is not None:
        c.eval.n_problems = int(opts.eval_problems)
    apply_overrides(c, opts.overrides.get("grpo", {}), "grpo")
    return c


def grpo_stage(workdir: str, opts: Options) -> dict:
    from dsmath_jax.rl.loop import run_rl
    if not stage_completed(workdir, "sft"):
        raise QuickstartError("the grpo stage starts from the sft stage's policy, which has not completed: "
                              "run the sft stage first (--stages=sft,grpo)")
    return run_rl(grpo_config(workdir, opts), os.path.join(workdir, "grpo"))


STAGE_FUNCTIONS: dict[str, Callable[..., dict]] = {
    "mine": lambda workdir, opts, bdir: mine_stage(workdir, opts, bdir),
    "pretrain": lambda workdir, opts, bdir: pretrain_stage(workdir, opts),
    "sft": lambda workdir, opts, bdir: sft_stage(workdir, opts),
    "grpo": lambda workdir, opts, bdir: grpo_stage(workdir, opts),
}


# ------------------------------------------------------------------------------------------- results


def _stage_status(workdir: str, stage: str) -> str:
    if stage_completed(workdir, stage):
        return COMPLETED
    summary = read_summary(os.path.join(workdir, stage))
    if summary:
        return str(summary.get("status", "running"))
    return "started" if os.path.isdir(os.path.join(workdir, stage)) else "pending"


def _mine_results(path: str) -> dict:
    from dsmath_jax import analysis as A
    run = A.load_mining_run(path)
    table = A.mining_iteration_table(run)
    counts = A.dedup_counts(run)
    keys = ("iteration", "scored_pages", "collected_pages", "decontaminated_pages", "corpus_pages", "corpus_tokens",
            "new_pages", "new_tokens", "new_fraction", "math_domains")
    out = {"stage0": {k: counts.get(k, 0) for k in ("pages_read", "url_duplicates", "near_duplicates", "pages_kept")},
           "iterations": [{k: r[k] for k in keys} for r in table]}
    if run.get("final"):
        out["corpus"] = {"iteration": run["final"]["iteration"], "pages": run["final"]["pages"],
                         "tokens": run["final"]["tokens"], "tfds_dir": run["final"].get("tfds_dir")}
    return out


def _training_results(path: str) -> dict:
    from dsmath_jax import analysis as A
    run = A.load_training_run(path)
    s = A.training_summary(run)
    summary = run.get("summary") or {}
    curve = A.training_curves(run).get("loss")
    return {"steps": summary.get("step", s["step"]), "final_loss": summary.get("loss", s["loss"]),
            "first_logged_loss": float(curve["value"][0]) if curve else None,
            "eval_loss_last": s["eval_loss_last"], "tokens_per_s": s["tokens_per_s"], "tokens_seen": s["tokens_seen"]}


def _rl_results(path: str) -> dict:
    from dsmath_jax import analysis as A
    run = A.load_rl_run(path)
    summary = run.get("summary") or {}
    curves = A.rl_curves(run)
    out: dict[str, Any] = {"steps": summary.get("step"), "method": summary.get("method"),
                           "reward": summary.get("reward")}
    if "reward_mean" in curves:
        steps, values = curves["reward_mean"]
        q = max(1, len(values) // 4)
        out["reward_curve"] = {"logged_steps": len(values), "first": float(values[0]), "last": float(values[-1]),
                               "max": float(values.max()), "mean_first_quarter": float(values[:q].mean()),
                               "mean_last_quarter": float(values[-q:].mean())}
    for key in ("accuracy", "kl", "response_length"):
        if key in curves:
            out[f"{key}_first"], out[f"{key}_last"] = float(curves[key][1][0]), float(curves[key][1][-1])
    history = A.eval_history(run)
    k = A.eval_k(history)
    out["k"] = k
    before, after = summary.get("initial_eval"), summary.get("final_eval")
    if before and after:
        names = {"eval_accuracy": "greedy", "eval_sample_accuracy": "sample"}
        if k:
            names.update({f"eval_maj@{k}": f"maj@{k}", f"eval_pass@{k}": f"pass@{k}"})
        out["before"] = {"step": before["step"], **{v: before.get(key) for key, v in names.items()}}
        out["after"] = {"step": after["step"], **{v: after.get(key) for key, v in names.items()}}
    out["eval_history"] = history
    return out


def tokenizer_coverage(workdir: str, max_docs: int = 100) -> dict:
    """How the pre-training tokenizer covers its two sources, on up to `max_docs` documents of each: characters
    per token and the share of byte-fallback tokens (pieces `<0x..>`: text the vocabulary does not cover)."""
    import re

    from dsmath_jax import analysis as A
    from dsmath_jax.data.tokenizers import load_tokenizer
    tok = load_tokenizer(os.path.join(workdir, "pretrain", "tokenizer.model"))
    byte_piece = re.compile(r"<0x[0-9A-F]{2}>")
    is_byte = [bool(byte_piece.fullmatch(tok.id_to_token(i))) for i in range(tok.vocab_size)]
    final = (A.load_mining_run(os.path.join(workdir, "mine")).get("final") or {}).get("corpus")
    sources = {
        "mined_corpus": A.iter_jsonl_shards(os.path.join(final, "pages-*.jsonl*")) if final else iter(()),
        "arithmetic": A.iter_jsonl_shards(os.path.join(workdir, "pretrain", "data", "arithmetic_train.jsonl")),
    }
    out: dict[str, Any] = {"vocab_size": tok.vocab_size}
    for name, records in sources.items():
        chars = tokens = byte_tokens = docs = 0
        for record in records:
            ids = tok.encode(record["text"])
            chars, tokens, docs = chars + len(record["text"]), tokens + len(ids), docs + 1
            byte_tokens += sum(is_byte[i] for i in ids)
            if docs >= max_docs:
                break
        out[name] = {"docs": docs, "chars_per_token": chars / tokens if tokens else None,
                     "byte_fallback_fraction": byte_tokens / tokens if tokens else None}
    return out


def _pretrain_results(path: str) -> dict:
    out = _training_results(path)
    workdir = os.path.dirname(os.path.abspath(path))
    config = _read_json(os.path.join(path, "config.json"))
    out["sources"] = [{k: s.get(k) for k in ("kind", "name", "weight")} for s in config["data"]["sources"]]
    out["tokenizer"] = tokenizer_coverage(workdir)
    return out


STAGE_RESULTS = {"mine": _mine_results, "pretrain": _pretrain_results, "sft": _training_results,
                 "grpo": _rl_results}


def collect_results(workdir: str, state: Mapping[str, Any] | None = None) -> dict:
    """results.json's content from the stages' own files and the quickstart state."""
    state = state or (_read_json(os.path.join(workdir, STATE_FILE)) if os.path.isfile(
        os.path.join(workdir, STATE_FILE)) else {"stages": {}})
    results: dict[str, Any] = {"workdir": os.path.abspath(workdir), "options": state.get("options", {}),
                               "stages": {}}
    for stage in STAGES:
        path = os.path.join(workdir, stage)
        record = dict(state.get("stages", {}).get(stage, {}))
        status = _stage_status(workdir, stage)
        if record.get("status") == "failed" and status != COMPLETED:  # raised an error in its last invocation
            status = "failed"
        entry = {"status": status, "dir": stage,
                 "seconds": round(float(record.get("seconds", 0.0)), 1),
                 "invocations": int(record.get("invocations", 0)),
                 "config": STAGE_CONFIGS[stage]}
        if entry["status"] not in ("pending", "started", "failed"):
            try:
                entry.update(STAGE_RESULTS[stage](path))
            except (OSError, KeyError, ValueError) as e:  # a stage's files that cannot be read yet
                entry["error"] = f"{type(e).__name__}: {e}"
        results["stages"][stage] = entry
    results["stopped_at"] = state.get("stopped_at")
    results["total_seconds"] = round(sum(s["seconds"] for s in results["stages"].values()), 1)
    results["completed"] = all(s["status"] == COMPLETED for s in results["stages"].values())
    return results


def make_plots(workdir: str, results: Mapping[str, Any]) -> list[str]:
    """The figures of the finished stages as PNG files in <workdir>/plots (the notebooks' names)."""
    from dsmath_jax import analysis as A
    plots = os.path.join(workdir, PLOTS_DIR)
    stages = results["stages"]
    written = []

    def save(fig, name):
        written.append(os.path.relpath(A.save_figure(fig, plots, name), workdir))

    if stages["mine"]["status"] == COMPLETED:
        run = A.load_mining_run(os.path.join(workdir, "mine"))
        save(A.mining_iterations_figure(A.mining_iteration_table(run)), "mining_iterations")
        save(A.domains_figure(run), "mining_domains")
        save(A.dedup_figure(run), "mining_dedup_decontamination")
    runs = [A.load_training_run(os.path.join(workdir, s), name=s) for s in ("pretrain", "sft")
            if stages[s]["status"] not in ("pending", "started")
            and os.path.isfile(os.path.join(workdir, s, "metrics.jsonl"))]
    if runs:
        save(A.training_figure(runs, x="step"), "training_curves_step")
    if stages["grpo"]["status"] not in ("pending", "started") and \
            os.path.isfile(os.path.join(workdir, "grpo", "metrics.jsonl")):
        run = A.load_rl_run(os.path.join(workdir, "grpo"))
        history = A.eval_history(run)
        save(A.rl_training_figure(run), "rl_training")
        save(A.eval_accuracy_figure(history, title="held-out accuracy during GRPO"), "rl_eval_accuracy")
        save(A.maj_pass_figure({"grpo": A.maj_pass_before_after(history)}), "rl_maj_pass")
    return written


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def command_line(results: Mapping[str, Any]) -> str:
    """The `dsmath quickstart` command that runs (or resumes) this run directory with its options."""
    o = results.get("options") or {}
    default = Options()
    parts = ["dsmath quickstart", f"--workdir={results['workdir']}"]
    if o.get("benchmarks_dir"):
        parts.append(f"--benchmarks_dir={o['benchmarks_dir']}")
    if o.get("stages") and list(o["stages"]) != list(STAGES):
        parts.append(f"--stages={','.join(o['stages'])}")
    for key in ("steps_scale", "eval_samples", "eval_problems", "mining_iterations", "crawl_scale", "configs_dir"):
        if key in o and o[key] != getattr(default, key):
            parts.append(f"--{key}={o[key]}")
    for stage, items in (o.get("overrides") or {}).items():
        parts += [f"--set={stage}:{k}={v!r}" if isinstance(v, str) else f"--set={stage}:{k}={v}"
                  for k, v in items.items()]
    if o.get("plots") is False:
        parts.append("--noplots")
    return " ".join(parts)


def render_report(results: Mapping[str, Any]) -> str:
    """report.md: what ran, the numbers, the before/after table, the figures, how to explore further."""
    st = results["stages"]
    wd = results["workdir"]
    done = ("All stages completed" if results["completed"] else
            "Not every stage has completed (run the same command again to continue)")
    lines = ["# dsmath quickstart", "",
             f"Run directory `{wd}`: the DeepSeekMath pipeline at tiny scale, from mining a corpus to GRPO. "
             f"{done}; {results['total_seconds']:.0f} s of stage time in all.", "",
             f"Command: `{command_line(results)}`", "",
             "| stage | config | status | time (s) | key numbers |", "|---|---|---|---|---|"]

    def key_numbers(name: str, s: Mapping[str, Any]) -> str:
        if s["status"] in ("pending", "started", "failed") or "error" in s:
            return s.get("error", "")
        if name == "mine" and s.get("corpus"):
            return (f"{s['corpus']['pages']} pages, {s['corpus']['tokens']} tokens after "
                    f"{len(s.get('iterations', []))} iterations")
        if name in ("pretrain", "sft"):
            return f"{s.get('steps')} steps, final loss {_fmt(s.get('final_loss'))}"
        if name == "grpo":
            rc = s.get("reward_curve") or {}
            return (f"{s.get('steps')} steps, reward {_fmt(rc.get('first'))} -> {_fmt(rc.get('last'))}; "
                    f"greedy accuracy {_fmt((s.get('before') or {}).get('greedy'))} -> "
                    f"{_fmt((s.get('after') or {}).get('greedy'))}")
        return ""

    for name in STAGES:
        s = st[name]
        lines.append(f"| `{name}/` | `configs/{s['config']}` | {s['status']} | {s['seconds']:.0f} | "
                     f"{key_numbers(name, s)} |")
    plots = set(results.get("plots", []))

    def figure(name: str, caption: str) -> list[str]:
        rel = f"{PLOTS_DIR}/{name}.png"
        return [f"![{caption}]({rel})", ""] if rel in plots else []

    m = st["mine"]
    if m.get("iterations"):
        crawl = ("GSM8K / MATH train problems and prose, decontaminated against GSM8K / MATH test"
                 if (results.get("options") or {}).get("benchmarks_dir") else
                 "math pages made by the arithmetic task's generator, and prose, decontaminated against the "
                 "held-out problems GRPO is evaluated on")
        lines += ["", "## Mining (paper §2.1)", "", f"The synthetic crawl: {crawl}.",
                  f"Stage 0 read {m['stage0']['pages_read']} pages and kept {m['stage0']['pages_kept']} "
                  f"({m['stage0']['url_duplicates']} URL duplicates, {m['stage0']['near_duplicates']} near-duplicates "
                  "removed). Per iteration:", "",
                  "| iteration | scored pages | collected | decontaminated | corpus pages | corpus tokens "
                  "| new pages | new tokens | math domains |", "|---|---|---|---|---|---|---|---|---|"]
        for r in m["iterations"]:
            lines.append("| " + " | ".join(str(r[k]) for k in (
                "iteration", "scored_pages", "collected_pages", "decontaminated_pages", "corpus_pages",
                "corpus_tokens", "new_pages", "new_tokens", "math_domains")) + " |")
        lines += [""] + figure("mining_iterations", "pages and tokens per mining iteration") \
            + figure("mining_domains", "math-related domains") \
            + figure("mining_dedup_decontamination", "dedup and decontamination")
    if any(st[s].get("final_loss") is not None for s in ("pretrain", "sft")):
        lines += ["## Pre-training and SFT", "", "| run | steps | first logged loss | final loss | tokens/s |",
                  "|---|---|---|---|---|"]
        for s in ("pretrain", "sft"):
            if st[s].get("steps") is not None:
                lines.append(f"| `{s}/` | {st[s]['steps']} | {_fmt(st[s].get('first_logged_loss'))} | "
                             f"{_fmt(st[s].get('final_loss'))} | {_fmt(st[s].get('tokens_per_s'), 0)} |")
        tok = st["pretrain"].get("tokenizer")
        if tok:
            cover = "; ".join(f"{name.replace('_', ' ')}: {_fmt(tok[name]['chars_per_token'], 2)} characters per "
                              f"token, {100 * (tok[name]['byte_fallback_fraction'] or 0):.2f}% byte-fallback tokens"
                              for name in ("mined_corpus", "arithmetic") if tok.get(name, {}).get("docs"))
            lines += ["", f"Pre-training mixes the mined corpus and the arithmetic task's text half and half; its "
                          f"{tok['vocab_size']}-piece sentencepiece tokenizer was trained on both ({cover}), and SFT "
                          "and GRPO use it."]
        lines += [""] + figure("training_curves_step", "training curves")
    g = st["grpo"]
    if g.get("before") and g.get("after"):
        k = g.get("k")
        rows = [("greedy accuracy", "greedy")] + ([(f"maj@{k}", f"maj@{k}"), (f"pass@{k}", f"pass@{k}"),
                                                  ("sampled accuracy (T = 0.7)", "sample")] if k else [])
        lines += ["## GRPO: held-out accuracy before and after RL", "",
                  f"Held-out problems of the arithmetic task, greedy decoding and {k or 0} samples per problem "
                  f"(step {g['before']['step']} = the SFT policy, step {g['after']['step']} = after GRPO).", "",
                  "| metric | before | after | change |", "|---|---|---|---|"]
        for label, key in rows:
            b, a = g["before"].get(key), g["after"].get(key)
            change = f"{a - b:+.3f}" if a is not None and b is not None else "-"
            lines.append(f"| {label} | {_fmt(b)} | {_fmt(a)} | {change} |")
        rc = g.get("reward_curve") or {}
        if rc:
            lines += ["", f"Training reward (the mean over each step's groups of {g.get('reward')} rewards): "
                          f"{_fmt(rc.get('first'))} at the first logged step, {_fmt(rc.get('last'))} at the last; "
                          f"{_fmt(rc.get('mean_first_quarter'))} averaged over the first quarter of the logged steps, "
                          f"{_fmt(rc.get('mean_last_quarter'))} over the last quarter."]
        lines += ["", "In the paper (Figure 7) RL raises maj@k but not pass@k: it makes the model's output "
                      "distribution more robust rather than adding capabilities. A tiny model over a few dozen steps "
                      "is noisy; `experiments/rl_paradigm_tiny.py` repeats this over seeds.", ""]
        lines += figure("rl_training", "GRPO training curves") + figure("rl_eval_accuracy", "held-out accuracy") \
            + figure("rl_maj_pass", "maj@k and pass@k before and after RL")
    lines += ["## Explore further", "",
              "The notebooks read this run directory's layout (`mine/`, `pretrain/`, `sft/`, `grpo/`):", "",
              "```bash", 'pip install -e ".[notebooks]"',
              f"DSMATH_RUN_DIR={wd} jupyter lab notebooks/   # corpus_mining, training_curves, rl_analysis",
              "```", "", "Each stage is an ordinary run directory; continue or vary one with the stage's command:", "",
              "```bash",
              f"dsmath mine --config=configs/mining/deepseekmath_corpus.py:tiny --workdir={wd}/mine_more "
              + ("--config.synthetic.benchmarks_dir=DIR --config.decontamination.benchmarks_dir=DIR "
                 if (results.get("options") or {}).get("benchmarks_dir") else "--config.synthetic.source=arithmetic ")
              + "--config.iterations.max=4",
              f"dsmath sft --config=configs/sft/arithmetic.py:tiny --workdir={wd}/sft_longer "
              f"--config.init.checkpoint={wd}/pretrain/checkpoints "
              f"--config.tokenizer.path={wd}/pretrain/tokenizer.model --config.train.steps=600",
              f"dsmath rl --config=configs/rl/grpo_outcome.py:tiny --workdir={wd}/grpo_longer "
              f"--config.init.run_dir={wd}/sft --config.eval.samples=8 --config.train.steps_per_iteration=100",
              f"python experiments/rl_paradigm_tiny.py --out {wd}/paradigm   # Figure 5 (rl_analysis reads it)",
              "```", "", f"Numbers: `{RESULTS_FILE}`; figures: `{PLOTS_DIR}/`; per-stage details: each stage's "
              "`summary.json` (mining: `stats.json`) and `metrics.jsonl`.", ""]
    return "\n".join(lines)


def write_outputs(workdir: str, *, plots: bool = True) -> dict:
    """Writes results.json, the plots and report.md from what the stages left in `workdir`."""
    from dsmath_jax.train.rundir import write_atomic
    results = collect_results(workdir)
    if plots:
        try:
            results["plots"] = make_plots(workdir, results)
        except ImportError as e:  # matplotlib is in the notebooks / test extras
            log.warning("no plots: %s", e)
            results["plots"] = []
    else:
        results["plots"] = []
    _write_json(os.path.join(workdir, RESULTS_FILE), results)
    write_atomic(os.path.join(workdir, REPORT_FILE), render_report(results))
    return results


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
    unknown = set(opts.overrides) - set(STAGES)
    if unknown:
        raise QuickstartError(f"overrides for unknown stage(s) {sorted(unknown)}: stages are {', '.join(STAGES)}")
    if opts.steps_scale <= 0 or opts.crawl_scale <= 0:
        raise QuickstartError(f"steps_scale and crawl_scale must be > 0, got {opts.steps_scale} and "
                              f"{opts.crawl_scale}")
    configs_dir(opts.configs_dir)  # fail before any work when configs/ is missing
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
    state = _State(workdir)
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
            record.update(status="running", started_at=_now(), invocations=int(record.get("invocations", 0)) + 1)
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
            record["status"] = _stage_status(workdir, stage)
            record["finished_at"] = _now()
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


__all__ = ["Options", "QuickstartError", "STAGES", "STAGE_CONFIGS", "run_quickstart", "resolve_benchmarks_dir",
           "load_config", "configs_dir", "parse_override", "apply_overrides", "collect_results", "write_outputs",
           "render_report", "make_plots", "stage_completed", "mine_config", "pretrain_config", "sft_config",
           "grpo_config"]
