"""Packed causal attention (`dsmath_jax.model.attention`): the XLA path and the splash kernel (Pallas
interpret mode on CPU) against a float64 numpy reference, gradients, the kernel under a mesh, dispatch by
platform, and a compile-only check for abstract TPU devices that no O(seq^2) buffer exists."""

import logging
import math
import os

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # libtpu takes a process lock when it loads

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dsmath_jax.model import attention
from dsmath_jax.model.attention import (
    IMPLEMENTATIONS,
    packed_attention,
    resolve_implementation,
    segment_runs,
    splash_block_size,
    splash_specs,
)
from dsmath_jax.parallel import DEFAULT_RULES, make_mesh

# ------------------------------------------------------------------------------------------------ helpers


def reference_attention(q, k, v, segment_ids) -> np.ndarray:
    """Packed causal softmax attention in float64 numpy: query i sees key j iff j <= i and same segment.

    q: [batch, seq, heads, d]; k, v: [batch, seq, kv_heads, d] -> [batch, seq, heads, d] float64.
    """
    q, k, v = (np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in (q, k, v))
    segment_ids = np.asarray(segment_ids)
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    seq = q.shape[1]
    allowed = np.tril(np.ones((seq, seq), bool))[None] & (segment_ids[:, :, None] == segment_ids[:, None, :])
    scores = np.where(allowed[:, None], scores, -np.inf)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", probs, v)


def packed_segments(seq: int, rows: int = 2, seed: int = 0) -> np.ndarray:
    """[rows, seq] int32 segment ids: row 0 packs several documents then padding (0); row 1 is one
    document over the whole row; further rows are random packings."""
    rng = np.random.default_rng(seed)
    out = np.zeros((rows, seq), np.int32)
    lengths = [(37 * seq) // 256, (90 * seq) // 256, (61 * seq) // 256]  # 188/256 of the row, then padding
    start = 0
    for doc, n in enumerate(lengths, 1):
        out[0, start:start + n] = doc
        start += n
    if rows > 1:
        out[1] = 1
    for r in range(2, rows):
        cuts = np.sort(rng.choice(np.arange(1, seq), size=3, replace=False))
        bounds = [0, *cuts]
        for doc, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]), 1):
            out[r, a:b] = doc  # the last stretch (cuts[-1]..seq) stays padding
    return out


def random_qkv(batch, seq, heads, kv_heads, head_dim, dtype=jnp.float32, seed=0):
    """Standard-normal q [batch, seq, heads, d] and k, v [batch, seq, kv_heads, d] in `dtype`."""
    rng = np.random.default_rng(seed)
    shapes = [(batch, seq, heads, head_dim)] + [(batch, seq, kv_heads, head_dim)] * 2
    return tuple(jnp.asarray(rng.standard_normal(shape, np.float32), dtype) for shape in shapes)


def splash(q, k, v, segment_ids, **kw):
    return packed_attention(q, k, v, segment_ids, implementation="splash", interpret=True, **kw)


def xla(q, k, v, segment_ids):
    return packed_attention(q, k, v, segment_ids, implementation="xla")


# ------------------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("heads, kv_heads", [(8, 2), (4, 4)], ids=["gqa", "mha"])
@pytest.mark.parametrize("impl", ["xla", "splash"])
def test_matches_reference_fp32(impl, heads, kv_heads):
    seq = 256
    q, k, v = random_qkv(2, seq, heads, kv_heads, 64)
    segment_ids = jnp.asarray(packed_segments(seq))
    fn = jax.jit(splash if impl == "splash" else xla)
    out = fn(q, k, v, segment_ids)
    assert out.shape == q.shape and out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(np.asarray(out), reference_attention(q, k, v, segment_ids), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "splash"])
def test_matches_reference_bf16(impl):
    seq = 128
    q, k, v = random_qkv(2, seq, 8, 2, 64, dtype=jnp.bfloat16, seed=1)
    segment_ids = jnp.asarray(packed_segments(seq, seed=1))
    out = jax.jit(splash if impl == "splash" else xla)(q, k, v, segment_ids)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), reference_attention(q, k, v, segment_ids),
                               rtol=2e-2, atol=2e-2)


