"""The RL loop: Algorithm 1 of the paper (PAPER.md §4.3) for every method of the unified paradigm (§5).

  policy <- init
  for iteration = 1..I:
      reference <- policy                                        (frozen; optionally on host memory)
      for step = 1..M:
          questions <- the next `questions_per_step` of the shuffled training problems
          old policy <- policy: sample G outputs per question with our sampler, keeping the log-probs
          rewards (rule via the harness's grader / ORM / PRM / the task's step checker), advantages
          mu updates of the policy on the objective (micro-batched)
      continue training the reward model on this iteration's samples, with replay of 10% history

`run_rl(config, workdir)` runs or resumes a run. Everything the next step depends on is checkpointed
together: the policy's params and optimiser state, the reference, the critic (PPO), the reward model and
its optimiser state (iterative RL), the replay buffer and the data position; sampling keys are derived
from (seed, step), so a resumed run reproduces the uninterrupted one bitwise. SIGTERM saves and exits.

Metrics (`<workdir>/metrics.jsonl`, TensorBoard): reward mean/std, accuracy (rule reward), KL, clip
fraction, entropy, response length, the share of groups whose rewards are all equal (zero advantage),
truncated outputs, rollout and train tokens/s, and held-out greedy accuracy (plus maj@k / pass@k).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from dsmath_jax.data.tasks import Problem, load_problems, prompt_text
from dsmath_jax.evals.grader import Grader
from dsmath_jax.evals.metrics import maj_at_k
from dsmath_jax.generate.sampler import Completion, Sampler, SamplingParams
from dsmath_jax.model import ModelConfig, ScalarHeadModel, get_preset
from dsmath_jax.parallel import global_batch
from dsmath_jax.parallel.mesh import get_params, param_shardings
from dsmath_jax.rl import losses, ppo
from dsmath_jax.rl.advantages import group_advantages, process_advantages, token_advantages
from dsmath_jax.rl.config import METHODS, REWARDS
from dsmath_jax.rl.grpo import check_response_logprobs, grpo_loss_fn, make_reference_forward, rollout_batch
from dsmath_jax.rl.math_shepherd import step_end_tokens
from dsmath_jax.rl.replay import ReplayBuffer
from dsmath_jax.rl.reward_model import RewardModel
from dsmath_jax.rl.rewards import combine_rewards, format_rewards, overlong_penalty, step_correctness
from dsmath_jax.train import schedules
from dsmath_jax.train.checkpoint import Checkpointer, abstract_like
from dsmath_jax.train.loop import start_run
from dsmath_jax.train.metrics import read_metrics
from dsmath_jax.train.restore import load_run, run_tokenizer_files
from dsmath_jax.train.rundir import copy_atomic
from dsmath_jax.train.runner import Runner, StepInfo
from dsmath_jax.train.step import TrainState, adamw, make_train_step

log = logging.getLogger(__name__)

OFFLINE_METHODS = ("rft", "dpo")  # Table 10: their data come from the SFT model, not the current policy


def _d(cfg) -> dict:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})


def _seed(*parts: int) -> int:
    """A sampling seed from (run seed, step, round): distinct per call, reproducible on resume."""
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p)) % (2 ** 31 - 1)
    return h


# ------------------------------------------------------------------------------------------ losses
def _logprobs(model, batch):
    """[rows, seq] log-probs of a rollout batch's targets (chunked over positions: no full logits)."""
    return model.token_logprobs(batch["inputs"], batch["targets"], None, batch.get("segment_ids"))[0]


def rft_loss_fn(aggregation: str = "sequence_mean", max_len: int | None = None):
    """RFT / online RFT: SFT on the correct samples (`correct` [rows, 1])."""

    def loss(model, batch):
        logp = _logprobs(model, batch)
        return losses.rft_loss(logp, batch["weights"], batch["correct"][:, 0], aggregation=aggregation,
                               max_len=max_len)

    return loss


def sft_loss_fn(aggregation: str = "sequence_mean", max_len: int | None = None):
    def loss(model, batch):
        return losses.sft_loss(_logprobs(model, batch), batch["weights"],
                               aggregation=aggregation, max_len=max_len)

    return loss


def dpo_loss_fn(beta: float):
    """DPO on interleaved pairs: rows 2j (chosen) and 2j + 1 (rejected); `pair_valid` [rows] marks real pairs
    (set on both rows; [rows, 1]). Micro-batches must hold whole pairs (an even number of rows each)."""

    def loss(model, batch):
        logp = _logprobs(model, batch)
        seq = losses.sequence_logprob(logp, batch["weights"])
        ref = losses.sequence_logprob(batch["ref_logp"], batch["weights"])
        return losses.dpo_loss(seq[0::2], seq[1::2], ref[0::2], ref[1::2], beta=beta,
                               valid=batch["pair_valid"][0::2, 0])

    return loss


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


