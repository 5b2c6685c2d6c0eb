"""The schema of `dsmath rl` configs (`dsmath rl --config=configs/rl/...`).

`base_rl_config()` holds every section with its typed default; `configs/rl/*.py` change what their paper result
needs; `validate(config)` checks what types cannot. The methods are the rows of PAPER.md §5 Table 10, each a
data source + a reward + a gradient coefficient:

  method       samples from          reward / signal                    loss (dsmath_jax.rl.losses)
  sft          gold responses        -                                  sft_loss
  rft          the initial policy    rule (correct or not)              rft_loss
  online_rft   the current policy    rule                               rft_loss
  dpo          initial or current    rule -> (correct, wrong) pairs     dpo_loss
  ppo          the current policy    rule/ORM at the last token + KL    clipped surrogate + critic (GAE)
  grpo         the current policy    rule / ORM (outcome) or PRM /      the GRPO objective (Eq. 3)
                                     step rule (process)

Sections: seed, method, init (the policy to start from), model (compute overrides), data (problems and
prompt template), rollout (G, questions per step, sampling), reward, loss, optimizer, train (iterations,
steps, mu, micro-batches, logging, checkpoints), rm_update (iterative RL: label new samples, Math-Shepherd
for a PRM, and continue training the reward model with replay after each iteration), ppo (incl. where the
value model starts: critic_init), eval (held-out greedy accuracy, maj@k / pass@k), mesh,
distributed.
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
from dsmath_jax.data.tasks import COT_TEMPLATE, problem_spec
from dsmath_jax.parallel.mesh import rules_with

METHODS = ("sft", "rft", "online_rft", "dpo", "ppo", "grpo")
REWARDS = ("rule", "orm", "prm", "step_rule")
# The loss section's choices (dsmath_jax.rl.losses.PolicyLossConfig).
KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("sequence_mean", "token_mean", "sum_constant")
RATIOS = ("token", "sequence")
OLD_LOGPROBS = ("auto", "recompute", "sampler")  # rollout.old_logprobs (dsmath_jax.rl.loop)
PRM_LABELS = ("math_shepherd", "step_check", "outcome")  # rm_update.prm_labels (dsmath_jax.rl.iterative)
LABEL_MODES = ("hard", "soft")  # rm_update.label_mode: Math-Shepherd's estimates (dsmath_jax.rl.math_shepherd)
CRITIC_INITS = ("auto", "reward_model", "policy")  # ppo.critic_init (dsmath_jax.rl.ppo.Critic)
# Sub-trees whose keys differ from the base config's: the problem source (its kind's keys, checked by the task
# loader) and the learning-rate schedule (its name's keys).
FREE_FORM = ("data.problems", "optimizer.schedule")


def base_rl_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.method = "grpo"
    # The policy: a run directory of `dsmath sft` (or pretrain) or a Hugging Face directory.
    c.init = ml_collections.ConfigDict(dict(run_dir=placeholder(str), step=placeholder(int)))
    # The policy's architecture comes from init.run_dir; `preset` names it for `--compile_only` plans made where
    # that directory cannot be read (a run checks that they agree). The rest are compute settings.
    c.model = ml_collections.ConfigDict(dict(preset=placeholder(str), dtype=placeholder(str),
                                             param_dtype=placeholder(str), remat_policy=placeholder(str),
                                             scan_layers=placeholder(bool), attention_impl=placeholder(str),
                                             logits_chunk=placeholder(int)))
    c.data = ml_collections.ConfigDict(dict(
        problems=dict(kind="arithmetic", n_train=20000, n_test=256, seed=0),
        template="{question}",  # the question inside the chat prompt, e.g. with the zero-shot instruction
        data_dir=placeholder(str), benchmarks_dir=placeholder(str), max_prompt_tokens=1024, seed=0))
    c.rollout = ml_collections.ConfigDict(dict(
        group_size=64, questions_per_step=16, max_new_tokens=1024, temperature=1.0, top_p=1.0, top_k=0,
        sampler_batch_size=64, chunk_size=32, stop_strings=(),
        # BATCHING (config.checks): "continuous" decodes sampler_batch_size slots of max_prompt_tokens +
        # max_new_tokens (the larger of the rollout's and the evaluation's) tokens, a freed slot taking the next
        # sample at once and each question prefilled once for its G samples; "static" decodes batches of
        # sampler_batch_size rows until their longest ends.
        batching="continuous",
        # The sampler decodes with its own bf16 copy of the weights split this many ways over heads/MLP
        # (tensor parallelism) and replicated over the rest of the devices (generate.sampler.decode_mesh);
        # None = the mesh's `tensor` size.
        tensor_parallel=placeholder(int),
        # DAPO dynamic sampling: drop groups whose rewards are all equal and draw more questions, up to
        # `max_sampling_rounds` generate calls per step; groups still missing are filled with inert rows.
        dynamic_sampling=False, max_sampling_rounds=3,
        # The old policy's log-probs (OLD_LOGPROBS): "recompute" with the training forward, "sampler" as sampled,
        # "auto" recompute unless compute is float32; tis_cap: truncated importance-sampling weight cap of the
        # sampler/trainer gap (None: off).
        old_logprobs="auto", tis_cap=placeholder(float)))
    c.reward = ml_collections.ConfigDict(dict(
        kind="rule",  # rule | orm | prm | step_rule (the arithmetic task's exact step checker: an oracle PRM)
        rm_dir=placeholder(str),  # a `dsmath rm` run directory for orm / prm
        rule_weight=1.0, format_weight=0.0, rm_weight=1.0,  # steps are newline-delimited lines (math_shepherd)
        # DAPO's soft overlong punishment: 0 up to max_new_tokens - overlong_buffer, then linear to -1.
        overlong_buffer=0, overlong_weight=1.0))
    c.loss = ml_collections.ConfigDict(dict(
        clip_eps=0.2, clip_eps_high=placeholder(float), beta=0.04, kl_estimator="k3", aggregation="sequence_mean",
        ratio="token", max_len=placeholder(int), scale_advantages=True, dpo_beta=0.1, entropy_metric=True))
    c.optimizer = ml_collections.ConfigDict(dict(
        schedule=dict(name="constant", peak=1e-6, warmup_steps=0), b1=0.9, b2=0.95, weight_decay=0.0,
        clip_norm=1.0))
    c.train = ml_collections.ConfigDict(dict(
        iterations=1, steps_per_iteration=100, mu=1, accum_steps=1, log_every=1, checkpoint_every=50,
        keep_checkpoints=2, async_checkpoint=True, reference_on_host=False, max_nonfinite_in_a_row=10,
        tensorboard=True, seq_len=placeholder(int),
        # Rows are cut to the shortest of length_buckets lengths (seq_len * k / length_buckets) that holds the
        # step's longest row (rl.methods.fit_length); 1: always seq_len. One compiled train step per length used.
        length_buckets=4,
        stop_after_steps=placeholder(int)))  # stop (with a checkpoint) after this many steps of one invocation
    # Iterative RL (PAPER.md §4, Algorithm 1; dsmath_jax.rl.iterative): after each iteration the reward model
    # trains on labelled new samples plus a replay of history (history_fraction of the training set; the history
    # starts as the RM's own training data, its run's labels.npz, with replay_rm_data). samples_per_step: samples
    # labelled per step (0: all). A PRM's labels (PRM_LABELS): "math_shepherd" (label_n continuations of every
    # step prefix by the sampling policy at label_temperature, at most label_max_new_tokens each (None: the
    # rollout's max_new_tokens); label_mode hard | soft; at most max_prefixes_per_step prefixes a step, 0: no
    # cap), "step_check" (the arithmetic task's exact step checker) or "outcome" (the answer on every step).
    c.rm_update = ml_collections.ConfigDict(dict(
        enabled=False, steps=100, batch_size=32, history_fraction=0.1, capacity=100000, lr=1e-6,
        samples_per_step=0, replay_rm_data=True, prm_labels="math_shepherd", label_n=8, label_mode="hard",
        label_temperature=0.7, label_max_new_tokens=placeholder(int), max_prefixes_per_step=0))
    # critic_init (CRITIC_INITS): PPO's value model starts from the reward model (trunk and head, as the paper's
    # PPO, after Ouyang et al. 2022; needs reward.kind "orm" with reward.rm_dir) or from the policy's trunk with a
    # fresh head; "auto": the reward model when the run has one, else the policy.
    c.ppo = ml_collections.ConfigDict(dict(kl_coef=0.04, gamma=1.0, lam=0.95, value_clip=0.2, critic_lr=1e-6,
                                           whiten_advantages=True, critic_init="auto"))
    c.eval = ml_collections.ConfigDict(dict(
        every=50, n_problems=256, max_new_tokens=placeholder(int), samples=0, temperature=0.7,
        batch_size=placeholder(int), at_start=True))
    c.mesh = ml_collections.ConfigDict(dict(shape=dict(data=1, fsdp=-1, tensor=1), rules=placeholder(tuple)))
    c.distributed = ml_collections.ConfigDict(dict(enabled="auto", coordinator_address=placeholder(str),
                                                   num_processes=placeholder(int), process_id=placeholder(int),
                                                   timeout_s=300))
    return c


def paper_grpo(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """PAPER.md §4.2's GRPO settings on the 7B instruct policy: GSM8K/MATH CoT questions with the zero-shot
    instruction, G 64 outputs for each of 16 questions per step (batch 1024), max length 1024, lr 1e-6,
    beta 0.04 (k3), mu 1; bf16 compute with q/k/v saved under remat."""
    c.method = "grpo"
    c.model.update(preset="deepseekmath_7b", dtype="bfloat16", remat_policy="save_qkv", scan_layers=True)
    c.data.problems = dict(kind="gsm8k")
    c.data.template = COT_TEMPLATE
    c.data.max_prompt_tokens = 512  # question + instruction; longer ones are left out (counted, logged)
    # All 1,024 rollouts decode at once in the engine's 1,024 slots, on its bf16 copy of the weights split 8
    # ways (tensor parallelism) and replicated over 8 groups of chips, each decoding its 128 slots (up to 8,336
    # slots fit a v5p-128: experiments/tools/engine_slots.py).
    c.rollout.update(group_size=64, questions_per_step=16, max_new_tokens=1024, temperature=1.0,
                     sampler_batch_size=1024, tensor_parallel=8)
    c.loss.update(beta=0.04, kl_estimator="k3", aggregation="sequence_mean", clip_eps=0.2)
    c.optimizer.schedule = dict(name="constant", peak=1e-6, warmup_steps=0)
    # Training: tensor parallelism over 8 chips (heads, MLP, vocabulary, and the residual stream between blocks:
    # `rules_with(act_embed="tensor")`) x FSDP over the rest (8 on v5p-128), one rollout per chip group per
    # micro-batch (128 micro-batches of 8), the frozen reference in host memory between its forwards. The compile-only
    # plan of this config on v5p-128 (experiments/results/plans.md) and experiments/benchmarks/rl_memory.py measure
    # what it needs.
    c.mesh.shape = dict(data=1, fsdp=-1, tensor=8)
    c.mesh.rules = rules_with(act_embed="tensor")
    c.train.update(iterations=1, steps_per_iteration=9000, mu=1, accum_steps=128, checkpoint_every=50, log_every=1,
                   reference_on_host=True)
    c.eval.update(every=200, n_problems=1319)
    return c


def tiny_rl_overrides(c: ml_collections.ConfigDict, *, steps: int = 40, problems: dict | None = None
                      ) -> ml_collections.ConfigDict:
    """The CPU scale: the arithmetic task (`problems`, default ARITHMETIC_TINY), G 8 outputs for each of 32
    questions per step, 96 new tokens, lr 1e-4 after a 10-step warm-up (a tiny model needs a far larger step than
    the 7B's 1e-6; a fresh Adam without warm-up jolts the SFT policy), evaluation on 256 held-out problems.

    Calibration (configs/sft/arithmetic.py:tiny, 450 steps, then 40 GRPO steps on 2 CPU cores): held-out
    greedy accuracy 76.2% -> 78.9% (the first calibration, before later changes to the rollout engine, recorded
    80.9% and a mean training reward 0.59 -> 0.72). With 8 questions per step, or lr 2e-4 without warm-up, the
    update is too noisy and held-out accuracy falls."""
    c.data.problems = dict(problems or ARITHMETIC_TINY)
    c.rollout.update(group_size=8, questions_per_step=32, max_new_tokens=96, sampler_batch_size=256, chunk_size=16)
    c.optimizer.schedule = dict(name="constant", peak=1e-4, warmup_steps=10)
    c.train.update(steps_per_iteration=steps, checkpoint_every=max(1, steps // 2), log_every=5)
    c.eval.update(every=max(1, steps // 2), n_problems=256)
    c.rm_update.update(steps=20, batch_size=16, lr=1e-4)
    c.ppo.critic_lr = 1e-4
    c.model.update(preset=None, dtype=None, remat_policy=None, scan_layers=None)
    c.data.template = "{question}"
    c.data.max_prompt_tokens = 1024
    c.rollout.tensor_parallel = None
    c.mesh.shape = dict(data=1, fsdp=-1, tensor=1)
    c.mesh.rules = None
    c.train.update(accum_steps=1, reference_on_host=False)
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """What types cannot check in an RL config: keys against `base_rl_config()`, the method, reward and loss
    choices, the problem source, counts and ranges; a `ConfigError` names the key. (Which method goes with
    which reward is the run's check: `dsmath_jax.rl.loop.RLRun`.)"""
    check_keys_and_types(c, base_rl_config(), FREE_FORM)
    one_of(c, "method", METHODS)
    one_of(c, "reward.kind", REWARDS)
    at_least(c, "init.step", 0)
    check_model(c, architecture=False)
    try:
        problem_spec(c.data.problems)
    except ValueError as e:
        raise ConfigError(f"data.problems: {e}") from None
    if "{question}" not in c.data.template:
        raise ConfigError(f"data.template={c.data.template!r}: has no {{question}} to put the question in")
    counts(c, "data", positive=("max_prompt_tokens",))
    counts(c, "rollout", positive=("group_size", "questions_per_step", "max_new_tokens", "sampler_batch_size",
                                   "chunk_size", "tensor_parallel", "max_sampling_rounds"),
           non_negative=("top_k",))
    check_sampling(c, "rollout")
    one_of(c, "rollout.old_logprobs", OLD_LOGPROBS)
    one_of(c, "rollout.batching", BATCHING)
    above(c, "rollout.tis_cap", 0.0)
    if not all(isinstance(s, str) and s for s in c.rollout.stop_strings):
        raise ConfigError(f"rollout.stop_strings={c.rollout.stop_strings!r}: expected non-empty strings")
    counts(c, "reward", non_negative=("overlong_buffer",))
    above(c, "loss.clip_eps", 0.0)
    above(c, "loss.clip_eps_high", 0.0)
    at_least(c, "loss.beta", 0.0)
    one_of(c, "loss.kl_estimator", KL_ESTIMATORS)
    one_of(c, "loss.aggregation", AGGREGATIONS)
    one_of(c, "loss.ratio", RATIOS)
    at_least(c, "loss.max_len", 1)
    above(c, "loss.dpo_beta", 0.0)
    check_optimizer(c, SCHEDULES)
    counts(c, "train", positive=("iterations", "steps_per_iteration", "mu", "accum_steps", "log_every",
                                 "checkpoint_every", "keep_checkpoints", "max_nonfinite_in_a_row", "seq_len",
                                 "length_buckets", "stop_after_steps"))
    counts(c, "rm_update", positive=("steps", "batch_size", "capacity", "label_n", "label_max_new_tokens"),
           non_negative=("samples_per_step", "max_prefixes_per_step"))
    in_range(c, "rm_update.history_fraction", 0.0, 1.0)
    above(c, "rm_update.lr", 0.0)
    one_of(c, "rm_update.prm_labels", PRM_LABELS)
    one_of(c, "rm_update.label_mode", LABEL_MODES)
    at_least(c, "rm_update.label_temperature", 0.0)
    one_of(c, "ppo.critic_init", CRITIC_INITS)
    if c.method == "ppo" and c.ppo.critic_init == "reward_model" and (c.reward.kind != "orm" or not c.reward.rm_dir):
        raise ConfigError(f"ppo.critic_init='reward_model' starts PPO's value model from the reward model (PAPER.md "
                          f"§5, the paper's PPO), but this run has none: reward.kind={c.reward.kind!r}, "
                          f"reward.rm_dir={c.reward.rm_dir!r} (needs 'orm' and a `dsmath rm` run directory); set "
                          "ppo.critic_init='policy' (or 'auto') to start it from the policy")
    at_least(c, "ppo.kl_coef", 0.0)
    in_range(c, "ppo.gamma", 0.0, 1.0)
    in_range(c, "ppo.lam", 0.0, 1.0)
    above(c, "ppo.value_clip", 0.0)
    above(c, "ppo.critic_lr", 0.0)
    counts(c, "eval", positive=("n_problems", "max_new_tokens", "batch_size"), non_negative=("every", "samples"))
    check_sampling(c, "eval", top_p=None)
    check_mesh(c)
    check_distributed(c)


__all__ = ["AGGREGATIONS", "CRITIC_INITS", "KL_ESTIMATORS", "LABEL_MODES", "METHODS", "OLD_LOGPROBS", "PRM_LABELS",
           "RATIOS", "REWARDS", "base_rl_config",
           "paper_grpo", "tiny_rl_overrides", "validate"]
