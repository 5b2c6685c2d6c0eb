"""The NNX decoder: config validation, packing, KV-cache decoding, remat and scan, the scalar head."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from dsmath_jax.model import (
    CausalLM,
    ConfigError,
    ModelConfig,
    ScalarHeadModel,
    get_params,
    get_preset,
    init_cache,
    set_params,
)
from dsmath_jax.model.layers import apply_rope

TINY = get_preset("tiny")


def rand_ids(seed, shape, vocab=TINY.vocab_size):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


@pytest.fixture(scope="module")
def model():
    return CausalLM(TINY, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------------------------- config
def test_presets_match_the_paper():
    p7 = get_preset("deepseekmath_7b")
    assert (p7.num_layers, p7.d_model, p7.num_heads, p7.num_kv_heads, p7.mlp_dim, p7.vocab_size, p7.max_seq_len,
            p7.rope_theta, p7.head_dim) == (30, 4096, 32, 32, 11008, 102400, 4096, 10000.0, 128)
    assert 6.8e9 < p7.num_params() < 7.0e9  # DeepSeek-Coder-7B-v1.5: 6.9B parameters
    p1 = get_preset("deepseek_1_3b")
    assert (p1.num_layers, p1.d_model, p1.num_heads, p1.mlp_dim, p1.vocab_size) == (24, 2048, 16, 5504, 102400)
    # Parameter count against a hand count: per layer 4*d^2 (attention) + 3*d*f (MLP) + 2*d (norms).
    d, f, v, n = 2048, 5504, 102400, 24
    assert p1.num_params() == n * (4 * d * d + 3 * d * f + 2 * d) + d + 2 * d * v


@pytest.mark.parametrize("changes, field", [
    (dict(d_model=100), "d_model=100 is not divisible by ModelConfig.num_heads=8"),
    (dict(num_heads=8, num_kv_heads=3), "num_kv_heads=3 must divide ModelConfig.num_heads=8"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(dtype="float64"), "ModelConfig.dtype"),
    (dict(remat_policy="everything"), "remat_policy"),
])
def test_bad_configs_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        TINY.replace(**changes)


def test_unknown_keys_are_rejected_with_a_hint():
    cfg = ml_collections.ConfigDict(dict(preset="tiny", num_layer=4))
    with pytest.raises(ConfigError, match=r"'num_layer' \(did you mean 'num_layers'\?\)"):
        ModelConfig.from_dict(cfg)
    with pytest.raises(ConfigError, match="unknown model preset 'tinny'.*did you mean 'tiny'"):
        ModelConfig.from_dict({"preset": "tinny"})
    with pytest.raises(ConfigError, match="missing required field"):
        ModelConfig.from_dict({"d_model": 64})
    assert ModelConfig.from_dict(dict(preset="tiny", num_layers=3)).num_layers == 3


def test_hf_config_round_trip():
    cfg = get_preset("deepseekmath_7b")
    again = ModelConfig.from_hf_config(cfg.to_hf_config())
    assert again == cfg
    with pytest.raises(ConfigError, match="rope scaling 'yarn'"):
        ModelConfig.from_hf_config({**cfg.to_hf_config(), "rope_scaling": {"type": "yarn", "factor": 4}})


# ---------------------------------------------------------------------------------------------- layers
def test_rope_matches_the_rotation_formula():
    """Each pair (j, j + D/2) is rotated by angle pos * theta^(-2j/D) (RoFormer, Eq. 34)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 2, 8)).astype(np.float32)
    pos = np.array([[0, 5, 17]])
    got = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(pos), 10000.0))
    want = np.empty_like(x)
    for t in range(3):
        for j in range(4):
            a = pos[0, t] * 10000.0 ** (-2 * j / 8)
            c, s = np.cos(a), np.sin(a)
            x1, x2 = x[0, t, :, j], x[0, t, :, j + 4]
            want[0, t, :, j] = x1 * c - x2 * s
            want[0, t, :, j + 4] = x2 * c + x1 * s
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_forward_matches_a_numpy_reference(model):
    """One forward pass re-computed in plain numpy from the parameters (MHA/GQA, RMSNorm, SwiGLU)."""
    p = jax.tree.map(np.asarray, get_params(model))
    ids = np.asarray(rand_ids(1, (2, 7)))
    cfg = TINY

    def rms(x, w):
        return w * x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.rms_norm_eps)

    def rope(x):  # x [b, t, h, d]
        half = cfg.head_dim // 2
        freq = cfg.rope_theta ** (-np.arange(half) * 2 / cfg.head_dim)
        ang = np.arange(x.shape[1])[:, None] * freq
        c, s = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
        return np.concatenate([x[..., :half] * c - x[..., half:] * s, x[..., half:] * c + x[..., :half] * s], -1)

    h = p["decoder"]["embed"][ids]
    group = cfg.num_heads // cfg.num_kv_heads
    for i in range(cfg.num_layers):
        lp = p["decoder"]["layers"][i]
        x = rms(h, lp["attn_norm"]["scale"])
        q = rope(np.einsum("btd,dhk->bthk", x, lp["attn"]["q_proj"]))
        k = np.repeat(rope(np.einsum("btd,dhk->bthk", x, lp["attn"]["k_proj"])), group, axis=2)
        v = np.repeat(np.einsum("btd,dhk->bthk", x, lp["attn"]["v_proj"]), group, axis=2)
        s = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(cfg.head_dim)
        s = np.where(np.tril(np.ones((7, 7), bool)), s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        h = h + np.einsum("bqhk,hkd->bqd", np.einsum("bhqs,bshk->bqhk", w, v), lp["attn"]["o_proj"])
        x = rms(h, lp["mlp_norm"]["scale"])
        g, u = x @ lp["mlp"]["gate_proj"], x @ lp["mlp"]["up_proj"]
        h = h + (g / (1 + np.exp(-g)) * u) @ lp["mlp"]["down_proj"]
    want = rms(h, p["decoder"]["final_norm"]["scale"]) @ p["lm_head"]
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), want, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- packing
def test_packed_sequences_equal_separate_documents(model):
    a, b, c = rand_ids(2, (1, 5)), rand_ids(3, (1, 7)), rand_ids(4, (1, 3))
    packed = jnp.concatenate([a, b, c, jnp.zeros((1, 1), jnp.int32)], axis=1)
    segments = jnp.asarray([[1] * 5 + [2] * 7 + [3] * 3 + [0]])
    logits = model(packed, segment_ids=segments)
    start = 0
    for doc in (a, b, c):
        n = doc.shape[1]
        np.testing.assert_allclose(logits[:, start:start + n], model(doc), atol=1e-5)
        start += n
    # Without segment ids the second document would see the first: the logits differ.
    assert np.abs(np.asarray(model(packed)[:, 5:12] - model(b))).max() > 1e-3


