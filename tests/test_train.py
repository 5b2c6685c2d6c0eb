"""Training: schedules, input pipelines (packing, SFT masks, mixtures), the train step (accumulation,
non-finite skipping), tiny pre-training/SFT runs on the 8-device mesh, and exact resume after preemption."""

import collections
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dsmath_jax.config.train import base_train_config
from dsmath_jax.data.pipeline import (
    EmptyDatasetError,
    PipelineStats,
    build_dataset,
    chat_prompt,
    mix_sources,
    pretrain_example_fn,
    sft_example_fn,
)
from dsmath_jax.data.tokenizers import train_sentencepiece
from dsmath_jax.model import CausalLM, get_params, get_preset
from dsmath_jax.parallel import create_sharded, make_mesh
from dsmath_jax.train import schedules
from dsmath_jax.train.metrics import read_metrics
from dsmath_jax.train.step import adamw, make_train_step, token_cross_entropy

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- schedules
def test_multi_step_schedule_matches_the_paper():
    """2,000 warm-up steps to the peak; 31.6% of the peak from 80% of training; 10% from 90% (PAPER.md §2)."""
    peak, total = 4.2e-4, 10_000
    lr = schedules.multi_step(peak, total, warmup_steps=2000)
    assert float(lr(0)) == pytest.approx(peak / 2000)
    assert float(lr(999)) == pytest.approx(peak * 1000 / 2000)
    assert float(lr(1999)) == pytest.approx(peak)  # end of warm-up
    assert float(lr(7999)) == pytest.approx(peak)
    assert float(lr(8000)) == pytest.approx(0.316 * peak)  # 80% of training
    assert float(lr(8999)) == pytest.approx(0.316 * peak)
    assert float(lr(9000)) == pytest.approx(0.1 * peak)  # 90%
    assert float(lr(9999)) == pytest.approx(0.1 * peak)
    const = schedules.constant(5e-5)
    assert float(const(0)) == float(const(499)) == pytest.approx(5e-5)
    cos = schedules.cosine(1.0, 100, warmup_steps=10, final_fraction=0.1)
    assert float(cos(10)) == pytest.approx(1.0) and float(cos(100)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        schedules.from_config({"name": "linear", "peak": 1.0}, 10)


# ------------------------------------------------------------------------------------------- pipelines
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, shared_data):
    rows = [json.loads(line) for line in (shared_data / "benchmarks" / "gsm8k" / "train.jsonl").open()][:2000]
    texts = [f"{r['question']}\n{r['answer']}" for r in rows]
    return train_sentencepiece(texts, tmp_path_factory.mktemp("tok") / "spm", vocab_size=512)


@pytest.fixture(scope="module")
def gsm8k_rows(shared_data):
    return [json.loads(line) for line in (shared_data / "benchmarks" / "gsm8k" / "train.jsonl").open()][:400]


@pytest.mark.slow  # CI time: packing per document is checked in CI by test_model's packed-sequence test
def test_packed_batches_give_each_document_its_own_logits(tokenizer, gsm8k_rows):
    model = CausalLM(get_preset("tiny", vocab_size=512), rngs=nnx.Rngs(0))
    docs = [{"text": r["question"]} for r in gsm8k_rows[:60]]
    for packing, fn in (("concat", pretrain_example_fn(tokenizer)),
                        ("first_fit", sft_example_fn(tokenizer, 192))):
        records = docs if packing == "concat" else [{"question": r["question"][:80], "response": r["answer"][:60]}
                                                    for r in gsm8k_rows[:60]]
        batch = next(iter(build_dataset([("d", records, 1.0)], fn, seq_len=192, batch_size=2, packing=packing,
                                        shuffle=False)))
        logits = np.asarray(model(jnp.asarray(batch["inputs"]), jnp.asarray(batch["positions"]),
                                  jnp.asarray(batch["segment_ids"])))
        checked = 0
        for row in range(2):
            seg = batch["segment_ids"][row]
            for s in set(seg.tolist()) - {0}:
                idx = np.flatnonzero(seg == s)
                assert (batch["positions"][row, idx] == np.arange(len(idx))).all()
                alone = np.asarray(model(jnp.asarray(batch["inputs"][row, idx][None])))[0]
                np.testing.assert_allclose(logits[row, idx], alone, atol=2e-5)
                checked += 1
        assert checked >= 3, (packing, checked)


