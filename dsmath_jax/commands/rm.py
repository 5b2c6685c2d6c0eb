r"""`dsmath rm`: label a policy's samples and train an outcome or process reward model (PAPER.md §4).

  dsmath rm --config=configs/rm/orm.py:tiny --workdir=runs/orm_tiny --config.init.run_dir=runs/sft_tiny
  dsmath rm --config=configs/rm/prm_math_shepherd.py:tiny --workdir=runs/prm_tiny \
      --config.init.run_dir=runs/sft_tiny

1. Labels (skipped when ``<workdir>/labels.npz`` exists, so a rerun reuses them): the generator policy
   (``init.run_dir``: a ``dsmath sft`` run or a Hugging Face directory) samples
   ``sampling.samples_per_problem`` completions for each training problem of ``data.problems``; each is
   labelled by the rule checker (ORM: is the final answer right?) or with Math-Shepherd step labels (PRM,
   ``labels.mode`` hard / soft from ``labels.n`` continuations per step; :mod:`dsmath_jax.rl.math_shepherd`).
   Problems are split into train and validation (``data.validation_fraction``; all samples of a problem
   land on the same side). Written atomically.
2. Training: a :class:`~dsmath_jax.model.ScalarHeadModel` whose trunk starts from ``init.rm_init_dir`` (the
   paper's DeepSeekMath-Base 7B) or, when unset, from the policy; BCE on the scored positions
   (:mod:`dsmath_jax.rl.reward_model`) with the shared sharded train step and AdamW. Checkpoints in
   ``<workdir>/checkpoints`` (a rerun resumes from the latest; SIGTERM saves and stops), metrics in
   ``metrics.jsonl`` (held-out loss / accuracy as ``eval_*``), ``summary.json`` at the end.

The workdir also gets ``config.json`` and the tokenizer (``tokenizer.model`` or ``tokenizer.json``), so
``RewardModel.load(workdir, mesh)`` rebuilds the trained reward model.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
from typing import Any

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from dsmath_jax.commands.common import run_command
from dsmath_jax.data.tasks import load_problems, prompt_text
from dsmath_jax.data.tokenizers import check_tokenizer_fits, load_tokenizer
from dsmath_jax.evals.grader import Grader
from dsmath_jax.generate.engine import make_sampler
from dsmath_jax.generate.sampler import SamplingParams
from dsmath_jax.model import ModelConfig
from dsmath_jax.rl.loop import check_architecture
from dsmath_jax.rl.math_shepherd import math_shepherd_labels
from dsmath_jax.rl.replay import pack_examples, unpack_examples
from dsmath_jax.rl.reward_model import KINDS, RewardModel, orm_examples
from dsmath_jax.train.loop import optimizer_from_config, start_run
from dsmath_jax.train.restore import load_run
from dsmath_jax.train.rundir import copy_atomic, write_atomic
from dsmath_jax.train.runner import Runner, StepInfo
from dsmath_jax.train.step import TrainState

log = logging.getLogger(__name__)

LABELS_FILE = "labels.npz"
_SPLIT_KEY, _STATS_KEY = "__validation__", "__stats_json__"


def main(argv: list[str]) -> int:
    return run_command(_main, argv, "dsmath rm", plannable=True)


def _main(flags) -> int:
    summary = run(flags.config, flags.workdir)
    print(json.dumps(summary))
    return 0


def _as_dict(cfg) -> dict:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------------------------------- labels
def save_labels(path: str, examples: list[dict], validation: np.ndarray, stats: dict) -> None:
    """Writes labelled examples (packed), their validation flags and the labelling stats, atomically."""
    arrays = pack_examples(examples)
    arrays[_SPLIT_KEY] = np.asarray(validation, bool)
    arrays[_STATS_KEY] = np.asarray(json.dumps(stats))
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as the allow_pickle flag
    write_atomic(path, buf.getvalue())


def load_labels(path: str) -> tuple[list[dict], np.ndarray, dict]:
    """(examples, validation flags, stats) of a labels file written by :func:`save_labels`."""
    try:
        with np.load(io.BytesIO(epath.Path(path).read_bytes()), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the labels file {path} (delete it to label again): {e}") from e
    if _SPLIT_KEY not in arrays or _STATS_KEY not in arrays:
        raise ValueError(f"{path} is not a labels file of `dsmath rm` (no {_SPLIT_KEY} / {_STATS_KEY}); delete it "
                         "to label again")
    validation = arrays.pop(_SPLIT_KEY)
    stats = json.loads(str(arrays.pop(_STATS_KEY)))
    examples = unpack_examples(arrays)
    if len(examples) != len(validation):
        raise ValueError(f"{path}: {len(examples)} examples but {len(validation)} split flags")
    return examples, validation, stats


def _problems(config):
    data = config.data
    out = []
    for spec in data.problems:
        spec = _as_dict(spec)
        if data.get("limit_per_source"):
            spec["limit"] = data.limit_per_source
        out.extend(load_problems(spec, data.get("split", "train"), data_dir=data.get("data_dir"),
                                 benchmarks_dir=data.get("benchmarks_dir")))
    if not out:
        raise ValueError("config.data.problems gave no problems")
    return out


def _validation_flags(problem_index: np.ndarray, num_problems: int, fraction: float, seed: int) -> np.ndarray:
    """Whole problems go to validation: the first round(fraction * problems) of a seeded permutation."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.validation_fraction must be in [0, 1), got {fraction}")
    n_val = int(round(fraction * num_problems))
    if fraction > 0 and num_problems > 1:
        n_val = min(max(n_val, 1), num_problems - 1)
    held_out = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7]).permutation(num_problems)[:n_val]
    return np.isin(problem_index, held_out)


