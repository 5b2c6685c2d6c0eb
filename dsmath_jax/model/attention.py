"""Packed causal self-attention: every query attends to the keys at or before it in its own segment.

Training and scoring rows pack several documents into one sequence; `segment_ids` [batch, seq] names the
document of every token (0 = padding). Query i attends key j iff j <= i and segment_ids[i] ==
segment_ids[j]. Three implementations compute it, chosen by the platform (`resolve_implementation`):

- "xla": a boolean [batch, 1, seq, seq] mask and `jax.nn.dot_product_attention(implementation="xla")`. It
  materialises [batch, heads, seq, seq] float32 scores in HBM; the reference, and the path on CPU.
- "splash": the Pallas TPU splash-attention kernel (`jax.experimental.pallas.ops.tpu.splash_attention`),
  a block-sparse FlashAttention (Dao et al. 2022, "FlashAttention: Fast and Memory-Efficient Exact
  Attention with IO-Awareness"; online softmax of Milakov & Gimelshein 2018): scores exist only as VMEM
  tiles, blocks above the causal diagonal are skipped, segment ids are compared inside the tile, and the
  backward pass recomputes the tiles from the saved log-sum-exp. Grouped-query attention runs natively
  (the MHA kernel indexes the key/value head of each query head; keys/values are never repeated). Under
  a mesh it runs under `jax.shard_map`, batch over the data-parallel axes and heads over `tensor`.
- "cudnn": cuDNN flash attention on NVIDIA GPUs. `jax.nn.dot_product_attention` can only express
  padding (`query_seq_lengths`), not several documents per row; jax's cuDNN binding
  (`jax._src.cudnn.fused_attention_stablehlo.dot_product_attention`, private) expresses packed rows
  with per-row segment offsets/lengths of a *static* maximum number of segments per row, on Hopper or
  newer and fp16/bf16 only. It is used when the caller gives that bound (`max_segments`); without it, or
  for float32 inputs, "cudnn" falls back to the XLA path with a logged warning.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax._src.cudnn import fused_attention_stablehlo as cudnn_fused  # jax's cuDNN binding (private)
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from dsmath_jax.parallel.mesh import DEFAULT_RULES, logical_to_spec

log = logging.getLogger(__name__)

Array = jax.Array

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")

# Environment overrides (for tests and debugging): the implementation that "auto" resolves to, and
# Pallas interpret mode for the splash kernel (so it runs on CPU).
ENV_IMPLEMENTATION = "DSMATH_ATTENTION_IMPL"
ENV_SPLASH_INTERPRET = "DSMATH_SPLASH_INTERPRET"

# The splash kernel compares segment ids in tiles of 128 lanes: blocks must be multiples of this.
SPLASH_LANES = 128
# Largest splash tile along queries and keys (MaxText's default `sa_block_*`).
SPLASH_MAX_BLOCK = 512
# `jax.ad_checkpoint.checkpoint_name` of the splash kernel's residuals (its output and log-sum-exp):
# a remat policy that saves this name spares the backward pass a rerun of the forward kernel.
SPLASH_RESIDUAL_NAME = "splash_attention_residuals"


# ------------------------------------------------------------------------------------------------ dispatch


def resolve_implementation(impl: str | None, platform: str) -> str:
    """The implementation that computes attention on `platform` ("tpu", "gpu"/"cuda", "rocm", "cpu").

    "auto" or None -> "splash" on TPU, "cudnn" on CUDA GPUs ("gpu" or "cuda"), "xla" otherwise (CPU, ROCm);
    an explicit name is returned as is.
    """
    if impl is None or impl == "auto":
        platform = platform.lower()
        if platform == "tpu":
            return "splash"
        if platform in ("gpu", "cuda"):
            return "cudnn"
        return "xla"
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {impl!r}; allowed: {IMPLEMENTATIONS} (or None)")
    return impl


def mesh_platform(mesh: Mesh | None) -> str:
    """The platform attention runs on: that of the mesh's devices, else `jax.default_backend()`.

    A mesh of abstract TPU devices (compiled from a CPU host) is "tpu" although the default backend is
    "cpu". GPUs are reported as "cuda" or "rocm" where the device's client says which.
    """
    devices = getattr(mesh, "devices", None)
    if devices is not None and getattr(devices, "size", 0) > 0:
        device = devices.flat[0]
        platform = device.platform
        client = getattr(device, "client", None)
    else:
        platform = jax.default_backend()
        client = None
    if platform == "gpu":
        try:
            version = (client or jax.devices("gpu")[0].client).platform_version.lower()
        except (RuntimeError, AttributeError):
            version = ""
        platform = "rocm" if "rocm" in version else "cuda"
    return platform


def packed_attention(q: Array, k: Array, v: Array, segment_ids: Array, *, implementation: str | None = "auto",
                     mesh: Mesh | None = None, rules: Sequence[tuple[str, Any]] | None = None,
                     interpret: bool = False, block_size: int | None = None,
                     max_segments: int | None = None) -> Array:
    """Causal attention restricted to each query's own segment.

    q: [batch, seq, heads, head_dim]; k, v: [batch, seq, kv_heads, head_dim] (grouped-query attention:
    heads % kv_heads == 0), already rotated (RoPE applied), in the compute dtype; segment_ids: [batch, seq]
    int, 0 = padding (a padding query's output is finite and meant to be ignored: with "xla" and "splash"
    it attends to the padding at or before it). Scale 1/sqrt(head_dim); softmax in float32. Returns
    [batch, seq, heads, head_dim] in q.dtype.

    implementation: one of IMPLEMENTATIONS or None; "auto"/None picks by the platform of `mesh` (else the
        default backend), or takes $DSMATH_ATTENTION_IMPL when it is set.
    mesh, rules: the device mesh and logical-axis rules (`dsmath_jax.parallel.mesh`); with a mesh the
        splash kernel runs under `jax.shard_map`, batch split over the axes of the logical axis "batch"
        and heads over those of "act_heads"/"act_kv_heads" (a mesh axis that does not divide a dimension
        is dropped; query heads are split only over axes that also split the key/value heads). Without a
        mesh the kernel runs on one device: pass the mesh whenever the arrays are sharded. The "xla" and
        "cudnn" paths ignore them (XLA partitions those itself).
    interpret: run the splash kernel in Pallas interpret mode (any platform, slow; for tests). Also set by
        $DSMATH_SPLASH_INTERPRET=1.
    block_size: splash tile along queries and keys (a multiple of 128); default: the largest of 512, 256,
        128 dividing the sequence rounded up to a multiple of 128.
    max_segments: cuDNN only: a static bound on the documents (runs of equal segment ids; the trailing
        padding joins the last one) per row, needed to express packed rows to cuDNN (`cudnn_attention`).
    """
    _check_shapes(q, k, v, segment_ids)
    if implementation in (None, "auto") and os.environ.get(ENV_IMPLEMENTATION):
        implementation = os.environ[ENV_IMPLEMENTATION]
    platform = mesh_platform(mesh)
    impl = resolve_implementation(implementation, platform)
    if impl == "xla":
        return xla_attention(q, k, v, segment_ids)
    if impl == "cudnn":
        return cudnn_attention(q, k, v, segment_ids, max_segments=max_segments)
    interpret = interpret or os.environ.get(ENV_SPLASH_INTERPRET, "") not in ("", "0")
    if platform != "tpu" and not interpret:
        raise ValueError(f"attention implementation 'splash' is a TPU kernel but the platform is {platform!r}; "
                         f"pass interpret=True (or set {ENV_SPLASH_INTERPRET}=1) to run it in Pallas interpret "
                         f"mode, or use implementation='xla'")
    return splash_attention(q, k, v, segment_ids, mesh=mesh, rules=rules, interpret=interpret,
                            block_size=block_size)


def _check_shapes(q: Array, k: Array, v: Array, segment_ids: Array) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"packed_attention: q, k, v must be [batch, seq, heads, head_dim]; got shapes "
                         f"{q.shape}, {k.shape}, {v.shape}")
    b, t, h, d = q.shape
    if k.shape != v.shape or k.shape[:2] != (b, t) or k.shape[3] != d:
        raise ValueError(f"packed_attention: k and v must be [batch={b}, seq={t}, kv_heads, head_dim={d}]; got "
                         f"k {k.shape}, v {v.shape}")
    if h % k.shape[2]:
        raise ValueError(f"packed_attention: query heads ({h}) must be a multiple of key/value heads "
                         f"({k.shape[2]})")
    if segment_ids.shape != (b, t):
        raise ValueError(f"packed_attention: segment_ids must be [batch={b}, seq={t}]; got {segment_ids.shape}")


# ------------------------------------------------------------------------------------------------ XLA


def segment_mask(segment_ids: Array) -> Array:
    """Causal mask restricted to the query's own segment: [batch, seq] -> [batch, 1, seq, seq] bool."""
    seq = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((seq, seq), bool))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (causal[None] & same)[:, None]


