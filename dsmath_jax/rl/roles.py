"""Models an RL run trains beside the policy (PAPER.md §4.3 and §5): PPO's value model
(:class:`dsmath_jax.rl.ppo.Critic`) and the reward model that iterative RL keeps training
(:class:`dsmath_jax.rl.iterative.RewardModelUpdates`). The loop calls every role's hooks at the same points
and saves and restores them with the policy; it never asks which role it holds.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any


class Role:
    """A model trained beside the policy. Every hook defaults to doing nothing.

    Per step: ``before_update(rollout, batch, record)`` once the step's batch (global arrays) holds the
    old-policy and reference log-probs (it may add entries and metrics); ``after_update(batch)`` after each
    of the mu policy updates (returns metrics, logged with the policy's); ``after_step(rollout)`` when the
    step is done. ``end_of_iteration(iteration)`` after the last step of an iteration, for roles with
    ``per_iteration`` set (returns metrics). ``checkpoint_items()`` are saved with the policy;
    ``restore_targets(saved)`` gives the abstract targets of those items (``saved``: the item names of the
    checkpoint) and ``restore(items, updates)`` takes them back (``updates``: policy updates so far)."""

    per_iteration = False

    def before_update(self, rollout: Any, batch: dict, record: dict) -> None:
        del rollout, batch, record

    def after_update(self, batch: Mapping[str, Any]) -> dict:
        del batch
        return {}

    def after_step(self, rollout: Any) -> None:
        del rollout

    def end_of_iteration(self, iteration: int) -> dict:
        del iteration
        return {}

    def checkpoint_items(self) -> dict:
        return {}

    def restore_targets(self, saved: Collection[str]) -> dict:
        del saved
        return {}

    def restore(self, items: Mapping[str, Any], updates: int) -> None:
        del items, updates


__all__ = ["Role"]
