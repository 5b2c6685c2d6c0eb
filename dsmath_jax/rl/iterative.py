"""Iterative RL (PAPER.md §4.3, Algorithm 1): after each iteration the reward model continues training on
the policy's new samples, with a replay of 10% of the historical data, while the policy trains on.

:class:`RewardModelUpdates` is that role of the RL loop (:class:`~dsmath_jax.rl.roles.Role`): after every
step it labels the step's samples and queues them; at the end of an iteration it trains the reward model on
them plus a replayed share of history (:class:`~dsmath_jax.rl.replay.ReplayBuffer`), commits them to the
history and hands the new weights to the reward the rollouts read. Labels: an ORM learns the rule reward
(the answer's correctness); a PRM learns per-step correctness where the task can check steps (the arithmetic
task's step results), else the outcome on every step.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from dsmath_jax.data.tokenizers import Tokenizer
from dsmath_jax.rl.math_shepherd import step_end_tokens
from dsmath_jax.rl.replay import ReplayBuffer
from dsmath_jax.rl.reward_model import RewardModel
from dsmath_jax.rl.rewards import step_correctness
from dsmath_jax.rl.roles import Role
from dsmath_jax.rl.rollout import Rollout, sampling_seed
from dsmath_jax.train.step import TrainState, adamw


class RewardModelUpdates(Role):
    """Continues training `reward_model` (in place: the rewards that read it see the new weights) once per
    iteration; see the module docstring. ``samples_per_step`` (0: all) caps the examples one step queues."""

    per_iteration = True

    def __init__(self, reward_model: RewardModel, tokenizer: Tokenizer, *, lr: float, steps: int, batch_size: int,
                 capacity: int, history_fraction: float = 0.1, samples_per_step: int = 0, seed: int = 0):
        self.reward_model, self.tokenizer = reward_model, tokenizer
        self.trainer = reward_model.make_trainer(adamw(lr, weight_decay=0.0), accum_steps=1)
        self.replay = ReplayBuffer(capacity, history_fraction=history_fraction, seed=seed)
        self.steps, self.batch_size, self.cap, self.seed = steps, batch_size, samples_per_step, seed
        self.capacity, self.history_fraction = capacity, history_fraction

    def examples(self, ro: Rollout) -> list[dict]:
        """Training examples for the reward model from a step's samples (labels: see the module docstring)."""
        out = []
        r = 0
        for p, ids, group in zip(ro.problems, ro.prompt_ids, ro.completions):
            for x in group:
                correct = float(ro.correct[r])
                ex: dict[str, Any] = {"tokens": np.asarray(list(ids) + list(x.tokens), np.int32),
                                      "prompt_len": len(ids), "label": correct}
                if self.reward_model.kind == "prm":
                    split = step_end_tokens(self.tokenizer, x.tokens)
                    ends = list(split.ends)
                    if p.intermediates is not None:
                        flags = step_correctness(split.text, list(p.intermediates))
                        labels = [float(flags[k]) if k < len(flags) else correct for k in range(len(ends))]
                    else:
                        labels = [correct] * len(ends)
                    ex.update(step_ends=np.asarray([len(ids) + e for e in ends], np.int32),
                              step_labels=np.asarray(labels, np.float32))
                out.append(ex)
                r += 1
        return out[:self.cap] if self.cap else out

    def after_step(self, rollout: Rollout | None) -> None:
        if rollout is not None:
            self.replay.add_pending(self.examples(rollout))

    def end_of_iteration(self, iteration: int) -> dict:
        metrics = self.trainer.train(self.replay.training_set(), self.steps, self.batch_size,
                                     seed=sampling_seed(self.seed, iteration, 7))
        self.replay.commit()
        self.reward_model.params = self.trainer.state.params
        return {f"rm_{k}": float(v) for k, v in metrics.items()}

    def checkpoint_items(self) -> dict:
        return {"rm_params": self.trainer.state.params, "rm_opt_state": self.trainer.state.opt_state,
                "replay": self.replay.state_arrays()}

    def restore_targets(self, saved: Collection[str]) -> dict:
        del saved
        state = self.trainer.abstract_state()
        return {"rm_params": state.params, "rm_opt_state": state.opt_state, "replay": None}

    def restore(self, items: Mapping[str, Any], updates: int) -> None:
        del updates  # the reward model counts its own steps
        self.trainer.set_state(TrainState(step=self.trainer.state.step, params=items["rm_params"],
                                          opt_state=items["rm_opt_state"]))
        self.reward_model.params = self.trainer.state.params
        self.replay = ReplayBuffer.from_arrays(items["replay"], capacity=self.capacity,
                                               history_fraction=self.history_fraction)


__all__ = ["RewardModelUpdates"]