def xla_attention(q: Array, k: Array, v: Array, segment_ids: Array) -> Array:
    """The reference path: the [batch, 1, seq, seq] mask and XLA's attention ([batch, heads, seq, seq] scores).

    q: [batch, seq, heads, head_dim]; k, v: [batch, seq, kv_heads, head_dim] -> [batch, seq, heads, head_dim].
    """
    return jax.nn.dot_product_attention(q, k, v, mask=segment_mask(segment_ids), implementation="xla")


# ------------------------------------------------------------------------------------------------ splash


def splash_block_size(seq: int, block_size: int | None = None) -> tuple[int, int]:
    """(tile, padded sequence length) of the splash kernel for a sequence of `seq` tokens.

    The kernel compares segment ids in 128-lane tiles, so tiles are multiples of 128 and must divide the
    (padded) sequence. Default: pad to a multiple of 128 and take the largest of 512, 256, 128 dividing it.
    """
    if seq < 1:
        raise ValueError(f"splash attention: sequence length must be positive, got {seq}")
    if block_size is not None:
        if block_size < SPLASH_LANES or block_size % SPLASH_LANES:
            raise ValueError(f"splash attention: block_size={block_size} must be a positive multiple of "
                             f"{SPLASH_LANES}")
        block = min(block_size, _round_up(seq, SPLASH_LANES))
        return block, _round_up(seq, block)
    padded = _round_up(seq, SPLASH_LANES)
    block = next(b for b in (SPLASH_MAX_BLOCK, 256, SPLASH_LANES) if padded % b == 0)
    return block, padded


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def splash_attention(q: Array, k: Array, v: Array, segment_ids: Array, *, mesh: Mesh | None = None,
                     rules: Sequence[tuple[str, Any]] | None = None, interpret: bool = False,
                     block_size: int | None = None) -> Array:
    """Packed causal attention with the Pallas splash kernel (TPU, or any platform with `interpret`).

    q: [batch, seq, heads, head_dim]; k, v: [batch, seq, kv_heads, head_dim]; segment_ids: [batch, seq].
    Returns [batch, seq, heads, head_dim] in q.dtype. With `mesh` the kernel runs per shard under
    `jax.shard_map` (see `splash_specs`); the sequence is never split.
    """
    block, padded = splash_block_size(q.shape[1], block_size)
    local = functools.partial(_splash_local, block=block, padded=padded, interpret=interpret)
    if mesh is None:
        return local(q, k, v, segment_ids)
    q_spec, kv_spec, seg_spec = splash_specs(q.shape, k.shape, mesh, DEFAULT_RULES if rules is None else rules)
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec,
                            check_vma=False)
    return sharded(q, k, v, segment_ids)


