"""Pre-training and SFT: their set-up, and the step and hooks they plug into the shared run loop
(:class:`~dsmath_jax.train.runner.Runner`).

`train(config, workdir, task="pretrain" | "sft")`:
  start-up (multi-host, mesh) -> tokenizer (given, or trained on the training data for small runs) ->
  model (fresh, from a Hugging Face directory, or params from a checkpoint) -> optimizer and schedule ->
  resume from `<workdir>/checkpoints` if a checkpoint is there -> the loop.

Checkpoints hold params, optimizer state and the data iterator together, so a resumed run sees exactly the
batches it would have seen; SIGTERM (TPU preemption) saves and exits cleanly; a non-finite loss skips the
update, and `max_nonfinite_in_a_row` of them stop the run with an error (the runner's guard). Metrics go to
`<workdir>/metrics.jsonl` and TensorBoard; the held-out loss every `train.eval_every` steps is a row of its own.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from dsmath_jax.data.pipeline import PipelineStats, build_dataset, pretrain_example_fn, sft_example_fn
from dsmath_jax.data.sources import resolve_source, source_name
from dsmath_jax.data.tokenizers import Tokenizer, check_tokenizer_fits, load_tokenizer, train_sentencepiece
from dsmath_jax.model import CausalLM, ModelConfig, load_hf
from dsmath_jax.model.config import COMPUTE_FIELDS
from dsmath_jax.parallel import create_sharded, global_batch, initialize_from_config, make_mesh, rules_from_config
from dsmath_jax.parallel.mesh import get_params, param_shardings, set_params
from dsmath_jax.train import schedules
from dsmath_jax.train.checkpoint import abstract_like, restore_params
from dsmath_jax.train.mfu import mfu
from dsmath_jax.train.rundir import write_atomic
from dsmath_jax.train.runner import NonFiniteLossError, Runner, StepInfo, StopRun
from dsmath_jax.train.step import TrainState, adamw, make_train_step

log = logging.getLogger(__name__)

TASKS = ("pretrain", "sft")


def _as_dict(cfg) -> dict:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})


# ------------------------------------------------------------------------------------------- set-up
def _tokenizer(config, workdir: str, train_sources) -> Tokenizer:
    tok_cfg = _as_dict(config.tokenizer)
    path = tok_cfg.get("path") or (config.init.get("hf_dir") if config.get("init") else None)
    if path:
        return load_tokenizer(path)
    vocab = tok_cfg.get("train_vocab_size")
    if not vocab:
        raise ValueError("config.tokenizer needs a `path` (sentencepiece .model, tokenizer.json or its directory), "
                         "an init.hf_dir, or `train_vocab_size` to train one on the training data")
    model_file = os.path.join(workdir, "tokenizer.model")
    if epath.Path(model_file).exists():  # trained by an earlier (interrupted) run of this workdir
        return load_tokenizer(model_file)
    if jax.process_index() == 0:
        docs = config.tokenizer.train_docs

        def texts():
            per_source = max(1, docs // len(train_sources))
            for src in train_sources:
                for i in range(min(per_source, len(src))):
                    record = src[i]
                    yield record.get("text") or f"{record['question']}\n{record['response']}"

        train_sentencepiece(texts(), os.path.join(workdir, "tokenizer"), vocab_size=vocab)
    _sync("tokenizer")
    return load_tokenizer(model_file)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def _model(config, mesh, rules, tokenizer: Tokenizer):
    model_cfg = _as_dict(config.model)
    init = _as_dict(config.get("init"))
    if init.get("hf_dir"):
        overrides = {k: v for k, v in model_cfg.items() if k in COMPUTE_FIELDS and v is not None}
        model = load_hf(init["hf_dir"], mesh=mesh, rules=rules, **overrides)
        cfg = model.config
    else:
        cfg = ModelConfig.from_dict(model_cfg)
        seed = config.seed
        model = create_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(seed)), mesh, rules)
    check_tokenizer_fits(tokenizer, cfg.vocab_size)
    if init.get("checkpoint"):
        target = abstract_like(get_params(model), param_shardings(model, mesh, rules))
        set_params(model, restore_params(init["checkpoint"], target, step=init.get("step")))
        log.info("initialised params from checkpoint %s", init["checkpoint"])
    return model, cfg


def _datasets(config, task: str, tokenizer: Tokenizer, stats: PipelineStats, data_dir: str, specs, train):
    """Train batches of the mixture `train` ([(name, source, weight)]) and held-out batches of `eval_split`."""
    data = config.data
    seq_len = data.seq_len
    if task == "sft":
        example_fn = sft_example_fn(tokenizer, seq_len, overlong=data.overlong, stats=stats)
        packing = "first_fit"
    else:
        example_fn = pretrain_example_fn(tokenizer, stats=stats)
        packing = data.packing
    global_bs = config.train.batch_size
    if global_bs % jax.process_count():
        raise ValueError(f"train.batch_size={global_bs} is not divisible by {jax.process_count()} hosts")
    common = dict(seq_len=seq_len, batch_size=global_bs // jax.process_count(), packing=packing,
                  shard_index=jax.process_index(), shard_count=jax.process_count(),
                  max_drop_fraction=data.max_drop_fraction)
    train_ds = build_dataset(train, example_fn, seed=data.seed, shuffle=True,
                             epochs=data.epochs, **common)
    eval_ds = None
    if data.get("eval_split"):
        evals = [(n, resolve_source(s, data.eval_split, data_dir=data_dir, benchmarks_dir=data.get("benchmarks_dir")),
                  w) for (n, _, w), s in zip(train, specs)]
        eval_ds = build_dataset(evals, example_fn, seed=0, shuffle=False, epochs=1, **common)
    return train_ds, eval_ds


def optimizer_from_config(config):
    """(AdamW, schedule) of a config's `optimizer` section over its `train.steps` (training and reward models)."""
    opt = _as_dict(config.optimizer)
    total = config.train.steps
    schedule = schedules.from_config(opt.pop("schedule"), total)
    return adamw(schedule, **opt), schedule


