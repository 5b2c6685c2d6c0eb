"""Reinforcement learning for DeepSeekMath (PAPER.md §4-5, §8), by role.

* `rollout`: the rollout role: sample G outputs per question and score them (rewards are a list of
  callables with one signature; process rewards from the step checker or a PRM), dynamic sampling, the
  question order, held-out evaluation.
* `methods`: the registry of Table 10's rows (SFT, RFT, online RFT, DPO, PPO, GRPO): each method's data
  source, batch builder and loss.
* `grpo`: rollout batches, reference log-probs and the GRPO loss (the one `dsmath rl` trains with).
* `roles`: models trained beside the policy: PPO's critic (`ppo.Critic`) and iterative RL's reward-model
  updates (`iterative.RewardModelUpdates`).
* `loop`: Algorithm 1, the RL loop that only orchestrates the roles (`dsmath rl`).
* `advantages`: GRPO outcome / process supervision advantages, GAE for PPO.
* `rewards`: rule (the harness's equivalence checker) and format rewards, outcome / process reward-model
  read-outs, weighted combinations; the arithmetic task's exact-answer and per-step rewards (the task
  itself, and the questions with gold answers and prompts, are data: `dsmath_jax.data.arithmetic`,
  `dsmath_jax.data.tasks`).
* `reward_model`, `math_shepherd`, `replay`: ORM / PRM training (`dsmath rm`), Math-Shepherd process labels,
  the replay buffer of iterative RL; `ppo`: the critic, KL-shaped token rewards and GAE for PPO.
* `losses`: the unified paradigm of Table 10 (SFT, RFT, DPO, PPO, GRPO and the Dr. GRPO / DAPO / GSPO
  variants), each returning ``(total, weight, metrics)`` for the shared train step, plus per-token
  log-probs, entropies and KL estimators.
"""

from dsmath_jax.rl.advantages import (
    gae,
    group_advantages,
    outcome_token_rewards,
    process_advantages,
    step_end_flags,
    step_end_indices,
    token_advantages,
)
from dsmath_jax.rl.grpo import grpo_loss_fn, reference_logprobs, rollout_batch, sequence_logprobs
from dsmath_jax.rl.losses import (
    AGGREGATIONS,
    K3_MAX,
    KL_ESTIMATORS,
    LOG_RATIO_CLAMP,
    PolicyLossConfig,
    aggregate,
    dpo_loss,
    gradient_coefficient,
    kl_k1,
    kl_k2,
    kl_k3,
    policy_loss,
    rft_loss,
    sequence_logprob,
    sft_loss,
    token_entropy,
    token_logprobs,
    value_loss,
)
from dsmath_jax.rl.rewards import combine_rewards, format_rewards, outcome_scores, process_scores, rule_rewards

__all__ = [
    "gae", "group_advantages", "outcome_token_rewards", "process_advantages", "step_end_flags", "step_end_indices",
    "token_advantages", "AGGREGATIONS", "K3_MAX", "KL_ESTIMATORS", "LOG_RATIO_CLAMP", "PolicyLossConfig", "aggregate",
    "dpo_loss", "gradient_coefficient", "kl_k1", "kl_k2", "kl_k3", "policy_loss", "rft_loss", "sequence_logprob",
    "sft_loss", "token_entropy", "token_logprobs", "value_loss", "grpo_loss_fn", "reference_logprobs",
    "rollout_batch", "sequence_logprobs", "combine_rewards", "format_rewards", "outcome_scores", "process_scores",
    "rule_rewards",
]
