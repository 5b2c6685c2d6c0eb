"""`dsmath convert`: Hugging Face <-> run directories, checked against `transformers` on random tiny weights."""

import glob
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from dsmath_jax import cli  # noqa: E402
from dsmath_jax.data.tokenizers import HFTokenizer, SentencePieceTokenizer, train_sentencepiece  # noqa: E402
from dsmath_jax.model import CausalLM, ModelConfig, get_params, get_preset  # noqa: E402
from dsmath_jax.train import convert  # noqa: E402
from dsmath_jax.train.checkpoint import Checkpointer  # noqa: E402
from dsmath_jax.train.restore import load_run  # noqa: E402

HF_KW = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
             tie_word_embeddings=False, initializer_range=0.2, bos_token_id=1, eos_token_id=2)
# Models on one device: restoring a run onto a mesh compiles a sharded init (slow on CPU). The sharded path is
# covered by the round trip's first leg, which loads the HF weights onto a mesh and saves them sharded.
FAST = ["--mesh=none"]


def torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(ids, np.int64))).logits.float().numpy()


def write_char_tokenizer(directory):
    """A tiny tokenizer.json (one id per printable character) with bos/eos named in tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{chr(32 + i): 3 + i for i in range(95)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random tiny LlamaForCausalLM saved with save_pretrained, plus a tokenizer.json."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**HF_KW)).eval().float()
    path = tmp_path_factory.mktemp("hf") / "llama"
    model.save_pretrained(path, safe_serialization=True)
    write_char_tokenizer(path)
    return path, model


def our_model(seed):
    cfg = get_preset("tiny", vocab_size=320, initializer_range=0.2)
    return CausalLM(cfg, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as `dsmath sft` writes one: config.json, a trained tokenizer.model, and checkpoints of
    params + optimizer state at steps 2 and 5 (different random weights)."""
    import optax

    root = tmp_path_factory.mktemp("run")
    run = root / "sft_tiny"
    run.mkdir()
    rng = np.random.default_rng(0)
    texts = [f"Question: what is {a} + {b}? Answer: {a} + {b} = {a + b}. The final answer is $\\boxed{{{a + b}}}$."
             for a, b in rng.integers(0, 100, (300, 2))]
    train_sentencepiece(texts, run / "tokenizer", vocab_size=300)
    models = {2: our_model(4), 5: our_model(3)}
    cfg = models[5].config
    (run / "config.json").write_text(json.dumps({
        "model": cfg.to_dict(), "tokenizer": {"path": None, "train_vocab_size": 300},
        "init": {"hf_dir": None, "checkpoint": None}, "train": {"steps": 5, "batch_size": 4}}))
    opt = optax.adamw(1e-3)
    with Checkpointer(run / "checkpoints", async_save=False) as ckpt:
        for step, model in models.items():
            params = get_params(model)
            ckpt.save(step, {"params": params, "opt_state": opt.init(params)},
                      metadata={"step": step, "task": "sft", "model": cfg.to_dict()})
    return run, models


def leftovers(directory):
    return sorted(os.path.basename(p) for p in glob.glob(str(directory / ".*tmp-convert*")))


# ------------------------------------------------------------------------------------------- HF -> run
def test_hf_to_run_matches_transformers(hf_dir, tmp_path):
    path, hf = hf_dir
    out = tmp_path / "run"
    assert cli.main(["convert", f"--from_hf={path}", f"--to_run={out}", "--check_with=transformers", *FAST]) == 0
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no temporary directory left behind
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "checkpoints", "convert_check.json"} <= set(
        os.listdir(out))
    run = json.loads((out / "config.json").read_text())
    assert run["model"]["num_kv_heads"] == 4 and run["model"]["vocab_size"] == 256
    assert run["model"]["param_dtype"] == "float32" and run["model"]["bos_token_id"] == 1
    assert run["convert"]["from_hf"] == str(path)

    check = json.loads((out / "convert_check.json").read_text())
    assert check["passed"] and check["direction"] == "hf_to_run"
    assert [c["name"] for c in check["comparisons"]] == ["ours", "transformers"]
    assert check["comparisons"][0]["max_abs_diff"] == 0.0  # the same weights, read back through Orbax
    assert check["comparisons"][1]["max_abs_diff"] < 1e-4
    assert all(c["greedy_all_equal"] for c in check["comparisons"])
    # The check sequences are deterministic and within the vocabulary.
    ids = np.asarray(check["token_ids"])
    assert ids.shape == (3, 32) and ids.max() < 98 and ids[0, 0] == 1

    model, tok = load_run(str(out))
    assert isinstance(tok, HFTokenizer) and tok.bos_id == 1 and tok.eos_id == 2
    assert tok.encode("1+1") == [3 + ord("1") - 32, 3 + ord("+") - 32, 3 + ord("1") - 32]
    ids = np.random.default_rng(5).integers(0, 256, (2, 40))
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), torch_logits(hf, ids), atol=1e-4, rtol=0)


