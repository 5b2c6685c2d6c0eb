"""The sharded train step shared by pre-training, SFT and reward-model training.

State is functional: `params` is the model's pure parameter dict (`dsmath_jax.model.get_params(model)`),
the module structure is a `graphdef`, and `nnx.merge(graphdef, params)` rebuilds the model inside the step.
A loss function returns `(total, weight, metrics)`: the loss is `total / weight`, which lets gradient
accumulation over micro-batches give exactly the gradient of the whole batch.

Steps are `jax.jit` with explicit in/out shardings; the input state is donated. A step whose loss or
gradient is not finite leaves params and optimizer state unchanged and reports `finite = 0`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dsmath_jax.model.transformer import CausalLM
from dsmath_jax.parallel.mesh import (
    DEFAULT_RULES,
    Rules,
    activation_sharding,
    batch_sharding,
    constrain,
    get_params,
    param_shardings,
)

Batch = Mapping[str, jax.Array]
# A loss (or forward) function is called with the model `make_train_step` (`make_forward`) was built from,
# merged from its graph and the traced params: each types its model parameter as the class it expects.
LossFn = Callable[[Any, Batch], tuple[jax.Array, jax.Array, dict]]
ForwardFn = Callable[[Any, Batch], jax.Array]


class TrainState(NamedTuple):
    # [] int32: updates attempted so far. Any like the other fields: a TrainState also holds the state's
    # shardings (`StepFns.state_sharding`) or shapes (`abstract_like`), and a restored step is a numpy array.
    step: Any
    params: Any  # pure dict of arrays
    opt_state: Any


def token_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Summed weighted next-token cross-entropy and the summed weight.

    logits: [batch, seq, vocab] float32 (position t predicts targets[t]); targets, weights: [batch, seq].
    """
    logits = logits.astype(jnp.float32)
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    weights = weights.astype(jnp.float32)
    return (nll * weights).sum(), weights.sum()


def lm_loss(model: CausalLM, batch: Batch) -> tuple[jax.Array, jax.Array, dict]:
    """Language-model loss on a batch with `inputs`, `targets`, `weights` and optional `positions` and
    `segment_ids` (all [batch, seq]); `weights` is 0 on padding and, for SFT, on prompt tokens. The
    log-probs come from the model in blocks of positions (`CausalLM.token_logprobs`): no full logits."""
    logp, _ = model.token_logprobs(batch["inputs"], batch["targets"], batch.get("positions"),
                                   batch.get("segment_ids"))
    weights = batch["weights"].astype(jnp.float32)
    return -(jnp.where(weights != 0, logp, 0.0) * weights).sum(), weights.sum(), {}


def adamw(learning_rate: float | optax.Schedule, *, b1: float = 0.9, b2: float = 0.95, weight_decay: float = 0.1,
          clip_norm: float | None = 1.0, eps: float = 1e-8) -> optax.GradientTransformation:
    """AdamW with the DeepSeek settings (PAPER.md §2: beta1 0.9, beta2 0.95, weight decay 0.1) and global
    norm clipping. Weight decay skips vectors (norm scales), as is usual for Llama-style models."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    parts.append(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask))
    return optax.chain(*parts)


def opt_state_shardings(optimizer: optax.GradientTransformation, params_shape: Any, params_sharding: Any,
                        mesh: Mesh) -> Any:
    """Shards every optimizer-state subtree shaped like the params as the params; the rest is replicated."""
    state_shape = jax.eval_shape(optimizer.init, params_shape)
    param_tree = jax.tree.structure(params_shape)
    replicated = NamedSharding(mesh, P())

    def like_params(x: Any) -> bool:
        # jaxlib ships no stub for PyTreeDef (mypy sees an unresolved type): treedefs do compare with ==.
        return jax.tree.structure(x) == param_tree  # type: ignore[operator]

    return jax.tree.map(lambda x: params_sharding if like_params(x) else replicated, state_shape,
                        is_leaf=like_params)


def _split_micro(batch: Batch, accum_steps: int) -> Batch:
    def split(x):
        if x.shape[0] % accum_steps:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {accum_steps} micro-batches")
        x = x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:])
        return constrain(x, (None, "batch") + (None,) * (x.ndim - 2))
    return jax.tree.map(split, dict(batch))


def make_forward(model: nnx.Module, fn: ForwardFn, mesh: Mesh,
                 rules: Rules = DEFAULT_RULES, *, micro_batches: int = 1) -> Callable[[Any, Batch], jax.Array]:
    """A jitted, sharded forward pass `forward(params, batch) -> [rows, ...]` of `fn(model, batch)` (e.g. the
    frozen reference's log-probs, a critic's values): traced inside the activation-sharding context, so
    activations are split over the mesh like the train step's, and run over `micro_batches` slices of the
    rows one after the other (`lax.map`), so it holds one micro-batch's activations at a time, as the train
    step with `accum_steps` does. Slice i takes rows i, i + k, i + 2k, ... (each device keeps its own rows);
    the output is in the batch's row order. `model` may be abstract (`nnx.eval_shape`)."""
    if micro_batches < 1:
        raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
    graphdef, _ = nnx.split(model)
    params_sharding = param_shardings(model, mesh, rules)
    rows_sharding = batch_sharding(mesh, rules)

    def forward(params, batch):
        with activation_sharding(mesh, rules):
            run = lambda b: fn(nnx.merge(graphdef, params), b)  # noqa: E731
            if micro_batches == 1:
                return run(batch)
            k = micro_batches

            def split(x):
                if x.shape[0] % k:
                    raise ValueError(f"batch of {x.shape[0]} rows does not split into {k} micro-batches")
                x = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
                return constrain(x, (None, "batch") + (None,) * (x.ndim - 2))

            out = jax.lax.map(run, jax.tree.map(split, dict(batch)))  # [k, rows / k, ...]
            out = out.swapaxes(0, 1)
            return constrain(out.reshape((-1,) + out.shape[2:]), ("batch",) + (None,) * (out.ndim - 2))

    return jax.jit(forward, in_shardings=(params_sharding, rows_sharding), out_shardings=rows_sharding)