def splash_specs(q_shape: Sequence[int], kv_shape: Sequence[int], mesh: Mesh,
                 rules: Sequence[tuple[str, Any]]) -> tuple[P, P, P]:
    """shard_map specs (q, k/v, segment_ids) of the splash kernel: batch over the mesh axes of "batch",
    heads over the axes of "act_heads" that also split the key/value heads ("act_kv_heads"), so that each
    shard holds whole groups of query heads with their key/value head. Sequence and head_dim replicated.
    """
    q_full = logical_to_spec(("batch", None, "act_heads", None), rules, shape=q_shape, mesh=mesh)
    kv_full = logical_to_spec(("batch", None, "act_kv_heads", None), rules, shape=kv_shape, mesh=mesh)
    batch = q_full[0]
    q_heads, kv_heads = _axes(q_full[2]), _axes(kv_full[2])
    common = tuple(a for a in kv_heads if a in q_heads)
    if common != kv_heads or common != q_heads:
        log.warning("splash attention: query heads split over %s but key/value heads over %s; heads are split "
                    "over %s only", q_heads, kv_heads, common)
    heads = None if not common else common[0] if len(common) == 1 else common
    return P(batch, None, heads, None), P(batch, None, heads, None), P(batch, None)


def _axes(entry: Any) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _splash_local(q: Array, k: Array, v: Array, segment_ids: Array, *, block: int, padded: int,
                  interpret: bool) -> Array:
    """The splash kernel on one device's arrays (shapes as `splash_attention`'s, local to the shard).

    Pads the sequence at the end to `padded` (padded keys come after every real query, so causality keeps
    them out of real rows), scales q by 1/sqrt(head_dim) in float32 (the kernel does not scale; MaxText
    scales q the same way), and runs the MHA kernel, which handles grouped-query attention natively (query
    head i reads key/value head i // groups), vmapped over the batch, heads-major.
    """
    b, t, h, d = q.shape
    scale = 1.0 / math.sqrt(d)
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    if padded != t:
        pad = ((0, 0), (0, padded - t), (0, 0), (0, 0))
        q, k, v = jnp.pad(q, pad), jnp.pad(k, pad), jnp.pad(v, pad)
        segment_ids = jnp.pad(segment_ids, ((0, 0), (0, padded - t)))
    out = _splash_call(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
                       segment_ids.astype(jnp.int32), block, interpret)
    return out.transpose(0, 2, 1, 3)[:, :t]