def test_xla_path_is_todays_masked_attention():
    """The XLA path is exactly the former model code: segment mask + jax.nn.dot_product_attention."""
    seq = 64
    q, k, v = random_qkv(3, seq, 4, 2, 16, seed=2)
    segment_ids = jnp.asarray(packed_segments(seq, rows=3, seed=2))
    causal = jnp.tril(jnp.ones((seq, seq), bool))
    mask = (causal[None] & (segment_ids[:, :, None] == segment_ids[:, None, :]))[:, None]
    before = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    np.testing.assert_array_equal(np.asarray(xla(q, k, v, segment_ids)), np.asarray(before))


def test_splash_pads_sequences_that_are_not_a_multiple_of_128():
    seq = 200  # padded to 256 inside, sliced back
    q, k, v = random_qkv(3, seq, 4, 2, 64, seed=3)
    segment_ids = jnp.asarray(packed_segments(seq, rows=3, seed=3))
    out = jax.jit(splash)(q, k, v, segment_ids)
    assert out.shape == q.shape
    np.testing.assert_allclose(np.asarray(out), reference_attention(q, k, v, segment_ids), rtol=1e-4, atol=1e-5)


def test_splash_block_sizes():
    assert splash_block_size(4096) == (512, 4096)
    assert splash_block_size(2048) == (512, 2048)
    assert splash_block_size(384) == (128, 384)
    assert splash_block_size(640) == (128, 640)
    assert splash_block_size(768) == (256, 768)
    assert splash_block_size(100) == (128, 128)
    assert splash_block_size(1000) == (512, 1024)
    assert splash_block_size(4096, 256) == (256, 4096)
    assert splash_block_size(300, 256) == (256, 512)
    with pytest.raises(ValueError, match="block_size=96 must be a positive multiple of 128"):
        splash_block_size(256, 96)


# ------------------------------------------------------------------------------------------------ gradients


def test_splash_gradients_match_xla():
    seq = 128
    q, k, v = random_qkv(2, seq, 8, 2, 64, seed=4)
    segment_ids = jnp.asarray(packed_segments(seq, seed=4))
    cotangent = jnp.asarray(np.random.default_rng(5).standard_normal(q.shape, np.float32))

    def grads(fn):
        def loss(q, k, v):
            return jnp.sum(fn(q, k, v, segment_ids) * cotangent)

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

    for name, got, want in zip(("dq", "dk", "dv"), grads(splash), grads(xla)):
        scale = float(jnp.max(jnp.abs(want)))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5 * scale, err_msg=name)


def test_splash_under_remat_and_scan():
    """As the model calls it: inside jax.checkpoint inside lax.scan over layers, under value_and_grad."""
    seq = 128
    q, k, v = random_qkv(2, seq, 4, 2, 64, seed=6)
    segment_ids = jnp.asarray(packed_segments(seq, seed=6))
    weights = jnp.stack([jnp.eye(64), 0.5 * jnp.eye(64)])  # two "layers"

    def loss(fn, weights):
        def layer(x, w):
            return jax.checkpoint(lambda x: fn(x @ w, k, v, segment_ids))(x), None
        out, _ = jax.lax.scan(layer, q, weights)
        return jnp.sum(out ** 2)

    got = jax.jit(jax.value_and_grad(lambda w: loss(splash, w)))(weights)
    want = jax.jit(jax.value_and_grad(lambda w: loss(xla, w)))(weights)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------ mesh