class StepFns(NamedTuple):
    init_state: Callable[[Any], TrainState]
    train_step: Callable[[TrainState, Batch], tuple[TrainState, dict]]
    eval_step: Callable[[Any, Batch], dict]
    state_sharding: TrainState
    batch_sharding: NamedSharding


def make_train_step(model: nnx.Module, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules: Rules = DEFAULT_RULES, *, loss_fn: LossFn = lm_loss, accum_steps: int = 1,
                    schedule: optax.Schedule | None = None) -> StepFns:
    """Builds the jitted, sharded steps for `model`.

    init_state(params) -> TrainState placed on the mesh.
    train_step(state, batch) -> (state, metrics): gradient of `loss_fn` accumulated over `accum_steps`
      micro-batches (rows of the global batch), one optimizer update, metrics {loss, tokens, grad_norm, lr,
      finite}. The input state is donated.
    eval_step(params, batch) -> {loss_total, weight}: sums, so held-out batches add up exactly.
    """
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    graphdef, _ = nnx.split(model)
    params_sharding = param_shardings(model, mesh, rules)
    params_shape = jax.eval_shape(lambda: get_params(model))
    replicated = NamedSharding(mesh, P())
    state_sharding = TrainState(step=replicated, params=params_sharding,
                                opt_state=opt_state_shardings(optimizer, params_shape, params_sharding, mesh))
    data_sharding = batch_sharding(mesh, rules)  # a prefix: every [batch, ...] array of the batch dict

    def init(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    def loss_and_grad(params, batch):
        def total_of(p):
            with activation_sharding(mesh, rules):
                total, weight, metrics = loss_fn(nnx.merge(graphdef, p), batch)
            return total, (weight, metrics)

        (total, (weight, metrics)), grads = jax.value_and_grad(total_of, has_aux=True)(params)
        return total, weight, metrics, grads

    def step(state: TrainState, batch):
        if accum_steps == 1:
            total, weight, metrics, grads = loss_and_grad(state.params, batch)
        else:
            micro = _split_micro(batch, accum_steps)

            def body(carry, mb):
                total, weight, grads = carry
                t, w, m, g = loss_and_grad(state.params, mb)
                return (total + t, weight + w, jax.tree.map(jnp.add, grads, g)), m

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (total, weight, grads), metrics = jax.lax.scan(body, (jnp.zeros(()), jnp.zeros(()), zeros), micro)
            metrics = jax.tree.map(lambda x: x.mean(0), metrics)
        denom = jnp.maximum(weight, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        loss = total / denom
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        out = TrainState(step=state.step + 1, params=keep(params, state.params),
                         opt_state=keep(opt_state, state.opt_state))
        metrics = dict(metrics, loss=loss, tokens=weight, grad_norm=grad_norm, finite=finite.astype(jnp.int32))
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return out, metrics

    def evaluate(params, batch):
        with activation_sharding(mesh, rules):
            total, weight, _ = loss_fn(nnx.merge(graphdef, params), batch)
        return {"loss_total": total, "weight": weight}

    return StepFns(
        init_state=jax.jit(init, in_shardings=(params_sharding,), out_shardings=state_sharding),
        train_step=jax.jit(step, in_shardings=(state_sharding, data_sharding),
                           out_shardings=(state_sharding, replicated), donate_argnums=(0,)),
        eval_step=jax.jit(evaluate, in_shardings=(params_sharding, data_sharding), out_shardings=replicated),
        state_sharding=state_sharding, batch_sharding=data_sharding)
