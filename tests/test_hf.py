"""Hugging Face interop: parity with `transformers.LlamaForCausalLM` on random weights."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from dsmath_jax.model import CheckpointFormatError, ConfigError, load_hf, save_hf  # noqa: E402
from dsmath_jax.model.transformer import init_cache  # noqa: E402
from dsmath_jax.parallel import make_mesh  # noqa: E402

HF_KW = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
             tie_word_embeddings=False, initializer_range=0.2, bos_token_id=1, eos_token_id=2)


def make_hf_model(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**{**HF_KW, **overrides})
    return transformers.LlamaForCausalLM(cfg).eval().float()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    model = make_hf_model()
    path = tmp_path_factory.mktemp("hf") / "llama"
    model.save_pretrained(path, safe_serialization=True)
    return path, model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids))).logits.float().numpy()


def greedy(model, prompt, new_tokens):
    """Greedy decoding with our KV cache: prefill the prompt, then one token per step."""
    cache = init_cache(model.config, prompt.shape[0], prompt.shape[1] + new_tokens)
    step = jax.jit(lambda ids, cache: model(ids, cache=cache))
    logits, cache = step(prompt, cache)
    out = []
    token = jnp.argmax(logits[:, -1], axis=-1)
    for _ in range(new_tokens):
        out.append(token)
        logits, cache = step(token[:, None], cache)
        token = jnp.argmax(logits[:, -1], axis=-1)
    return np.stack(out, axis=1)


def test_logits_and_greedy_match_transformers(hf_dir):
    path, hf = hf_dir
    ours = load_hf(path)
    assert ours.config.num_kv_heads == 4 and ours.config.vocab_size == 256
    ids = np.random.default_rng(0).integers(0, 256, (3, 40))
    ref = hf_logits(hf, ids)
    got = np.asarray(ours(jnp.asarray(ids)))
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)

    prompt = ids[:2, :8]
    with torch.no_grad():
        hf_out = hf.generate(torch.tensor(prompt), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                             pad_token_id=0, eos_token_id=None)[:, 8:].numpy()
    np.testing.assert_array_equal(greedy(ours, jnp.asarray(prompt), 32), hf_out)


def test_export_loads_back_into_transformers(hf_dir, tmp_path):
    path, hf = hf_dir
    ours = load_hf(path, scan_layers=True)  # the stacked layout exports to the same per-layer tensors
    out = save_hf(ours, tmp_path / "export", max_shard_bytes=40_000)  # force a sharded checkpoint
    assert (tmp_path / "export" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "export").glob("model-*-of-*.safetensors"))) > 1
    again = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = np.random.default_rng(1).integers(0, 256, (2, 24))
    np.testing.assert_allclose(hf_logits(again, ids), hf_logits(hf, ids), atol=1e-5, rtol=0)
    for name, tensor in hf.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[name].numpy(), tensor.numpy(), err_msg=name)
    # ... and the sharded export loads into ours as well.
    np.testing.assert_allclose(np.asarray(load_hf(out)(jnp.asarray(ids))), hf_logits(hf, ids), atol=1e-4, rtol=0)


def test_load_onto_mesh_and_bf16_export(hf_dir, tmp_path):
    path, hf = hf_dir
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    ours = load_hf(path, mesh=mesh)
    q = ours.decoder.layers[0].attn.q_proj[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    ids = np.random.default_rng(2).integers(0, 256, (4, 16))
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(ids))), hf_logits(hf, ids), atol=1e-4, rtol=0)

    save_hf(ours, tmp_path / "bf16", dtype=jnp.bfloat16)  # dtype objects as well as names
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "bf16")
    w = back.model.layers[1].mlp.down_proj.weight
    assert w.dtype == torch.bfloat16
    ref = hf.model.layers[1].mlp.down_proj.weight.detach().to(torch.bfloat16)
    assert torch.equal(w, ref)


def test_dtypes_as_objects_or_names(hf_dir):
    path, _ = hf_dir
    model = load_hf(path, dtype=jnp.bfloat16, param_dtype=np.float32)
    assert (model.config.dtype, model.config.param_dtype) == ("bfloat16", "float32")
    assert model.decoder.layers[0].attn.q_proj[...].dtype == jnp.float32
    assert load_hf(path, dtype=jnp.dtype("float16")).config.dtype == "float16"
    with pytest.raises(ConfigError,
                       match=r"ModelConfig.dtype=.*int32.* is not one of \['bfloat16', 'float16', 'float32'\]"):
        load_hf(path, dtype=jnp.int32)


def test_interleaved_rotary_layout(hf_dir, tmp_path):
    """A checkpoint with q/k rows in Meta's interleaved layout loads with rope_layout='interleaved'."""
    from safetensors.torch import save_file

    path, hf = hf_dir
    heads = {"q_proj": 8, "k_proj": 4}
    head_dim = 8

    def to_interleaved(w, n):  # the inverse of the permutation in transformers' Llama conversion script
        return w.view(n, 2, head_dim // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)

    def hf_permute(w, n):  # transformers' convert_llama_weights_to_hf.permute (interleaved -> half)
        return w.view(n, w.shape[0] // n // 2, 2, w.shape[1]).transpose(1, 2).reshape(w.shape)

    state = {k: v.clone().contiguous() for k, v in hf.state_dict().items()}
    for name in list(state):
        for proj, n in heads.items():
            if name.endswith(f"{proj}.weight"):
                meta = to_interleaved(state[name], n).contiguous()
                assert torch.equal(hf_permute(meta, n), state[name])
                state[name] = meta
    out = tmp_path / "meta_layout"
    out.mkdir()
    (out / "config.json").write_text((path / "config.json").read_text())
    save_file(state, out / "model.safetensors")
    ids = np.random.default_rng(3).integers(0, 256, (2, 12))
    ours = load_hf(out, rope_layout="interleaved")
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(ids))), hf_logits(hf, ids), atol=1e-4, rtol=0)
    wrong = load_hf(out)  # the same file read as half-split gives different logits
    assert np.abs(np.asarray(wrong(jnp.asarray(ids))) - hf_logits(hf, ids)).max() > 1e-2


def test_bad_checkpoints_fail_clearly(hf_dir, tmp_path):
    path, _ = hf_dir
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model directory"):
        load_hf(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_hf(tmp_path / "empty")
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 128
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").symlink_to(path / "model.safetensors")
    with pytest.raises(CheckpointFormatError, match=r"mlp.gate_proj.weight.*\(160, 64\).*\(128, 64\)"):
        load_hf(bad)
    cfg = json.loads((path / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        load_hf(bad)