# ------------------------------------------------------------------------------------------ rollouts
@dataclasses.dataclass
class Rollout:
    """The sampled groups of one step (Q questions x G outputs, prompt-major) and what was computed on them."""

    problems: list[Problem]
    prompt_ids: list[list[int]]
    completions: list[list[Completion]]
    correct: np.ndarray  # [rows] rule-reward correctness
    rewards: np.ndarray  # [rows] the combined outcome reward
    keep: np.ndarray  # [Q] groups that train (dynamic sampling drops the rest)
    step_rewards: np.ndarray | None = None  # [rows, max_steps] process rewards
    step_ends: np.ndarray | None = None  # [rows, max_steps] target positions where steps end (-1 none)
    sampled_rows: int = 0
    generated_tokens: int = 0
    parts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # {reward_<name>: [rows]} per reward


# ------------------------------------------------------------------------------------------ the run
class RLRun:
    """One RL run in a work directory (see the module docstring). `run()` returns the summary."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config, self.workdir = config, workdir
        c = config
        if c.method not in METHODS:
            raise ValueError(f"config.method {c.method!r} is not one of {METHODS}")
        if c.reward.kind not in REWARDS:
            raise ValueError(f"config.reward.kind {c.reward.kind!r} is not one of {REWARDS}")
        self.process = c.reward.kind in ("prm", "step_rule")
        if self.process and c.method != "grpo":
            raise ValueError(f"process rewards (reward.kind={c.reward.kind!r}) need method 'grpo', got {c.method!r}")
        if c.rm_update.enabled and c.reward.kind not in ("orm", "prm"):
            raise ValueError("rm_update.enabled needs a reward model (reward.kind 'orm' or 'prm')")
        self.G = int(c.rollout.group_size)
        self.Q = int(c.rollout.questions_per_step)
        if c.method == "dpo" and self.G % 2:
            raise ValueError(f"DPO pairs outputs within a group: rollout.group_size must be even, got {self.G}")
        self.rows = self.Q * self.G
        self.M = int(c.train.steps_per_iteration)
        self.total_steps = int(c.train.iterations) * self.M
        self.mu = int(c.train.mu)
        if self.mu < 1 or self.M < 1 or self.total_steps < 1:
            raise ValueError("train.mu, train.steps_per_iteration and train.iterations must be >= 1")
        self.sample_from = "initial" if c.method in OFFLINE_METHODS else "policy"

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

    def _setup(self):
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
        self.train_problems = load_problems(spec, "train", data_dir=data_dir, benchmarks_dir=data.benchmarks_dir)
        self.test_problems = load_problems(spec, "test", data_dir=data_dir,
                                           benchmarks_dir=data.benchmarks_dir)[:int(c.eval.n_problems)]
        self.train_prompts, dropped = self._encode(self.train_problems)
        if dropped:
            log.warning("%d training problems have prompts longer than data.max_prompt_tokens=%d: left out",
                        dropped, int(data.max_prompt_tokens))
        keep = [i for i, p in enumerate(self.train_prompts) if p is not None]
        if not keep:
            raise ValueError("no training problem has a prompt within data.max_prompt_tokens")
        self.train_problems = [self.train_problems[i] for i in keep]
        self.train_prompts = [self.train_prompts[i] for i in keep]
        self.test_prompts = [p if p is not None else [] for p in self._encode(self.test_problems)[0]]
        longest = max(len(p) for p in self.train_prompts)
        self.max_new = int(c.rollout.max_new_tokens)
        self.seq_len = int(c.train.seq_len or -(-(longest + self.max_new - 1) // 16) * 16)
        if c.method == "sft":
            self.sft_ids = [self.tokenizer.encode(" " + self._response(p), add_eos=True)
                            for p in self.train_problems]

        self._build(model)
        self.state = self.fns.init_state(get_params(model))
        if self.critic_fns is not None:
            critic = ppo.critic_from_policy(model, self.mesh, self.rules, int(c.seed))
            self.critic_state = self.critic_fns.init_state(get_params(critic))
            del critic
        self.initial_params = self._frozen(self.state.params) if self.sample_from == "initial" else None
        self.ref_params = None
        self.reward_model = self.rm_trainer = self.replay = None
        if c.reward.kind in ("orm", "prm"):
            self._setup_reward_model()
        del model

    def _build(self, model) -> None:
        """The run's jitted functions for `model` (concrete or abstract: `dsmath rl --compile_only` builds
        them on an abstract model and compiles them for a TPU topology): the policy's train step with the
        method's loss, PPO's critic step and value forward, the reference forward, the frozen copies
        (reference, initial policy) and the sampler. Needs self.mesh, self.rules, self.max_new, self.tokenizer."""
        c = self.config
        opt = _d(c.optimizer)
        self.schedule = schedules.from_config(opt.pop("schedule"), self.total_steps * self.mu)
        optimizer = adamw(self.schedule, **opt)
        L = c.loss
        self.loss_config = losses.PolicyLossConfig(
            clip_eps=float(L.clip_eps), clip_eps_high=L.clip_eps_high, beta=float(L.beta),
            kl_estimator=L.kl_estimator, aggregation=L.aggregation, ratio=L.ratio,
            max_len=L.max_len or (self.max_new if L.aggregation == "sum_constant" else None))
        accum = int(c.train.accum_steps)
        self.critic_fns = self.critic_state = None
        if c.method == "ppo":
            if self.loss_config.beta != 0:
                self.loss_config = dataclasses.replace(self.loss_config, beta=0.0)  # PPO's KL is in the reward
            critic = nnx.eval_shape(lambda: ScalarHeadModel(model.config, rngs=nnx.Rngs(0)))
            critic_opt = adamw(float(c.ppo.critic_lr), weight_decay=0.0, clip_norm=opt.get("clip_norm", 1.0))
            steps = ppo.make_ppo_steps(model, critic, optimizer, critic_opt, self.mesh, self.rules,
                                       loss_config=self.loss_config, value_clip=float(c.ppo.value_clip),
                                       accum_steps=accum)
            self.fns, self.critic_fns, self._values = steps.policy, steps.critic, steps.values
        else:
            loss_fn = {
                "grpo": lambda: grpo_loss_fn(self.loss_config, bool(L.entropy_metric)),
                "rft": lambda: rft_loss_fn(L.aggregation, self.loss_config.max_len),
                "online_rft": lambda: rft_loss_fn(L.aggregation, self.loss_config.max_len),
                "sft": lambda: sft_loss_fn(L.aggregation, self.loss_config.max_len),
                "dpo": lambda: dpo_loss_fn(float(L.dpo_beta)),
            }[c.method]()
            self.fns = make_train_step(model, optimizer, self.mesh, self.rules, loss_fn=loss_fn, accum_steps=accum,
                                       schedule=self.schedule)
        self.graphdef = nnx.split(model)[0]
        self.params_sharding = param_shardings(model, self.mesh, self.rules)
        self.needs_ref = c.method in ("dpo", "ppo") or (c.method == "grpo" and self.loss_config.beta != 0)
        self._ref_logp = make_reference_forward(model, self.mesh, self.rules, micro_batches=accum)
        # Frozen copies (the reference, RFT/DPO's initial policy) are only ever read by forward passes, which
        # cast every weight to the compute dtype: stored in it (half the memory of fp32 master weights under
        # bf16 compute), they give the same log-probs.
        dt = model.config.compute_dtype
        # (`* 1`: a fresh buffer even where the cast is a no-op; a forwarded input would be deleted when the
        # train step donates the policy's state.)
        self._frozen = jax.jit(lambda p: jax.tree.map(
            lambda x: (x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x) * 1, p),
            out_shardings=self.params_sharding)
        rc = c.rollout
        self.sampler = Sampler(model, self.tokenizer, batch_size=int(rc.sampler_batch_size),
                               chunk_size=int(rc.chunk_size), mesh=self.mesh, rules=self.rules,
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

    def _encode(self, problems: Sequence[Problem]) -> tuple[list[list[int] | None], int]:
        tmpl, limit = self.config.data.template, int(self.config.data.max_prompt_tokens)
        bos = self.tokenizer.bos_id is not None
        out: list[list[int] | None] = []
        dropped = 0
        for p in problems:
            ids = self.tokenizer.encode(prompt_text(p, tmpl), add_bos=bos)
            if len(ids) > limit:
                dropped += 1
                out.append(None)
            else:
                out.append(ids)
        return out, dropped

    @staticmethod
    def _response(p: Problem) -> str:
        response = getattr(p, "response", None)
        if not response:
            raise ValueError(f"method 'sft' needs gold responses; problem {p.id} has none")
        return response

    def _setup_reward_model(self):
        c = self.config
        self.reward_model = RewardModel.load(c.reward.rm_dir, self.mesh, self.rules)
        want = "orm" if c.reward.kind == "orm" else "prm"
        if self.reward_model.kind != want:
            raise ValueError(f"reward.kind={c.reward.kind!r} but {c.reward.rm_dir} holds a {self.reward_model.kind} "
                             "reward model")
        if c.rm_update.enabled:
            self.rm_trainer = self.reward_model.make_trainer(
                adamw(float(c.rm_update.lr), weight_decay=0.0), accum_steps=1)
            self.replay = ReplayBuffer(int(c.rm_update.capacity), history_fraction=float(c.rm_update.history_fraction),
                                       seed=int(c.seed))

    # -------------------------------------------------------------------------------------- data
    def _question_indices(self, position: int, count: int) -> list[int]:
        """Indices of the training problems at data positions [position, position + count): epoch e is a
        permutation seeded by (data.seed, e), so the order is a pure function of the position."""
        n = len(self.train_problems)
        out, cache = [], {}
        for p in range(position, position + count):
            epoch = p // n
            if epoch not in cache:
                cache[epoch] = np.random.default_rng([int(self.config.data.seed), epoch]).permutation(n)
            out.append(int(cache[epoch][p % n]))
        return out

    # -------------------------------------------------------------------------------------- rewards
    def _score(self, problems: list[Problem], prompt_ids, completions) -> dict[str, np.ndarray]:
        c = self.config
        texts = [x.text for group in completions for x in group]
        golds = [p.answer for p, group in zip(problems, completions) for _ in group]
        kinds = [p.kind for p, group in zip(problems, completions) for _ in group]
        verdicts = self.grader.grade(list(zip(texts, golds, kinds)))
        correct = np.asarray([float(v.correct) for v in verdicts], np.float32)
        parts = {"rule": correct}
        weights = {}
        if c.reward.kind in ("rule", "step_rule", "prm") or float(c.reward.rule_weight):
            weights["rule"] = float(c.reward.rule_weight)
        if float(c.reward.format_weight):
            parts["format"] = format_rewards(texts, [x.finish_reason for g in completions for x in g])
            weights["format"] = float(c.reward.format_weight)
        if int(c.reward.overlong_buffer):
            lengths = np.asarray([len(x.tokens) for g in completions for x in g])
            parts["overlong"] = overlong_penalty(lengths, self.max_new, int(c.reward.overlong_buffer))
            weights["overlong"] = float(c.reward.overlong_weight)
        out = {"correct": correct}
        if c.reward.kind == "orm":
            parts["orm"] = self.reward_model.score_outcomes([ids for ids, g in zip(prompt_ids, completions) for _ in g],
                                                            [x for g in completions for x in g])
            weights["orm"] = float(c.reward.rm_weight)
        if not weights:
            raise ValueError("no reward has a nonzero weight (reward.rule_weight, format_weight, rm_weight)")
        out["rewards"] = combine_rewards(parts, weights)
        out.update({f"reward_{k}": v for k, v in parts.items()})
        if self.process:
            out.update(self._step_rewards(problems, prompt_ids, completions, correct))
        return out

    def _step_rewards(self, problems, prompt_ids, completions, correct) -> dict[str, np.ndarray]:
        """Process rewards: one per step, at the target position of the step's last token. The final step
        (the answer line) is scored like the others: by the PRM, or by the rule reward for `step_rule`."""
        c = self.config
        rows = [(p, ids, x) for p, ids, group in zip(problems, prompt_ids, completions) for x in group]
        ends_tok = [(sp.text, list(sp.ends)) for sp in (step_end_tokens(self.tokenizer, x.tokens) for _, _, x in rows)]
        max_steps = max(1, max(len(e) for _, e in ends_tok))
        step_ends = np.full((len(rows), max_steps), -1, np.int32)
        for r, ((_, ids, _), (_, ends)) in enumerate(zip(rows, ends_tok)):
            for k, e in enumerate(ends):
                pos = len(ids) - 1 + e  # target position of completion token e
                if pos < self.seq_len:
                    step_ends[r, k] = pos
        rewards = np.zeros(step_ends.shape, np.float32)
        if c.reward.kind == "step_rule":
            for r, ((p, _, _), (text, ends)) in enumerate(zip(rows, ends_tok)):
                if p.intermediates is None:
                    raise ValueError(f"reward.kind='step_rule' needs problems with step results (the arithmetic "
                                     f"task); problem {p.id} has none")
                flags = step_correctness(text, list(p.intermediates))
                for k in range(len(ends)):
                    rewards[r, k] = float(flags[k]) if k < len(flags) else float(correct[r])
        else:
            in_completion = np.full(step_ends.shape, -1, np.int32)
            for r, (_, ends) in enumerate(ends_tok):
                in_completion[r, :len(ends)] = ends
            rewards = self.reward_model.score_steps([ids for _, ids, _ in rows], [x for _, _, x in rows],
                                                    in_completion)
        rewards = np.where(step_ends >= 0, rewards, 0.0).astype(np.float32)
        return {"step_rewards": rewards, "step_ends": step_ends}

    # -------------------------------------------------------------------------------------- a step
    def _global(self, batch: Mapping[str, np.ndarray]) -> dict:
        return global_batch({k: v for k, v in batch.items() if k != "truncated"}, self.fns.batch_sharding)

    def _sampling(self, step: int, rnd: int, n: int) -> SamplingParams:
        rc = self.config.rollout
        return SamplingParams(max_new_tokens=self.max_new, temperature=float(rc.temperature), top_p=float(rc.top_p),
                              top_k=int(rc.top_k), n=n, stop_strings=tuple(rc.stop_strings),
                              seed=_seed(int(self.config.seed), step, rnd))

    def _rollout(self, step: int, position: int) -> tuple[Rollout, int]:
        """Samples the step's groups (with DAPO dynamic sampling if configured); returns the rollout and the
        new data position."""
        rc = self.config.rollout
        self.sampler.update_params(self.initial_params if self.sample_from == "initial" else self.state.params)
        kept: list[tuple[Problem, list[int], list[Completion], dict, bool]] = []
        inert: list = []
        sampled_rows = generated = 0
        rounds = int(rc.max_sampling_rounds) if rc.dynamic_sampling else 1
        for rnd in range(rounds):
            need = self.Q - len(kept)
            if need <= 0:
                break
            idx = self._question_indices(position, need)
            position += need
            problems = [self.train_problems[i] for i in idx]
            prompt_ids = [self.train_prompts[i] for i in idx]
            completions = self.sampler.generate(prompt_ids, self._sampling(step, rnd, self.G))
            sampled_rows += need * self.G
            generated += sum(len(x.tokens) for g in completions for x in g)
            scored = self._score(problems, prompt_ids, completions)
            for q in range(need):
                sl = slice(q * self.G, (q + 1) * self.G)
                part = {k: v[sl] for k, v in scored.items()}
                varied = np.ptp(part["rewards"]) > 0 if not self.process else np.ptp(
                    part["step_rewards"][part["step_ends"] >= 0]) > 0 if (part["step_ends"] >= 0).any() else False
                item = (problems[q], prompt_ids[q], completions[q], part, True)
                if rc.dynamic_sampling and not varied:
                    inert.append(item)
                else:
                    kept.append(item)
        self.sampler.release_params()  # not needed again before the next rollout
        while len(kept) < self.Q:  # dynamic sampling ran out of rounds: fill with groups that do not train
            problem, ids, comps, part, _ = inert.pop(0)
            kept.append((problem, ids, comps, part, False))
        problems = [k[0] for k in kept]
        max_steps = max((k[3]["step_ends"].shape[1] for k in kept), default=1) if self.process else 0

        def cat(name):
            if name in ("step_rewards", "step_ends"):
                fill = -1 if name == "step_ends" else 0
                arrs = [np.pad(k[3][name], ((0, 0), (0, max_steps - k[3][name].shape[1])), constant_values=fill)
                        for k in kept]
                return np.concatenate(arrs)
            return np.concatenate([k[3][name] for k in kept])

        ro = Rollout(problems=problems, prompt_ids=[k[1] for k in kept], completions=[k[2] for k in kept],
                     correct=cat("correct"), rewards=cat("rewards"), keep=np.asarray([k[4] for k in kept]),
                     sampled_rows=sampled_rows, generated_tokens=generated)
        ro.parts = {n: cat(n) for n in kept[0][3] if n.startswith("reward_")}
        if self.process:
            ro.step_rewards, ro.step_ends = cat("step_rewards"), cat("step_ends")
        return ro, position

    def _batch(self, ro: Rollout) -> dict[str, np.ndarray]:
        """The method's training batch from a rollout (Table 10: what each method trains on)."""
        c, G = self.config, self.G
        m = c.method
        if m == "dpo":
            prompts, comps, valid = [], [], []
            for q, (ids, group) in enumerate(zip(ro.prompt_ids, ro.completions)):
                ok = [i for i in range(G) if ro.correct[q * G + i] > 0]
                bad = [i for i in range(G) if ro.correct[q * G + i] <= 0]
                for j in range(G // 2):
                    real = j < min(len(ok), len(bad)) and ro.keep[q]
                    pair = (ok[j], bad[j]) if real else (0, 0)
                    for i in pair:
                        prompts.append(ids)
                        comps.append([group[i]])
                        valid.append(float(real))
            batch = rollout_batch(prompts, comps, seq_len=self.seq_len, pad_id=self.sampler.pad_id)
            batch["pair_valid"] = np.asarray(valid, np.float32)[:, None]  # [rows, 1]: batch arrays are 2-d
            batch["weights"] *= batch["pair_valid"]
            return batch
        batch = rollout_batch(ro.prompt_ids, ro.completions, seq_len=self.seq_len, pad_id=self.sampler.pad_id)
        row_keep = np.repeat(ro.keep, G).astype(np.float32)
        batch["weights"] *= row_keep[:, None]
        if m in ("rft", "online_rft"):
            batch["correct"] = ((ro.correct > 0).astype(np.float32) * row_keep)[:, None]  # [rows, 1]
        elif m == "grpo":
            scale = bool(c.loss.scale_advantages)
            if self.process:
                adv = process_advantages(jnp.asarray(ro.step_rewards), jnp.asarray(ro.step_ends), None, G,
                                         jnp.asarray(batch["weights"]), scale=scale)
            else:
                adv = token_advantages(group_advantages(jnp.asarray(ro.rewards), G, scale=scale),
                                       jnp.asarray(batch["weights"]))
            batch["advantages"] = np.asarray(adv, np.float32)
        return batch

    def _sft_batch(self, position: int) -> tuple[dict[str, np.ndarray], int]:
        idx = self._question_indices(position, self.rows)
        comps = [[Completion(0, 0, self.sft_ids[i], [0.0] * len(self.sft_ids[i]), "", "stop")] for i in idx]
        batch = rollout_batch([self.train_prompts[i] for i in idx], comps, seq_len=self.seq_len,
                              pad_id=self.sampler.pad_id)
        return batch, position + self.rows

    def step(self, step: int, position: int) -> tuple[dict, int]:
        """RL step number `step` (1-based): rollout, rewards, advantages and mu updates."""
        c = self.config
        record: dict[str, float] = {}
        t0 = time.perf_counter()
        if c.method == "sft":
            batch, position = self._sft_batch(position)
            ro = None
        else:
            ro, position = self._rollout(step, position)
            t_roll = time.perf_counter() - t0
            record.update(self._rollout_metrics(ro, t_roll))
            batch = self._batch(ro)
            check_response_logprobs("old-policy (sampler)", batch["old_logp"], batch["weights"], self._row_name(ro))
        record["truncated"] = float(batch.pop("truncated", 0))
        gbatch = self._global(batch)
        if self.needs_ref:
            ref = self.ref_params
            if self.config.train.reference_on_host:  # into HBM for the forward only (freed after it)
                ref = jax.device_put(ref, self.params_sharding)
            gbatch["ref_logp"] = self._ref_logp(ref, gbatch)
            del ref
            check_response_logprobs("reference", gbatch["ref_logp"], gbatch["weights"], self._row_name(ro))
        if c.method == "ppo":
            assert ro is not None  # PPO samples (only "sft" has no rollout)
            self._ppo_prepare(ro, gbatch, record)
        t1 = time.perf_counter()
        updates = []
        for _ in range(self.mu):
            self.state, metrics = self.fns.train_step(self.state, gbatch)
            updates.append(metrics)
            if c.method == "ppo":
                assert self.critic_fns is not None  # PPO always has its critic
                self.critic_state, cm = self.critic_fns.train_step(self.critic_state, gbatch)
                updates[-1] = dict(metrics, **{f"critic_{k}": v for k, v in cm.items()})
        updates = jax.device_get(updates)
        t_train = time.perf_counter() - t1
        for k in updates[0]:
            record[k] = float(np.mean([float(u[k]) for u in updates]))
        record["finite"] = float(min(float(u["finite"]) for u in updates))
        train_tokens = float(np.sum(batch["segment_ids"] > 0)) * self.mu
        record.update(train_time_s=t_train, train_tokens_per_s=train_tokens / max(t_train, 1e-9),
                      step_time_s=time.perf_counter() - t0)
        if self.replay is not None and ro is not None:
            self.replay.add_pending(self._rm_examples(ro))
        return record, position

    def _row_name(self, ro: Rollout | None) -> Callable[[int], str]:
        """Names a training-batch row in errors: its question and sample (DPO and SFT rows by index)."""
        if ro is None or self.config.method == "dpo":
            return lambda r: f"row {r}"
        return lambda r: f"row {r} (question {ro.problems[r // self.G].id!r}, sample {r % self.G})"

    def _rollout_metrics(self, ro: Rollout, seconds: float) -> dict[str, float]:
        G = self.G
        rewards = ro.rewards.reshape(-1, G)
        lengths = np.asarray([len(x.tokens) for g in ro.completions for x in g], np.float32)
        out = {
            "reward_mean": float(ro.rewards.mean()), "reward_std": float(ro.rewards.std()),
            "accuracy": float(ro.correct.mean()),
            "zero_variance_groups": float(np.mean(np.ptp(rewards, axis=1) == 0)),
            "response_length": float(lengths.mean()),
            "finished_frac": float(np.mean([x.finish_reason != "length" for g in ro.completions for x in g])),
            "trained_groups": float(ro.keep.sum()),
            "sampled_rows": float(ro.sampled_rows),
            "rollout_time_s": seconds, "rollout_tokens_per_s": ro.generated_tokens / max(seconds, 1e-9),
        }
        for k, v in ro.parts.items():
            out[f"{k}_mean"] = float(np.mean(v))
        if ro.step_rewards is not None and ro.step_ends is not None:
            m = np.asarray(ro.step_ends >= 0)
            out["step_reward_mean"] = float(ro.step_rewards[m].mean()) if m.any() else 0.0
            out["steps_per_response"] = float(m.sum(1).mean())
        return out

    def _ppo_prepare(self, ro: Rollout, gbatch: dict, record: dict) -> None:
        pc = self.config.ppo
        values = self._values(self.critic_state.params, gbatch)
        scores = jnp.asarray(ro.rewards * np.repeat(ro.keep, self.G), jnp.float32)
        token_rewards = ppo.ppo_token_rewards(scores, gbatch["old_logp"], gbatch["ref_logp"], gbatch["weights"],
                                              float(pc.kl_coef))
        adv, returns = ppo.ppo_advantages(token_rewards, values, gbatch["weights"], gamma=float(pc.gamma),
                                          lam=float(pc.lam), whiten=bool(pc.whiten_advantages))
        gbatch.update(advantages=adv, returns=returns, old_values=values)
        record["value_mean"] = float(jax.device_get((values * gbatch["weights"]).sum() /
                                                    jnp.maximum(gbatch["weights"].sum(), 1.0)))

    # -------------------------------------------------------------------------------------- iterative RM
    def _rm_examples(self, ro: Rollout) -> list[dict]:
        """Training examples for the reward model from this step's samples: ORM labels are the rule reward;
        PRM labels are per-step correctness where the task can check steps, else the outcome on every step."""
        out = []
        cap = int(self.config.rm_update.samples_per_step) or None
        r = 0
        for p, ids, group in zip(ro.problems, ro.prompt_ids, ro.completions):
            for x in group:
                tokens = np.asarray(list(ids) + list(x.tokens), np.int32)
                ex = {"tokens": tokens, "prompt_len": len(ids), "label": float(ro.correct[r])}
                if self.reward_model.kind == "prm":
                    split = step_end_tokens(self.tokenizer, x.tokens)
                    text, ends = split.text, list(split.ends)
                    if p.intermediates is not None:
                        flags = step_correctness(text, list(p.intermediates))
                        labels = [float(flags[k]) if k < len(flags) else float(ro.correct[r]) for k in range(len(ends))]
                    else:
                        labels = [float(ro.correct[r])] * len(ends)
                    ex.update(step_ends=np.asarray([len(ids) + e for e in ends], np.int32),
                              step_labels=np.asarray(labels, np.float32))
                out.append(ex)
                r += 1
        return out[:cap] if cap else out

    def _update_reward_model(self, iteration: int) -> dict:
        c = self.config.rm_update
        examples = self.replay.training_set()
        metrics = self.rm_trainer.train(examples, int(c.steps), int(c.batch_size), seed=_seed(int(self.config.seed),
                                                                                            iteration, 7))
        self.replay.commit()
        self.reward_model.params = self.rm_trainer.state.params
        return {f"rm_{k}": float(v) for k, v in metrics.items()}

    # -------------------------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, float]:
        """Greedy accuracy of the current policy on the held-out problems (and maj@k / pass@k with
        `eval.samples` = k > 0 samples at `eval.temperature`)."""
        c = self.config.eval
        self.sampler.update_params(self.state.params)
        max_new = int(c.max_new_tokens or self.max_new)
        problems, prompts = self.test_problems, self.test_prompts
        greedy = self.sampler.generate(prompts, SamplingParams(max_new_tokens=max_new, temperature=0.0, n=1))
        verdicts = self.grader.grade([(g[0].text, p.answer, p.kind) for p, g in zip(problems, greedy)])
        out = {"eval_accuracy": float(np.mean([v.correct for v in verdicts])),
               "eval_length": float(np.mean([len(g[0].tokens) for g in greedy]))}
        k = int(c.samples)
        if k:
            sampled = self.sampler.generate(prompts, SamplingParams(max_new_tokens=max_new,
                                                                    temperature=float(c.temperature), n=k, seed=12345))
            flat = self.grader.grade([(x.text, p.answer, p.kind) for p, g in zip(problems, sampled) for x in g])
            per = [flat[i * k:(i + 1) * k] for i in range(len(problems))]
            same = lambda a, b: a == b  # noqa: E731 - answers are compared after the grader's normalisation
            out[f"eval_pass@{k}"] = float(np.mean([any(v.correct for v in vs) for vs in per]))
            out[f"eval_maj@{k}"] = float(np.mean([maj_at_k([(v.extracted, v.correct) for v in vs], k, same)
                                                  for vs in per]))
            out["eval_sample_accuracy"] = float(np.mean([v.correct for v in flat]))
        self.sampler.release_params()
        return out

    # -------------------------------------------------------------------------------------- checkpoints
    def _items(self) -> dict:
        items = {"params": self.state.params, "opt_state": self.state.opt_state}
        if self.ref_params is not None:
            items["ref_params"] = self.ref_params
        if self.critic_state is not None:
            items.update(critic_params=self.critic_state.params, critic_opt_state=self.critic_state.opt_state)
        if self.rm_trainer is not None:
            items.update(rm_params=self.rm_trainer.state.params, rm_opt_state=self.rm_trainer.state.opt_state,
                         replay=self.replay.state_arrays())
        return items

    def _restore(self, ckpt: Checkpointer, step: int) -> int:
        tmpl = jax.eval_shape(lambda s: s, self.state)
        ss = self.fns.state_sharding
        targets = {"params": abstract_like(tmpl.params, ss.params),
                   "opt_state": abstract_like(tmpl.opt_state, ss.opt_state)}
        saved = ckpt.item_names(step)
        if "ref_params" in saved:
            targets["ref_params"] = abstract_like(jax.eval_shape(self._frozen, tmpl.params), ss.params)
        if self.critic_state is not None and self.critic_fns is not None:
            ct = jax.eval_shape(lambda s: s, self.critic_state)
            cs = self.critic_fns.state_sharding
            targets.update(critic_params=abstract_like(ct.params, cs.params),
                           critic_opt_state=abstract_like(ct.opt_state, cs.opt_state))
        if self.rm_trainer is not None:
            rt = jax.eval_shape(lambda s: s, self.rm_trainer.state)
            rs = self.rm_trainer.state_sharding
            targets.update(rm_params=abstract_like(rt.params, rs.params),
                           rm_opt_state=abstract_like(rt.opt_state, rs.opt_state), replay=None)
        got = ckpt.restore(step, targets)
        self.state = TrainState(step=jax.device_put(np.int32(step * self.mu), ss.step), params=got["params"],
                                opt_state=got["opt_state"])
        if "ref_params" in got:
            self.ref_params = got["ref_params"]
            if self.config.train.reference_on_host:
                self.ref_params = self._to_host(self.ref_params)
        if self.critic_state is not None:
            self.critic_state = TrainState(step=jax.device_put(np.int32(step * self.mu), cs.step),
                                           params=got["critic_params"], opt_state=got["critic_opt_state"])
        if self.rm_trainer is not None:
            self.rm_trainer.set_state(TrainState(step=self.rm_trainer.state.step, params=got["rm_params"],
                                                 opt_state=got["rm_opt_state"]))
            self.reward_model.params = self.rm_trainer.state.params
            self.replay = ReplayBuffer.from_arrays(got["replay"], capacity=int(self.config.rm_update.capacity),
                                                   history_fraction=float(self.config.rm_update.history_fraction))
        return int(got["metadata"]["data_position"])

    # -------------------------------------------------------------------------------------- the loop
    def run(self) -> dict[str, Any]:
        """Plugs the RL step and its hooks into the shared run loop (:class:`~dsmath_jax.train.runner.Runner`)."""
        self._setup()
        c = self.config
        tc = c.train
        nan = float("nan")
        runner = Runner(self.workdir, total_steps=self.total_steps, checkpoint_every=int(tc.checkpoint_every),
                        keep_checkpoints=int(tc.keep_checkpoints), async_checkpoint=bool(tc.async_checkpoint),
                        log_every=int(tc.log_every), tensorboard=bool(tc.get("tensorboard", True)),
                        max_nonfinite_in_a_row=int(tc.max_nonfinite_in_a_row),
                        stop_after_steps=int(tc.stop_after_steps or 0), name="RL", logger=log,
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
                self.ref_params = self._frozen(self.state.params)  # the reference <- the policy
                if tc.reference_on_host:
                    self.ref_params = self._to_host(self.ref_params)
            record, position = self.step(step + 1, position)
            return StepInfo(step + 1, record)

        def iteration(info: StepInfo) -> dict:
            return {"iteration": (info.step - 1) // self.M + 1, "skipped_steps": runner.skipped}

        def evaluate(info: StepInfo) -> dict:
            evals[info.step] = self.evaluate()
            info.log = True  # a step with an evaluation is logged off the log_every grid too
            return evals[info.step]

        runner.add_hook(iteration, every=1, at_end=True, into_record=True)
        if self.rm_trainer is not None:  # Algorithm 1: the reward model trains at the end of each iteration
            runner.add_hook(lambda info: self._update_reward_model(info.step // self.M), every=self.M, at_end=True,
                            into_record=True)
        eval_every = int(c.eval.every)
        if c.eval.n_problems and (eval_every or c.eval.at_start):
            runner.add_hook(evaluate, every=eval_every, at_start=bool(c.eval.at_start), at_end=bool(eval_every),
                            into_record=True)

        def checkpoint(at: int) -> tuple[dict, dict]:
            return self._items(), {
                "step": at, "data_position": position, "iteration": (at - 1) // self.M + 1 if at else 0,
                "method": c.method, "model": self.model_cfg.to_dict()}

        with Grader() as self.grader:
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


__all__ = ["run_rl", "RLRun", "Rollout", "rft_loss_fn", "sft_loss_fn",
           "dpo_loss_fn", "OFFLINE_METHODS"]