def _kernel_precision(dtype):
    """Matmul precision to trace the kernels under: Mosaic rejects an fp32 contraction precision (what a
    global `jax_default_matmul_precision="highest"` asks for) on 16-bit operands, where it means nothing."""
    if jnp.dtype(dtype).itemsize <= 2:
        return jax.default_matmul_precision("default")
    return contextlib.nullcontext()


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _splash_call(q: Array, k: Array, v: Array, segment_ids: Array, block: int, interpret: bool) -> Array:
    """The splash kernel vmapped over the batch: q [batch, heads, seq, d], k/v [batch, kv_heads, seq, d],
    segment_ids [batch, seq] int32 -> [batch, heads, seq, d].

    A custom VJP around the kernel's own, only so that its backward kernels are traced under the same
    matmul precision as the forward one (`_kernel_precision`); the backward pass is the kernel's.
    """
    with _kernel_precision(q.dtype):
        return _batched_kernel(segment_ids, block, interpret, q.shape)(q, k, v)


def _batched_kernel(segment_ids: Array, block: int, interpret: bool, q_shape: Sequence[int]):
    """(q, k, v) -> the splash kernel of `_splash_kernel` vmapped over the batch, with these segment ids."""
    kernel = _splash_kernel(q_shape[1], q_shape[2], block, interpret)
    ids = splash.SegmentIds(segment_ids, segment_ids)
    return lambda q, k, v: jax.vmap(kernel)(q, k, v, ids)


def _splash_call_fwd(q, k, v, segment_ids, block, interpret):
    with _kernel_precision(q.dtype):
        return jax.vjp(_batched_kernel(segment_ids, block, interpret, q.shape), q, k, v)


def _splash_call_bwd(block, interpret, vjp, grad):
    del block, interpret
    with _kernel_precision(grad.dtype):
        return (*vjp(grad), None)


_splash_call.defvjp(_splash_call_fwd, _splash_call_bwd)


