"""The RL loop: Algorithm 1 of the paper (PAPER.md §4.3) for every method of the unified paradigm (§5).

  policy <- init
  for iteration = 1..I:
      reference <- policy                                        (frozen; optionally on host memory; at the
                                                                  first step of every iteration)
      for step = 1..M:
          rollout <- the method's data source: sample G outputs for each of the step's questions with the
                     old policy and score them (`rollout.Roller`), or the gold responses (SFT)
          batch   <- the method's batch builder (`methods.METHOD_REGISTRY`), + reference log-probs
          roles before the update (PPO's critic: values, GAE; iterative RL: label the samples for the
                                    reward model, Math-Shepherd for a PRM, with the sampling policy)
          mu updates of the policy on the method's loss (micro-batched), each followed by the roles' own
      roles at the end of the iteration (iterative RL: the reward model continues training, with replay)

The loop only orchestrates: sampling and scoring live in `rl/rollout.py`, what each method trains on and its
loss in `rl/methods.py`, the GRPO loss in `rl/grpo.py`, PPO's critic in `rl/ppo.py` and the reward-model
updates in `rl/iterative.py` (roles, `rl/roles.py`); resume, preemption, metrics, the non-finite guard,
evaluation hooks, checkpoints and the summary are the shared run loop's (`train/runner.py`).

`run_rl(config, workdir)` runs or resumes a run. Everything the next step depends on is checkpointed
together: the policy's params and optimiser state, the reference, every role's models and state (the
critic; the reward model, its optimiser state and the replay buffer) and the data position; sampling keys
are derived from (seed, step), so a resumed run reproduces the uninterrupted one bitwise. SIGTERM saves and
exits.

Metrics (`<workdir>/metrics.jsonl`, TensorBoard): reward mean/std, accuracy (rule reward), KL, clip
fraction, entropy, response length, the share of groups whose rewards are all equal (zero advantage),
truncated outputs, rollout and train tokens/s, and held-out greedy accuracy (plus maj@k / pass@k).
Each held-out evaluation also writes every problem's verdicts to `<workdir>/evals/step_<step>.jsonl`
(id, greedy verdict and answer, right samples of k), so two evaluations compare problem by problem
(`dsmath_jax.analysis.paired_change`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from dsmath_jax.config.rl import CRITIC_INITS, OLD_LOGPROBS, REWARDS
from dsmath_jax.data.tasks import load_problems
from dsmath_jax.evals.grader import Grader
from dsmath_jax.generate.engine import make_sampler
from dsmath_jax.generate.sampler import SamplingParams
from dsmath_jax.model import CausalLM, ModelConfig, get_preset
from dsmath_jax.parallel import global_batch
from dsmath_jax.parallel.mesh import get_params, param_shardings
from dsmath_jax.rl import losses
from dsmath_jax.rl.grpo import check_response_logprobs, logprob_gap, make_reference_forward, truncated_is_weights
from dsmath_jax.rl.iterative import LabelSettings, RewardModelUpdates, rm_training_examples
from dsmath_jax.rl.methods import BatchSettings, LossSettings, fit_length, get_method
from dsmath_jax.rl.ppo import Critic, check_critic_reward_model
from dsmath_jax.rl.reward_model import RewardModel
from dsmath_jax.rl.roles import Role
from dsmath_jax.rl.rollout import (
    Roller,
    Rollout,
    RolloutSettings,
    StepRewardFn,
    encode_prompts,
    evaluate_problems,
    outcome_rewards,
    prm_rewards,
    step_rule_rewards,
)
from dsmath_jax.train import schedules
from dsmath_jax.train.checkpoint import Checkpointer, abstract_like
from dsmath_jax.train.loop import start_run
from dsmath_jax.train.metrics import read_metrics
from dsmath_jax.train.restore import load_run, run_tokenizer_files
from dsmath_jax.train.rundir import copy_atomic, eval_rows_path, write_atomic
from dsmath_jax.train.runner import Runner, StepInfo
from dsmath_jax.train.step import TrainState, adamw, make_train_step

log = logging.getLogger(__name__)


def _d(cfg) -> dict:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})


def check_architecture(cfg: ModelConfig, preset: str | None, source: str) -> None:
    """Raises ValueError when a config's `model.preset` (the architecture its compile-only plan assumed)
    differs from the model actually loaded from `source`."""
    if not preset:
        return
    want = get_preset(preset)
    fields = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim")
    diff = {f: (getattr(want, f), getattr(cfg, f)) for f in fields if getattr(want, f) != getattr(cfg, f)}
    if diff:
        raise ValueError(f"config.model.preset={preset!r} (the architecture the config plans for) does not match "
                         f"the model in {source}: " + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in diff.items())
                         + "; set --config.model.preset to the loaded model's preset, or to None")


class RLRun:
    """One RL run in a work directory (see the module docstring). `run()` returns the summary."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config, self.workdir = config, workdir
        c = config
        self.method = get_method(c.method)
        if c.reward.kind not in REWARDS:
            raise ValueError(f"config.reward.kind {c.reward.kind!r} is not one of {REWARDS}")
        self.process = c.reward.kind in ("prm", "step_rule")
        if self.process and not self.method.process:
            raise ValueError(f"process rewards (reward.kind={c.reward.kind!r}) need method 'grpo', got {c.method!r}")
        if c.rm_update.enabled and c.reward.kind not in ("orm", "prm"):
            raise ValueError("rm_update.enabled needs a reward model (reward.kind 'orm' or 'prm')")
        self.G = c.rollout.group_size
        self.Q = c.rollout.questions_per_step
        if self.method.pairs and self.G % 2:
            raise ValueError(f"{c.method.upper()} pairs outputs within a group: rollout.group_size must be even, "
                             f"got {self.G}")
        self.rows = self.Q * self.G
        self.M = c.train.steps_per_iteration
        self.total_steps = c.train.iterations * self.M
        self.mu = c.train.mu
        if self.mu < 1 or self.M < 1 or self.total_steps < 1:
            raise ValueError("train.mu, train.steps_per_iteration and train.iterations must be >= 1")
        self.roles: list[Role] = []
        self.critic: Critic | None = None
        self.reward_model: RewardModel | None = None
        self.critic_from_rm = False  # PPO's value model starts from the reward model (ppo.critic_init)

    # -------------------------------------------------------------------------------------- set-up
    def require_paths(self) -> None:
        """Raises ValueError naming what a run needs that a compile-only plan does not: the policy to start
        from (init.run_dir) and, with a reward model, its run directory (reward.rm_dir)."""
        c = self.config
        if not c.init.run_dir:
            raise ValueError("config.init.run_dir is required: the policy to start from (a `dsmath sft` run "
                             "directory or a Hugging Face directory)")
        if c.reward.kind in ("orm", "prm") and not c.reward.rm_dir:
            raise ValueError(f"reward.kind={c.reward.kind!r} needs reward.rm_dir (a `dsmath rm` run directory)")
        if self.method.critic:
            self.critic_init()  # a value model from the reward model needs one

    def _setup(self, grader: Grader) -> None:
        c = self.config
        self.require_paths()
        self.mesh, self.rules = start_run(c, self.workdir)
        overrides = {k: v for k, v in _d(c.model).items() if v is not None and k != "preset"}
        model, self.tokenizer = load_run(c.init.run_dir, mesh=self.mesh, rules=self.rules, step=c.init.step,
                                         **overrides)
        self.model_cfg = model.config
        check_architecture(model.config, c.model.get("preset"), c.init.run_dir)
        self._copy_tokenizer()
        data = c.data
        data_dir = data.data_dir or os.path.join(self.workdir, "tfds")
        spec = _d(data.problems)
        train = load_problems(spec, "train", data_dir=data_dir, benchmarks_dir=data.benchmarks_dir)
        self.test_problems = load_problems(spec, "test", data_dir=data_dir,
                                           benchmarks_dir=data.benchmarks_dir)[:c.eval.n_problems]
        prompts, dropped = encode_prompts(self.tokenizer, train, data.template, data.max_prompt_tokens)
        if dropped:
            log.warning("%d training problems have prompts longer than data.max_prompt_tokens=%d: left out",
                        dropped, data.max_prompt_tokens)
        train_problems = [p for p, ids in zip(train, prompts) if ids is not None]
        train_prompts = [ids for ids in prompts if ids is not None]
        if not train_prompts:
            raise ValueError("no training problem has a prompt within data.max_prompt_tokens")
        test_prompts, dropped = encode_prompts(self.tokenizer, self.test_problems, data.template,
                                               data.max_prompt_tokens)
        if dropped:
            log.warning("%d held-out problems have prompts longer than data.max_prompt_tokens=%d: left out of the "
                        "evaluation", dropped, data.max_prompt_tokens)
        self.test_problems = [p for p, ids in zip(self.test_problems, test_prompts) if ids is not None]
        self.test_prompts = [ids for ids in test_prompts if ids is not None]
        longest = max(len(p) for p in train_prompts)
        self.max_new = c.rollout.max_new_tokens
        self.seq_len = c.train.seq_len or -(-(longest + self.max_new - 1) // 16) * 16
        if self.method.source == "gold":
            self.gold_ids = [self.tokenizer.encode(" " + _response(p), add_eos=True) for p in train_problems]

        if c.reward.kind in ("orm", "prm"):
            self.reward_model = self._load_reward_model()
        self.critic_from_rm = self.method.critic and self.critic_init() == "reward_model"
        if self.critic_from_rm:
            assert self.reward_model is not None
            check_critic_reward_model(self.reward_model.config, model.config, rm_source=c.reward.rm_dir,
                                      policy_source=c.init.run_dir, rm_tokenizer=self.reward_model.tokenizer,
                                      policy_tokenizer=self.tokenizer, seq_len=self.seq_len)
        self.build(model)
        self.batch_settings = BatchSettings(seq_len=self.seq_len, pad_id=self.sampler.pad_id, group_size=self.G,
                                            scale_advantages=c.loss.scale_advantages,
                                            length_buckets=c.train.length_buckets)
        self.state = self.fns.init_state(get_params(model))
        if self.critic is not None:  # PPO's value model: from the reward model (the paper's) or the policy
            rm = self.reward_model if self.critic_from_rm else None
            self.critic.init(model, c.seed, None if rm is None else nnx.merge(rm.graphdef, rm.params))
        self.initial_params = self.frozen(self.state.params) if self.method.source == "initial" else None
        self.ref_params = None
        step_reward: StepRewardFn | None = step_rule_rewards if c.reward.kind == "step_rule" else None
        if self.reward_model is not None:
            if c.reward.kind == "prm":
                step_reward = prm_rewards(self.reward_model)
            if c.rm_update.enabled:
                self.roles.append(self._reward_model_updates(grader, train_problems))
        rc = c.rollout
        settings = RolloutSettings(
            group_size=self.G, questions=self.Q, max_new_tokens=self.max_new, seq_len=self.seq_len,
            temperature=rc.temperature, top_p=rc.top_p, top_k=rc.top_k, stop_strings=tuple(rc.stop_strings),
            seed=c.seed, data_seed=c.data.seed, dynamic_sampling=rc.dynamic_sampling,
            max_rounds=rc.max_sampling_rounds)
        self.roller = Roller(self.sampler, grader, train_problems, train_prompts, settings,
                             rewards=outcome_rewards(c.reward, self.max_new, self.reward_model),
                             step_reward=step_reward, tokenizer=self.tokenizer)
        del model

    def build(self, model: CausalLM) -> None:
        """The run's jitted functions for `model` (concrete or abstract: `dsmath rl --compile_only` builds
        them on an abstract model and compiles them for a TPU topology): the policy's train step with the
        method's loss, the critic role's steps (PPO), the reference forward, the frozen copies (reference,
        initial policy) and the sampler. Needs self.mesh, self.rules, self.max_new, self.tokenizer."""
        c = self.config
        opt = _d(c.optimizer)
        self.schedule = schedules.from_config(opt.pop("schedule"), self.total_steps * self.mu)
        optimizer = adamw(self.schedule, **opt)
        L = c.loss
        policy = losses.PolicyLossConfig(
            clip_eps=L.clip_eps, clip_eps_high=L.clip_eps_high, beta=L.beta, kl_estimator=L.kl_estimator,
            aggregation=L.aggregation, ratio=L.ratio,
            max_len=L.max_len or (self.max_new if L.aggregation == "sum_constant" else None))
        self.loss_config = self.method.loss_config(policy)
        accum = c.train.accum_steps
        loss_fn = self.method.make_loss(LossSettings(self.loss_config, L.entropy_metric, L.dpo_beta))
        self.fns = make_train_step(model, optimizer, self.mesh, self.rules, loss_fn=loss_fn, accum_steps=accum,
                                   schedule=self.schedule)
        self.critic = None
        if self.method.critic:
            p = c.ppo
            # From the reward model, the value model has its architecture (a compile-only plan, which reads no
            # reward model, assumes the policy's).
            value_config = self.reward_model.config if self.critic_from_rm and self.reward_model else None
            self.critic = Critic(model, self.mesh, self.rules, lr=p.critic_lr, clip_norm=opt.get("clip_norm", 1.0),
                                 value_clip=p.value_clip, accum_steps=accum, kl_coef=p.kl_coef, gamma=p.gamma,
                                 lam=p.lam, whiten=p.whiten_advantages, config=value_config)
        self.roles = [self.critic] if self.critic is not None else []
        self.params_sharding = param_shardings(model, self.mesh, self.rules)
        self.needs_ref = self.method.uses_reference(self.loss_config)
        self.ref_forward = make_reference_forward(model, self.mesh, self.rules, micro_batches=accum)
        # Frozen copies (the reference, RFT/DPO's initial policy) are only ever read by forward passes, which
        # cast every weight to the compute dtype: stored in it (half the memory of fp32 master weights under
        # bf16 compute), they give the same log-probs.
        dt = model.config.compute_dtype
        mode = c.rollout.old_logprobs
        if mode not in OLD_LOGPROBS:
            raise ValueError(f"config.rollout.old_logprobs {mode!r} is not one of {OLD_LOGPROBS}")
        # The old policy's log-probs: the training forward's ("recompute") where the sampler's cached bf16 decode
        # does not reproduce it, else the sampler's own; only methods whose loss reads them.
        self.recompute_old = "old_logp" in self.method.batch_keys and (
            mode == "recompute" or (mode == "auto" and jnp.dtype(dt) != jnp.float32))
        self.tis_cap = c.rollout.tis_cap
        # (`* 1`: a fresh buffer even where the cast is a no-op; a forwarded input would be deleted when the
        # train step donates the policy's state.)
        self.frozen = jax.jit(lambda p: jax.tree.map(
            lambda x: (x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x) * 1, p),
            out_shardings=self.params_sharding)
        rc = c.rollout
        # Slots of the longest prompt kept + the longer of the rollout's and the evaluation's budgets.
        max_len = c.data.max_prompt_tokens + max(rc.max_new_tokens, c.eval.max_new_tokens or rc.max_new_tokens)
        self.sampler = make_sampler(rc.batching, model, self.tokenizer, rows=rc.sampler_batch_size, max_len=max_len,
                                    chunk_size=rc.chunk_size, mesh=self.mesh, rules=self.rules,
                                    tensor_parallel=rc.get("tensor_parallel"))
        self.sampler.release_params()  # the sampler gets the policy's weights before each rollout

    def _to_host(self, params):
        """Frozen params moved to host memory, sharded as on the devices (`train.reference_on_host`): each
        device's shard in its host's pinned memory, so it works on every host of a multi-host slice."""
        host = jax.tree.map(lambda s: s.with_memory_kind("pinned_host"), self.params_sharding)
        return jax.device_put(params, host)

    def _copy_tokenizer(self):
        """Copies the init run's tokenizer (tokenizer.model, or tokenizer.json and its configs) into the workdir."""
        if jax.process_index() != 0:
            return
        for name in run_tokenizer_files(self.config.init.run_dir):
            dst = os.path.join(self.workdir, name)
            if not epath.Path(dst).exists():
                copy_atomic(os.path.join(self.config.init.run_dir, name), dst)

    def critic_init(self) -> str:
        """Where PPO's value model starts (`ppo.critic_init`, "auto" resolved): "reward_model" or "policy"."""
        c = self.config
        choice = c.ppo.get("critic_init", "auto")
        if choice not in CRITIC_INITS:
            raise ValueError(f"config.ppo.critic_init {choice!r} is not one of {CRITIC_INITS}")
        has_rm = c.reward.kind in ("orm", "prm") and bool(c.reward.rm_dir)
        if choice == "reward_model" and not has_rm:
            raise ValueError(f"ppo.critic_init='reward_model' starts PPO's value model from the reward model, but this "
                             f"run has none (reward.kind={c.reward.kind!r}, reward.rm_dir={c.reward.rm_dir!r}); set "
                             "ppo.critic_init='policy'")
        return "reward_model" if choice == "reward_model" or (choice == "auto" and has_rm) else "policy"

    def _reward_model_updates(self, grader: Grader, train_problems: list) -> RewardModelUpdates:
        """Iterative RL's reward-model role (`rm_update`): labels by the rollout's sampler and grader, the
        replay seeded with the reward model's own training data (`rm_update.replay_rm_data`)."""
        c, u = self.config, self.config.rm_update
        assert self.reward_model is not None
        rc = c.rollout
        labels = LabelSettings(
            prm_labels=u.prm_labels, n=u.label_n, mode=u.label_mode,
            sampling=SamplingParams(max_new_tokens=u.label_max_new_tokens or rc.max_new_tokens,
                                    temperature=u.label_temperature, top_p=rc.top_p, top_k=rc.top_k,
                                    stop_strings=tuple(rc.stop_strings)),
            samples_per_step=u.samples_per_step, max_prefixes_per_step=u.max_prefixes_per_step)
        if self.reward_model.kind == "prm" and u.prm_labels == "step_check":
            missing = [p.id for p in train_problems if p.intermediates is None]
            if missing:
                raise ValueError(f"rm_update.prm_labels='step_check' needs problems with step results (the arithmetic "
                                 f"task's exact step checker); {len(missing)} training problems have none (e.g. "
                                 f"{missing[0]!r}): use 'math_shepherd'")
        history = rm_training_examples(c.reward.rm_dir, self.reward_model.kind) if u.replay_rm_data else []
        log.info("iterative RL: the reward model's replay starts with %d examples of its own training data",
                 len(history))
        return RewardModelUpdates(
            self.reward_model, self.tokenizer, lr=u.lr, steps=u.steps, batch_size=u.batch_size, capacity=u.capacity,
            history_fraction=u.history_fraction, labels=labels, sampler=self.sampler, grader=grader,
            policy_params=self._sampling_params, history=history, steps_per_iteration=self.M, mu=self.mu,
            seed=c.seed)

    def _load_reward_model(self) -> RewardModel:
        c = self.config
        reward_model = RewardModel.load(c.reward.rm_dir, self.mesh, self.rules)
        if reward_model.kind != c.reward.kind:
            raise ValueError(f"reward.kind={c.reward.kind!r} but {c.reward.rm_dir} holds a {reward_model.kind} "
                             "reward model")
        return reward_model

    # -------------------------------------------------------------------------------------- a step
    def _global(self, batch: Mapping[str, np.ndarray]) -> dict:
        return global_batch({k: v for k, v in batch.items() if k != "truncated"}, self.fns.batch_sharding)

    def _source(self, step: int, position: int) -> tuple[Rollout, int]:
        """The step's data from the method's source: the gold responses, or groups sampled by the initial
        or the current policy."""
        if self.method.source == "gold":
            return self.roller.gold(position, self.rows, self.gold_ids)
        return self.roller.sample(self._sampling_params(), step, position)

    def _sampling_params(self) -> Any:
        """The weights the method samples with: the initial policy (RFT, offline DPO) or the current one."""
        return self.initial_params if self.method.source == "initial" else self.state.params

    def step(self, step: int, position: int) -> tuple[dict, int]:
        """RL step number `step` (1-based): data, rewards, the method's batch, roles and mu updates."""
        record: dict[str, float] = {}
        t0 = time.perf_counter()
        ro, position = self._source(step, position)
        sampled = self.method.source != "gold"
        if sampled:
            record.update(ro.metrics(time.perf_counter() - t0))
        batch = fit_length(self.method.build_batch(ro, self.batch_settings), self.batch_settings)
        record["train_seq_len"] = float(batch["inputs"].shape[1])
        describe = self._row_name(ro)
        if sampled:
            check_response_logprobs("old-policy (sampler)", batch["old_logp"], batch["weights"], describe)
        record["truncated"] = float(batch.pop("truncated", 0))
        gbatch = self._global(batch)
        if sampled and self.recompute_old:
            self._recompute_old_logprobs(gbatch, record, describe)
        if self.needs_ref:
            ref = self.ref_params
            if self.config.train.reference_on_host:  # into HBM for the forward only (freed after it)
                ref = jax.device_put(ref, self.params_sharding)
            gbatch["ref_logp"] = self.ref_forward(ref, gbatch)
            del ref
            check_response_logprobs("reference", gbatch["ref_logp"], gbatch["weights"], describe)
        for role in self.roles:
            role.before_update(ro, gbatch, record)
        t1 = time.perf_counter()
        updates = []
        for _ in range(self.mu):
            self.state, metrics = self.fns.train_step(self.state, gbatch)
            for role in self.roles:
                metrics = dict(metrics, **role.after_update(gbatch))
            updates.append(metrics)
        updates = jax.device_get(updates)
        t_train = time.perf_counter() - t1
        for k in updates[0]:
            record[k] = float(np.mean([float(u[k]) for u in updates]))
        record["finite"] = float(min(float(u["finite"]) for u in updates))
        train_tokens = float(np.sum(batch["segment_ids"] > 0)) * self.mu
        record.update(train_time_s=t_train, train_tokens_per_s=train_tokens / max(t_train, 1e-9),
                      step_time_s=time.perf_counter() - t0)
        if sampled:
            for role in self.roles:
                role.after_step(ro)
        return record, position

    def _recompute_old_logprobs(self, gbatch: dict, record: dict, describe: Callable[[int], str]) -> None:
        """Replaces the sampler's old-policy log-probs by one forward of the training model over the sampled
        rows (so the first update's ratio is exactly 1), records their gap, and with `rollout.tis_cap` adds the
        truncated importance weights against the sampler's numbers."""
        trainer = self.ref_forward(self.state.params, gbatch)
        check_response_logprobs("old-policy (trainer)", trainer, gbatch["weights"], describe)
        gap_mean, gap_max = jax.device_get(logprob_gap(gbatch["old_logp"], trainer, gbatch["weights"]))
        record.update(old_logp_gap_mean=float(gap_mean), old_logp_gap_max=float(gap_max))
        if self.tis_cap:
            gbatch["is_weights"] = truncated_is_weights(gbatch["old_logp"], trainer, gbatch["weights"],
                                                        cap=float(self.tis_cap))
        gbatch["old_logp"] = trainer

    def _row_name(self, ro: Rollout) -> Callable[[int], str]:
        """Names a training-batch row in errors: its question and sample (DPO and SFT rows by index)."""
        if self.method.pairs or self.method.source == "gold":
            return lambda r: f"row {r}"
        return lambda r: f"row {r} (question {ro.problems[r // self.G].id!r}, sample {r % self.G})"

    # -------------------------------------------------------------------------------------- evaluation
    def evaluate(self, step: int | None = None) -> dict[str, float]:
        """Greedy accuracy of the current policy on the held-out problems (and maj@k / pass@k with
        `eval.samples` = k > 0 samples at `eval.temperature`). With `step`, each problem's verdicts also go to
        `evals/step_<step>.jsonl` (`eval_rows_path`), for problem-by-problem comparisons of two evaluations."""
        c = self.config.eval
        metrics, rows = evaluate_problems(
            self.sampler, self.roller.grader, self.state.params, self.test_problems, self.test_prompts,
            max_new_tokens=c.max_new_tokens or self.max_new, samples=c.samples, temperature=c.temperature)
        if step is not None and jax.process_index() == 0:
            lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
            write_atomic(eval_rows_path(self.workdir, step), lines)
        return metrics

    # -------------------------------------------------------------------------------------- checkpoints
    def _items(self) -> dict:
        items = {"params": self.state.params, "opt_state": self.state.opt_state}
        if self.ref_params is not None:
            items["ref_params"] = self.ref_params
        for role in self.roles:
            items.update(role.checkpoint_items())
        return items

    def _restore(self, ckpt: Checkpointer, step: int) -> int:
        tmpl = jax.eval_shape(lambda s: s, self.state)
        ss = self.fns.state_sharding
        targets = {"params": abstract_like(tmpl.params, ss.params),
                   "opt_state": abstract_like(tmpl.opt_state, ss.opt_state)}
        saved = ckpt.item_names(step)
        if "ref_params" in saved:
            targets["ref_params"] = abstract_like(jax.eval_shape(self.frozen, tmpl.params), ss.params)
        for role in self.roles:
            targets.update(role.restore_targets(saved))
        got = ckpt.restore(step, targets)
        updates = step * self.mu
        self.state = TrainState(step=jax.device_put(np.int32(updates), ss.step), params=got["params"],
                                opt_state=got["opt_state"])
        if "ref_params" in got:
            self.ref_params = got["ref_params"]
            if self.config.train.reference_on_host:
                self.ref_params = self._to_host(self.ref_params)
        for role in self.roles:
            role.restore(got, updates)
        return int(got["metadata"]["data_position"])

    # -------------------------------------------------------------------------------------- the loop
    def run(self) -> dict[str, Any]:
        """Plugs the RL step and its hooks into the shared run loop (:class:`~dsmath_jax.train.runner.Runner`)."""
        with Grader() as grader:
            self._setup(grader)
            return self._run()

    def _run(self) -> dict[str, Any]:
        c = self.config
        tc = c.train
        nan = float("nan")
        runner = Runner(self.workdir, total_steps=self.total_steps, checkpoint_every=tc.checkpoint_every,
                        keep_checkpoints=tc.keep_checkpoints, async_checkpoint=tc.async_checkpoint,
                        log_every=tc.log_every, tensorboard=tc.get("tensorboard", True),
                        max_nonfinite_in_a_row=tc.max_nonfinite_in_a_row,
                        stop_after_steps=tc.stop_after_steps or 0, name="RL", logger=log,
                        progress=f"rl:{c.method}",
                        postfix=lambda info: {"reward": f"{info.metrics.get('reward_mean', nan):.3f}",
                                              "acc": f"{info.metrics.get('accuracy', nan):.3f}"},
                        nonfinite_hint="Lower the learning rate or check the rewards.")
        position = 0
        evals: dict[int, dict] = {}

        def restore(step: int) -> None:
            nonlocal position
            position = self._restore(runner.checkpointer, step)

        runner.resume(restore)

        def rl_step(step: int) -> StepInfo:
            nonlocal position
            if self.needs_ref and (step % self.M == 0 or self.ref_params is None):
                self.ref_params = self.frozen(self.state.params)  # the reference <- the policy
                if tc.reference_on_host:
                    self.ref_params = self._to_host(self.ref_params)
            record, position = self.step(step + 1, position)
            return StepInfo(step + 1, record)

        def iteration(info: StepInfo) -> dict:
            return {"iteration": (info.step - 1) // self.M + 1, "skipped_steps": runner.skipped}

        def evaluate(info: StepInfo) -> dict:
            evals[info.step] = self.evaluate(info.step)
            info.log = True  # a step with an evaluation is logged off the log_every grid too
            return evals[info.step]

        runner.add_hook(iteration, every=1, at_end=True, into_record=True)
        def end_of_iteration(role: Role) -> Callable[[StepInfo], dict]:
            return lambda info: role.end_of_iteration(info.step // self.M)

        for role in self.roles:  # Algorithm 1: e.g. the reward model trains at the end of each iteration
            if role.per_iteration:
                runner.add_hook(end_of_iteration(role), every=self.M, at_end=True, into_record=True)
        eval_every = c.eval.every
        if c.eval.n_problems and (eval_every or c.eval.at_start):
            runner.add_hook(evaluate, every=eval_every, at_start=c.eval.at_start, at_end=bool(eval_every),
                            into_record=True)

        def checkpoint(at: int) -> tuple[dict, dict]:
            return self._items(), {
                "step": at, "data_position": position, "iteration": (at - 1) // self.M + 1 if at else 0,
                "method": c.method, "model": self.model_cfg.to_dict()}

        result = runner.run(rl_step, checkpoint)
        summary = {"status": result.status, "step": result.step, "method": c.method, "reward": c.reward.kind,
                   "skipped_steps": result.skipped, "evals": {str(k): v for k, v in evals.items()},
                   "workdir": self.workdir}
        history = _eval_history(self.workdir)
        if history:
            summary["eval_history"] = history
            summary["initial_eval"], summary["final_eval"] = history[0], history[-1]
        runner.write_summary(summary)
        return summary


def _response(p) -> str:
    response = getattr(p, "response", None)
    if not response:
        raise ValueError(f"method 'sft' needs gold responses; problem {p.id} has none")
    return response


def _eval_history(workdir: str) -> list[dict]:
    try:
        rows = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    except FileNotFoundError:
        return []
    return [dict(step=r["step"], **{k: v for k, v in r.items() if k.startswith("eval_")})
            for r in rows if "eval_accuracy" in r]


def run_rl(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) an RL run in `workdir`; returns the summary (also `summary.json`)."""
    return RLRun(config, workdir).run()


__all__ = ["run_rl", "RLRun", "check_architecture"]
