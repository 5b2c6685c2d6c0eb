"""The rollout role of RL (PAPER.md §4.3, Algorithm 1; §5 Table 10's "data source" and "reward"): sample
groups of outputs for the step's questions and score them.

  roller = Roller(sampler, grader, problems, prompts, settings, rewards=outcome_rewards(...),
                  step_reward=step_rule_rewards)                       # process supervision: per-step rewards
  rollout, position = roller.sample(params, step, position)           # Q questions x G outputs, scored

Rewards are a list of :class:`Reward` (a name, a weight, and a callable with one signature,
``fn(rows: Rows) -> [rows] float32``); the outcome reward of a row is their weighted sum. Process
supervision adds a :data:`StepRewardFn` (``fn(rows, steps) -> [rows, max_steps]``): the exact step checker of
a task with step results, or a process reward model. Every row is graded by the rule checker once; its
verdict (``Rows.correct``) is the accuracy metric and the rule reward.

Questions are drawn in a fixed order: epoch e is a permutation seeded by (data seed, e), so the questions of
a step are a pure function of the data position, and sampling seeds of (run seed, step, round): a resumed run
samples exactly what the uninterrupted one did. With DAPO's dynamic sampling, groups whose rewards are all
equal (no gradient) are replaced by fresh questions for up to ``max_rounds`` rounds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dsmath_jax.data.tasks import Problem, prompt_text
from dsmath_jax.data.tokenizers import Tokenizer
from dsmath_jax.evals.grader import Grader
from dsmath_jax.evals.metrics import maj_at_k
from dsmath_jax.generate.sampler import Completion, Sampler, SamplingParams
from dsmath_jax.rl.math_shepherd import StepSplit, step_end_tokens
from dsmath_jax.rl.reward_model import RewardModel
from dsmath_jax.rl.rewards import combine_rewards, format_rewards, overlong_penalty, step_correctness


def sampling_seed(*parts: int) -> int:
    """A sampling seed from (run seed, step, round, ...): distinct per call, reproducible on resume."""
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p)) % (2 ** 31 - 1)
    return h


def encode_prompts(tokenizer: Tokenizer, problems: Sequence[Problem], template: str, limit: int
                   ) -> tuple[list[list[int] | None], int]:
    """Each problem's prompt token ids (``template`` filled in, BOS where the tokenizer has one), None for a
    prompt longer than ``limit`` tokens; and how many were left out."""
    bos = tokenizer.bos_id is not None
    out: list[list[int] | None] = []
    for p in problems:
        ids = tokenizer.encode(prompt_text(p, template), add_bos=bos)
        out.append(ids if len(ids) <= limit else None)
    return out, sum(ids is None for ids in out)


# ------------------------------------------------------------------------------------------ rewards
@dataclasses.dataclass(frozen=True)
class Rows:
    """Sampled rows, one per completion, prompt-major (the G outputs of a question are consecutive), with
    the rule checker's verdict of each (``correct`` [rows] float32, 1.0 or 0.0)."""

    problems: list[Problem]
    prompt_ids: list[list[int]]
    completions: list[Completion]
    correct: np.ndarray

    @staticmethod
    def of_groups(problems: Sequence[Problem], prompt_ids: Sequence[list[int]],
                  groups: Sequence[Sequence[Completion]], correct: np.ndarray) -> Rows:
        return Rows(problems=[p for p, g in zip(problems, groups) for _ in g],
                    prompt_ids=[ids for ids, g in zip(prompt_ids, groups) for _ in g],
                    completions=[x for g in groups for x in g], correct=correct)