def test_sft_loss_only_on_the_response(tokenizer):
    stats = PipelineStats()
    fn = sft_example_fn(tokenizer, 128, stats=stats)
    ex = fn({"question": "What is 2 + 3?", "response": "2 + 3 = 5. The final answer is $\\boxed{5}$."})
    prompt_len = len(tokenizer.encode(chat_prompt("What is 2 + 3?"), add_bos=True))
    # targets[t] is token t + 1: the first prompt_len - 1 targets are prompt tokens, weight 0.
    assert (ex["weights"][:prompt_len - 1] == 0).all() and (ex["weights"][prompt_len - 1:] == 1).all()
    assert ex["targets"][-1] == tokenizer.eos_id
    # The gradient of the loss with respect to the logits vanishes at every prompt position.
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, len(ex["inputs"]), 512)), jnp.float32)
    grad = jax.grad(lambda lg: token_cross_entropy(lg, ex["targets"][None], ex["weights"][None])[0])(logits)
    assert np.abs(np.asarray(grad[0, :prompt_len - 1])).max() == 0.0
    assert np.abs(np.asarray(grad[0, prompt_len - 1:])).min(axis=-1).max() > 0.0


def test_overlong_examples_are_truncated_or_dropped_and_counted(tokenizer):
    long = {"question": "How many?", "response": "one two three " * 60}
    stats = PipelineStats()
    ex = sft_example_fn(tokenizer, 32, overlong="truncate", stats=stats)(long)
    assert len(ex["inputs"]) == 32 and stats.truncated == 1
    stats = PipelineStats()
    assert sft_example_fn(tokenizer, 32, overlong="drop", stats=stats)(long) is None
    assert stats.dropped_overlong == 1 and stats.examples == 0
    with pytest.raises(EmptyDatasetError, match="'empty' is empty"):
        build_dataset([("empty", [], 1.0)], pretrain_example_fn(tokenizer), seq_len=16, batch_size=2)
    # A source whose every example is dropped fails instead of spinning forever.
    all_long = [long] * 50
    ds = build_dataset([("long", all_long, 1.0)], sft_example_fn(tokenizer, 8, overlong="drop"), seq_len=8,
                       batch_size=2, packing="first_fit")
    with pytest.raises(ValueError, match="skipped 100.00 %"):
        next(iter(ds))


def test_mixture_proportions_match_the_weights():
    """56/4/10/20/10 as in DeepSeekMath-Base's mixture, within 2 points over 10k examples."""
    weights = {"math": 0.56, "algebraic_stack": 0.04, "arxiv": 0.10, "code": 0.20, "cc": 0.10}
    sources = [(name, [{"src": name, "i": i} for i in range(97 + 13 * k)], w)
               for k, (name, w) in enumerate(weights.items())]
    mixed = mix_sources(sources, seed=3)
    counts = collections.Counter(mixed[i]["src"] for i in range(10_000))
    for name, w in weights.items():
        assert abs(counts[name] / 10_000 - w) < 0.02, (name, counts[name])


def test_per_host_slices_partition_the_stream(tokenizer, gsm8k_rows):
    docs = [{"text": r["question"]} for r in gsm8k_rows[:50]]
    fn = pretrain_example_fn(tokenizer)
    full = build_dataset([("d", docs, 1.0)], fn, seq_len=32, batch_size=1, shuffle=False, epochs=1)
    hosts = [build_dataset([("d", docs, 1.0)], fn, seq_len=32, batch_size=1, shuffle=False, epochs=1,
                           shard_index=i, shard_count=2) for i in range(2)]
    tokens = lambda ds: sum(int((b["segment_ids"] > 0).sum()) for b in ds)  # noqa: E731
    assert tokens(hosts[0]) + tokens(hosts[1]) == tokens(full)