def test_splash_under_mesh_matches_single_device():
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    seq = 128
    q, k, v = random_qkv(4, seq, 8, 2, 64, seed=7)
    segment_ids = jnp.asarray(packed_segments(seq, rows=4, seed=7))
    q_spec, kv_spec, seg_spec = splash_specs(q.shape, k.shape, mesh, DEFAULT_RULES)
    assert q_spec == kv_spec == P(("data", "fsdp"), None, "tensor", None) and seg_spec == P(("data", "fsdp"), None)
    placed = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in
              ((q, q_spec), (k, kv_spec), (v, kv_spec), (segment_ids, seg_spec))]
    sharded = jax.jit(lambda *a: splash(*a, mesh=mesh))(*placed)
    single = jax.jit(splash)(q, k, v, segment_ids)
    assert sharded.sharding.spec == q_spec
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sharded), reference_attention(q, k, v, segment_ids), rtol=1e-4, atol=1e-5)

    def grads(mesh, *args):
        def loss(q, k, v, s):
            return jnp.sum(splash(q, k, v, s, mesh=mesh) ** 2)

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)

    for got, want in zip(grads(mesh, *placed), grads(None, q, k, v, segment_ids)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_splash_specs_keep_query_groups_with_their_kv_head(caplog):
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    # One key/value head cannot split over tensor=2: query heads stay whole too (with a warning).
    with caplog.at_level(logging.WARNING, logger=attention.__name__):
        q_spec, kv_spec, _ = splash_specs((4, 128, 8, 64), (4, 128, 1, 64), mesh, DEFAULT_RULES)
    assert q_spec == kv_spec == P(("data", "fsdp"), None, None, None)
    assert "heads are split over ()" in caplog.text
    # A batch of 2 does not split over fsdp=4: replicated over it.
    q_spec, _, seg_spec = splash_specs((2, 128, 8, 64), (2, 128, 2, 64), mesh, DEFAULT_RULES)
    assert q_spec == P("data", None, "tensor", None) and seg_spec == P("data", None)


# ------------------------------------------------------------------------------------------------ dispatch


@pytest.mark.parametrize("impl, platform, expected", [
    ("auto", "tpu", "splash"), (None, "tpu", "splash"), ("auto", "gpu", "cudnn"), ("auto", "cuda", "cudnn"),
    ("auto", "rocm", "xla"), ("auto", "cpu", "xla"), (None, "cpu", "xla"),
    ("xla", "tpu", "xla"), ("splash", "cpu", "splash"), ("cudnn", "tpu", "cudnn"),
])
def test_resolve_implementation(impl, platform, expected):
    assert resolve_implementation(impl, platform) == expected


def test_resolve_implementation_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"unknown attention implementation 'flash'.*'auto', 'xla', 'cudnn', "
                                         r"'splash'"):
        resolve_implementation("flash", "tpu")
    assert IMPLEMENTATIONS == ("auto", "xla", "cudnn", "splash")


def test_auto_on_cpu_is_xla_and_env_overrides(monkeypatch):
    seq = 128
    q, k, v = random_qkv(1, seq, 2, 1, 64, seed=8)
    segment_ids = jnp.asarray(packed_segments(seq, rows=1, seed=8))
    want = xla(q, k, v, segment_ids)
    np.testing.assert_array_equal(np.asarray(packed_attention(q, k, v, segment_ids)), np.asarray(want))
    with pytest.raises(ValueError, match="'splash' is a TPU kernel but the platform is 'cpu'"):
        packed_attention(q, k, v, segment_ids, implementation="splash")
    monkeypatch.setenv(attention.ENV_IMPLEMENTATION, "splash")
    monkeypatch.setenv(attention.ENV_SPLASH_INTERPRET, "1")
    got = packed_attention(q, k, v, segment_ids)  # "auto" -> splash, in interpret mode
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_shape_errors():
    q, k, v = random_qkv(1, 16, 6, 4, 8)
    with pytest.raises(ValueError, match=r"query heads \(6\) must be a multiple of key/value heads \(4\)"):
        packed_attention(q, k, v, jnp.ones((1, 16), jnp.int32))
    q, k, v = random_qkv(1, 16, 4, 2, 8)
    with pytest.raises(ValueError, match=r"segment_ids must be \[batch=1, seq=16\]"):
        packed_attention(q, k, v, jnp.ones((16,), jnp.int32))


# ------------------------------------------------------------------------------------------------ cuDNN


def test_segment_runs_for_cudnn():
    segment_ids = jnp.asarray([[1, 1, 2, 2, 2, 3, 0, 0],
                               [1, 1, 1, 1, 1, 1, 1, 1],
                               [0, 0, 0, 0, 0, 0, 0, 0],
                               [1, 2, 3, 4, 5, 0, 0, 0]], jnp.int32)
    offsets, lengths = segment_runs(segment_ids, max_segments=3)
    np.testing.assert_array_equal(np.asarray(offsets), [[0, 2, 5, -1], [0, -1, -1, -1], [0, -1, -1, -1],
                                                        [0, 1, 2, -1]])
    # The trailing padding joins the last document; runs past the bound merge into the last slot.
    np.testing.assert_array_equal(np.asarray(lengths), [[2, 3, 3], [8, -1, -1], [8, -1, -1], [1, 1, 6]])


def test_cudnn_falls_back_to_xla_without_a_segment_bound(caplog):
    q, k, v = random_qkv(2, 64, 4, 2, 16, seed=9)
    segment_ids = jnp.asarray(packed_segments(64, seed=9))
    with caplog.at_level(logging.WARNING, logger=attention.__name__):
        out = packed_attention(q, k, v, segment_ids, implementation="cudnn")
    assert "falling back to the XLA path" in caplog.text
    np.testing.assert_array_equal(np.asarray(out), np.asarray(xla(q, k, v, segment_ids)))


