"""Iterative RL (PAPER.md §4, Algorithm 1): after each iteration the reward model continues training on
the policy's new samples, with a replay of 10% of the historical data, while the policy trains on.

:class:`RewardModelUpdates` is that role of the RL loop (:class:`~dsmath_jax.rl.roles.Role`): at every step,
before the policy's updates, it labels (at most ``samples_per_step`` of) the step's samples and queues them;
at the end of an iteration it trains the reward model on them plus a replayed share of history
(:class:`~dsmath_jax.rl.replay.ReplayBuffer`), commits them to the history and hands the new weights to the
reward the rollouts read. The history starts as the reward model's own training data (the train split of
the ``labels.npz`` its ``dsmath rm`` run wrote, :func:`rm_training_examples`), so the first retraining
already replays it at ``history_fraction``.

Labels (:class:`LabelSettings`):

* an ORM learns the rule reward (the answer's correctness);
* a PRM learns the paper's Math-Shepherd process labels (``prm_labels="math_shepherd"``, PAPER.md §4; Wang
  et al. 2023, :mod:`dsmath_jax.rl.math_shepherd`): from every step prefix of a sample the policy that
  sampled it (the rollout role's sampler, at the old policy's weights) draws ``n`` continuations, the
  rollout's grader checks them against the gold answer, and the step is good if one does (``hard``) or by
  the fraction that do (``soft``). Any task with a checkable final answer works;
* ``prm_labels="step_check"``: the arithmetic task's exact step checker (an oracle; other tasks are an
  error); ``prm_labels="outcome"``: the answer's correctness on every step (the cheapest, the weakest).

Cost: Math-Shepherd samples ``n`` continuations per intermediate step of every labelled sample, so a step
labels at most ``samples_per_step`` samples (spread over the step's questions: the first sample of every
question, then the second, ...) and at most ``max_prefixes_per_step`` prefixes (samples that would exceed it
wait for the next step's; 0: no cap).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from dsmath_jax.config.rl import PRM_LABELS
from dsmath_jax.data.tokenizers import Tokenizer
from dsmath_jax.generate.sampler import SamplingParams
from dsmath_jax.rl.math_shepherd import MODES, math_shepherd_labels, step_end_tokens
from dsmath_jax.rl.replay import ReplayBuffer, unpack_examples
from dsmath_jax.rl.reward_model import RewardModel
from dsmath_jax.rl.rewards import step_correctness
from dsmath_jax.rl.roles import Role
from dsmath_jax.rl.rollout import Rollout, sampling_seed
from dsmath_jax.train.step import TrainState, adamw

__all__ = ["PRM_LABELS", "LabelSettings", "RewardModelUpdates", "label_rollout", "label_order",
           "rm_training_examples", "RM_LABELS_FILE"]

# What `dsmath rm` writes in its run directory (dsmath_jax.commands.rm.save_labels): the packed labelled
# examples plus their validation flags and the labelling stats. Read here without importing the command
# (rl/ sits below commands/).
RM_LABELS_FILE = "labels.npz"
_SPLIT_KEY, _STATS_KEY = "__validation__", "__stats_json__"


@dataclasses.dataclass(frozen=True)
class LabelSettings:
    """How :class:`RewardModelUpdates` labels new samples (the ``rm_update`` config section, resolved).

    ``prm_labels``: one of :data:`PRM_LABELS` (module docstring); ``n``: Math-Shepherd's N continuations
    per step (8, as Math-Shepherd); ``mode``: ``hard`` or ``soft``; ``sampling``: how continuations are
    drawn (its ``n`` and ``seed`` are set per step); ``samples_per_step`` / ``max_prefixes_per_step``: the
    caps (0: none)."""

    prm_labels: str = "math_shepherd"
    n: int = 8
    mode: str = "hard"
    sampling: SamplingParams = SamplingParams(max_new_tokens=1024, temperature=0.7)
    samples_per_step: int = 0
    max_prefixes_per_step: int = 0

    def __post_init__(self):
        if self.prm_labels not in PRM_LABELS:
            raise ValueError(f"rm_update.prm_labels={self.prm_labels!r}: expected one of {PRM_LABELS}")
        if self.mode not in MODES:
            raise ValueError(f"rm_update.label_mode={self.mode!r}: expected one of {MODES}")
        if self.n < 1 or self.samples_per_step < 0 or self.max_prefixes_per_step < 0:
            raise ValueError(f"rm_update: label_n={self.n} must be >= 1, samples_per_step={self.samples_per_step} "
                             f"and max_prefixes_per_step={self.max_prefixes_per_step} >= 0")


def label_order(groups: int, group_size: int) -> list[int]:
    """Row indices (prompt-major rows of ``groups`` x ``group_size``) in labelling order: sample 0 of every
    group, then sample 1 of every group, ... so a capped step labels samples of all its questions."""
    return [q * group_size + j for j in range(group_size) for q in range(groups)]


class _FittedSampler:
    """The policy's sampler with each continuation's budget cut so prefix + continuation fit the engine's
    fixed cache length (``max_len``); a sampler without one sizes each call and is passed through."""

    def __init__(self, sampler: Any):
        self.sampler = sampler
        self.limit = getattr(sampler, "max_len", None)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, **kwargs: Any):
        if not self.limit:
            return self.sampler.generate(prompts, params, **kwargs)
        budgets = [max(1, min(params.max_new_tokens, int(self.limit) - len(p))) for p in prompts]
        return self.sampler.generate(prompts, params, max_new_tokens=budgets, **kwargs)


def _example(tokens: Any, prompt_len: int, label: float, iteration: int, step_ends: Any = None,
             step_labels: Any = None) -> dict[str, Any]:
    """A reward-model example with the buffer's fixed fields and dtypes; ``iteration`` is its origin (0:
    the reward model's own training data, i: samples of RL iteration i)."""
    ex: dict[str, Any] = {"tokens": np.asarray(tokens, np.int32), "prompt_len": np.int64(prompt_len),
                          "label": np.float32(label), "iteration": np.int64(iteration)}
    if step_ends is not None:
        ex.update(step_ends=np.asarray(step_ends, np.int32), step_labels=np.asarray(step_labels, np.float32))
    return ex