def test_hf_to_run_bfloat16_rounds_the_weights_and_passes_the_check(hf_dir, tmp_path):
    path, hf = hf_dir
    out = tmp_path / "run16"
    assert cli.main(["convert", f"--from_hf={path}", f"--to_run={out}", "--dtype=bfloat16", *FAST]) == 0
    check = json.loads((out / "convert_check.json").read_text())
    (ours,) = check["comparisons"]
    assert check["passed"] and 0 < ours["max_abs_diff"] <= check["tolerance"]
    assert check["tolerance"] == pytest.approx(0.05 * check["max_abs_source_logit"])
    model, _ = load_run(str(out))
    w = model.decoder.layers[1].mlp.down_proj[...]
    assert w.dtype == jnp.bfloat16
    ref = hf.model.layers[1].mlp.down_proj.weight.detach().to(torch.bfloat16).float().numpy().T
    np.testing.assert_array_equal(np.asarray(w, np.float32), ref)


def test_round_trip_hf_run_hf_is_exact(hf_dir, tmp_path):
    path, _ = hf_dir
    run, back = tmp_path / "run", tmp_path / "back"
    assert cli.main(["convert", f"--from_hf={path}", f"--to_run={run}", "--check=false", "--mesh=fsdp=2,tensor=4"]) == 0
    assert not (run / "convert_check.json").exists()
    assert cli.main(["convert", f"--from_run={run}", f"--to_hf={back}", "--check=false", *FAST]) == 0
    original, again = load_file(str(path / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert sorted(again) == sorted(original)
    for name, tensor in original.items():
        assert again[name].dtype == tensor.dtype
        np.testing.assert_array_equal(again[name], tensor, err_msg=name)
    assert ModelConfig.from_hf_config(back) == ModelConfig.from_hf_config(path)
    assert (back / "tokenizer.json").read_bytes() == (path / "tokenizer.json").read_bytes()
    assert (back / "tokenizer_config.json").exists()


# ------------------------------------------------------------------------------------------- run -> HF
def test_run_to_hf_matches_transformers(run_dir, tmp_path):
    run, models = run_dir
    out = tmp_path / "hf"
    assert cli.main(["convert", f"--from_run={run}", f"--to_hf={out}", "--check_with=transformers", *FAST]) == 0
    check = json.loads((out / "convert_check.json").read_text())
    assert check["passed"] and check["comparisons"][0]["max_abs_diff"] == 0.0
    assert check["comparisons"][1]["max_abs_diff"] < 1e-4

    hf = transformers.LlamaForCausalLM.from_pretrained(out).float().eval()
    ids = np.random.default_rng(6).integers(0, 320, (2, 40))
    ours = np.asarray(models[5](jnp.asarray(ids)))  # the latest step's weights
    np.testing.assert_allclose(torch_logits(hf, ids), ours, atol=1e-4, rtol=0)
    config = json.loads((out / "config.json").read_text())
    # The tokenizer's special ids fill the ones the model config left unset (sentencepiece: bos 2, eos 3).
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (2, 3, 0)
    assert (out / "tokenizer.model").read_bytes() == (run / "tokenizer.model").read_bytes()
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert (tok_config["bos_token"], tok_config["eos_token"]) == ("<s>", "</s>")
    # ... and our loader reads the export back: the same weights, the same tokenizer.
    model, tok = load_run(str(out))
    assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == 300
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), ours, atol=1e-6, rtol=0)