@pytest.mark.gpu
@pytest.mark.parametrize("max_segments", [1, 4])
def test_cudnn_matches_xla_on_gpu(max_segments):
    """cuDNN flash attention over packed rows (needs a Hopper GPU) against the XLA path, values and grads."""
    if jax.default_backend() != "gpu":
        pytest.skip("no GPU backend")
    seq = 256
    q, k, v = random_qkv(2, seq, 8, 2, 64, dtype=jnp.bfloat16, seed=10)
    segment_ids = packed_segments(seq, seed=10)
    if max_segments == 1:
        segment_ids[0] = np.where(segment_ids[0] > 0, 1, 0)  # one document, then padding
    segment_ids = jnp.asarray(segment_ids)
    real = np.asarray(segment_ids != 0)[:, :, None, None]

    def run(impl):
        def fn(q, k, v):
            return packed_attention(q, k, v, segment_ids, implementation=impl, max_segments=max_segments)

        def loss(q, k, v):
            return jnp.sum(jnp.where(real, fn(q, k, v), 0).astype(jnp.float32) ** 2)

        return jax.jit(fn)(q, k, v), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

    (out, grads), (want, want_grads) = run("cudnn"), run("xla")

    def f32(x):
        return np.asarray(x, np.float32)

    np.testing.assert_allclose(np.where(real, f32(out), 0), np.where(real, f32(want), 0), rtol=2e-2, atol=2e-2)
    for got, ref in zip(grads, want_grads):
        np.testing.assert_allclose(f32(got), f32(ref), rtol=5e-2, atol=5e-2 * float(np.abs(f32(ref)).max()))


# ------------------------------------------------------------------------------------------------ TPU compile


def _tpu_topology(name: str = "v5p:2x2x1"):
    """Abstract TPU devices from libtpu (compile-only: works on a CPU host, even with JAX_PLATFORMS=cpu)."""
    from jax.experimental import topologies
    try:
        return topologies.get_topology_desc(platform="tpu", topology_name=name)
    except Exception as exc:  # noqa: BLE001 - libtpu missing or too old: no TPU compiler on this host
        pytest.skip(f"no TPU compiler: jax.experimental.topologies.get_topology_desc(platform='tpu', "
                    f"topology_name={name!r}) failed: {type(exc).__name__}: {exc}")


def test_compiles_for_tpu_without_quadratic_buffers():
    """On 4 abstract v5p devices (fsdp=2, tensor=2), "auto" compiles the splash kernel: forward and gradient
    together need far less temporary memory than one device's f32 [batch, heads, seq, seq] scores, which
    the XLA implementation of the same function does allocate."""
    topology = _tpu_topology()
    mesh = make_mesh({"fsdp": 2, "tensor": 2}, devices=topology.devices)
    batch, seq, heads, kv_heads, head_dim = 4, 2048, 8, 4, 128
    act = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
    args = (jax.ShapeDtypeStruct((batch, seq, heads, head_dim), jnp.bfloat16, sharding=act),
            jax.ShapeDtypeStruct((batch, seq, kv_heads, head_dim), jnp.bfloat16, sharding=act),
            jax.ShapeDtypeStruct((batch, seq, kv_heads, head_dim), jnp.bfloat16, sharding=act),
            jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=NamedSharding(mesh, P(("data", "fsdp"), None))))

    def compiled(impl):
        def loss(q, k, v, segment_ids):
            out = packed_attention(q, k, v, segment_ids, implementation=impl, mesh=mesh)
            return jnp.sum(out.astype(jnp.float32) ** 2), out
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)).lower(*args).compile()

    splash_program = compiled("auto")
    assert "tpu_custom_call" in splash_program.as_text()  # the Mosaic kernels
    local_scores = (batch // 2) * (heads // 2) * seq * seq * 4  # one device's f32 [b, h, seq, seq]
    splash_temp = splash_program.memory_analysis().temp_size_in_bytes
    xla_temp = compiled("xla").memory_analysis().temp_size_in_bytes
    print(f"temp per device: splash {splash_temp / 2**20:.1f} MiB, xla {xla_temp / 2**20:.1f} MiB, "
          f"f32 scores {local_scores / 2**20:.0f} MiB")
    assert splash_temp < local_scores / 4
    assert xla_temp >= local_scores