RewardFn = Callable[[Rows], np.ndarray]
StepRewardFn = Callable[[Rows, Sequence[StepSplit]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Reward:
    """One term of the outcome reward: ``weight * fn(rows)``, reported as the metric ``reward_<name>_mean``."""

    name: str
    weight: float
    fn: RewardFn


def rule_reward(rows: Rows) -> np.ndarray:
    """1.0 where the rule checker (the evaluation harness's grader) accepts the answer, else 0.0."""
    return rows.correct


def format_reward(rows: Rows) -> np.ndarray:
    """:func:`~dsmath_jax.rl.rewards.format_rewards`: a finished output ending in a boxed answer."""
    return format_rewards([x.text for x in rows.completions], [x.finish_reason for x in rows.completions])


def overlong_reward(max_new_tokens: int, buffer: int) -> RewardFn:
    """DAPO's soft overlong punishment (:func:`~dsmath_jax.rl.rewards.overlong_penalty`) of the output lengths."""

    def fn(rows: Rows) -> np.ndarray:
        return overlong_penalty(np.asarray([len(x.tokens) for x in rows.completions]), max_new_tokens, buffer)

    return fn


def orm_reward(reward_model: RewardModel) -> RewardFn:
    """An outcome reward model's score of each whole output."""

    def fn(rows: Rows) -> np.ndarray:
        return reward_model.score_outcomes(rows.prompt_ids, rows.completions)

    return fn


def outcome_rewards(reward: Any, max_new_tokens: int, reward_model: RewardModel | None = None) -> list[Reward]:
    """The outcome reward terms a run's ``reward`` config section asks for, in a fixed order (rule, format,
    overlong, orm). The rule reward is a term for rule / process rewards (weight ``rule_weight``) and for an
    ORM run that gives it a weight. Raises ValueError when an outcome-supervised run (kind rule or orm) has no
    term of nonzero weight (process supervision trains on its step rewards instead)."""
    kind = reward.kind
    out = []
    if kind in ("rule", "step_rule", "prm") or reward.rule_weight:
        out.append(Reward("rule", float(reward.rule_weight), rule_reward))
    if reward.format_weight:
        out.append(Reward("format", float(reward.format_weight), format_reward))
    if reward.overlong_buffer:
        out.append(Reward("overlong", float(reward.overlong_weight),
                          overlong_reward(max_new_tokens, int(reward.overlong_buffer))))
    if kind == "orm":
        if reward_model is None:
            raise ValueError("reward.kind='orm' needs a reward model")
        out.append(Reward("orm", float(reward.rm_weight), orm_reward(reward_model)))
    if kind in ("rule", "orm") and not any(r.weight for r in out):
        raise ValueError(f"reward.kind={kind!r}: no reward has a nonzero weight (reward.rule_weight, format_weight, "
                         "rm_weight)")
    return out


def step_rule_rewards(rows: Rows, steps: Sequence[StepSplit]) -> np.ndarray:
    """Process rewards from the task's exact step checker: 1.0 for a step whose result is right, else 0.0;
    steps after the last checkable one (the answer line) get the outcome's correctness."""
    max_steps = max(1, max((len(s.ends) for s in steps), default=1))
    out = np.zeros((len(steps), max_steps), np.float32)
    for r, (p, split) in enumerate(zip(rows.problems, steps)):
        if p.intermediates is None:
            raise ValueError(f"reward.kind='step_rule' needs problems with step results (the arithmetic task); "
                             f"problem {p.id} has none")
        flags = step_correctness(split.text, list(p.intermediates))
        for k in range(len(split.ends)):
            out[r, k] = float(flags[k]) if k < len(flags) else float(rows.correct[r])
    return out


def prm_rewards(reward_model: RewardModel) -> StepRewardFn:
    """A process reward model's score at the last token of every step."""

    def fn(rows: Rows, steps: Sequence[StepSplit]) -> np.ndarray:
        max_steps = max(1, max((len(s.ends) for s in steps), default=1))
        ends = np.full((len(steps), max_steps), -1, np.int32)
        for r, split in enumerate(steps):
            ends[r, :len(split.ends)] = split.ends
        return reward_model.score_steps(rows.prompt_ids, rows.completions, ends)

    return fn


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

    def metrics(self, seconds: float) -> dict[str, float]:
        """Reward, accuracy, length and throughput metrics of the rollout (it took ``seconds``)."""
        G = len(self.completions[0])
        rewards = self.rewards.reshape(-1, G)
        lengths = np.asarray([len(x.tokens) for g in self.completions for x in g], np.float32)
        out = {
            "reward_mean": float(self.rewards.mean()), "reward_std": float(self.rewards.std()),
            "accuracy": float(self.correct.mean()),
            "zero_variance_groups": float(np.mean(np.ptp(rewards, axis=1) == 0)),
            "response_length": float(lengths.mean()),
            "finished_frac": float(np.mean([x.finish_reason != "length" for g in self.completions for x in g])),
            "trained_groups": float(self.keep.sum()),
            "sampled_rows": float(self.sampled_rows),
            "rollout_time_s": seconds, "rollout_tokens_per_s": self.generated_tokens / max(seconds, 1e-9),
        }
        for k, v in self.parts.items():
            out[f"{k}_mean"] = float(np.mean(v))
        if self.step_rewards is not None and self.step_ends is not None:
            m = np.asarray(self.step_ends >= 0)
            out["step_reward_mean"] = float(self.step_rewards[m].mean()) if m.any() else 0.0
            out["steps_per_response"] = float(m.sum(1).mean())
        return out


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    """How a :class:`Roller` samples (the ``rollout`` section of an RL config, resolved)."""

    group_size: int  # G outputs per question
    questions: int  # Q questions per step
    max_new_tokens: int
    seq_len: int  # training row length: process rewards past it are dropped
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_strings: tuple[str, ...] = ()
    seed: int = 0  # the run's seed (sampling keys)
    data_seed: int = 0  # the question order
    dynamic_sampling: bool = False
    max_rounds: int = 1


class Roller:
    """Samples and scores the groups of each RL step (see the module docstring).

    ``problems`` and ``prompts`` are the training questions and their prompt token ids; ``rewards`` the
    outcome reward terms; ``step_reward`` (process supervision) the per-step reward, with ``tokenizer`` to
    find where each step of a completion ends."""

    def __init__(self, sampler: Sampler, grader: Grader, problems: Sequence[Problem], prompts: Sequence[list[int]],
                 settings: RolloutSettings, *, rewards: Sequence[Reward], step_reward: StepRewardFn | None = None,
                 tokenizer: Tokenizer | None = None):
        if step_reward is not None and tokenizer is None:
            raise ValueError("process rewards need the tokenizer (to find the steps of a completion)")
        self.sampler, self.grader, self.settings = sampler, grader, settings
        self.problems, self.prompts = list(problems), list(prompts)
        self.rewards, self.step_reward, self.tokenizer = list(rewards), step_reward, tokenizer

    @property
    def process(self) -> bool:
        return self.step_reward is not None

    def question_indices(self, position: int, count: int) -> list[int]:
        """Indices of the training problems at data positions [position, position + count)."""
        return question_indices(len(self.problems), self.settings.data_seed, position, count)

    def sampling(self, step: int, rnd: int, n: int) -> SamplingParams:
        s = self.settings
        return SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                              top_k=s.top_k, n=n, stop_strings=s.stop_strings, seed=sampling_seed(s.seed, step, rnd))

    # -------------------------------------------------------------------------------------- scoring
    def score(self, problems: Sequence[Problem], prompt_ids: Sequence[list[int]],
              groups: Sequence[Sequence[Completion]]) -> dict[str, np.ndarray]:
        """Per-row arrays of sampled groups: ``correct``, ``rewards`` (the weighted sum), ``reward_<name>`` per
        term (``reward_rule`` always), and with process supervision ``step_rewards`` / ``step_ends``."""
        flat = [x for g in groups for x in g]
        verdicts = self.grader.grade([(x.text, p.answer, p.kind) for p, g in zip(problems, groups) for x in g])
        correct = np.asarray([float(v.correct) for v in verdicts], np.float32)
        rows = Rows.of_groups(problems, prompt_ids, groups, correct)
        parts = {"rule": correct}
        parts.update({r.name: np.asarray(r.fn(rows), np.float32) for r in self.rewards})
        out = {"correct": correct,
               "rewards": combine_rewards(parts, {r.name: r.weight for r in self.rewards})}
        out.update({f"reward_{k}": v for k, v in parts.items()})
        if self.step_reward is not None:
            assert self.tokenizer is not None  # checked in __init__
            steps = [step_end_tokens(self.tokenizer, x.tokens) for x in flat]
            out.update(self._step_rewards(rows, steps))
        return out

    def _step_rewards(self, rows: Rows, steps: Sequence[StepSplit]) -> dict[str, np.ndarray]:
        """One process reward per step, at the target position of the step's last token (steps past the
        training row length are dropped). The final step (the answer line) is scored like the others."""
        assert self.step_reward is not None
        max_steps = max(1, max(len(s.ends) for s in steps))
        step_ends = np.full((len(steps), max_steps), -1, np.int32)
        for r, (ids, split) in enumerate(zip(rows.prompt_ids, steps)):
            for k, e in enumerate(split.ends):
                pos = len(ids) - 1 + e  # target position of completion token e
                if pos < self.settings.seq_len:
                    step_ends[r, k] = pos
        rewards = np.asarray(self.step_reward(rows, steps), np.float32)
        rewards = np.where(step_ends >= 0, rewards, 0.0).astype(np.float32)
        return {"step_rewards": rewards, "step_ends": step_ends}

    # -------------------------------------------------------------------------------------- sampling
    def sample(self, params: Any, step: int, position: int) -> tuple[Rollout, int]:
        """Samples the step's Q groups with ``params`` (with dynamic sampling if configured); returns the
        scored rollout and the new data position."""
        s = self.settings
        G, Q = s.group_size, s.questions
        self.sampler.update_params(params)
        kept: list[tuple[Problem, list[int], list[Completion], dict, bool]] = []
        inert: list = []
        sampled_rows = generated = 0
        rounds = s.max_rounds if s.dynamic_sampling else 1
        for rnd in range(rounds):
            need = Q - len(kept)
            if need <= 0:
                break
            idx = self.question_indices(position, need)
            position += need
            problems = [self.problems[i] for i in idx]
            prompt_ids = [self.prompts[i] for i in idx]
            completions = self.sampler.generate(prompt_ids, self.sampling(step, rnd, G))
            sampled_rows += need * G
            generated += sum(len(x.tokens) for g in completions for x in g)
            scored = self.score(problems, prompt_ids, completions)
            for q in range(need):
                sl = slice(q * G, (q + 1) * G)
                part = {k: v[sl] for k, v in scored.items()}
                item = (problems[q], prompt_ids[q], completions[q], part, True)
                if s.dynamic_sampling and not self._varied(part):
                    inert.append(item)
                else:
                    kept.append(item)
        self.sampler.release_params()  # not needed again before the next rollout
        while len(kept) < Q:  # dynamic sampling ran out of rounds: fill with groups that do not train
            problem, ids, comps, part, _ = inert.pop(0)
            kept.append((problem, ids, comps, part, False))
        max_steps = max((k[3]["step_ends"].shape[1] for k in kept), default=1) if self.process else 0

        def cat(name):
            if name in ("step_rewards", "step_ends"):
                fill = -1 if name == "step_ends" else 0
                return np.concatenate([np.pad(k[3][name], ((0, 0), (0, max_steps - k[3][name].shape[1])),
                                              constant_values=fill) for k in kept])
            return np.concatenate([k[3][name] for k in kept])

        ro = Rollout(problems=[k[0] for k in kept], prompt_ids=[k[1] for k in kept],
                     completions=[k[2] for k in kept], correct=cat("correct"), rewards=cat("rewards"),
                     keep=np.asarray([k[4] for k in kept]), sampled_rows=sampled_rows, generated_tokens=generated)
        ro.parts = {n: cat(n) for n in kept[0][3] if n.startswith("reward_")}
        if self.process:
            ro.step_rewards, ro.step_ends = cat("step_rewards"), cat("step_ends")
        return ro, position

    def _varied(self, part: dict[str, np.ndarray]) -> bool:
        """Whether a group's rewards differ (it has a gradient): outcome rewards, or the step rewards."""
        if not self.process:
            return bool(np.ptp(part["rewards"]) > 0)
        real = part["step_ends"] >= 0
        return bool(real.any() and np.ptp(part["step_rewards"][real]) > 0)

    def gold(self, position: int, rows: int, responses: Sequence[list[int]]) -> tuple[Rollout, int]:
        """The gold responses (token ids, one per training problem) of the ``rows`` questions at ``position``
        as a rollout of one output per question (the data source of the paradigm's SFT row)."""
        idx = self.question_indices(position, rows)
        groups = [[Completion(0, 0, list(responses[i]), [0.0] * len(responses[i]), "", "stop")] for i in idx]
        ones = np.ones(rows, np.float32)
        ro = Rollout(problems=[self.problems[i] for i in idx], prompt_ids=[self.prompts[i] for i in idx],
                     completions=groups, correct=ones, rewards=ones, keep=np.ones(rows, bool))
        return ro, position + rows


def question_indices(n: int, data_seed: int, position: int, count: int) -> list[int]:
    """Indices into ``n`` problems at data positions [position, position + count): epoch e is a permutation
    seeded by (data_seed, e), so the order is a pure function of the position."""
    out, cache = [], {}
    for p in range(position, position + count):
        epoch = p // n
        if epoch not in cache:
            cache[epoch] = np.random.default_rng([int(data_seed), epoch]).permutation(n)
        out.append(int(cache[epoch][p % n]))
    return out


# ------------------------------------------------------------------------------------------ evaluation
def evaluate(sampler: Sampler, grader: Grader, params: Any, problems: Sequence[Problem],
             prompts: Sequence[list[int]], *, max_new_tokens: int, samples: int = 0,
             temperature: float = 1.0, seed: int = 12345) -> dict[str, float]:
    """Greedy accuracy of ``params`` on held-out problems (``eval_accuracy``, ``eval_length``) and, with
    ``samples`` = k > 0 outputs per problem at ``temperature``, ``eval_pass@k``, ``eval_maj@k`` (majority vote
    over the grader's normalised answers) and ``eval_sample_accuracy``."""
    return evaluate_problems(sampler, grader, params, problems, prompts, max_new_tokens=max_new_tokens,
                             samples=samples, temperature=temperature, seed=seed)[0]


def evaluate_problems(sampler: Sampler, grader: Grader, params: Any, problems: Sequence[Problem],
                      prompts: Sequence[list[int]], *, max_new_tokens: int, samples: int = 0,
                      temperature: float = 1.0, seed: int = 12345) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """:func:`evaluate`'s metrics and one row per problem, in the problems' order: ``id``, ``correct`` (the
    greedy answer's verdict), ``answer`` (the greedy answer the grader extracted, None if none), ``response``
    (the greedy response's text) and, with samples, ``samples_correct`` (how many of the k samples are right).
    Two evaluations of the same problems (before and after training) compare problem by problem with
    :func:`dsmath_jax.analysis.rl.paired_change`."""
    sampler.update_params(params)
    greedy = sampler.generate(list(prompts), SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, n=1))
    verdicts = grader.grade([(g[0].text, p.answer, p.kind) for p, g in zip(problems, greedy)])
    out = {"eval_accuracy": float(np.mean([v.correct for v in verdicts])),
           "eval_length": float(np.mean([len(g[0].tokens) for g in greedy]))}
    rows: list[dict[str, Any]] = [
        {"id": p.id, "correct": bool(v.correct), "answer": v.extracted, "response": g[0].text}
        for p, v, g in zip(problems, verdicts, greedy)]
    k = samples
    if k:
        sampled = sampler.generate(list(prompts), SamplingParams(max_new_tokens=max_new_tokens,
                                                                 temperature=temperature, n=k, seed=seed))
        flat = grader.grade([(x.text, p.answer, p.kind) for p, g in zip(problems, sampled) for x in g])
        per = [flat[i * k:(i + 1) * k] for i in range(len(problems))]
        same = lambda a, b: a == b  # noqa: E731 - answers are compared after the grader's normalisation
        out[f"eval_pass@{k}"] = float(np.mean([any(v.correct for v in vs) for vs in per]))
        out[f"eval_maj@{k}"] = float(np.mean([maj_at_k([(v.extracted, v.correct) for v in vs], k, same)
                                              for vs in per]))
        out["eval_sample_accuracy"] = float(np.mean([v.correct for v in flat]))
        for row, vs in zip(rows, per):
            row["samples_correct"] = sum(bool(v.correct) for v in vs)
    sampler.release_params()
    return out, rows


__all__ = ["Rows", "Reward", "RewardFn", "StepRewardFn", "rule_reward", "format_reward", "overlong_reward",
           "orm_reward", "outcome_rewards", "step_rule_rewards", "prm_rewards", "Rollout", "RolloutSettings",
           "Roller", "question_indices", "sampling_seed", "encode_prompts", "evaluate",
           "evaluate_problems"]
