"""The notebooks (notebooks/*.ipynb) executed on real tiny runs, so they cannot rot, and the functions of
dsmath_jax/analysis/ they call, against hand-written metrics files and the runs' own files.

Real inputs: the session's arithmetic SFT run (a training run directory), a 4-step GRPO run from it with
held-out evaluations (maj@4 / pass@4), a 2-iteration mining run on a small synthetic crawl (started in a
background process at the first test, so it runs while the policy trains), and results JSONs in the formats
of experiments/rl_paradigm_tiny.py and experiments/rl_findings.py.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import SHARED_DATA, load_config

from dsmath_jax import analysis as A

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.xdist_group("notebooks")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ENV_VARS = ("DSMATH_RUN_DIR", "DSMATH_MINING_DIR", "DSMATH_TRAIN_DIRS", "DSMATH_RL_DIR", "DSMATH_PARADIGM_JSON",
            "DSMATH_FINDINGS_JSON", "DSMATH_PLOTS_DIR")


# ----------------------------------------------------------------------------------------------- helpers


def execute(name: str, env: dict[str, str], monkeypatch, cwd: pathlib.Path):
    """Runs notebooks/<name> in a fresh python3 kernel with `env` set; returns the executed notebook."""
    for key in ENV_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))


def assert_pngs(plots: pathlib.Path, names: list[str]) -> None:
    for name in names:
        path = plots / f"{name}.png"
        assert path.exists(), f"{path} was not written (found {sorted(p.name for p in plots.glob('*'))})"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000, path


def write_jsonl(path: pathlib.Path, rows: list[dict], torn_tail: bool = False) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text + ('{"step": 99, "loss"' if torn_tail else ""))


# ----------------------------------------------------------------------------------------------- fixtures

MINING_SCRIPT = r"""
import sys
from dsmath_jax import cli
from dsmath_jax.mining.synthetic_crawl import build_crawl

benchmarks, out, config = sys.argv[1:4]
build_crawl(benchmarks, out + "/crawl", seed=0, n_questions=30, n_problems=20, n_notes=12, n_prose=100, n_seed=150,
            n_near_duplicates=6, n_url_duplicates=5, n_contaminated=4, warc_files=2)
sys.exit(cli.main(["mine", f"--config={config}:tiny", f"--workdir={out}/mine",
                   f"--config.input.patterns=('{out}/crawl/crawl/*',)",
                   f"--config.seed.paths=('{out}/crawl/seed.jsonl',)",
                   "--config.synthetic.benchmarks_dir=", f"--config.decontamination.benchmarks_dir={benchmarks}",
                   "--config.iterations.max=2", "--config.output.tfds=False"]))
"""


@pytest.fixture(scope="module", autouse=True)
def mining_process(tmp_path_factory):
    """Starts the mining run in a background process (it needs no JAX, and overlaps with the RL run)."""
    data = pathlib.Path(os.environ.get("DSMATH_SHARED_DATA", SHARED_DATA))
    if not all(importlib.util.find_spec(m) for m in ("apache_beam", "fasttext", "warcio", "resiliparse")) \
            or not (data / "benchmarks").is_dir():
        yield None
        return
    out = tmp_path_factory.mktemp("mining")
    log = open(out / "log.txt", "w")
    proc = subprocess.Popen([sys.executable, "-c", MINING_SCRIPT, str(data / "benchmarks"), str(out),
                             str(ROOT / "configs" / "mining" / "deepseekmath_corpus.py")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=str(out))
    yield proc, out
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def mining_run(mining_process) -> pathlib.Path:
    """A finished 2-iteration `dsmath mine` work directory."""
    if mining_process is None:
        pytest.skip("the mining run needs the beam extra and the benchmark files (../shared/data)")
    proc, out = mining_process
    code = proc.wait(timeout=900)
    assert code == 0, (out / "log.txt").read_text()[-3000:]
    return out / "mine"


@pytest.fixture(scope="module")
def rl_run(arithmetic_sft_run, tmp_path_factory) -> pathlib.Path:
    """4 GRPO steps from the session's SFT policy, held-out evaluation at steps 0, 2 and 4 with maj@4 / pass@4."""
    from dsmath_jax.rl.loop import run_rl

    c = load_config("configs/rl/grpo_outcome.py:tiny")
    c.init.run_dir = arithmetic_sft_run
    c.train.update(steps_per_iteration=4, log_every=1, checkpoint_every=4, tensorboard=False, async_checkpoint=False)
    c.rollout.update(questions_per_step=4, max_new_tokens=32)
    c.eval.update(every=2, samples=4, n_problems=16)
    workdir = tmp_path_factory.mktemp("rl") / "grpo"
    summary = run_rl(c, str(workdir))
    assert summary["status"] == "completed" and summary["step"] == 4
    return workdir