def label_rollout(rollout: Rollout, kind: str, tokenizer: Tokenizer, settings: LabelSettings, *,
                  iteration: int, sampler: Any = None, grader: Any = None, seed: int = 0,
                  stats: collections.Counter | None = None) -> list[dict[str, Any]]:
    """Reward-model training examples from a step's samples (labels: see the module docstring), in
    :func:`label_order`, capped by ``settings``. ``kind`` is the reward model's (``orm`` / ``prm``);
    Math-Shepherd labels need ``sampler`` (holding the sampling policy's weights) and ``grader``, and draw
    their continuations with ``seed``. Empty completions are skipped; ``stats`` counts what was labelled
    (``samples``, ``skipped_samples`` past the prefix cap, and :func:`math_shepherd_labels`' counters)."""
    stats = stats if stats is not None else collections.Counter()
    G = len(rollout.completions[0])
    rows = [(q, j) for q, g in enumerate(rollout.completions) for j in range(len(g))]
    order = [r for r in label_order(len(rollout.completions), G) if r < len(rows)]
    chosen: list[tuple[int, Any]] = []  # (row, split)
    prefixes = 0
    cap_samples, cap_prefixes = settings.samples_per_step, settings.max_prefixes_per_step
    math_shepherd = kind == "prm" and settings.prm_labels == "math_shepherd"
    for r in order:
        if cap_samples and len(chosen) >= cap_samples:
            break
        q, j = rows[r]
        tokens = rollout.completions[q][j].tokens
        if not len(tokens):
            stats["empty_completions"] += 1
            continue
        split = step_end_tokens(tokenizer, tokens) if kind == "prm" else None
        if math_shepherd and cap_prefixes:
            assert split is not None
            need = len(split.ends) - 1  # the answer step is labelled by the sample's own correctness
            if prefixes + need > cap_prefixes:
                stats["skipped_samples"] += 1
                continue
            prefixes += need
        chosen.append((r, split))
    stats["samples"] += len(chosen)
    problems = [rollout.problems[rows[r][0]] for r, _ in chosen]
    prompts = [list(rollout.prompt_ids[rows[r][0]]) for r, _ in chosen]
    completions = [list(rollout.completions[rows[r][0]][rows[r][1]].tokens) for r, _ in chosen]
    correct = [float(rollout.correct[r]) for r, _ in chosen]
    if kind == "orm":
        return [_example(p + c, len(p), y, iteration) for p, c, y in zip(prompts, completions, correct)]
    if math_shepherd:
        if sampler is None or grader is None:
            raise ValueError("Math-Shepherd labels (rm_update.prm_labels='math_shepherd') need the policy's sampler "
                             "and the grader")
        if not chosen:
            return []
        sampling = dataclasses.replace(settings.sampling, seed=seed)
        labelled = math_shepherd_labels(_FittedSampler(sampler), grader, prompts, completions,
                                        [p.answer for p in problems], [p.kind for p in problems], tokenizer,
                                        n=settings.n, mode=settings.mode, sampling=sampling, stats=stats)
        return [_example(ex["tokens"], int(ex["prompt_len"]), float(ex["label"]), iteration, ex["step_ends"],
                         ex["step_labels"]) for ex in labelled]
    out = []
    for (_, split), p, ids, comp, y in zip(chosen, problems, prompts, completions, correct):
        assert split is not None
        ends = list(split.ends)
        if settings.prm_labels == "step_check":
            if p.intermediates is None:
                raise ValueError(f"rm_update.prm_labels='step_check' needs problems with step results (the "
                                 f"arithmetic task's exact step checker); problem {p.id!r} has none: use "
                                 "'math_shepherd'")
            flags = step_correctness(split.text, list(p.intermediates))
            labels = [float(flags[k]) if k < len(flags) else y for k in range(len(ends))]
        else:  # "outcome"
            labels = [y] * len(ends)
        out.append(_example(ids + comp, len(ids), y, iteration, [len(ids) + e for e in ends], labels))
    return out