def label(config, policy, tokenizer, mesh, rules) -> tuple[list[dict], np.ndarray, dict]:
    """Samples the policy on the training problems and labels the samples (ORM: rule reward; PRM:
    Math-Shepherd). Returns (examples, validation flags, stats)."""
    problems = _problems(config)
    s = config.sampling
    sampler = make_sampler(s.batching, policy, tokenizer, rows=s.batch_size, mesh=mesh, rules=rules)
    prompt_ids = sampler.encode_prompts([prompt_text(p, config.data.template) for p in problems])
    k = s.samples_per_problem
    params = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                            top_p=s.top_p, n=k, seed=s.seed)
    log.info("sampling %d completions for each of %d problems", k, len(problems))
    groups = sampler.generate(prompt_ids, params, progress=True)
    rows = [(i, c) for i, group in enumerate(groups) for c in group]
    prompts = [prompt_ids[i] for i, _ in rows]
    golds, kinds = [problems[i].answer for i, _ in rows], [problems[i].kind for i, _ in rows]
    counts: collections.Counter = collections.Counter()  # what labelling counts; the fractions come after
    counts["problems"], counts["completions"] = len(problems), len(rows)
    counts["completions_cut_at_length"] = sum(c.finish_reason == "length" for _, c in rows)
    kind = config.kind
    with Grader(max_workers=config.grader.workers, timeout=config.grader.timeout) as grader:
        if kind == "orm":
            verdicts = grader.grade([(c.text, g, kd, None) for (_, c), g, kd in zip(rows, golds, kinds)])
            labels = [float(v.correct) for v in verdicts]
            examples = orm_examples(prompts, [c.tokens for _, c in rows], labels)
            keep = list(range(len(rows)))
        else:
            lab = config.labels
            cont = SamplingParams(max_new_tokens=lab.max_new_tokens, temperature=lab.temperature,
                                  top_p=s.top_p, seed=lab.seed)
            examples = math_shepherd_labels(sampler, grader, prompts, [c.tokens for _, c in rows], golds, kinds,
                                            tokenizer, n=lab.n, mode=lab.mode, sampling=cont, stats=counts,
                                            progress=True)
            keep = [r for r, (_, c) in enumerate(rows) if c.tokens]  # math_shepherd_labels skips empty ones
    problem_index = np.asarray([rows[r][0] for r in keep], np.int64)
    for ex, p in zip(examples, problem_index):
        ex["problem"] = np.int64(p)
    outcome = np.asarray([float(ex["label"]) for ex in examples], np.float64)
    stats: dict[str, Any] = dict(counts)
    stats["policy_accuracy"] = float(outcome.mean()) if len(outcome) else 0.0
    if kind == "prm":
        step_labels = np.concatenate([ex["step_labels"] for ex in examples]) if examples else np.zeros(0)
        stats["mean_step_label"] = float(step_labels.mean()) if len(step_labels) else 0.0
    validation = _validation_flags(problem_index, len(problems), config.data.validation_fraction,
                                   config.seed)
    stats["train_examples"], stats["validation_examples"] = int((~validation).sum()), int(validation.sum())
    return examples, validation, stats