PARADIGM = {  # experiments/rl_paradigm_tiny.py's format; numbers chosen to check by hand
    "arms": ["rft", "grpo_outcome"], "seeds": [0, 1], "steps": 4, "k": 4,
    "runs": [
        {"arm": "rft", "seed": 0, "workdir": "x", "eval_history": [
            {"step": 0, "eval_accuracy": 0.2, "eval_maj@4": 0.3, "eval_pass@4": 0.6},
            {"step": 2, "eval_accuracy": 0.3},
            {"step": 4, "eval_accuracy": 0.4, "eval_maj@4": 0.4, "eval_pass@4": 0.6}]},
        {"arm": "rft", "seed": 1, "workdir": "x", "eval_history": [
            {"step": 0, "eval_accuracy": 0.4, "eval_maj@4": 0.5, "eval_pass@4": 0.8},
            {"step": 2, "eval_accuracy": 0.5},
            {"step": 4, "eval_accuracy": 0.6, "eval_maj@4": 0.6, "eval_pass@4": 0.7}]},
        {"arm": "grpo_outcome", "seed": 0, "workdir": "x", "eval_history": [
            {"step": 0, "eval_accuracy": 0.2, "eval_maj@4": 0.3, "eval_pass@4": 0.6},
            {"step": 2, "eval_accuracy": 0.5},
            {"step": 4, "eval_accuracy": 0.7, "eval_maj@4": 0.7, "eval_pass@4": 0.8}]},
        {"arm": "grpo_outcome", "seed": 1, "workdir": "x", "eval_history": [
            {"step": 0, "eval_accuracy": 0.4, "eval_maj@4": 0.5, "eval_pass@4": 0.8},
            {"step": 2, "eval_accuracy": 0.5},
            {"step": 4, "eval_accuracy": 0.9, "eval_maj@4": 0.9, "eval_pass@4": 0.9}]},
    ],
}