# ------------------------------------------------------------------------------------------- the step
def test_gradient_accumulation_equals_the_full_batch():
    mesh = make_mesh({"fsdp": 8})
    cfg = get_preset("tiny")
    rng = np.random.default_rng(0)
    batch = {"inputs": rng.integers(0, 256, (16, 24)).astype(np.int32),
             "targets": rng.integers(0, 256, (16, 24)).astype(np.int32),
             "weights": (rng.random((16, 24)) > 0.3).astype(np.float32)}
    results = []
    for accum in (1, 4):
        model = create_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)), mesh)
        # Plain SGD: the update is the gradient itself (Adam's normalisation would amplify rounding on
        # near-zero gradients).
        fns = make_train_step(model, optax.sgd(1.0), mesh, accum_steps=accum)
        state, metrics = fns.train_step(fns.init_state(get_params(model)), batch)
        results.append((float(metrics["loss"]), jax.tree.map(np.asarray, state.params)))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), results[0][1], results[1][1])


def test_a_non_finite_loss_skips_the_update():
    mesh = make_mesh({"fsdp": 8})
    model = create_sharded(lambda: CausalLM(get_preset("tiny"), rngs=nnx.Rngs(0)), mesh)
    fns = make_train_step(model, adamw(1e-3), mesh)
    state = fns.init_state(get_params(model))
    before = jax.tree.map(np.asarray, state.params)
    batch = {"inputs": np.zeros((8, 8), np.int32), "targets": np.zeros((8, 8), np.int32),
             "weights": np.full((8, 8), np.nan, np.float32)}
    state, metrics = fns.train_step(state, batch)
    assert int(metrics["finite"]) == 0 and int(state.step) == 1
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), before)


# ------------------------------------------------------------------------------------------- runs
def tiny_config(shared_data, config_file, arg="tiny", **train):
    import importlib.util
    spec = importlib.util.spec_from_file_location("cfg", ROOT / "configs" / config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    c.data.benchmarks_dir = str(shared_data / "benchmarks")
    c.train.update(tensorboard=False, **train)
    return c


@pytest.mark.slow  # CI time (~70 s): the tiny SFT run here and the quickstart's pre-training stage run in CI
def test_tiny_pretraining_lowers_the_loss(shared_data, tmp_path):
    from dsmath_jax.train.loop import train
    summary = train(tiny_config(shared_data, "pretrain/table1_corpora.py"), str(tmp_path), "pretrain")
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert summary["status"] == "completed" and summary["step"] == 120
    assert losses[0] > 5.0 and losses[-1] < 3.8, losses  # from ~ln(512) = 6.2 to well below
    assert evals[-1] < 3.9 and evals[-1] < evals[0]
    assert {"lr", "grad_norm", "tokens_per_s", "step_time_s"} <= set(records[-2])
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [60, 120]


def test_tiny_sft_lowers_the_loss(shared_data, tmp_path):
    from dsmath_jax.train.loop import train
    summary = train(tiny_config(shared_data, "sft/deepseekmath_instruct.py"), str(tmp_path), "sft")
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    losses = [r["loss"] for r in records if "loss" in r]
    assert summary["status"] == "completed"
    assert losses[0] > 5.0 and losses[-1] < 3.6, losses
    assert summary["data"]["truncated"] + summary["data"]["dropped_overlong"] > 0  # counted, not hidden


def test_diverging_run_stops_with_a_clear_error(shared_data, tmp_path):
    from dsmath_jax.train.loop import NonFiniteLossError, train
    c = tiny_config(shared_data, "pretrain/table1_corpora.py", steps=20, max_nonfinite_in_a_row=3,
                    eval_every=0)
    c.optimizer.schedule = dict(name="constant", peak=1e30)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        train(c, str(tmp_path), "pretrain")


def _run_cli(workdir, shared_data, *extra, wait=True):
    cmd = [sys.executable, "-m", "dsmath_jax.cli", "pretrain",
           f"--config={ROOT / 'configs/pretrain/table1_corpora.py'}:tiny", f"--workdir={workdir}",
           f"--config.data.benchmarks_dir={shared_data / 'benchmarks'}", "--config.train.steps=24",
           "--config.train.log_every=1", "--config.train.eval_every=0", "--config.train.tensorboard=False",
           *extra]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if wait:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(str(workdir / "metrics.jsonl")) if "loss" in r}


def _wait_for(predicate, proc, timeout=240):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        if time.time() > deadline:
            raise TimeoutError(f"the training subprocess did not reach the expected state in {timeout} s")
        time.sleep(0.2)


