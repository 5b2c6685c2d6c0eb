"""The sharded language-model train step: next-token cross-entropy, AdamW, `jax.jit` with explicit
in/out shardings and donated buffers.

State is functional: `params` is the model's pure parameter dict (`dsmath_jax.model.get_params(model)`),
the module structure is a `graphdef`, and `nnx.merge(graphdef, params)` rebuilds the model inside the step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dsmath_jax.model.params import get_params
from dsmath_jax.parallel.mesh import DEFAULT_RULES, Rules, activation_sharding, batch_sharding, param_shardings


class TrainState(NamedTuple):
    step: jax.Array  # [] int32
    params: Any  # pure dict of arrays
    opt_state: Any


def next_token_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, dict]:
    """Mean token cross-entropy over weighted tokens.

    logits: [batch, seq, vocab] float32 (position t predicts targets[t]); targets, weights: [batch, seq].
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    weights = weights.astype(jnp.float32)
    total = jnp.maximum(weights.sum(), 1.0)
    loss = (nll * weights).sum() / total
    return loss, {"loss": loss, "tokens": weights.sum()}


def lm_loss(model: nnx.Module, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
    """Loss of a `CausalLM` on a batch with `inputs`, `targets`, `weights` and optional
    `positions`/`segment_ids` (all [batch, seq])."""
    logits = model(batch["inputs"], batch.get("positions"), batch.get("segment_ids"))
    return next_token_loss(logits, batch["targets"], batch["weights"])


def adamw(learning_rate: float | optax.Schedule, *, b1: float = 0.9, b2: float = 0.95, weight_decay: float = 0.1,
          clip_norm: float | None = 1.0, eps: float = 1e-8) -> optax.GradientTransformation:
    """AdamW with the DeepSeek settings (PAPER.md §2: beta1 0.9, beta2 0.95, weight decay 0.1) and global
    norm clipping."""
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    parts.append(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return optax.chain(*parts)


def opt_state_shardings(optimizer: optax.GradientTransformation, params_shape: Any, params_sharding: Any,
                        mesh: Mesh) -> Any:
    """Shards every optimizer-state subtree shaped like the params as the params; the rest is replicated."""
    state_shape = jax.eval_shape(optimizer.init, params_shape)
    param_tree = jax.tree.structure(params_shape)
    replicated = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: params_sharding if jax.tree.structure(x) == param_tree else replicated,
                        state_shape, is_leaf=lambda x: jax.tree.structure(x) == param_tree)


def make_train_step(model: nnx.Module, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules: Rules = DEFAULT_RULES, *,
                    loss_fn: Callable[[nnx.Module, Mapping[str, jax.Array]], tuple[jax.Array, dict]] = lm_loss):
    """Returns (init_state, train_step, state_shardings).

    init_state(params) -> TrainState placed on the mesh.
    train_step(state, batch) -> (state, metrics), jitted with explicit in/out shardings; the input state is
    donated. Batches are dicts of [batch, seq] arrays sharded over the data-parallel axes.
    """
    graphdef, _ = nnx.split(model)
    params_sharding = param_shardings(model, mesh, rules)
    params_shape = jax.eval_shape(lambda: get_params(model))
    replicated = NamedSharding(mesh, P())
    state_sharding = TrainState(step=replicated, params=params_sharding,
                                opt_state=opt_state_shardings(optimizer, params_shape, params_sharding, mesh))
    data_sharding = batch_sharding(mesh, rules)  # a prefix: every [batch, seq] array of the batch dict

    def init(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    init_state = jax.jit(init, in_shardings=(params_sharding,), out_shardings=state_sharding)

    def step(state: TrainState, batch):
        def loss_of(params):
            with activation_sharding(mesh, rules):
                return loss_fn(nnx.merge(graphdef, params), batch)

        (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    train_step = jax.jit(step, in_shardings=(state_sharding, data_sharding),
                         out_shardings=(state_sharding, replicated), donate_argnums=(0,))
    return init_state, train_step, state_sharding