def test_run_to_hf_picks_the_step_and_dtype(run_dir, tmp_path):
    run, models = run_dir
    out = tmp_path / "hf2"
    assert cli.main(["convert", f"--from_run={run}", "--step=2", f"--to_hf={out}", "--dtype=bfloat16",
                     "--check=false", *FAST]) == 0
    tensors = load_file(str(out / "model.safetensors"))
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    gate = np.asarray(models[2].decoder.layers[0].mlp.gate_proj[...])  # [d_model, mlp]; HF stores [mlp, d_model]
    np.testing.assert_array_equal(tensors["model.layers.0.mlp.gate_proj.weight"].astype(np.float32),
                                  np.asarray(jnp.asarray(gate.T, jnp.bfloat16), np.float32))


# ------------------------------------------------------------------------------------------- failures
def test_check_fails_loudly_on_a_corrupted_tensor(run_dir, tmp_path, monkeypatch, capsys):
    run, _ = run_dir
    real_save_hf = convert.save_hf

    def corrupting_save_hf(model, path, **kw):  # a conversion bug: one tensor comes out transposed per head
        real_save_hf(model, path, **kw)
        file = os.path.join(path, "model.safetensors")
        tensors = load_file(file)
        name = "model.layers.1.self_attn.k_proj.weight"
        tensors[name] = np.ascontiguousarray(tensors[name][::-1])
        save_file(tensors, file, metadata={"format": "pt"})

    monkeypatch.setattr(convert, "save_hf", corrupting_save_hf)
    out = tmp_path / "hf"
    assert cli.main(["convert", f"--from_run={run}", f"--to_hf={out}", *FAST]) == 1
    err = capsys.readouterr().err
    assert "logit check FAILED" in err and "max |logit diff|" in err and f"Nothing was written to {out}" in err
    assert not out.exists()
    (failed,) = glob.glob(f"{out}.failed-check-*")
    check = json.loads(open(os.path.join(failed, "convert_check.json")).read())
    (ours,) = check["comparisons"]
    assert not check["passed"] and not ours["passed"] and ours["max_abs_diff"] > check["tolerance"]
    assert failed in err and leftovers(tmp_path) == []


def test_check_fails_on_a_corrupted_run_checkpoint(hf_dir, tmp_path, monkeypatch, capsys):
    path, _ = hf_dir
    real = convert._params_to_save

    def corrupt(model, dtype):
        params = real(model, dtype)
        params["decoder"]["final_norm"]["scale"] = params["decoder"]["final_norm"]["scale"] * 1.01
        return params

    monkeypatch.setattr(convert, "_params_to_save", corrupt)
    out = tmp_path / "run"
    assert cli.main(["convert", f"--from_hf={path}", f"--to_run={out}", "--atol=1e-6", "--rtol=0", *FAST]) == 1
    assert "logit check FAILED" in capsys.readouterr().err and not out.exists()
    (failed,) = glob.glob(f"{out}.failed-check-*")
    check = json.loads(open(os.path.join(failed, "convert_check.json")).read())
    assert check["tolerance"] == 1e-6 and check["comparisons"][0]["max_abs_diff"] > 1e-3


def test_refuses_to_overwrite_unless_asked(hf_dir, tmp_path, capsys):
    path, _ = hf_dir
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert cli.main(["convert", f"--from_hf={path}", f"--to_run={out}", *FAST]) == 1
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me" and leftovers(tmp_path) == []
    assert cli.main(["convert", f"--from_hf={path}", f"--to_run={out}", "--overwrite", "--check=false", *FAST]) == 0
    assert not (out / "precious.txt").exists() and (out / "checkpoints").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["run"]
    # An output inside the input would be destroyed by --overwrite: always refused.
    assert cli.main(["convert", f"--from_run={out}", f"--to_hf={out / 'hf'}", "--overwrite", *FAST]) == 1
    assert "overlap" in capsys.readouterr().err


