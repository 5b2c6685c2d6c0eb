"""Run directories on object stores (`--workdir=gs://...`): every small file goes through etils.epath.

There is no GCS here, so `gs://` is served by a stand-in: epath's real fsspec backend (the one gcsfs plugs
into) over an in-memory fsspec filesystem that behaves like GCS where it matters: no append, no
directories (`mkdir` does nothing; a "directory" exists once a file is under it). Orbax checkpoints are
not covered (tensorstore talks to GCS itself); the local behaviour is covered by the other test files.
"""

import json
import os
from types import SimpleNamespace

import ml_collections
import numpy as np
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem

from dsmath_jax.train import metrics as metrics_lib
from dsmath_jax.train.metrics import MetricsWriter, read_metrics
from dsmath_jax.train.rundir import copy_atomic, is_remote, read_json, write_json


@pytest.fixture
def fake_gcs(monkeypatch, tmp_path):
    """`gs://` paths live in memory for this test; returns the filesystem (its `.store` maps path -> file).
    The working directory is a temporary one, so a path mistaken for a local folder (./gs:/...) shows."""

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs",)
        store: dict = {}
        pseudo_dirs = [""]

        def _open(self, path, mode="rb", **kwargs):
            if "a" in mode:
                raise NotImplementedError("GCS objects cannot be appended to")
            return super()._open(path, mode, **kwargs)

        def makedirs(self, path, exist_ok=False):  # GCS has no directories
            pass

        def mkdir(self, path, create_parents=True, **kwargs):
            pass

    fs = FakeGCS(skip_instance_cache=True)

    class Backend(epath_backend._FileSystemSpecBackend):
        def fs(self, path):  # noqa: ARG002 - overrides the backend's method
            return fs

    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", Backend())
    monkeypatch.chdir(tmp_path)
    yield fs
    assert not (tmp_path / "gs:").exists(), "a gs:// path was written as a local folder"


def _objects(fs, prefix="gs://b/"):
    return sorted(k[len(prefix):] for k in fs.store if k.startswith(prefix))


def test_small_files_are_written_atomically_to_gcs(fake_gcs):
    assert is_remote("gs://b/run") and not is_remote("runs/x") and not is_remote("/abs/run")
    write_json("gs://b/run/summary.json", {"status": "completed", "step": 3})
    assert _objects(fake_gcs) == ["run/summary.json"]  # no temporary object left behind
    assert read_json("gs://b/run/summary.json") == {"status": "completed", "step": 3}
    write_json("gs://b/run/summary.json", {"status": "preempted"})  # overwrites
    assert json.loads(fake_gcs.cat("gs://b/run/summary.json")) == {"status": "preempted"}
    copy_atomic("gs://b/run/summary.json", "gs://b/other/summary.json")
    assert _objects(fake_gcs) == ["other/summary.json", "run/summary.json"]


def _write_history(writer, steps, scale=1.0):
    for s in steps:
        writer.write(s, {"loss": scale * s, "arr": np.float32(0.5)})


def test_metrics_on_gcs_rewrite_the_whole_file(fake_gcs, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(metrics_lib.time, "monotonic", lambda: clock[0])
    path = "gs://b/run/metrics.jsonl"
    writer = MetricsWriter("gs://b/run", tensorboard=False, remote_flush_secs=30)
    assert writer.remote
    _write_history(writer, [1])  # the first record is written at once
    assert [r["step"] for r in read_metrics(path)] == [1]
    _write_history(writer, [2, 3])  # within 30 s of the last rewrite: kept in memory
    assert [r["step"] for r in read_metrics(path)] == [1]
    clock[0] = 31.0
    _write_history(writer, [4])
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]
    _write_history(writer, [5])
    writer.close()  # close writes what is left
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[2]["loss"] == 3.0 and rows[0]["arr"] == 0.5
    assert _objects(fake_gcs) == ["run/metrics.jsonl"]

    # A resumed run (restored at step 3) drops the lines past step 3 and continues the file.
    writer = MetricsWriter("gs://b/run", tensorboard=False, resume_step=3)
    _write_history(writer, [4, 5], scale=10.0)
    writer.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0),
                                                                    (5, 50.0)]


