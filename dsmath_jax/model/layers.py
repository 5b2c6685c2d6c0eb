"""Building blocks of the Llama/DeepSeek decoder: RMSNorm, rotary embeddings, attention, SwiGLU MLP.

Every parameter is an `nnx.Param` whose metadata `logical_axes` names its dimensions
(`("embed", "q_heads", "head_dim")`, ...); `dsmath_jax.parallel` maps those names to mesh axes with
rules from the config. Parameters are stored in `param_dtype` and cast to the compute `dtype` where they
are used; norms, rotary embeddings and softmax run in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from dsmath_jax.model.attention import SPLASH_RESIDUAL_NAME, packed_attention
from dsmath_jax.model.config import ModelConfig
from dsmath_jax.parallel.mesh import activation_context, constrain

Array = jax.Array


def param(rngs: nnx.Rngs, shape: tuple[int, ...], logical_axes: tuple[str, ...], dtype, *, std: float | None):
    """A parameter initialised N(0, std) (or ones when std is None), tagged with its logical axis names."""
    assert len(shape) == len(logical_axes), (shape, logical_axes)
    if std is None:
        value = jnp.ones(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, logical_axes=logical_axes)


class RMSNorm(nnx.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019), computed in float32 like HF `LlamaRMSNorm`."""

    def __init__(self, dim: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs):
        self.scale = param(rngs, (dim,), ("norm",), param_dtype, std=None)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * x32.astype(self.dtype)


