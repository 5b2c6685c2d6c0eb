"""The schema of `dsmath rm` configs (reward models; configs/rm/*.py start from `base_rm_config()`), and
`validate(config)` for what types cannot check.

seed; kind ("orm" | "prm");
init: run_dir (the generator policy: a `dsmath sft` run or a Hugging Face dir; required), rm_init_dir (the
  model the RM's trunk starts from, same tokenizer; None = the policy), step (checkpoint step of run_dir);
model: preset (the architecture a `--compile_only` plan assumes where init.run_dir cannot be read; a run
  checks it against the loaded policy), then compute overrides when loading (dtype, remat_policy,
  scan_layers, attention_impl, logits_chunk; None = as saved);
data: problems (list of problem specs, dsmath_jax.data.tasks), split, limit_per_source, template (the
  question inside the chat prompt), data_dir / benchmarks_dir (GSM8K / MATH copies), seq_len (RM rows:
  prompt + completion, longer ones cut and counted), max_steps (PRM steps per row), validation_fraction
  (share of problems held out for RM accuracy);
sampling: samples_per_problem (K), temperature, top_p, max_new_tokens, batch_size (sampler rows), seed;
labels: mode ("outcome" for an ORM; "hard" | "soft" Math-Shepherd labels for a PRM), n (continuations per
  step), temperature, max_new_tokens, seed (of the continuations);
grader: workers, timeout (seconds per check);
optimizer: schedule {name, peak, warmup_steps, ...}, b1, b2, weight_decay, clip_norm (AdamW);
train: steps, batch_size, accum_steps, seed (batch order), log_every, eval_every, eval_batch_size,
  checkpoint_every, keep_checkpoints, async_checkpoint, tensorboard;
mesh: shape, rules; distributed: multi-host start-up (as the training configs);
plan: prompt_tokens (the longest prompt a `--compile_only` plan assumes).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from dsmath_jax.config.checks import (
    BATCHING,
    ConfigError,
    above,
    at_least,
    check_distributed,
    check_keys_and_types,
    check_mesh,
    check_model,
    check_optimizer,
    check_sampling,
    counts,
    in_range,
    one_of,
)
from dsmath_jax.config.train import SCHEDULES
from dsmath_jax.data.arithmetic import ARITHMETIC_TINY
from dsmath_jax.data.tasks import SPLITS, problem_spec

KINDS = ("orm", "prm")  # outcome / process reward model (dsmath_jax.rl.reward_model)
# labels.mode of each kind: the rule checker's verdict (ORM); Math-Shepherd's hard or soft step labels (PRM,
# dsmath_jax.rl.math_shepherd).
LABEL_MODES = {"orm": ("outcome",), "prm": ("hard", "soft")}
FREE_FORM = ("optimizer.schedule",)  # the learning-rate schedule takes its name's keys


def base_rm_config() -> ml_collections.ConfigDict:
    """Every section of a reward-model config with its typed default (module docstring)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.kind = "orm"
    c.init = ml_collections.ConfigDict(dict(run_dir=placeholder(str), rm_init_dir=placeholder(str),
                                            step=placeholder(int)))
    c.model = ml_collections.ConfigDict(dict(preset=placeholder(str), dtype=placeholder(str),
                                             remat_policy=placeholder(str), scan_layers=placeholder(bool),
                                             attention_impl=placeholder(str), logits_chunk=placeholder(int)))
    c.data = ml_collections.ConfigDict(dict(
        problems=[], split="train", limit_per_source=placeholder(int), template="{question}",
        data_dir=placeholder(str), benchmarks_dir=placeholder(str), seq_len=1536, max_steps=64,
        validation_fraction=0.02))
    c.sampling = ml_collections.ConfigDict(dict(samples_per_problem=4, temperature=0.7, top_p=1.0,
                                                max_new_tokens=1024, batch_size=64, seed=0,
                                                batching="continuous"))  # BATCHING (config.checks)
    c.labels = ml_collections.ConfigDict(dict(mode="outcome", n=8, temperature=0.7, max_new_tokens=1024, seed=1))
    c.grader = ml_collections.ConfigDict(dict(workers=8, timeout=5.0))
    # What `--compile_only` plans assume where the data are not read: the longest prompt (question + template).
    c.plan = ml_collections.ConfigDict(dict(prompt_tokens=512))
    c.optimizer = ml_collections.ConfigDict(dict(
        schedule=dict(name="constant", peak=2e-5, warmup_steps=50), b1=0.9, b2=0.95, weight_decay=0.0,
        clip_norm=1.0))
    c.train = ml_collections.ConfigDict(dict(
        steps=2000, batch_size=256, accum_steps=1, seed=0, log_every=10, eval_every=250, eval_batch_size=64,
        checkpoint_every=500, keep_checkpoints=3, async_checkpoint=True, tensorboard=True))
    c.mesh = ml_collections.ConfigDict(dict(shape=dict(data=1, fsdp=-1, tensor=1), rules=placeholder(tuple)))
    c.distributed = ml_collections.ConfigDict(dict(enabled="auto", coordinator_address=placeholder(str),
                                                   num_processes=placeholder(int), process_id=placeholder(int),
                                                   timeout_s=300))
    return c