def test_remote_metrics_mode_writes_what_the_local_mode_writes(tmp_path, monkeypatch):
    """The rewrite-whole-file mode, selected on a local path, gives byte-identical files to the append mode,
    through a first run and a resumed one."""
    monkeypatch.setattr(metrics_lib.time, "time", lambda: 1234.5)
    for remote in (False, True):
        workdir = str(tmp_path / f"remote_{remote}")
        writer = MetricsWriter(workdir, tensorboard=False, remote=remote, remote_flush_secs=3600)
        assert writer.remote is remote
        _write_history(writer, [10, 20, 30])
        writer.write(30, {"eval_accuracy": 0.25}, prefix="")
        writer.close()
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write('{"step": 40, "lo')  # a line torn by a crash
        writer = MetricsWriter(workdir, tensorboard=False, remote=remote, resume_step=20)
        _write_history(writer, [30], scale=2.0)
        writer.close()
    local = (tmp_path / "remote_False" / "metrics.jsonl").read_bytes()
    assert local == (tmp_path / "remote_True" / "metrics.jsonl").read_bytes()
    assert [json.loads(line)["step"] for line in local.decode().splitlines()] == [10, 20, 30]
    assert not any(p.name.endswith(".tmp") or ".tmp." in p.name for p in (tmp_path / "remote_True").iterdir())


@pytest.mark.usefixtures("fake_gcs")
def test_start_run_writes_config_json_to_gcs():
    from dsmath_jax.train.loop import start_run
    config = ml_collections.ConfigDict({"mesh": {"shape": None, "rules": None}, "distributed": {"enabled": False},
                                        "model": {"dim": 32}})
    start_run(config, "gs://b/run")
    assert read_json("gs://b/run/config.json")["model"] == {"dim": 32}


def _hf_tokenizer_files(directory: epath.Path) -> list[str]:
    """A small Hugging Face tokenizer.json (word level) with its tokenizer_config.json (bos/eos)."""
    import tokenizers
    from tokenizers import models, pre_tokenizers
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "1", "+", "2", "=", "3", "four"])}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(tok.to_str())
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return ["tokenizer.json", "tokenizer_config.json"]


def test_tokenizers_load_from_gcs(fake_gcs, tmp_path):
    from dsmath_jax.data.tokenizers import HFTokenizer, SentencePieceTokenizer, load_tokenizer, train_sentencepiece
    texts = [f"{a} + {b} = {a + b}\nfour plus {a}" for a in range(40) for b in range(5)]
    local = train_sentencepiece(texts, tmp_path / "local" / "tok", vocab_size=290)
    remote = train_sentencepiece(texts, "gs://b/run/tokenizer", vocab_size=290)
    assert _objects(fake_gcs) == ["run/tokenizer.model"]
    assert isinstance(remote, SentencePieceTokenizer) and remote.path == "gs://b/run/tokenizer.model"
    again = load_tokenizer("gs://b/run")  # a run directory holding tokenizer.model
    assert again.encode_batch(texts[:3]) == local.encode_batch(texts[:3])

    _hf_tokenizer_files(epath.Path("gs://b/hf"))
    hf = load_tokenizer("gs://b/hf")
    assert isinstance(hf, HFTokenizer) and (hf.bos_id, hf.eos_id) == (1, 2)
    assert hf.encode("1 + 2 = 3", add_bos=True) == [1, 3, 4, 5, 6, 7]