def apply_rope(x: Array, positions: Array, theta: float) -> Array:
    """Rotary position embedding (Su et al. 2021) in the half-split layout.

    Dimension j of a head is paired with j + head_dim/2 (HF's `rotate_half`), which is the layout of
    Hugging Face `LlamaForCausalLM` checkpoints, DeepSeek's included. Checkpoints in Meta's interleaved
    layout (pairs 2j, 2j+1) are permuted on load (`dsmath_jax.model.hf.interleaved_to_half`).

    x: [batch, seq, heads, head_dim]; positions: [batch, seq] int.
    """
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, seq, head_dim/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class Attention(nnx.Module):
    """Multi-head attention with grouped key/value heads and rotary embeddings; no biases."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, k, hd, pd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.weight_dtype
        assert k is not None and hd is not None  # derived in ModelConfig.__post_init__
        std = cfg.initializer_range
        self.q_proj = param(rngs, (d, h, hd), ("embed", "q_heads", "head_dim"), pd, std=std)
        self.k_proj = param(rngs, (d, k, hd), ("embed", "kv_heads", "head_dim"), pd, std=std)
        self.v_proj = param(rngs, (d, k, hd), ("embed", "kv_heads", "head_dim"), pd, std=std)
        self.o_proj = param(rngs, (h, hd, d), ("q_heads", "head_dim", "embed"), pd, std=std)
        self.rope_theta = cfg.rope_theta
        self.dtype = cfg.compute_dtype
        self.implementation = cfg.attention_impl

    def __call__(self, x: Array, positions: Array, mask: Array, kv: tuple[Array, Array, Array] | None = None,
                 index: Array | None = None):
        """x: [batch, seq, d]; positions: [batch, seq]; mask: without a cache, the segment ids [batch, seq]
        (0 = padding; `dsmath_jax.model.attention.packed_attention` by `ModelConfig.attention_impl`); with
        a cache, [batch, 1, seq, keys] bool (which cache slots each query sees).

        With `kv` = (k_all, v_all, layer) (the whole cache, each [layers, batch, kv_heads, max_len, head_dim],
        and this block's layer index), the new keys/values are written at slots `index .. index+seq` of
        this layer in place and attention runs over the layer's cache.
        Returns (out [batch, seq, d], updated (k_all, v_all, layer) or None).
        """
        dt = self.dtype
        x = x.astype(dt)
        q = checkpoint_name(jnp.einsum("btd,dhk->bthk", x, self.q_proj[...].astype(dt)), "query_proj")
        k = checkpoint_name(jnp.einsum("btd,dhk->bthk", x, self.k_proj[...].astype(dt)), "key_proj")
        v = checkpoint_name(jnp.einsum("btd,dhk->bthk", x, self.v_proj[...].astype(dt)), "value_proj")
        q = constrain(apply_rope(q, positions, self.rope_theta), ("batch", "length", "act_heads", None))
        k = constrain(apply_rope(k, positions, self.rope_theta), ("batch", "length", "act_kv_heads", None))
        v = constrain(v, ("batch", "length", "act_kv_heads", None))
        if kv is None:  # `mask` is the [batch, seq] segment ids: packed causal attention by platform
            context = activation_context()
            mesh, rules = context if context is not None else (None, None)
            out = packed_attention(q, k, v, mask, implementation=self.implementation, mesh=mesh, rules=rules)
        else:
            k_all, v_all, layer = kv
            assert index is not None, "a cached forward passes the cache's write index"
            start = (layer, 0, 0, index, 0)
            k_all = jax.lax.dynamic_update_slice(k_all, k.transpose(0, 2, 1, 3)[None].astype(k_all.dtype), start)
            v_all = jax.lax.dynamic_update_slice(v_all, v.transpose(0, 2, 1, 3)[None].astype(v_all.dtype), start)
            keys = jax.lax.dynamic_index_in_dim(k_all, layer, 0, keepdims=False)
            values = jax.lax.dynamic_index_in_dim(v_all, layer, 0, keepdims=False)
            out = cached_attention(q, keys.astype(dt), values.astype(dt), mask)
            kv = (k_all, v_all, layer)
        out = checkpoint_name(out, "attention_out")
        return jnp.einsum("bthk,hkd->btd", out, self.o_proj[...].astype(dt)), kv


def cached_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """Softmax attention over a heads-major cache (no transpose of the cache, which dominates decoding).

    q: [batch, seq, heads, head_dim]; k, v: [batch, kv_heads, keys, head_dim]; mask: [batch, 1, seq, keys].
    Returns [batch, seq, heads, head_dim]. Scores and softmax in float32.
    """
    b, t, h, d = q.shape
    groups = h // k.shape[1]
    qg = q.reshape(b, t, k.shape[1], groups, d).transpose(0, 2, 3, 1, 4)  # [b, kv, g, t, d]
    scores = jnp.einsum("bkgtd,bksd->bkgts", qg, k, preferred_element_type=jnp.float32) / jnp.sqrt(d).astype(
        jnp.float32)
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksd->bkgtd", probs, v)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


class MLP(nnx.Module):
    """SwiGLU feed-forward (Shazeer 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f, pd, std = cfg.d_model, cfg.mlp_dim, cfg.weight_dtype, cfg.initializer_range
        self.gate_proj = param(rngs, (d, f), ("embed", "mlp"), pd, std=std)
        self.up_proj = param(rngs, (d, f), ("embed", "mlp"), pd, std=std)
        self.down_proj = param(rngs, (f, d), ("mlp", "embed"), pd, std=std)
        self.dtype = cfg.compute_dtype

    def __call__(self, x: Array) -> Array:
        dt = self.dtype
        x = x.astype(dt)
        gate = jnp.einsum("btd,df->btf", x, self.gate_proj[...].astype(dt))
        up = jnp.einsum("btd,df->btf", x, self.up_proj[...].astype(dt))
        hidden = constrain(checkpoint_name(jax.nn.silu(gate) * up, "mlp_hidden"), ("batch", "length", "act_mlp"))
        return jnp.einsum("btf,fd->btd", hidden, self.down_proj[...].astype(dt))


class Block(nnx.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        kw = dict(eps=cfg.rms_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs)
        self.attn_norm = RMSNorm(cfg.d_model, **kw)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, **kw)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, positions, mask, kv=None, index=None):
        attn_out, kv = self.attn(self.attn_norm(x), positions, mask, kv, index)
        x = x + attn_out
        x = x + self.mlp(self.mlp_norm(x))
        return constrain(x, ("batch", "length", "act_embed")), kv


def remat_policy(name: str):
    """The `jax.checkpoint` policy of a named remat setting (`ModelConfig.remat_policy`)."""
    policies = jax.checkpoint_policies
    return {
        "full": None,  # save nothing: recompute the whole block in the backward pass
        "dots": policies.checkpoint_dots,
        "dots_no_batch": policies.dots_with_no_batch_dims_saveable,
        "save_qkv": policies.save_only_these_names("query_proj", "key_proj", "value_proj"),
        "save_attention": policies.save_only_these_names("query_proj", "key_proj", "value_proj",
                                                         "attention_out", SPLASH_RESIDUAL_NAME),
    }[name]