# ---------------------------------------------------------------------------------------------- cache
@pytest.mark.parametrize("padding", ["left", "right"])
def test_cached_decoding_equals_full_forward(model, padding):
    """Prefill a padded batch of prompts of different lengths, decode 6 tokens one by one into the
    cache, and compare every logit with a full forward pass over each row's real tokens."""
    lengths, new, width = [3, 7, 5], 6, 7
    rows = [np.asarray(rand_ids(10 + i, (n + new,)))[None] for i, n in enumerate(lengths)]
    prompt = np.zeros((3, width), np.int32)
    seg = np.zeros((3, width), np.int32)
    for i, n in enumerate(lengths):
        sl = slice(width - n, width) if padding == "left" else slice(0, n)
        prompt[i, sl] = rows[i][0, :n]
        seg[i, sl] = 1
    cache = init_cache(TINY, batch=3, max_len=width + new)
    step = jax.jit(lambda ids, seg, cache: model(ids, segment_ids=seg, cache=cache))
    logits, cache = step(jnp.asarray(prompt), jnp.asarray(seg), cache)
    decoded = []
    for t in range(new):
        token = np.array([[r[0, n + t]] for r, n in zip(rows, lengths)], np.int32)
        out, cache = step(jnp.asarray(token), jnp.ones((3, 1), jnp.int32), cache)
        decoded.append(np.asarray(out[:, 0]))
    decoded = np.stack(decoded, axis=1)  # [3, new, vocab]
    np.testing.assert_array_equal(np.asarray(cache.next_positions), np.array(lengths) + new)
    for i, n in enumerate(lengths):
        full = np.asarray(model(jnp.asarray(rows[i])))[0]
        last = width - 1 if padding == "left" else n - 1
        np.testing.assert_allclose(np.asarray(logits[i, last]), full[n - 1], atol=1e-5)
        np.testing.assert_allclose(decoded[i], full[n:n + new], atol=1e-5)