def test_load_run_finds_a_tokenizer_json_copied_into_the_run(tmp_path):
    from flax import nnx

    from dsmath_jax.data.tokenizers import HFTokenizer
    from dsmath_jax.model import CausalLM, get_params, get_preset
    from dsmath_jax.train.checkpoint import Checkpointer
    from dsmath_jax.train.restore import load_run, run_tokenizer_files

    run = tmp_path / "run"
    model = CausalLM(get_preset("tiny", vocab_size=16), rngs=nnx.Rngs(3))
    with Checkpointer(run / "checkpoints", async_save=False) as ckpt:
        ckpt.save(5, {"params": get_params(model)})
        ckpt.wait()
    # The config names a tokenizer that is gone: the run's own tokenizer.json must be found first.
    (run / "config.json").write_text(json.dumps({"model": model.config.to_dict(),
                                                 "tokenizer": {"path": str(tmp_path / "gone.model")}}))
    assert run_tokenizer_files(str(run)) == []
    with pytest.raises(FileNotFoundError, match="gone.model"):
        load_run(str(run))
    _hf_tokenizer_files(epath.Path(run))
    assert run_tokenizer_files(str(run)) == ["tokenizer.json", "tokenizer_config.json"]
    loaded, tok = load_run(str(run))
    assert isinstance(tok, HFTokenizer) and tok.path == str(run / "tokenizer.json") and tok.bos_id == 1
    ids = np.array([[1, 3, 4, 5]], np.int32)
    np.testing.assert_array_equal(np.asarray(loaded(ids)), np.asarray(model(ids)))


def test_rl_and_rm_copy_the_init_runs_tokenizer_to_gcs(fake_gcs, tmp_path):
    from dsmath_jax.commands.rm import _copy_tokenizer as rm_copy_tokenizer
    from dsmath_jax.data.tokenizers import load_tokenizer
    from dsmath_jax.rl.loop import RLRun

    init = tmp_path / "sft_run"
    _hf_tokenizer_files(epath.Path(init))
    (init / "config.json").write_text("{}")
    rl = SimpleNamespace(config=ml_collections.ConfigDict({"init": {"run_dir": str(init)}}), workdir="gs://b/rl")
    RLRun._copy_tokenizer(rl)
    assert _objects(fake_gcs) == ["rl/tokenizer.json", "rl/tokenizer_config.json"]
    assert fake_gcs.cat("gs://b/rl/tokenizer.json") == (init / "tokenizer.json").read_bytes()

    rm_copy_tokenizer(load_tokenizer("gs://b/rl"), "gs://b/rm")  # from a tokenizer that lives on GCS itself
    assert _objects(fake_gcs, "gs://b/rm/") == ["tokenizer.json", "tokenizer_config.json"]
    assert load_tokenizer("gs://b/rm").encode("1 + 2") == [3, 4, 5]


def test_reward_model_labels_round_trip_on_gcs(fake_gcs):
    from dsmath_jax.commands.rm import load_labels, save_labels
    examples = [{"tokens": np.array([1, 2, 3], np.int32), "labels": np.array([1.0], np.float32), "group": 0},
                {"tokens": np.array([4, 5], np.int32), "labels": np.array([0.0, 0.5], np.float32), "group": 1}]
    save_labels("gs://b/rm/labels.npz", examples, np.array([True, False]), {"problems": 2})
    assert _objects(fake_gcs) == ["rm/labels.npz"]
    loaded, validation, stats = load_labels("gs://b/rm/labels.npz")
    assert validation.tolist() == [True, False] and stats == {"problems": 2}
    for got, want in zip(loaded, examples, strict=True):
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
            assert np.asarray(got[key]).dtype == np.asarray(want[key]).dtype


def test_eval_results_are_written_to_gcs(fake_gcs, monkeypatch):
    from dsmath_jax.evals import runner
    rows = [{"id": 0, "sample": 0, "completion": "4", "correct": True}]
    monkeypatch.setattr(runner, "evaluate_benchmark", lambda *_a, **_k: (
        {"benchmark": "gsm8k", "mode": "few_shot_cot", "problems": 1, "n": 1, "accuracy": 1.0, "pass@1": 1.0,
         "maj@1": 1.0}, rows))
    spec = runner.EvalSpec(benchmarks=["gsm8k"], limit=1)
    summary = runner.run_eval(None, spec, "gs://b/eval", grader=SimpleNamespace(close=lambda: None))
    assert _objects(fake_gcs, "gs://b/eval/") == ["gsm8k.few_shot_cot.jsonl", "summary.json", "summary.md"]
    assert read_json("gs://b/eval/summary.json") == json.loads(json.dumps(summary))
    assert [json.loads(line) for line in fake_gcs.cat("gs://b/eval/gsm8k.few_shot_cot.jsonl").splitlines()] == rows
    assert b"| gsm8k | few_shot_cot | - | 1 |" in fake_gcs.cat("gs://b/eval/summary.md")
