"""Log-probs, entropies and the LM loss from the LM head in blocks of positions (`dsmath_jax.model.logprobs`):
values and gradients equal the unchunked computation (and a float64 numpy reference), with packed rows,
sequence lengths that blocks do not divide, bf16 compute and a sharded mesh; the full logits never exist."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsmath_jax.model import CausalLM, get_preset
from dsmath_jax.model.logprobs import token_logprobs
from dsmath_jax.parallel import create_sharded, make_mesh
from dsmath_jax.parallel.mesh import activation_sharding
from dsmath_jax.train.step import lm_loss


def numpy_stats(hidden, w, targets):
    logits = np.einsum("btd,dv->btv", np.asarray(hidden, np.float64), np.asarray(w, np.float64))
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    logp = np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0] - logz
    probs = np.exp(logits - logz[..., None])
    return logp, logz - (probs * logits).sum(-1)


@pytest.mark.parametrize("seq,chunk", [(24, 8), (23, 8), (16, 0), (16, 64), (17, 1)])
def test_chunked_values_match_numpy(seq, chunk):
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, seq, 16)).astype(np.float32)
    w = rng.normal(size=(16, 50)).astype(np.float32) * 0.3
    targets = rng.integers(0, 50, (3, seq))
    logp, ent = token_logprobs(jnp.asarray(hidden), jnp.asarray(w), jnp.asarray(targets), chunk=chunk, entropy=True)
    want_logp, want_ent = numpy_stats(hidden, w, targets)
    np.testing.assert_allclose(np.asarray(logp), want_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent), want_ent, rtol=1e-5, atol=1e-5)
    assert token_logprobs(jnp.asarray(hidden), jnp.asarray(w), jnp.asarray(targets), chunk=chunk)[1] is None


def test_chunked_gradients_equal_the_unchunked_ones():
    rng = np.random.default_rng(1)
    hidden = jnp.asarray(rng.normal(size=(2, 37, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(16, 40)) * 0.3, jnp.float32)
    targets = jnp.asarray(rng.integers(0, 40, (2, 37)))
    weights = jnp.asarray(rng.random((2, 37)), jnp.float32)

    def objective(h, w, chunk):
        logp, ent = token_logprobs(h, w, targets, chunk=chunk, entropy=True)
        return (logp * weights).sum() + 0.1 * (ent * weights).sum()

    full = jax.grad(objective, argnums=(0, 1))(hidden, w, 0)
    for chunk in (4, 8, 36):
        got = jax.grad(objective, argnums=(0, 1))(hidden, w, chunk)
        for a, b in zip(got, full):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_chunked_blocks_never_hold_the_full_logits():
    """The compiled program's temporaries stay near one block of logits, not [rows, seq, vocab]."""
    hidden = jax.ShapeDtypeStruct((4, 2048, 64), jnp.float32)
    w = jax.ShapeDtypeStruct((64, 8192), jnp.float32)
    targets = jax.ShapeDtypeStruct((4, 2048), jnp.int32)
    full_logits = 4 * 2048 * 8192 * 4

    def temp(chunk):
        f = jax.jit(jax.grad(lambda h, w, t: token_logprobs(h, w, t, chunk=chunk)[0].sum(), argnums=(0, 1)))
        return f.lower(hidden, w, targets).compile().memory_analysis().temp_size_in_bytes

    assert temp(0) >= full_logits
    assert temp(128) < full_logits / 4


@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=pytest.mark.slow)])  # CI time: fp32 in CI
def test_the_model_loss_and_gradient_do_not_depend_on_the_chunk(dtype):
    """lm_loss with packed segments on an FSDP x tensor mesh: chunk 8 vs unchunked, loss and gradients."""
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 256, (8, 41)).astype(np.int32)
    segments = np.ones((8, 40), np.int32)
    segments[:, 17:] = 2  # two documents per row
    segments[:, 35:] = 0  # and padding
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": (segments > 0).astype(np.float32),
             "segment_ids": segments}

    def loss_and_grad(chunk):
        cfg = get_preset("tiny", dtype=dtype, logits_chunk=chunk)
        model = create_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)), mesh)
        graphdef, params = nnx.split(model, nnx.Param)

        def f(p):
            with activation_sharding(mesh):
                total, weight, _ = lm_loss(nnx.merge(graphdef, p), batch)
            return total / weight

        return jax.jit(jax.value_and_grad(f))(params)

    (l0, g0), (l8, g8) = loss_and_grad(0), loss_and_grad(8)
    np.testing.assert_allclose(float(l8), float(l0), rtol=1e-5 if dtype == "float32" else 2e-3)
    for a, b in zip(jax.tree.leaves(g8), jax.tree.leaves(g0)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        if dtype == "float32":
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
        else:  # bf16 products summed in another order: within a few bf16 ulps of the gradient's scale
            assert np.abs(a - b).max() <= 0.03 * np.abs(b).max(), (np.abs(a - b).max(), np.abs(b).max())


def test_model_logprobs_equal_the_log_softmax_of_its_logits():
    cfg = get_preset("tiny", logits_chunk=8)
    model = CausalLM(cfg, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(3)
    tokens = jnp.asarray(rng.integers(0, 256, (2, 30)), jnp.int32)
    logp, ent = model.token_logprobs(tokens[:, :-1], tokens[:, 1:], entropy=True)
    logits = np.asarray(model(tokens[:, :-1]), np.float64)
    logz = np.log(np.exp(logits).sum(-1))
    want = np.take_along_axis(logits, np.asarray(tokens[:, 1:])[..., None], -1)[..., 0] - logz
    np.testing.assert_allclose(np.asarray(logp), want, rtol=1e-5, atol=1e-5)
    probs = np.exp(logits - logz[..., None])
    np.testing.assert_allclose(np.asarray(ent), logz - (probs * logits).sum(-1), rtol=1e-5, atol=1e-5)


def test_a_negative_chunk_is_an_error():
    with pytest.raises(ValueError, match="logits_chunk"):
        get_preset("tiny", logits_chunk=-1)
    with pytest.raises(ValueError, match="chunk"):
        token_logprobs(jnp.zeros((1, 4, 2)), jnp.zeros((2, 3)), jnp.zeros((1, 4), jnp.int32), chunk=-2)