def test_cache_is_preallocated_and_bf16_when_computing_in_bf16():
    cfg = TINY.replace(dtype="bfloat16")
    cache = init_cache(cfg, batch=2, max_len=16)
    assert cache.k.shape == (2, 2, 4, 16, 8) and cache.k.dtype == jnp.bfloat16  # [layers, batch, kv, len, dim]


# ---------------------------------------------------------------------------------------------- remat / scan
def stacked(params, num_layers):
    """The plain model's per-layer params stacked into the scanned layout."""
    out = dict(params, decoder=dict(params["decoder"]))
    out["decoder"]["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs),
                                            *[params["decoder"]["layers"][i] for i in range(num_layers)])
    return out


def loss_and_grads(m, ids):
    graphdef, params = nnx.split(m, nnx.Param)

    def loss(p):
        logits = nnx.merge(graphdef, p)(ids)
        return -jnp.mean(jax.nn.log_softmax(logits)[:, :-1].max(-1))

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("variant", [dict(remat_policy="full"), dict(remat_policy="dots"),
                                     dict(remat_policy="save_attention"), dict(scan_layers=True),
                                     dict(scan_layers=True, remat_policy="dots_no_batch")])
def test_remat_and_scan_equal_the_plain_model(model, variant):
    ids = rand_ids(5, (2, 12))
    other = CausalLM(TINY.replace(**variant), rngs=nnx.Rngs(1))
    params = get_params(model)
    set_params(other, stacked(params, TINY.num_layers) if variant.get("scan_layers") else params)
    np.testing.assert_allclose(np.asarray(other(ids)), np.asarray(model(ids)), atol=1e-5)
    (l1, g1), (l2, g2) = loss_and_grads(model, ids), loss_and_grads(other, ids)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    g1 = nnx.to_pure_dict(g1)
    g2 = nnx.to_pure_dict(g2)
    if variant.get("scan_layers"):
        g1 = stacked(g1, TINY.num_layers)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)
    # The scanned model's cache path agrees too.
    cache = init_cache(other.config, 2, 12)
    cached, _ = other(ids, cache=cache)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(model(ids)), atol=1e-5)


def test_remat_saves_memory_in_the_compiled_backward():
    """The remat policy changes what the compiled gradient keeps: 'full' needs less temp memory."""
    cfg = TINY.replace(num_layers=4, d_model=128, mlp_dim=512, num_heads=8, num_kv_heads=8)
    ids = rand_ids(6, (4, 128), cfg.vocab_size)

    def temp_bytes(policy):
        m = CausalLM(cfg.replace(remat_policy=policy), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(m, nnx.Param)
        f = jax.jit(jax.grad(lambda p: nnx.merge(graphdef, p)(ids).mean()))
        return f.lower(params).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes("full") < temp_bytes("none")


# ---------------------------------------------------------------------------------------------- scalar head
def test_scalar_head_reuses_the_trunk(model):
    rm = ScalarHeadModel.from_lm(model, rngs=nnx.Rngs(3))
    ids = rand_ids(7, (2, 9))
    scores = rm(ids)
    assert scores.shape == (2, 9) and scores.dtype == jnp.float32
    hidden, _ = model.decoder(ids)
    head = np.asarray(rm.head[...])
    np.testing.assert_allclose(np.asarray(scores), np.asarray(hidden) @ head, atol=1e-5)
    # The trunk is a copy: training the reward model does not move the policy.
    assert rm.decoder is not model.decoder
    np.testing.assert_array_equal(np.asarray(rm.decoder.embed[...]), np.asarray(model.decoder.embed[...]))
    fresh = ScalarHeadModel(TINY, rngs=nnx.Rngs(0))
    assert fresh(ids).shape == (2, 9)


def test_bf16_compute_stays_close_to_fp32(model):
    ids = rand_ids(8, (2, 16))
    bf = CausalLM(TINY.replace(dtype="bfloat16"), rngs=nnx.Rngs(1))
    set_params(bf, get_params(model))
    out = bf(ids)
    assert out.dtype == jnp.float32  # logits are float32 whatever the compute dtype
    ref = np.asarray(model(ids))
    assert np.abs(np.asarray(out) - ref).max() < 0.05 * np.abs(ref).max()