def tiny_rm_overrides(c: ml_collections.ConfigDict, *, steps: int = 60) -> ml_collections.ConfigDict:
    """The CPU-sized variant: the arithmetic task's training problems (the tiny SFT policy's own questions; those
    of configs/sft/arithmetic.py and the RL tiny variants), few samples, short completions, a short run at a
    tiny-model learning rate."""
    c.data.update(problems=[dict(ARITHMETIC_TINY)], limit_per_source=48, seq_len=192, max_steps=8,
                  validation_fraction=0.25)
    c.sampling.update(samples_per_problem=4, temperature=1.0, max_new_tokens=64, batch_size=64)
    c.labels.update(n=4, temperature=1.0, max_new_tokens=48)
    c.grader.update(workers=1)
    c.optimizer.schedule = dict(name="constant", peak=1e-3, warmup_steps=5)
    c.train.update(steps=steps, batch_size=32, log_every=10, eval_every=steps // 2, eval_batch_size=64,
                   checkpoint_every=steps // 2)
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """What types cannot check in a reward-model config: keys against `base_rm_config()`, the kind and its
    label mode, the problem sources, counts and ranges; a `ConfigError` names the key."""
    check_keys_and_types(c, base_rm_config(), FREE_FORM)
    one_of(c, "kind", KINDS)
    one_of(c, "labels.mode", LABEL_MODES[c.kind])
    at_least(c, "init.step", 0)
    check_model(c, architecture=False)
    if not c.data.problems:
        raise ConfigError("data.problems is empty: name at least one problem source")
    for i, spec in enumerate(c.data.problems):
        try:
            problem_spec(spec)
        except ValueError as e:
            raise ConfigError(f"data.problems[{i}]: {e}") from None
    one_of(c, "data.split", SPLITS)
    if "{question}" not in c.data.template:
        raise ConfigError(f"data.template={c.data.template!r}: has no {{question}} to put the question in")
    counts(c, "data", positive=("limit_per_source", "seq_len", "max_steps"))
    in_range(c, "data.validation_fraction", 0.0, 1.0, high_open=True)
    counts(c, "sampling", positive=("samples_per_problem", "max_new_tokens", "batch_size"))
    check_sampling(c, "sampling")
    one_of(c, "sampling.batching", BATCHING)
    counts(c, "labels", positive=("n", "max_new_tokens"))
    check_sampling(c, "labels", top_p=None)
    counts(c, "grader", positive=("workers",))
    above(c, "grader.timeout", 0.0)
    counts(c, "plan", positive=("prompt_tokens",))
    check_optimizer(c, SCHEDULES)
    counts(c, "train", positive=("steps", "batch_size", "accum_steps", "log_every", "eval_batch_size",
                                 "checkpoint_every", "keep_checkpoints"), non_negative=("eval_every",))
    check_mesh(c)
    check_distributed(c)