@pytest.fixture(scope="module")
def paradigm_json(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("paradigm") / "results.json"
    path.write_text(json.dumps(PARADIGM))
    return path


def _maj_pass(base: float, gain: float) -> dict:
    return {"ks": [1, 2, 4], "maj": [base, base + gain, base + 2 * gain], "pass": [base, base + 0.2, base + 0.3],
            "greedy": base + gain}


def findings_results() -> dict:
    """A results JSON in experiments/rl_findings.py's format: 3 seeds, SFT, online RFT and GRPO+OS (2 steps),
    iterative GRPO (2 x 1 steps); maj@k / pass@k for k = 1, 2, 4. GRPO+OS beats online RFT by 0.04 on every seed."""
    runs = []
    for s in range(3):
        base = 0.5 + 0.02 * s
        mp = functools.partial(_maj_pass, base)
        runs.append({"arm": "sft", "seed": s, "status": "completed", "eval_history": [
            {"step": 0, "eval_accuracy": base}], "maj_pass": mp(0.0)})
        for arm, gain in (("online_rft", 0.02), ("grpo_outcome", 0.06)):
            runs.append({"arm": arm, "seed": s, "status": "completed", "steps": 2, "steps_per_iteration": 2,
                         "iterations": 1, "maj_pass": mp(gain), "eval_history": [
                             {"step": 0, "eval_accuracy": base}, {"step": 1, "eval_accuracy": base + gain / 2},
                             {"step": 2, "eval_accuracy": base + gain}]})
        runs.append({"arm": "iterative_grpo", "seed": s, "status": "completed", "steps": 2, "steps_per_iteration": 1,
                     "iterations": 2, "maj_pass": mp(0.05),
                     "iteration_evals": [{"iteration": 1, "step": 1, "maj_pass": mp(0.03)},
                                         {"iteration": 2, "step": 2, "maj_pass": mp(0.05)}],
                     "eval_history": [{"step": 0, "eval_accuracy": base}, {"step": 1, "eval_accuracy": base + 0.03},
                                      {"step": 2, "eval_accuracy": base + 0.05}]})
    return {"experiment": "rl_findings", "format": 2, "arms": ["sft", "online_rft", "grpo_outcome", "iterative_grpo"],
            "seeds": [0, 1, 2], "steps": 2, "k": 4, "ks": [1, 2, 4], "runs": runs, "wall_s": 3600.0,
            "elapsed_s": 4000.0}


@pytest.fixture(scope="module")
def findings_json(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("findings") / "results.json"
    path.write_text(json.dumps(findings_results()))
    return path


@pytest.fixture(scope="module")
def handmade_run(tmp_path_factory) -> pathlib.Path:
    """A training run directory written by hand: 3 logged windows, 2 held-out losses, MFU, a torn last line."""
    run = tmp_path_factory.mktemp("handmade") / "pretrain"
    run.mkdir()
    write_jsonl(run / "metrics.jsonl", [
        {"step": 10, "time": 1.0, "loss": 3.0, "lr": 1e-3, "tokens_per_s": 100.0, "mfu": 0.1, "grad_norm": 2.0},
        {"step": 20, "time": 2.0, "loss": 2.0, "lr": 2e-3, "tokens_per_s": 200.0, "mfu": 0.2, "grad_norm": 1.0},
        {"step": 20, "time": 2.1, "eval_loss": 2.5, "eval_tokens": 64.0},
        {"step": 30, "time": 3.0, "loss": 1.0, "lr": 1e-3, "tokens_per_s": 300.0, "mfu": 0.3,
         "grad_norm": float("nan")},
        {"step": 30, "time": 3.1, "eval_loss": 1.5, "eval_tokens": 64.0},
    ], torn_tail=True)
    (run / "config.json").write_text(json.dumps({"train": {"batch_size": 4, "steps": 30}, "data": {"seq_len": 8}}))
    (run / "summary.json").write_text(json.dumps({"status": "completed", "step": 30, "loss": 1.0}))
    return run


# ----------------------------------------------------------------------------------------------- the notebooks as files


@pytest.mark.parametrize("name", ["corpus_mining.ipynb", "training_curves.ipynb", "rl_analysis.ipynb",
                                  "rl_findings.ipynb"])
def test_stored_notebooks_are_the_generators_with_outputs_cleared(name):
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import make_notebooks
    finally:
        sys.path.remove(str(NOTEBOOKS))
    stored = (NOTEBOOKS / name).read_text(encoding="utf-8")
    assert stored == make_notebooks.render(make_notebooks.NOTEBOOKS[name]), \
        f"notebooks/{name} differs from notebooks/make_notebooks.py: edit the generator and run it"
    nb = nbformat.reads(stored, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].metadata.get("tags") == ["parameters"] and 'RUN_DIR = "runs/quickstart"' in code[0].source
    assert all(not c.outputs and c.execution_count is None for c in code)


# ----------------------------------------------------------------------------------------------- analysis: units


def test_training_run_curves_and_summary_by_hand(handmade_run):
    run = A.load_training_run(str(handmade_run))
    assert run["name"] == "pretrain" and run["tokens_per_step"] == 32 and len(run["rows"]) == 5  # torn line dropped
    curves = A.training_curves(run)
    np.testing.assert_array_equal(curves["loss"]["step"], [10, 20, 30])
    np.testing.assert_array_equal(curves["loss"]["tokens"], [320, 640, 960])
    np.testing.assert_array_equal(curves["loss"]["value"], [3.0, 2.0, 1.0])
    np.testing.assert_array_equal(curves["eval_loss"]["step"], [20, 30])
    np.testing.assert_array_equal(curves["grad_norm"]["step"], [10, 20])  # the NaN is left out
    summary = A.training_summary(run)
    assert summary == {"name": "pretrain", "status": "completed", "step": 30, "loss": 1.0, "eval_loss_first": 2.5,
                       "eval_loss_best": 1.5, "eval_loss_last": 1.5, "tokens_per_s": 250.0,
                       "mfu": pytest.approx(0.25), "tokens_seen": 960}
    # Without config.json there is no tokens axis, and the figure says so instead of failing.
    bare = dict(run, tokens_per_step=None)
    assert A.training_curves(bare)["loss"]["tokens"] is None and A.training_summary(bare)["tokens_seen"] is None
    fig = A.training_figure([bare], x="tokens")
    assert any("no tokens per step" in t.get_text() for ax in fig.axes for t in ax.texts)


def test_rl_eval_history_and_maj_pass_by_hand(tmp_path):
    (tmp_path / "rl").mkdir()
    write_jsonl(tmp_path / "rl" / "metrics.jsonl", [
        {"step": 0, "eval_accuracy": 0.25, "eval_maj@8": 0.3, "eval_pass@8": 0.7, "eval_sample_accuracy": 0.2},
        {"step": 1, "reward_mean": 0.5, "reward_std": 0.5, "kl": 0.0, "entropy": 0.9, "response_length": 30.0},
        {"step": 2, "reward_mean": 0.75, "reward_std": 0.25, "kl": 0.01, "entropy": 0.8, "response_length": 28.0,
         "eval_accuracy": 0.5, "eval_maj@8": 0.6, "eval_pass@8": 0.7, "eval_sample_accuracy": 0.45},
    ])
    run = A.load_rl_run(str(tmp_path / "rl"))  # no summary.json: the history comes from the rows
    history = A.eval_history(run)
    assert [h["step"] for h in history] == [0, 2] and A.eval_k(history) == 8
    assert A.maj_pass_before_after(history) == {"k": 8, "steps": (0, 2), "greedy": (0.25, 0.5), "maj": (0.3, 0.6),
                                                "pass": (0.7, 0.7), "sample": (0.2, 0.45)}
    steps, values = A.rl_curves(run)["reward_mean"]
    np.testing.assert_array_equal(steps, [1, 2])
    np.testing.assert_array_equal(values, [0.5, 0.75])
    s = A.rl_summary(run)
    assert (s["steps"], s["reward_mean_first"], s["reward_mean_last"], s["eval_accuracy_last"]) == (2, 0.5, 0.75, 0.5)
    assert A.maj_pass_before_after(history[:1]) is None and A.eval_k([{"step": 0, "eval_accuracy": 1.0}]) is None
    fig = A.eval_accuracy_figure([])
    assert any("no held-out evaluation" in t.get_text() for t in fig.axes[0].texts)


def test_paradigm_curves_and_table_by_hand(paradigm_json):
    results = A.load_paradigm_results(str(paradigm_json))
    assert A.paradigm_arms(results) == ["rft", "grpo_outcome"]
    curves = A.paradigm_curves(results)
    np.testing.assert_array_equal(curves["rft"]["step"], [0, 2, 4])
    np.testing.assert_allclose(curves["rft"]["mean"], [0.3, 0.4, 0.5])
    np.testing.assert_allclose(curves["rft"]["std"], [0.1, 0.1, 0.1])
    np.testing.assert_allclose(curves["grpo_outcome"]["mean"], [0.3, 0.5, 0.8])
    np.testing.assert_allclose(curves["grpo_outcome"]["std"], [0.1, 0.0, 0.1], atol=1e-12)
    np.testing.assert_array_equal(curves["grpo_outcome"]["n"], [2, 2, 2])
    table = {(r["arm"], r["metric"]): r for r in A.paradigm_table(results)}
    g = table[("grpo_outcome", "maj@4")]
    assert (g["start_mean"], g["end_mean"], g["gain_mean"], g["seeds"]) == pytest.approx((0.4, 0.8, 0.4, 2))
    assert table[("grpo_outcome", "pass@4")]["gain_mean"] == pytest.approx(0.15)
    assert table[("rft", "pass@4")]["gain_mean"] == pytest.approx(-0.05)
    assert table[("rft", "accuracy")]["end_std"] == pytest.approx(0.1)
    mp = A.paradigm_maj_pass(results)
    assert mp["grpo_outcome"]["maj"] == pytest.approx((0.4, 0.8)) and mp["rft"]["pass"] == pytest.approx((0.7, 0.65))


def test_bad_inputs_name_the_path_and_the_expected_file(tmp_path):
    with pytest.raises(A.RunDirError, match=r"nowhere: no such directory \(expected a training run directory"):
        A.load_training_run(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(A.RunDirError, match=r"empty: not a training run directory .*: metrics.jsonl is missing"):
        A.load_training_run(str(tmp_path / "empty"))
    with pytest.raises(A.RunDirError, match=r"empty: not an RL run directory .*: metrics.jsonl is missing"):
        A.load_rl_run(str(tmp_path / "empty"))
    with pytest.raises(A.RunDirError, match=r"empty: not a `dsmath mine` work directory .*pages/stats.json is missing"):
        A.load_mining_run(str(tmp_path / "empty"))
    (tmp_path / "bad.json").write_text(json.dumps({"runs": [{"arm": "rft"}]}))
    with pytest.raises(A.ResultsFormatError, match=r"bad.json: runs\[0\] needs `arm` and `seed`"):
        A.load_paradigm_results(str(tmp_path / "bad.json"))
    with pytest.raises(A.RunDirError, match="missing.json: no such file"):
        A.load_paradigm_results(str(tmp_path / "missing.json"))


def test_helpers(tmp_path, monkeypatch):
    rows = [{"step": 1, "a": 1.0}, {"step": 2, "a": None}, {"step": 3, "a": float("inf")}, {"step": 4, "a": "x"},
            {"step": 5, "a": 2}, {"a": 3.0}]
    xs, ys = A.series(rows, "a")
    np.testing.assert_array_equal(xs, [1, 5])
    np.testing.assert_array_equal(ys, [1.0, 2.0])
    text = A.format_table([{"x": 1, "y": 0.123456}, {"x": 2, "z": "b"}])
    assert text.splitlines()[0].split() == ["x", "y", "z"] and "0.1235" in text
    # A relative run directory is found from the notebooks/ folder too.
    (tmp_path / "runs" / "quickstart").mkdir(parents=True)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert A.resolve_dir("runs/quickstart") == os.path.join("..", "runs", "quickstart")
    assert A.resolve_dir("runs/other") == "runs/other"


def test_annotation_marks_match_the_mining_module():
    domains = pytest.importorskip("dsmath_jax.mining.domains")
    assert A.ANNOTATION_TRUE == domains.TRUE_VALUES


# ----------------------------------------------------------------------------------------------- training and RL


def test_rl_analysis_agrees_with_the_run(rl_run):
    run = A.load_rl_run(str(rl_run))
    summary = json.loads((rl_run / "summary.json").read_text())
    history = A.eval_history(run)
    from_rows = A.eval_history(dict(run, summary=None))
    assert [h["step"] for h in history] == [0, 2, 4] and history == from_rows
    ba = A.maj_pass_before_after(history)
    k = ba["k"]
    assert k == 4 and ba["steps"] == (0, 4)
    for name, key in (("greedy", "eval_accuracy"), ("maj", "eval_maj@4"), ("pass", "eval_pass@4")):
        assert ba[name] == (summary["initial_eval"][key], summary["final_eval"][key])
    assert ba["maj"][0] <= ba["pass"][0] and ba["maj"][1] <= ba["pass"][1]  # maj@k <= pass@k on the same samples
    curves = A.rl_curves(run)
    for key in ("reward_mean", "kl", "entropy", "response_length", "zero_variance_groups", "clip_frac"):
        np.testing.assert_array_equal(curves[key][0], [1, 2, 3, 4])
    rows = [json.loads(line) for line in open(rl_run / "metrics.jsonl")]
    np.testing.assert_allclose(curves["reward_mean"][1], [r["reward_mean"] for r in rows if "reward_mean" in r])


def test_training_curves_notebook(arithmetic_sft_run, handmade_run, tmp_path, monkeypatch):
    plots = tmp_path / "plots"
    nb = execute("training_curves.ipynb", {"DSMATH_TRAIN_DIRS": f"{arithmetic_sft_run},{handmade_run}",
                                           "DSMATH_PLOTS_DIR": plots}, monkeypatch, tmp_path)
    out = stdout(nb)
    assert f"runs: {arithmetic_sft_run}, {handmade_run}" in out
    assert_pngs(plots, ["training_curves_step", "training_curves_tokens"])
    assert images(nb) == 2


def test_training_notebook_with_a_wrong_directory_names_it(tmp_path, monkeypatch):
    with pytest.raises(nbclient.exceptions.CellExecutionError, match=r"nowhere: no such directory"):
        execute("training_curves.ipynb", {"DSMATH_TRAIN_DIRS": tmp_path / "nowhere",
                                          "DSMATH_PLOTS_DIR": tmp_path / "plots"}, monkeypatch, tmp_path)


def test_rl_notebook_with_the_paradigm_results(rl_run, paradigm_json, tmp_path, monkeypatch):
    plots = tmp_path / "plots"
    nb = execute("rl_analysis.ipynb", {"DSMATH_RL_DIR": rl_run, "DSMATH_PARADIGM_JSON": paradigm_json,
                                       "DSMATH_PLOTS_DIR": plots}, monkeypatch, tmp_path)
    out = stdout(nb)
    assert "maj@4  step 0:" in out and "grpo_outcome" in out and "note:" not in out
    # Problem by problem: the counts of the run's own per-problem files (steps 0 and 4).
    verdicts = [[json.loads(line)["correct"] for line in open(rl_run / "evals" / f"step_{s:06d}.jsonl")]
                for s in (0, 4)]
    pairs = list(zip(*verdicts))
    assert (f"step 0 -> 4 on {len(pairs)} problems: greedy {sum(verdicts[0]) / len(pairs):.3f} -> "
            f"{sum(verdicts[1]) / len(pairs):.3f}, {pairs.count((False, True))} gained, "
            f"{pairs.count((True, False))} lost") in out
    assert_pngs(plots, ["rl_training", "rl_eval_accuracy", "rl_maj_pass", "rl_paradigm", "rl_paradigm_maj_pass"])
    assert images(nb) == 5


def test_rl_findings_notebook(findings_json, tmp_path, monkeypatch):
    """The statistics and Figures 5-7 of a results JSON of experiments/rl_findings.py."""
    plots = tmp_path / "plots"
    nb = execute("rl_findings.ipynb", {"DSMATH_FINDINGS_JSON": findings_json, "DSMATH_PLOTS_DIR": plots},
                 monkeypatch, tmp_path)
    out = stdout(nb)
    assert f"{findings_json}: 12 runs, arms ['sft', 'online_rft', 'grpo_outcome', 'iterative_grpo']" in out
    assert "compute 1.00 h, elapsed 1.11 h" in out and "note:" not in out
    rows = [line for line in out.splitlines() if line.startswith("Figure")]  # the table of the claims
    for claim in ("GRPO+OS > Online RFT", "Iterative GRPO: iteration 2 > iteration 1", "GRPO+OS raises maj@4"):
        assert any(claim in row and re.search(r"\sholds\s+True$", row.rstrip()) for row in rows), (claim, rows)
    assert_pngs(plots, ["findings_figure5", "findings_figure6", "findings_figure7"])
    assert images(nb) == 3


def test_rl_findings_notebook_draws_the_recorded_experiment(tmp_path, monkeypatch):
    """With no results named, the notebook (run from notebooks/, as Jupyter does) reads the recorded experiment
    experiments/results/rl_findings_level1.json and prints its verdicts."""
    recorded = ROOT / "experiments" / "results" / "rl_findings_level1.json"
    results = json.loads(recorded.read_text())
    plots = tmp_path / "plots"
    nb = execute("rl_findings.ipynb", {"DSMATH_PLOTS_DIR": plots}, monkeypatch, NOTEBOOKS)
    out = stdout(nb)
    assert f"rl_findings_level1.json: {len(results['runs'])} runs" in out and "seeds [0, 1, 2, 3, 4]" in out
    rows = [line.rstrip() for line in out.splitlines() if line.startswith("Figure")]
    for finding in results["statistics"]["findings"]:
        assert any(finding["claim"] in row and finding["verdict"] in row for row in rows), finding["claim"]
    assert_pngs(plots, ["findings_figure5", "findings_figure6", "findings_figure7"])


def test_rl_notebook_quickstart_layout_without_optional_inputs(rl_run, tmp_path, monkeypatch):
    """DSMATH_RUN_DIR alone, laid out like a quickstart run: no paradigm JSON and an RL run without
    evaluations give notes, not errors; figures go to RUN_DIR/plots."""
    quick = tmp_path / "quickstart"
    (quick / "grpo").mkdir(parents=True)
    rows = [json.loads(line) for line in open(rl_run / "metrics.jsonl")]
    write_jsonl(quick / "grpo" / "metrics.jsonl", [{k: v for k, v in r.items() if not k.startswith("eval_")}
                                                   for r in rows if "reward_mean" in r])
    nb = execute("rl_analysis.ipynb", {"DSMATH_RUN_DIR": quick}, monkeypatch, tmp_path)
    out = stdout(nb)
    assert "note: this run has no held-out evaluation" in out
    assert "note: no maj@k / pass@k before and after" in out
    assert "note: fewer than two held-out evaluations to compare" in out
    assert f"note: no paradigm results at {quick / 'paradigm' / 'results.json'}" in out
    assert_pngs(quick / "plots", ["rl_training", "rl_eval_accuracy", "rl_maj_pass"])


# ----------------------------------------------------------------------------------------------- mining


def test_mining_analysis_agrees_with_the_run(mining_run):
    run = A.load_mining_run(str(mining_run))
    assert run["status"] == "done" and len(run["iterations"]) == 2
    table = A.mining_iteration_table(run)
    for k, row in enumerate(table, 1):
        corpus = list(A.iter_jsonl_shards(str(mining_run / f"iter_{k}" / "corpus" / "pages-*.jsonl.gz")))
        assert row["corpus_pages"] == len(corpus) > 10
        assert row["corpus_tokens"] == sum(p["tokens"] for p in corpus)
        assert row["collected_pages"] == row["corpus_pages"] + row["decontaminated_pages"]
        assert sum(A.decontamination_counts(run)[k].values()) == row["decontaminated_pages"]
        # Every corpus page is above the recall cut; the cut splits the classifier's scores of all pages.
        cut = A.score_threshold(run, k)
        scores = A.classifier_scores(run, k)
        assert len(scores) == run["prepare"]["pages"]
        assert A.corpus_scores(run, k).min() >= cut
        assert (scores > cut).sum() <= row["collected_pages"] <= (scores >= cut).sum()
        domains = A.domain_rows(run, k)
        assert sum(d["math_related"] for d in domains) == row["math_domains"]
        for d in domains:
            assert d["collected_fraction"] == pytest.approx(d["collected"] / d["pages"])
            assert d["math_related"] == (d["collected_fraction"] > 0.10)
    # Iteration 1 was annotated automatically (collected share >= 0.5, the tiny config); the last was not.
    annotated = A.path_rows(run, 1)
    assert annotated and all(r["is_math"] == (r["collected_fraction"] >= 0.5) for r in annotated)
    assert all(r["is_math"] is None for r in A.path_rows(run, 2))
    counts = A.dedup_counts(run)
    assert counts["url_duplicates"] >= 5 and counts["near_duplicates"] >= 1
    assert counts["pages_read"] == run["prepare"]["counters"]["pages_read"]
    assert counts["pages_kept"] == run["prepare"]["pages"]


def test_corpus_mining_notebook(mining_run, tmp_path, monkeypatch):
    plots = tmp_path / "plots"
    nb = execute("corpus_mining.ipynb", {"DSMATH_MINING_DIR": mining_run, "DSMATH_PLOTS_DIR": plots},
                 monkeypatch, tmp_path)
    out = stdout(nb)
    assert f"{mining_run}: status done, 2 iteration(s) finished" in out
    assert "mathhelp.example.org" in out and "note:" not in out
    names = ["mining_iterations", "mining_domains", "mining_paths", "mining_scores", "mining_dedup_decontamination"]
    assert_pngs(plots, names)
    assert images(nb) == len(names)