def rm_training_examples(rm_dir: str, kind: str) -> list[dict[str, Any]]:
    """The reward model's own training data: the train split (validation examples left out) of the
    ``labels.npz`` a ``dsmath rm`` run wrote in ``rm_dir``, as buffer examples of origin 0. Raises
    ValueError naming the file when it is missing or unreadable."""
    path = os.path.join(rm_dir, RM_LABELS_FILE)
    if not epath.Path(path).exists():
        raise ValueError(f"{path} does not exist: the replay of iterative RL starts from the reward model's "
                         "training data (the labels a `dsmath rm` run writes); set "
                         "rm_update.replay_rm_data=False to start with an empty history")
    try:
        with np.load(io.BytesIO(epath.Path(path).read_bytes()), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the reward model's labels {path}: {e}") from e
    if _SPLIT_KEY not in arrays:
        raise ValueError(f"{path} is not a labels file of `dsmath rm` (no {_SPLIT_KEY!r} split flags)")
    validation = np.asarray(arrays.pop(_SPLIT_KEY), bool)
    arrays.pop(_STATS_KEY, None)
    examples = unpack_examples(arrays)
    if len(examples) != len(validation):
        raise ValueError(f"{path}: {len(examples)} examples but {len(validation)} split flags")
    out = []
    for i, (ex, held_out) in enumerate(zip(examples, validation)):
        if held_out:
            continue
        if kind == "prm" and "step_ends" not in ex:
            raise ValueError(f"{path}: example {i} has no step labels, but the reward model is a PRM")
        label = float(ex["label"]) if "label" in ex else float(np.asarray(ex["step_labels"])[-1])
        out.append(_example(ex["tokens"], int(ex["prompt_len"]), label, 0,
                            *((ex["step_ends"], ex["step_labels"]) if kind == "prm" else ())))
    return out


class RewardModelUpdates(Role):
    """Continues training `reward_model` (in place: the rewards that read it see the new weights) once per
    iteration; see the module docstring.

    ``labels``: how new samples are labelled; ``sampler`` / ``grader``: the rollout role's (Math-Shepherd
    continuations); ``policy_params()``: the weights the step's samples came from (the old policy);
    ``history``: the examples the replay starts from (:func:`rm_training_examples`); ``mu``: policy updates
    per step (a restore counts steps from updates)."""

    per_iteration = True

    def __init__(self, reward_model: RewardModel, tokenizer: Tokenizer, *, lr: float, steps: int, batch_size: int,
                 capacity: int, history_fraction: float = 0.1, labels: LabelSettings = LabelSettings(),
                 sampler: Any = None, grader: Any = None, policy_params: Callable[[], Any] | None = None,
                 history: Sequence[Mapping[str, Any]] = (), steps_per_iteration: int = 1, mu: int = 1,
                 seed: int = 0):
        self.reward_model, self.tokenizer = reward_model, tokenizer
        self.trainer = reward_model.make_trainer(adamw(lr, weight_decay=0.0), accum_steps=1)
        self.capacity, self.history_fraction = capacity, history_fraction
        self.replay = ReplayBuffer(capacity, history_fraction=history_fraction, seed=seed)
        self.replay.add_history(history)
        self.steps, self.batch_size, self.seed = steps, batch_size, seed
        self.labels, self.sampler, self.grader, self.policy_params = labels, sampler, grader, policy_params
        self.M, self.mu = steps_per_iteration, mu
        self.step = 0  # RL steps labelled so far (the seed of each step's continuations)
        if labels.prm_labels == "math_shepherd" and reward_model.kind == "prm" and (
                sampler is None or grader is None or policy_params is None):
            raise ValueError("Math-Shepherd labels (rm_update.prm_labels='math_shepherd') need the rollout's sampler, "
                             "its grader and the policy's params")

    def examples(self, ro: Rollout, record: dict | None = None) -> list[dict]:
        """Training examples for the reward model from a step's samples (labels: see the module docstring),
        labelling with the weights ``policy_params()`` gives now; label counters go into ``record``."""
        stats: collections.Counter = collections.Counter()
        math_shepherd = self.reward_model.kind == "prm" and self.labels.prm_labels == "math_shepherd"
        if math_shepherd:
            assert self.policy_params is not None and self.sampler is not None
            self.sampler.update_params(self.policy_params())
        try:
            out = label_rollout(ro, self.reward_model.kind, self.tokenizer, self.labels,
                                iteration=self.step // self.M + 1, sampler=self.sampler, grader=self.grader,
                                seed=sampling_seed(self.seed, self.step + 1, 17), stats=stats)
        finally:
            if math_shepherd:
                self.sampler.release_params()
        if record is not None:
            record["rm_labelled"] = float(len(out))
            record["rm_label_skipped"] = float(stats["skipped_samples"] + stats["empty_completions"])
            if math_shepherd:
                record["rm_label_prefixes"] = float(stats["prefixes"])
                record["rm_label_continuation_accuracy"] = (float(stats["continuations_correct"])
                                                            / max(float(stats["continuations"]), 1.0))
            if out and self.reward_model.kind == "prm":
                record["rm_mean_step_label"] = float(np.mean(np.concatenate([ex["step_labels"] for ex in out])))
        return out

    def before_update(self, rollout: Any, batch: dict, record: dict) -> None:
        """Labels the step's samples while the policy still holds the weights that sampled them."""
        del batch
        if rollout is None or not getattr(rollout, "sampled_rows", 0):  # gold responses (SFT) are no samples
            return
        self.replay.add_pending(self.examples(rollout, record))
        self.step += 1

    def training_set(self) -> list[dict]:
        """What the next retraining trains on: this iteration's examples plus the replayed history."""
        return self.replay.training_set()

    def end_of_iteration(self, iteration: int) -> dict:
        examples = self.training_set()
        origin = np.asarray([int(ex["iteration"]) for ex in examples], np.int64)
        metrics = self.trainer.train(examples, self.steps, self.batch_size,
                                     seed=sampling_seed(self.seed, iteration, 7))
        self.replay.commit()
        self.reward_model.params = self.trainer.state.params
        out = {f"rm_{k}": float(v) for k, v in metrics.items()}
        out.update(rm_examples_new=float((origin == iteration).sum()),
                   rm_examples_replayed=float((origin != iteration).sum()),
                   rm_examples_replayed_rm_data=float((origin == 0).sum()))
        return out

    def checkpoint_items(self) -> dict:
        return {"rm_params": self.trainer.state.params, "rm_opt_state": self.trainer.state.opt_state,
                "replay": self.replay.state_arrays()}

    def restore_targets(self, saved: Collection[str]) -> dict:
        del saved
        state = self.trainer.abstract_state()
        return {"rm_params": state.params, "rm_opt_state": state.opt_state, "replay": None}

    def restore(self, items: Mapping[str, Any], updates: int) -> None:
        self.step = updates // self.mu  # RL steps done (the reward model counts its own updates)
        self.trainer.set_state(TrainState(step=self.trainer.state.step, params=items["rm_params"],
                                          opt_state=items["rm_opt_state"]))
        self.reward_model.params = self.trainer.state.params
        self.replay = ReplayBuffer.from_arrays(items["replay"], capacity=self.capacity,
                                               history_fraction=self.history_fraction)
