"""PPO with a value model (critic), the baseline GRPO replaces (PAPER.md §4.1 Eq. 1-2, §5 Table 10).

PPO (Schulman et al. 2017, "Proximal Policy Optimization Algorithms") maximises the clipped surrogate

    J_PPO = E[ 1/|o| sum_t min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t) ],   r_t = pi_theta(o_t) / pi_old(o_t)

(DeepSeekMath Eq. 1) with A_t the GAE advantage (Schulman et al. 2016) computed from a learned value function
V_psi. As in Ouyang et al. 2022 ("Training language models to follow instructions with human feedback"),
the KL to the frozen reference model is a per-token penalty *in the reward* (DeepSeekMath Eq. 2):

    r_t = r_phi(q, o_<=t) - beta log(pi_theta(o_t | q, o_<t) / pi_ref(o_t | q, o_<t)),

where the reward-model (or rule) score r_phi is only given at the last response token. The log-ratio is
taken at sampling time (pi_old, the sampler's log-probs), so rewards, advantages and returns are constants
of the update. The policy loss therefore has no KL term (``PolicyLossConfig.beta == 0``); GRPO instead
drops the critic and puts the KL in the loss (PAPER.md §4 Eq. 3), which is where its memory saving comes
from: no second trained model of the policy's size (see experiments/benchmarks/rl_memory.py).

One PPO step in an RL loop::

    fns = make_ppo_steps(policy, critic, adamw(1e-6), adamw(1e-6), mesh, rules)
    batch = rollout_batch(prompt_ids, completions, seq_len=..., pad_id=...)           # old policy's samples
    ref_logp = fns.reference_logprobs(ref_params, batch)                               # frozen pi_ref
    values = fns.values(critic_state.params, batch)                                    # V_old(s_t)
    batch = ppo_batch(batch, scores, ref_logp, values, kl_coef=0.04)                   # rewards, GAE, returns
    policy_state, policy_metrics = fns.policy.train_step(policy_state, batch)          # clipped surrogate
    critic_state, critic_metrics = fns.critic.train_step(critic_state, batch)          # clipped value loss

Alignment: a rollout batch holds ``inputs`` (tokens 0..T-1) and ``targets`` (tokens 1..T); the state before
the policy emits ``targets[t]`` is the prefix ``inputs[:t+1]``, so ``V(s_t)`` is the critic's output at input
position t, i.e. exactly where the policy's logits for ``targets[t]`` come from. Every per-token array of
this module is ``[rows, seq]`` aligned with ``targets`` and 0 off ``weights`` (the response-token mask).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from dsmath_jax.model import ModelConfig
from dsmath_jax.model.transformer import CausalLM, ScalarHeadModel
from dsmath_jax.parallel.mesh import DEFAULT_RULES, ModuleT, Rules, get_params, param_shardings, set_params
from dsmath_jax.rl.advantages import gae, outcome_token_rewards
from dsmath_jax.rl.grpo import grpo_loss_fn, make_reference_forward, on_forward_inputs
from dsmath_jax.rl.losses import PolicyLossConfig, value_loss
from dsmath_jax.rl.roles import Role
from dsmath_jax.train.checkpoint import abstract_like
from dsmath_jax.train.step import LossFn, StepFns, TrainState, adamw, make_forward, make_train_step

Batch = Mapping[str, jax.Array]

__all__ = ["critic_from_policy", "critic_from_reward_model", "check_critic_reward_model", "values_for_batch",
           "ppo_token_rewards", "ppo_advantages", "ppo_batch", "critic_loss_fn", "ppo_policy_loss_fn", "PPOStepFns",
           "make_ppo_steps", "Critic"]


# ------------------------------------------------------------------------------------------ the critic
def _copy_sharded(model: ModuleT, mesh: Mesh, rules: Rules) -> ModuleT:
    """Places every parameter of `model` on the mesh as fresh buffers (never aliases of another model's
    arrays, which a donated train step of that model would delete)."""
    shardings = param_shardings(model, mesh, rules)
    params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings)(get_params(model))
    return set_params(model, params)


def critic_from_policy(policy: CausalLM, mesh: Mesh, rules: Rules = DEFAULT_RULES, seed: int = 0
                       ) -> ScalarHeadModel:
    """A PPO value model V_psi: a `ScalarHeadModel` whose trunk is a copy of the policy's, sharded on `mesh`.

    The head is freshly initialised (N(0, initializer_range), bias 0) from `seed`. The paper's PPO follows
    Ouyang et al. 2022, who initialise the value function from the reward model; that needs a trained reward
    model of the policy's size, which the small reproductions here do not always have, so the default copies
    the policy's trunk (the other common choice: the critic then starts from features that already read the
    policy's own samples). To follow the paper, pass the reward model to :func:`critic_from_reward_model`
    (the RL loop's ``ppo.critic_init="reward_model"``, the default "auto" when the run has a reward model).
    Either way the critic is a second trained model of the policy's size, with its own optimizer state.
    """
    if not isinstance(policy, CausalLM):
        raise TypeError(f"critic_from_policy: expected a CausalLM policy, got {type(policy).__name__}")
    critic = ScalarHeadModel.from_lm(policy, rngs=nnx.Rngs(seed))
    return _copy_sharded(critic, mesh, rules)


def critic_from_reward_model(reward_model: ScalarHeadModel, mesh: Mesh, rules: Rules = DEFAULT_RULES
                             ) -> ScalarHeadModel:
    """A PPO value model initialised from the reward model (trunk and head), as Ouyang et al. 2022 and the
    paper's PPO baseline do; a copy, so the reward model itself stays frozen."""
    if not isinstance(reward_model, ScalarHeadModel):
        raise TypeError(f"critic_from_reward_model: expected a ScalarHeadModel, got {type(reward_model).__name__}")
    return _copy_sharded(nnx.clone(reward_model), mesh, rules)


def check_critic_reward_model(rm_config: ModelConfig, policy_config: ModelConfig, *, rm_source: str,
                              policy_source: str, rm_tokenizer: Any = None, policy_tokenizer: Any = None,
                              seq_len: int | None = None) -> None:
    """Raises ValueError, naming both models, when a reward model cannot start PPO's value model for this
    policy: the critic reads the policy's token ids, so the vocabularies (sizes) must match and, where both
    tokenizers are known, they must be the same tokenizer (vocabulary size, special ids and the ids of a probe
    text); its context must hold the training rows (``seq_len``). The architecture may differ."""
    if rm_config.vocab_size != policy_config.vocab_size:
        raise ValueError(f"ppo.critic_init='reward_model': the reward model {rm_source} has a vocabulary of "
                         f"{rm_config.vocab_size} tokens but the policy {policy_source} has "
                         f"{policy_config.vocab_size}: "
                         "the value model reads the policy's token ids, so both need the same tokenizer (or set "
                         "ppo.critic_init='policy')")
    if rm_tokenizer is not None and policy_tokenizer is not None:
        probe = "Question: 12 + 7 * 3 = ?\nAnswer: 33\n\\boxed{33}"
        fields = {"vocab_size": (rm_tokenizer.vocab_size, policy_tokenizer.vocab_size),
                  "bos_id": (rm_tokenizer.bos_id, policy_tokenizer.bos_id),
                  "eos_id": (rm_tokenizer.eos_id, policy_tokenizer.eos_id),
                  "pad_id": (rm_tokenizer.pad_id, policy_tokenizer.pad_id),
                  "ids of a probe text": (list(rm_tokenizer.encode(probe)), list(policy_tokenizer.encode(probe)))}
        diff = {k: v for k, v in fields.items() if v[0] != v[1]}
        if diff:
            raise ValueError(f"ppo.critic_init='reward_model': the reward model {rm_source} and the policy "
                             f"{policy_source} have different tokenizers ("
                             + "; ".join(f"{k}: {a} vs {b}" for k, (a, b) in diff.items())
                             + "): the value model reads the policy's token ids (or set ppo.critic_init='policy')")
    if seq_len is not None and rm_config.max_seq_len < seq_len:
        raise ValueError(f"ppo.critic_init='reward_model': the reward model {rm_source} has a context of "
                         f"{rm_config.max_seq_len} tokens, shorter than the training rows ({seq_len} tokens) of the "
                         f"policy {policy_source}")


def _values(critic: nnx.Module, batch: Batch) -> jax.Array:
    """V(s_t) [rows, seq] float32 at every input position, 0 off `weights` (differentiable)."""
    for key in ("inputs", "weights"):
        if key not in batch:
            raise KeyError(f"PPO critic batch needs {key!r} (a rollout_batch row layout); got keys {sorted(batch)}")
    v = critic(batch["inputs"], batch.get("positions"), batch.get("segment_ids"))
    return jnp.where(jnp.asarray(batch["weights"]) > 0, v.astype(jnp.float32), 0.0)


def values_for_batch(graphdef: nnx.GraphDef, critic_params: Any, batch: Batch) -> jax.Array:
    """The critic's values V(s_t) [rows, seq] float32 aligned with ``batch["targets"]``, 0 off ``weights``.

    ``values[r, t]`` is the `ScalarHeadModel` output at input position t: the state (q, o_<t) before the
    policy emits ``targets[r, t]`` ends with ``inputs[r, t]``. No shift is needed because ``rollout_batch``
    already shifts targets by one against inputs. Jit this (graphdef static) or call it in a jitted function.
    """
    return _values(nnx.merge(graphdef, critic_params), batch)


# ------------------------------------------------------------------------------------------ rewards, GAE
def ppo_token_rewards(scores: jax.Array, old_logp: jax.Array, ref_logp: jax.Array, mask: jax.Array,
                      kl_coef: float) -> jax.Array:
    """Per-token PPO rewards (PAPER.md §4.1 Eq. 2, Ouyang et al. 2022): [rows, seq] float32,

        r_t = -kl_coef * (old_logp_t - ref_logp_t)      on every response token (mask 1),
        r_T += scores                                    on the last response token T of each row,

    and 0 off the mask. scores: [rows] reward-model / rule scores of whole responses; old_logp, ref_logp:
    [rows, seq] log-probs of the sampled tokens under the sampling policy and the reference (k1 estimator
    of the per-token KL). Rows without response tokens get 0 everywhere (their score is dropped).
    """
    if kl_coef < 0:
        raise ValueError(f"ppo_token_rewards: kl_coef must be >= 0, got {kl_coef}")
    m = jnp.asarray(mask) > 0
    scores = jnp.asarray(scores, jnp.float32)
    if scores.ndim != 1 or scores.shape[0] != m.shape[0]:
        raise ValueError(f"ppo_token_rewards: scores must be [rows] = [{m.shape[0]}], got shape {scores.shape}")
    log_ratio = jnp.asarray(old_logp, jnp.float32) - jnp.asarray(ref_logp, jnp.float32)
    kl_penalty = jnp.where(m, -kl_coef * log_ratio, 0.0)
    return kl_penalty + outcome_token_rewards(scores, m)


def ppo_advantages(token_rewards: jax.Array, values: jax.Array, mask: jax.Array, *, gamma: float = 1.0,
                   lam: float = 0.95, whiten: bool = True, eps: float = 1e-8) -> tuple[jax.Array, jax.Array]:
    """GAE advantages and returns (`advantages.gae`) over the response tokens, [rows, seq] float32 each.

    ``whiten``: advantages are normalised over all response tokens of the batch (mean 0, population std 1,
    ``(A - mean) / (std + eps)``), 0 off the mask, as PPO implementations for language models do; the
    returns ``A + V`` (the critic's regression targets) are computed before whitening.
    """
    m = jnp.asarray(mask, jnp.float32)
    adv, returns = gae(token_rewards, values, m, gamma=gamma, lam=lam)
    if whiten:
        count = jnp.maximum(m.sum(), 1.0)
        mean = (adv * m).sum() / count
        std = jnp.sqrt((((adv - mean) * m) ** 2).sum() / count)
        adv = jnp.where(m > 0, (adv - mean) / (std + eps), 0.0)
    return adv, returns


def ppo_batch(batch: Batch, scores: jax.Array, ref_logp: jax.Array, values: jax.Array, *, kl_coef: float,
              gamma: float = 1.0, lam: float = 0.95, whiten: bool = True) -> dict[str, jax.Array]:
    """A rollout batch (``rollout_batch``) completed for one PPO update of both models.

    Adds ``ref_logp``, ``old_values`` (= `values`, the critic at sampling time), ``token_rewards``,
    ``advantages`` (GAE, whitened if asked) and ``returns``, all [rows, seq]; entries that are not per-row
    arrays (``rollout_batch``'s ``truncated`` count) are dropped so the dict can go to the sharded steps.
    """
    for key in ("weights", "old_logp"):
        if key not in batch:
            raise KeyError(f"ppo_batch: the rollout batch needs {key!r}; got keys {sorted(batch)}")
    mask = jnp.asarray(batch["weights"])
    rows = mask.shape[0]
    token_rewards = ppo_token_rewards(scores, batch["old_logp"], ref_logp, mask, kl_coef)
    advantages, returns = ppo_advantages(token_rewards, values, mask, gamma=gamma, lam=lam, whiten=whiten)
    out = {k: v for k, v in batch.items() if getattr(v, "ndim", 0) >= 1 and v.shape[0] == rows}
    out.update(ref_logp=jnp.asarray(ref_logp, jnp.float32), old_values=jnp.asarray(values, jnp.float32),
               token_rewards=token_rewards, advantages=advantages, returns=returns)
    return out


# ------------------------------------------------------------------------------------------ losses
def critic_loss_fn(clip_eps: float = 0.2) -> LossFn:
    """A loss for `make_train_step` on a `ScalarHeadModel` critic: PPO's clipped value loss
    (`losses.value_loss`, token mean over ``weights``) of V(s_t) against ``returns``, clipped around
    ``old_values``. Batch keys: ``inputs``, ``weights``, ``old_values``, ``returns`` and optional
    ``segment_ids`` / ``positions``, all [rows, seq]."""
    if not clip_eps > 0:
        raise ValueError(f"critic_loss_fn: clip_eps must be > 0, got {clip_eps}")

    def loss(model: nnx.Module, batch: Batch):
        for key in ("old_values", "returns"):
            if key not in batch:
                raise KeyError(f"critic_loss_fn: batch needs {key!r} (see ppo_batch); got keys {sorted(batch)}")
        return value_loss(_values(model, batch), batch["old_values"], batch["returns"], batch["weights"],
                          clip_eps=clip_eps)

    return loss


def ppo_policy_loss_fn(config: PolicyLossConfig = PolicyLossConfig(beta=0.0)):  # noqa: B008 - a frozen dataclass
    """A loss for `make_train_step` on the policy: PPO's clipped surrogate (DeepSeekMath Eq. 1, Schulman et
    al. 2017) with per-token GAE ``advantages``, ``old_logp`` and ``weights`` from the batch.

    The KL to the reference is in the reward (:func:`ppo_token_rewards`), so ``config.beta`` must be 0
    (``ref_logp``, when present, is only reported as the ``kl`` metric).
    """
    if config.beta != 0:
        raise ValueError(f"ppo_policy_loss_fn: PolicyLossConfig.beta={config.beta}, but PPO puts the KL penalty "
                         "in the reward (ppo_token_rewards' kl_coef, PAPER.md Eq. 2), not in the loss; pass "
                         "PolicyLossConfig(beta=0.0) (a KL in the loss is GRPO's, see grpo_loss_fn)")
    inner = grpo_loss_fn(config)

    def loss(model: CausalLM, batch: Batch):
        if "advantages" not in batch:
            raise KeyError(f"ppo_policy_loss_fn: batch needs 'advantages' (see ppo_batch); got keys {sorted(batch)}")
        return inner(model, batch)

    return loss


# ------------------------------------------------------------------------------------------ the steps
class PPOStepFns(NamedTuple):
    """The jitted, sharded functions of one PPO update.

    policy, critic: `StepFns` of the two trained models (init_state, train_step with donated state, ...).
    reference_logprobs(ref_params, batch) -> [rows, seq] log pi_ref of ``targets`` (the policy's graph).
    values(critic_params, batch) -> [rows, seq] V(s_t) (:func:`values_for_batch`).
    """

    policy: StepFns
    critic: StepFns
    reference_logprobs: Callable[[Any, Batch], jax.Array]
    values: Callable[[Any, Batch], jax.Array]


def make_ppo_steps(policy: CausalLM, critic: ScalarHeadModel, optimizer: optax.GradientTransformation,
                   critic_optimizer: optax.GradientTransformation, mesh: Mesh, rules: Rules = DEFAULT_RULES, *,
                   loss_config: PolicyLossConfig = PolicyLossConfig(beta=0.0),  # noqa: B008 - a frozen dataclass
                   value_clip: float = 0.2,
                   accum_steps: int = 1) -> PPOStepFns:
    """Builds the two train steps of PPO (policy: :func:`ppo_policy_loss_fn`; critic: :func:`critic_loss_fn`)
    and the two forward passes an update needs (reference log-probs, old values), all on `mesh`.

    `policy` and `critic` may be abstract (``nnx.eval_shape``): only their structure and shardings are used.
    """
    if not isinstance(critic, ScalarHeadModel):
        raise TypeError(f"make_ppo_steps: the critic must be a ScalarHeadModel, got {type(critic).__name__}")
    policy_fns = make_train_step(policy, optimizer, mesh, rules, loss_fn=ppo_policy_loss_fn(loss_config),
                                 accum_steps=accum_steps)
    critic_fns = make_train_step(critic, critic_optimizer, mesh, rules, loss_fn=critic_loss_fn(value_clip),
                                 accum_steps=accum_steps)
    return PPOStepFns(
        policy=policy_fns, critic=critic_fns,
        reference_logprobs=make_reference_forward(policy, mesh, rules, micro_batches=accum_steps),
        values=on_forward_inputs(make_forward(critic, _values, mesh, rules, micro_batches=accum_steps)))


# ------------------------------------------------------------------------------------------ the role
class Critic(Role):
    """PPO's value model as a role of the RL loop (:class:`~dsmath_jax.rl.roles.Role`).

    Before the policy's updates it reads V_old(s_t) on the step's batch and adds the KL-shaped token rewards,
    GAE advantages and returns (:func:`ppo_token_rewards`, :func:`ppo_advantages`); after each policy update
    it takes one step of the clipped value loss (its metrics are ``critic_<name>``). Built on an abstract
    `policy` (only its config is read; ``config`` gives another architecture, a reward model's), so a
    compile-only plan can build it too; :meth:`init` places the first weights: the reward model's (the
    paper's PPO, ``ppo.critic_init``) or the policy's trunk with a fresh head.
    """

    def __init__(self, policy: CausalLM, mesh: Mesh, rules: Rules = DEFAULT_RULES, *, lr: float,
                 clip_norm: float = 1.0, value_clip: float = 0.2, accum_steps: int = 1, kl_coef: float = 0.04,
                 gamma: float = 1.0, lam: float = 0.95, whiten: bool = True, config: ModelConfig | None = None):
        self.mesh, self.rules = mesh, rules
        self.config = config or policy.config  # the value model's architecture (a reward model's may differ)
        critic = nnx.eval_shape(lambda: ScalarHeadModel(self.config, rngs=nnx.Rngs(0)))
        self.fns = make_train_step(critic, adamw(lr, weight_decay=0.0, clip_norm=clip_norm), mesh, rules,
                                   loss_fn=critic_loss_fn(value_clip), accum_steps=accum_steps)
        self.values = on_forward_inputs(make_forward(critic, _values, mesh, rules, micro_batches=accum_steps))
        self.kl_coef, self.gamma, self.lam, self.whiten = kl_coef, gamma, lam, whiten
        self.state: TrainState | None = None

    def init(self, policy: CausalLM, seed: int, reward_model: ScalarHeadModel | None = None) -> None:
        """The first critic: a copy of ``reward_model`` (:func:`critic_from_reward_model`, the paper's PPO;
        ``ppo.critic_init="reward_model"``) or else the policy's trunk with a fresh head
        (:func:`critic_from_policy`). Check a reward model with :func:`check_critic_reward_model` first."""
        if reward_model is not None:
            model = critic_from_reward_model(reward_model, self.mesh, self.rules)
        else:
            if self.config != policy.config:
                raise ValueError("Critic.init: this critic was built for another architecture than the policy's; "
                                 "pass the reward model it was built for")
            model = critic_from_policy(policy, self.mesh, self.rules, seed)
        self.state = self.fns.init_state(get_params(model))

    def before_update(self, rollout: Any, batch: dict, record: dict) -> None:
        assert self.state is not None, "Critic.init (or restore) first"
        values = self.values(self.state.params, batch)
        G = len(rollout.completions[0])
        scores = jnp.asarray(rollout.rewards * np.repeat(rollout.keep, G), jnp.float32)
        token_rewards = ppo_token_rewards(scores, batch["old_logp"], batch["ref_logp"], batch["weights"],
                                          self.kl_coef)
        adv, returns = ppo_advantages(token_rewards, values, batch["weights"], gamma=self.gamma, lam=self.lam,
                                      whiten=self.whiten)
        batch.update(advantages=adv, returns=returns, old_values=values)
        record["value_mean"] = float(jax.device_get((values * batch["weights"]).sum() /
                                                    jnp.maximum(batch["weights"].sum(), 1.0)))

    def after_update(self, batch: Mapping[str, Any]) -> dict:
        assert self.state is not None, "Critic.init (or restore) first"
        self.state, metrics = self.fns.train_step(self.state, batch)
        return {f"critic_{k}": v for k, v in metrics.items()}

    def checkpoint_items(self) -> dict:
        assert self.state is not None
        return {"critic_params": self.state.params, "critic_opt_state": self.state.opt_state}

    def restore_targets(self, saved) -> dict:
        del saved
        shapes = jax.eval_shape(lambda s: s, self.state)
        sh = self.fns.state_sharding
        return {"critic_params": abstract_like(shapes.params, sh.params),
                "critic_opt_state": abstract_like(shapes.opt_state, sh.opt_state)}

    def restore(self, items: Mapping[str, Any], updates: int) -> None:
        self.state = TrainState(step=jax.device_put(np.int32(updates), self.fns.state_sharding.step),
                                params=items["critic_params"], opt_state=items["critic_opt_state"])