def test_clear_errors_for_missing_or_corrupt_inputs(hf_dir, run_dir, tmp_path, capsys):
    path, _ = hf_dir
    run, _ = run_dir

    def error(*args):
        code = cli.main(["convert", *args, *FAST])
        return code, capsys.readouterr().err

    code, err = error(f"--from_hf={tmp_path / 'nope'}", f"--to_run={tmp_path / 'o1'}")
    assert code == 1 and f"--from_hf={tmp_path / 'nope'} is not a directory" in err

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((path / "config.json").read_text())
    code, err = error(f"--from_hf={partial}", f"--to_run={tmp_path / 'o2'}")
    assert code == 1 and f"{partial} has no model.safetensors or model.safetensors.index.json" in err

    # A checkpoint missing one tensor names the tensor and the directory.
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (partial / name).write_bytes((path / name).read_bytes())
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(partial / "model.safetensors"))
    code, err = error(f"--from_hf={partial}", f"--to_run={tmp_path / 'o3'}")
    assert code == 1 and "'model.layers.1.mlp.up_proj.weight' is missing" in err and str(partial) in err

    # A truncated safetensors file.
    (partial / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:5000])
    code, err = error(f"--from_hf={partial}", f"--to_run={tmp_path / 'o4'}")
    assert code == 1 and f"cannot read the Hugging Face model in {partial}" in err

    # No tokenizer anywhere: a run directory needs one.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((path / name).read_bytes())
    code, err = error(f"--from_hf={bare}", f"--to_run={tmp_path / 'o5'}")
    assert code == 1 and "no usable tokenizer" in err and "--tokenizer=PATH" in err
    assert cli.main(["convert", f"--from_hf={bare}", f"--to_run={tmp_path / 'o5'}", f"--tokenizer={path}",
                     "--check=false", *FAST]) == 0
    assert (tmp_path / "o5" / "tokenizer.json").exists()

    code, err = error(f"--from_run={path}", f"--to_hf={tmp_path / 'o6'}")
    assert code == 1 and "is a Hugging Face model directory, not a run directory" in err
    code, err = error(f"--from_run={partial}", f"--to_hf={tmp_path / 'o6'}")
    assert code == 1 and "is a Hugging Face model directory" in err
    empty = tmp_path / "empty_run"
    empty.mkdir()
    code, err = error(f"--from_run={empty}", f"--to_hf={tmp_path / 'o6'}")
    assert code == 1 and f"run directory {empty} has no checkpoints/" in err
    code, err = error(f"--from_run={run}", "--step=3", f"--to_hf={tmp_path / 'o6'}")
    assert code == 1 and "step 3 not found" in err and "[2, 5]" in err

    # Usage errors.
    assert error(f"--from_hf={path}", f"--from_run={run}", f"--to_hf={tmp_path / 'o7'}")[0] == 2
    assert error(f"--from_hf={path}", f"--to_hf={tmp_path / 'o7'}")[0] == 2
    assert error(f"--from_hf={path}", f"--to_run={tmp_path / 'o7'}", "--dtype=int8")[0] == 2
    assert error(f"--from_run={run}", f"--to_hf={tmp_path / 'o7'}", "--rope_layout=interleaved")[0] == 2
    assert not any(os.path.exists(tmp_path / f"o{i}") for i in (1, 2, 3, 4, 6, 7))
    assert leftovers(tmp_path) == []


def test_check_with_transformers_needs_it_installed(hf_dir, tmp_path, monkeypatch, capsys):
    path, _ = hf_dir
    monkeypatch.setattr(convert, "transformers_available", lambda: False)
    assert cli.main(["convert", f"--from_hf={path}", f"--to_run={tmp_path / 'o'}", "--check_with=transformers"]) == 1
    assert "--check_with=transformers needs torch and transformers" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_check_token_ids_are_fixed_and_within_both_vocabularies(hf_dir):
    path, _ = hf_dir
    tok = HFTokenizer(path)
    a = convert.check_token_ids(tok, 4096, sequences=4, tokens=16)
    b = convert.check_token_ids(tok, 4096, sequences=4, tokens=16)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 16) and a.dtype == np.int32 and a.max() < tok.vocab_size
    assert list(a[0]) == tok.encode(convert.CHECK_TEXT, add_bos=True)[:16]
    assert convert.check_token_ids(None, 50, sequences=2, tokens=8).max() < 50


def test_compare_logits_reports_difference_and_greedy_agreement():
    ref = np.zeros((1, 3, 4), np.float32)
    ref[0, :, 1] = 1.0
    got = ref.copy()
    got[0, 2, 3] = 2.0  # position 2 now prefers token 3
    c = convert.compare_logits("x", ref, got, 1.5, ("a", "b"))
    assert c["max_abs_diff"] == 2.0 and not c["passed"]
    assert (c["greedy_agree"], c["greedy_total"], c["greedy_all_equal"]) == (2, 3, False)
    assert convert.compare_logits("x", ref, got, 2.0, ("a", "b"))["passed"]
    got[0, 0, 0] = np.nan
    assert not convert.compare_logits("x", ref, got, 10.0, ("a", "b"))["passed"]