def _splash_kernel(heads: int, seq: int, block: int, interpret: bool):
    """A causal splash MHA kernel for [heads, seq, head_dim] queries (keys/values may have fewer heads).

    The same tile size serves the forward pass and both backward kernels (dq, and dk/dv); the backward is
    not fused (a fused one keeps an unreduced [kv_blocks, heads, seq, head_dim] float32 dq).
    """
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                              block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                              block_q_dq=block, block_kv_dq=block)
    mask = splash.MultiHeadMask(tuple(splash.CausalMask((seq, seq)) for _ in range(heads)))
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                  residual_checkpoint_name=SPLASH_RESIDUAL_NAME, interpret=interpret)


# ------------------------------------------------------------------------------------------------ cuDNN


def segment_runs(segment_ids: Array, max_segments: int) -> tuple[Array, Array]:
    """Per-row starts and lengths of the documents of packed rows, in cuDNN's packed-layout convention.

    A document is a run of equal segment ids; the padding at the end of a row joins the last document (only
    padding queries see it: causality keeps it from every real query), so a row of n documents has n runs.
    segment_ids: [batch, seq] -> (offsets [batch, max_segments + 1], lengths [batch, max_segments]) int32,
    unused entries -1 (the last offset column is always -1). A row with more than `max_segments` runs has
    its trailing runs merged into the last one (they then attend to each other: keep the bound honest).
    """
    b, t = segment_ids.shape
    first = jnp.arange(t) == 0
    changes = jnp.concatenate([jnp.zeros((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    tail_padding = jnp.flip(jnp.cumprod(jnp.flip(segment_ids == 0, axis=1), axis=1), axis=1).astype(bool)
    starts = first[None] | (changes & ~tail_padding)
    offsets = jax.vmap(lambda s: jnp.nonzero(s, size=max_segments, fill_value=-1)[0])(starts).astype(jnp.int32)
    ends = jnp.concatenate([offsets[:, 1:], jnp.full((b, 1), -1, jnp.int32)], axis=1)
    ends = jnp.where(ends >= 0, ends, t)
    lengths = jnp.where(offsets >= 0, ends - offsets, -1)
    return jnp.concatenate([offsets, jnp.full((b, 1), -1, jnp.int32)], axis=1), lengths


def cudnn_attention(q: Array, k: Array, v: Array, segment_ids: Array, *, max_segments: int | None) -> Array:
    """cuDNN flash attention over packed rows (shapes as `packed_attention`'s); XLA where cuDNN cannot.

    Packed rows go to cuDNN's packed layout through jax's private cuDNN binding, one cuDNN "segment" per
    document (`segment_runs`), causal within each. This needs fp16/bf16 inputs, a Hopper or newer GPU and
    `max_segments` (documents per row; 1 = plain causal attention through `jax.nn.dot_product_attention`);
    without the bound or for float32 the XLA path runs (logged). Segment ids must form contiguous runs
    (as the packer writes them). Its residual softmax statistics are [batch * max_segments, heads, seq]
    float32, so keep the bound small.
    """
    if max_segments is None:
        log.warning("cuDNN attention: packed rows need a static bound on segments per row (max_segments); "
                    "falling back to the XLA path, which materialises [batch, heads, seq, seq] scores")
        return xla_attention(q, k, v, segment_ids)
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        log.warning("cuDNN attention supports float16/bfloat16 only, got %s: falling back to the XLA path", q.dtype)
        return xla_attention(q, k, v, segment_ids)
    if max_segments < 1:
        raise ValueError(f"cuDNN attention: max_segments={max_segments} must be at least 1")
    if max_segments == 1:  # one document per row (and trailing padding): plain causal attention
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    offsets, lengths = segment_runs(segment_ids, max_segments)
    return cudnn_fused.dot_product_attention(
        q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets, kv_offsets=offsets,
        scale=1.0 / math.sqrt(q.shape[-1]), mask_type=cudnn_fused.MaskType.PADDING_CAUSAL, qkv_layout="BTNH")