@pytest.mark.slow  # CI time: exact resume is checked in CI by test_parallel and the quickstart's crashed stage
def test_resume_after_preemption_and_after_a_hard_kill_is_exact(shared_data, tmp_path):
    """The same losses, bitwise, as an uninterrupted run: SIGTERM mid-run (saves, exits cleanly) and a
    SIGKILL after a saved step (resumes from it; data iterator and optimizer state restored)."""
    _run_cli(tmp_path / "ref", shared_data)
    reference = _losses(tmp_path / "ref")
    assert sorted(reference) == list(range(1, 25))

    # SIGTERM at some step k: a checkpoint at k, exit code 0, then the same command finishes the run.
    work = tmp_path / "sigterm"
    proc = _run_cli(work, shared_data, "--config.train.checkpoint_every=1000", wait=False)
    _wait_for(lambda: len(_losses(work)) >= 7 if (work / "metrics.jsonl").exists() else False, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()[-3000:]
    summary = json.loads((work / "summary.json").read_text())
    assert summary["status"] == "preempted" and 7 <= summary["step"] < 24
    assert [int(p.name) for p in (work / "checkpoints").iterdir()] == [summary["step"]]
    _run_cli(work, shared_data, "--config.train.checkpoint_every=1000")
    assert _losses(work) == reference

    # SIGKILL after the step-8 checkpoint: nothing after it survives but the metrics, which are rewritten.
    work = tmp_path / "sigkill"
    proc = _run_cli(work, shared_data, "--config.train.checkpoint_every=8", wait=False)
    _wait_for(lambda: (work / "checkpoints" / "8").exists() and len(_losses(work)) >= 11, proc)
    proc.kill()
    proc.wait(timeout=60)
    _run_cli(work, shared_data, "--config.train.checkpoint_every=8")
    assert _losses(work) == reference
    # Running a finished run again changes nothing.
    _run_cli(work, shared_data, "--config.train.checkpoint_every=8")
    assert _losses(work) == reference and json.loads((work / "summary.json").read_text())["step"] == 24


def test_every_training_config_builds():
    """Each config file's variants load, have only known keys, and describe a valid model."""
    import importlib.util

    from dsmath_jax.model import ModelConfig
    variants = {"pretrain/deepseekmath_base_7b.py": [None, "tiny"],
                "pretrain/table1_corpora.py": ["mathpile", "openwebmath", "proof_pile_2", "deepseekmath_corpus",
                                               "openwebmath,tiny"],
                "pretrain/code_then_math.py": ["two_stage_code", "two_stage_math", "one_stage", "one_stage,tiny"],
                "pretrain/arxiv_only.py": ["mathpile", "arxiv_redpajama", "mathpile,tiny"],
                "sft/deepseekmath_instruct.py": [None, "tiny"]}
    base_keys = set(base_train_config().keys())
    for path, args in variants.items():
        spec = importlib.util.spec_from_file_location("cfg", ROOT / "configs" / path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.__doc__ and "Launch" in module.__doc__, path
        for arg in args:
            c = module.get_config(arg)
            assert set(c.keys()) == base_keys, path
            cfg = ModelConfig.from_dict(c.model)
            assert c.data.sources and all(s["kind"] for s in c.data.sources)
            assert all(s["weight"] > 0 for s in c.data.sources)
            if arg and "tiny" in arg:
                assert cfg.num_layers == 2 and c.train.steps <= 200
        with pytest.raises(ValueError, match="unknown config argument"):
            module.get_config("nonsense")
    spec = importlib.util.spec_from_file_location("cfg", ROOT / "configs/pretrain/deepseekmath_base_7b.py")
    paper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paper)
    c = paper.get_config()
    assert {s["name"]: s["weight"] for s in c.data.sources} == {
        "deepseekmath_corpus": 0.56, "algebraic_stack": 0.04, "arxiv": 0.10, "github_code": 0.20,
        "common_crawl_en_zh": 0.10}
    assert c.optimizer.schedule.peak == 4.2e-4 and c.optimizer.b2 == 0.95 and c.optimizer.weight_decay == 0.1
    assert ModelConfig.from_dict(c.model).num_layers == 30