# ------------------------------------------------------------------------------------------- run
def _copy_tokenizer(tokenizer, workdir: str) -> None:
    """Puts the tokenizer's files into the workdir (tokenizer.model, or tokenizer.json and its configs)."""
    src = tokenizer.path
    if not src:
        raise ValueError("the policy's tokenizer has no path to copy into the reward model's run directory")
    if src.endswith(".model"):
        files = [(src, "tokenizer.model")]
    else:
        folder = epath.Path(src).parent
        files = [(folder / n, n) for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
                 if (folder / n).exists()]
    for path, name in files:
        dest = os.path.join(workdir, name)
        if not epath.Path(dest).exists():  # also when the tokenizer already lives in the workdir
            copy_atomic(path, dest)


def _load_model(path: str, config, mesh, rules):
    overrides = {k: v for k, v in _as_dict(config.model).items() if v is not None and k != "preset"}
    return load_run(path, mesh=mesh, rules=rules, step=config.init.get("step"), **overrides)


def run(config, workdir: str) -> dict[str, Any]:
    """Labels (or reuses the labels of) and trains (or resumes) a reward model in `workdir`; returns the
    summary (also written as summary.json)."""
    if config.kind not in KINDS:
        raise ValueError(f"config.kind must be one of {KINDS}, got {config.kind!r}")
    modes = ("outcome",) if config.kind == "orm" else ("hard", "soft")
    if config.labels.mode not in modes:
        raise ValueError(f"config.labels.mode={config.labels.mode!r}: an {config.kind.upper()} is labelled with one of "
                         f"{modes} (outcome: the rule reward; hard / soft: Math-Shepherd step labels)")
    if not config.init.get("run_dir"):
        raise ValueError("config.init.run_dir is required: the generator policy (a `dsmath sft` run directory or "
                         "a Hugging Face model directory), e.g. --config.init.run_dir=runs/sft_tiny")
    mesh, rules = start_run(config, workdir)
    tcfg = config.train
    total, eval_every = tcfg.steps, tcfg.eval_every
    log_every, ckpt_every = max(tcfg.log_every, 1), max(tcfg.checkpoint_every, 1)
    runner = Runner(workdir, total_steps=total, checkpoint_every=ckpt_every,
                    keep_checkpoints=tcfg.keep_checkpoints,
                    async_checkpoint=tcfg.async_checkpoint, log_every=log_every,
                    tensorboard=tcfg.tensorboard, max_nonfinite_in_a_row=None, name="the reward model",
                    logger=log)
    latest = runner.latest_step()
    labels_path = os.path.join(workdir, LABELS_FILE)
    have_labels = epath.Path(labels_path).exists()

    policy = tokenizer = None
    if not have_labels or latest is None:
        policy, tokenizer = _load_model(config.init.run_dir, config, mesh, rules)
        check_architecture(policy.config, config.model.get("preset"), config.init.run_dir)
        if jax.process_index() == 0:
            _copy_tokenizer(tokenizer, workdir)
        _sync("rm_tokenizer")
    else:
        tokenizer = load_tokenizer(workdir)
    if have_labels:
        examples, validation, label_stats = load_labels(labels_path)
        log.info("reusing %d labelled examples from %s", len(examples), labels_path)
    else:
        examples, validation, label_stats = label(config, policy, tokenizer, mesh, rules)
        if jax.process_index() == 0:
            save_labels(labels_path, examples, validation, label_stats)
        _sync("rm_labels")
        log.info("labelled %d examples: %s", len(examples), label_stats)
    train_examples = [ex for ex, v in zip(examples, validation) if not v]
    val_examples = [ex for ex, v in zip(examples, validation) if v]
    if not train_examples:
        raise ValueError(f"no training examples in {labels_path} ({len(examples)} labelled, all held out)")

    layout = dict(seq_len=config.data.seq_len, pad_id=tokenizer.pad_id if tokenizer.pad_id is not None else 0,
                  max_steps=config.data.max_steps, tokenizer=tokenizer)
    if latest is None:
        assert policy is not None  # loaded above whenever there is no checkpoint
        base = policy
        if config.init.get("rm_init_dir"):
            base, _ = _load_model(config.init.rm_init_dir, config, mesh, rules)
            check_tokenizer_fits(tokenizer, base.config.vocab_size, what=f"reward model init {config.init.rm_init_dir}")
        rm = RewardModel.init_from_lm(base, config.kind, mesh, rules, seed=config.seed, **layout)
        del base
    else:
        meta = runner.checkpointer.metadata(latest)
        if meta.get("kind") != config.kind:
            raise ValueError(f"{workdir}/checkpoints holds a {meta.get('kind')!r} reward model but config.kind is "
                             f"{config.kind!r}: use another workdir")
        rm = RewardModel.abstract(ModelConfig.from_dict(meta["model"]), config.kind, mesh, rules, **layout)
    del policy
    optimizer, schedule = optimizer_from_config(config)
    trainer = rm.make_trainer(optimizer, tcfg.accum_steps, schedule=schedule)

    def restore(step: int) -> None:
        target = trainer.abstract_state()
        restored = runner.checkpointer.restore(step, {"params": target.params, "opt_state": target.opt_state})
        trainer.set_state(TrainState(step=np.int32(step), params=restored["params"],
                                     opt_state=restored["opt_state"]))

    runner.resume(restore)
    batch_size, seed = tcfg.batch_size, tcfg.seed
    eval_bs = tcfg.eval_batch_size
    last_train, last_eval = {}, {}

    def train_chunk(step: int) -> StepInfo:
        """Trains up to the next log, evaluation or checkpoint step; every call logs its averages."""
        nonlocal last_train
        chunk = min(log_every - step % log_every, ckpt_every - step % ckpt_every, total - step)
        if eval_every:
            chunk = min(chunk, eval_every - step % eval_every)
        last_train = trainer.train(train_examples, chunk, batch_size, seed, start=step)
        return StepInfo(trainer.step, {k: v for k, v in last_train.items() if k != "step"}, log=True)

    def evaluate(_info: StepInfo) -> dict:
        """Held-out loss and accuracy (nothing without validation examples)."""
        nonlocal last_eval
        if val_examples:
            last_eval = {f"eval_{k}": v for k, v in rm.evaluate(val_examples, eval_bs).items()}
        return last_eval

    # During the run every `eval_every` steps; at the end once the final checkpoint is saved (a rerun of a
    # finished run recomputes it for the summary without a second record).
    runner.add_hook(evaluate, every=eval_every, at_finish=True)

    def checkpoint(step: int) -> tuple[dict, dict]:
        return ({"params": trainer.state.params, "opt_state": trainer.state.opt_state},
                dict(rm.layout(), step=step, examples=len(train_examples)))

    result = runner.run(train_chunk, checkpoint)
    summary = {"status": result.status, "kind": config.kind, "step": result.step, "train": last_train,
               "eval": last_eval, "labels": label_stats, "train_examples": len(train_examples),
               "validation_examples": len(val_examples), "workdir": workdir}
    runner.write_summary(summary)
    log.info("reward model (%s) %s at step %d: %s", config.kind, result.status, result.step, last_eval)
    return summary