# ------------------------------------------------------------------------------------------- the loop
def evaluate(eval_step, params, eval_ds, batch_sharding, max_batches: int) -> dict:
    """Mean held-out loss over up to `max_batches` batches of a fresh pass of `eval_ds`."""
    total, weight, batches = 0.0, 0.0, 0
    for batch in eval_ds:
        out = eval_step(params, global_batch(batch, batch_sharding))
        total += float(out["loss_total"])
        weight += float(out["weight"])
        batches += 1
        if batches >= max_batches:
            break
    return {"eval_loss": total / max(weight, 1.0), "eval_tokens": weight, "eval_batches": batches}


def start_run(config: ml_collections.ConfigDict, workdir: str):
    """The start of every run (training, reward models, RL): multi-host start-up, the work directory with
    the run's config.json, and the mesh and logical-axis rules of `config.mesh`. Returns (mesh, rules)."""
    initialize_from_config(config.get("distributed"))
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # a no-op on object stores (gs://)
    if jax.process_index() == 0:
        write_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
    return make_mesh(_as_dict(config.mesh).get("shape")), rules_from_config(_as_dict(config.mesh).get("rules"))


def train(config: ml_collections.ConfigDict, workdir: str, task: str = "pretrain") -> dict[str, Any]:
    """Runs (or resumes) a training run in `workdir`; returns a summary (also written as summary.json)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    mesh, rules = start_run(config, workdir)
    data_dir = config.data.get("data_dir") or os.path.join(workdir, "tfds")
    stats = PipelineStats()
    # Sources are resolved before the tokenizer, which may be trained on them; the datasets need it.
    specs = [_as_dict(s) for s in config.data.sources]
    if not specs:
        raise ValueError("config.data.sources is empty: name at least one data source")
    train_sources = [(source_name(s), resolve_source(s, "train", data_dir=data_dir,
                                                     benchmarks_dir=config.data.get("benchmarks_dir")),
                      float(s.get("weight", 1.0))) for s in specs]
    tokenizer = _tokenizer(config, workdir, [src for _, src, _ in train_sources])
    model, model_cfg = _model(config, mesh, rules, tokenizer)
    train_ds, eval_ds = _datasets(config, task, tokenizer, stats, data_dir, specs, train_sources)
    optimizer, schedule = optimizer_from_config(config)
    tcfg = config.train
    fns = make_train_step(model, optimizer, mesh, rules, accum_steps=tcfg.accum_steps,
                          schedule=schedule)
    data_iter = iter(train_ds)
    runner = Runner(workdir, total_steps=tcfg.steps, checkpoint_every=tcfg.checkpoint_every,
                    keep_checkpoints=tcfg.keep_checkpoints, async_checkpoint=tcfg.async_checkpoint,
                    log_every=tcfg.log_every, tensorboard=tcfg.tensorboard,
                    max_nonfinite_in_a_row=tcfg.max_nonfinite_in_a_row, logger=log, progress=task,
                    postfix=lambda info: {"loss": f"{last_loss:.4f}"}, read_late=True)
    params: Any = get_params(model)
    state: TrainState | None = None
    del model

    def restore(step: int) -> None:
        nonlocal state
        template = jax.eval_shape(fns.init_state, params)
        restored = runner.checkpointer.restore(step, {
            "params": abstract_like(template.params, fns.state_sharding.params),
            "opt_state": abstract_like(template.opt_state, fns.state_sharding.opt_state), "data": data_iter})
        state = TrainState(step=jax.device_put(np.int32(step), fns.state_sharding.step),
                           params=restored["params"], opt_state=restored["opt_state"])

    start = runner.resume(restore)
    if state is None:
        state = fns.init_state(params)
    params = None  # the train state owns the parameters now

    seq_len, batch_size = config.data.seq_len, tcfg.batch_size
    flops_per_token = model_cfg.flops_per_token(seq_len)
    last_loss = float("nan")
    window_start, window_from = time.perf_counter(), start  # throughput since the last logged step

    def train_step(step: int) -> StepInfo:
        nonlocal state
        try:
            batch = next(data_iter)
        except StopIteration:
            log.warning("the training data ran out after %d steps (data.epochs=%s)", step, config.data.get("epochs"))
            raise StopRun("data_exhausted") from None
        assert state is not None  # made by `restore` or `init_state` before the loop
        state, metrics = fns.train_step(state, global_batch(batch, fns.batch_sharding))
        return StepInfo(step + 1, metrics)  # device values: the runner reads them one step late

    def record(info: StepInfo) -> None:
        """The loss the progress bar and summary show; a logged step's throughput and data counts."""
        nonlocal last_loss, window_start, window_from
        metrics = info.metrics
        if int(metrics["finite"]):
            last_loss = float(metrics["loss"])
        if not info.log:
            return
        elapsed, steps = time.perf_counter() - window_start, info.step - window_from
        tokens_per_s = steps * batch_size * seq_len / max(elapsed, 1e-9)
        metrics.update({k: float(v) for k, v in metrics.items()})
        metrics.update(tokens_per_s=tokens_per_s, step_time_s=elapsed / steps, skipped_steps=runner.skipped,
                       **{f"data_{k}": v for k, v in stats.as_dict().items()})
        utilisation = mfu(flops_per_token, tokens_per_s)
        if utilisation is not None:
            metrics["mfu"] = utilisation
        window_start, window_from = time.perf_counter(), info.step

    runner.add_hook(record, every=1, at_end=True, into_record=True)
    eval_every = tcfg.eval_every
    if eval_ds is not None and eval_every:
        eval_batches = tcfg.eval_batches
        runner.add_hook(lambda info: evaluate(fns.eval_step, state.params, eval_ds, fns.batch_sharding, eval_batches),
                        every=eval_every, at_end=True)

    def checkpoint(step: int) -> tuple[dict, dict]:
        meta = {"step": step, "task": task, "model": model_cfg.to_dict(), "tokens_seen": step * batch_size * seq_len}
        return {"params": state.params, "opt_state": state.opt_state, "data": data_iter}, meta

    result = runner.run(train_step, checkpoint)
    summary = {"status": result.status, "step": result.step, "loss": None if np.isnan(last_loss) else last_loss,
               "skipped_steps": result.skipped,
               "data": stats.as_dict(), "workdir": workdir}
    runner.write_summary(summary)
    log.info("%s %s at step %d (loss %s)", task, result.status, result.step, summary["loss"])
    return summary


def final_params(workdir: str, model: CausalLM, mesh=None, rules=None) -> Mapping[str, Any]:
    """The params of the latest checkpoint of a run (for evaluation or export)."""
    target = abstract_like(get_params(model), param_shardings(model, mesh, rules) if mesh is not None else None)
    return restore_params(os.path.join(workdir, "checkpoints"), target)


__all__ = ["start_run", "train", "evaluate", "final_params", "NonFiniteLossError", "TASKS"]
