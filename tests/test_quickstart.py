"""`dsmath quickstart` (dsmath_jax/quickstart/): the whole pipeline, shrunk, offline (the README's command).

One run directory goes through four invocations, which together check what a user relies on:

  1. mine and pretrain complete; SFT crashes one step after its first checkpoint (a simulated failure of the
     train step)
  2. SFT continues from that checkpoint and completes; GRPO stops after one step (train.stop_after_steps)
  3. GRPO continues from its step-1 checkpoint and completes (through the command line)
  4. nothing is left to do: no stage runs, no file of a stage changes (through the command line)

The numbers of results.json are checked against each stage's own summary.json / stats.json / metrics.jsonl,
the report against results.json. About 3 minutes on 2 idle CPU cores.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import types

import pytest
from conftest import load_config

from dsmath_jax import cli
from dsmath_jax import quickstart as Q

pytest.importorskip("matplotlib")
for _module in ("apache_beam", "fasttext", "warcio", "resiliparse"):
    pytest.importorskip(_module)
from dsmath_jax.mining.driver import DONE  # noqa: E402

pytestmark = pytest.mark.xdist_group("quickstart")  # one worker builds the module's run

STEPS_SCALE = 0.05  # e.g. pretrain 120 -> 6 steps, SFT 450 -> 22, GRPO 40 -> 2 (the step counts of configs/)
FLAGS = dict(steps_scale=STEPS_SCALE, eval_samples=4, eval_problems=8, mining_iterations=2, crawl_scale=0.5)
GRPO_FAST = {"rollout.questions_per_step": 4, "rollout.max_new_tokens": 48, "eval.every": 2}  # evaluate at 0 and 2
STAGE_DIRS = ("mine", "pretrain", "sft", "grpo")
PNG = b"\x89PNG\r\n\x1a\n"


class SimulatedCrash(RuntimeError):
    pass


def snapshot(workdir: pathlib.Path, stages=STAGE_DIRS) -> dict[str, tuple[int, int]]:
    """{relative path: (mtime_ns, size)} of every file of the given stage directories."""
    out = {}
    for stage in stages:
        for path in (workdir / stage).rglob("*"):
            if path.is_file():
                st = path.stat()
                out[str(path.relative_to(workdir))] = (st.st_mtime_ns, st.st_size)
    return out


def read_json(path: pathlib.Path):
    return json.loads(path.read_text())


def metrics(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class LogLines(logging.Handler):
    """The messages logged to `names` while in a `with` block (the loops say where they resumed from)."""

    def __init__(self, *names: str):
        super().__init__(logging.INFO)
        self.names, self.lines = names, []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        self.levels = {}
        for name in self.names:
            logger = logging.getLogger(name)
            self.levels[name] = logger.level
            logger.addHandler(self)
            logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        for name in self.names:
            logging.getLogger(name).removeHandler(self)
            logging.getLogger(name).setLevel(self.levels[name])


def cli_args(workdir: pathlib.Path, overrides: dict[str, dict]) -> list[str]:
    args = ["quickstart", f"--workdir={workdir}"]
    args += [f"--{k}={v}" for k, v in FLAGS.items()]
    args += [f"--set={stage}:{k}={v}" for stage, items in overrides.items() for k, v in items.items()]
    return args


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The four invocations above, with what each left behind. No benchmark directory: the offline crawl."""
    from dsmath_jax.train import loop

    workdir = tmp_path_factory.mktemp("quickstart") / "run"
    out = types.SimpleNamespace(workdir=workdir)

    # 1. SFT's train step raises one step after the first checkpoint (which is complete by then).
    sft = Q.sft_config(str(workdir), Q.Options(steps_scale=STEPS_SCALE))
    out.sft_checkpoint = int(sft.train.checkpoint_every)
    assert 1 <= out.sft_checkpoint < int(sft.train.steps) - 1
    real_make = loop.make_train_step

    def crashing_make(*args, **kwargs):
        fns = real_make(*args, **kwargs)
        calls = [0]

        def train_step(state, batch):
            calls[0] += 1
            if calls[0] > out.sft_checkpoint + 1:
                raise SimulatedCrash("simulated crash in the SFT loop")
            return fns.train_step(state, batch)
        return fns._replace(train_step=train_step)

    original_sft = Q.STAGE_FUNCTIONS["sft"]

    def sft_with_crash(*args):
        loop.make_train_step = crashing_make
        try:
            return original_sft(*args)
        finally:
            loop.make_train_step = real_make

    Q.STAGE_FUNCTIONS["sft"] = sft_with_crash
    try:
        with pytest.raises(SimulatedCrash):
            Q.run_quickstart(str(workdir), overrides={"grpo": GRPO_FAST}, **FLAGS)
    finally:
        Q.STAGE_FUNCTIONS["sft"] = original_sft
    out.state1 = read_json(workdir / Q.STATE_FILE)
    out.results1 = read_json(workdir / Q.RESULTS_FILE)
    out.sft_summary1 = (workdir / "sft" / "summary.json").exists()
    out.snap1 = snapshot(workdir)
    out.sft_metrics1 = metrics(workdir / "sft" / "metrics.jsonl")

    # 2. SFT continues; GRPO stops after one step.
    with LogLines("dsmath_jax.train.loop", "dsmath_jax.rl.loop") as log2:
        out.results2 = Q.run_quickstart(str(workdir),
                                        overrides={"grpo": {**GRPO_FAST, "train.stop_after_steps": 1}}, **FLAGS)
    out.log2 = log2.lines
    out.state2 = read_json(workdir / Q.STATE_FILE)
    out.snap2 = snapshot(workdir)
    out.grpo_metrics2 = metrics(workdir / "grpo" / "metrics.jsonl")
    out.grpo_summary2 = read_json(workdir / "grpo" / "summary.json")

    # 3. and 4. through the command line.
    with LogLines("dsmath_jax.train.loop", "dsmath_jax.rl.loop") as log3:
        out.code3 = cli.main(cli_args(workdir, {"grpo": GRPO_FAST}))
    out.log3 = log3.lines
    out.state3 = read_json(workdir / Q.STATE_FILE)
    out.snap3 = snapshot(workdir)
    out.results3 = read_json(workdir / Q.RESULTS_FILE)
    out.code4 = cli.main(cli_args(workdir, {"grpo": GRPO_FAST}))
    out.state4 = read_json(workdir / Q.STATE_FILE)
    out.snap4 = snapshot(workdir)
    out.results = read_json(workdir / Q.RESULTS_FILE)
    out.run_info = read_json(workdir / Q.RUN_FILE)
    return out


def expected_steps(spec: str, key: str = "train.steps") -> int:
    section, name = key.split(".")
    return Q.scaled(load_config(spec)[section][name], STEPS_SCALE)


# ------------------------------------------------------------------------------------------- resuming


def test_a_crashed_stage_continues_from_its_checkpoint(run):
    s1 = run.state1["stages"]
    assert [s1[s]["status"] for s in STAGE_DIRS[:3]] == ["completed", "completed", "failed"]
    assert "grpo" not in s1 or s1["grpo"]["invocations"] == 0
    assert not run.sft_summary1
    assert run.results1["stages"]["sft"]["status"] == "failed" and run.results1["stopped_at"] == "sft"
    assert run.results1["stages"]["grpo"]["status"] == "pending" and not run.results1["completed"]
    at = run.sft_checkpoint
    ckpt = {p: v for p, v in run.snap1.items() if p.startswith(f"sft/checkpoints/{at}/")}
    assert ckpt and not any(p.startswith(f"sft/checkpoints/{at + 1}/") for p in run.snap1)
    # The second invocation resumed from that checkpoint (not from the start: the rows logged up to it, with
    # their throughput, are kept as they were).
    assert f"resumed from step {at} in {run.workdir / 'sft'}" in run.log2
    rows = metrics(run.workdir / "sft" / "metrics.jsonl")
    assert [r for r in rows if r["step"] <= at] == [r for r in run.sft_metrics1 if r["step"] <= at]
    assert max(r["step"] for r in run.sft_metrics1) in (at, at + 1)
    summary = read_json(run.workdir / "sft" / "summary.json")
    assert summary["status"] == "completed"
    assert summary["step"] == expected_steps("configs/" + Q.STAGE_CONFIGS["sft"])
    assert run.state2["stages"]["sft"]["invocations"] == 2 and run.state2["stages"]["sft"]["status"] == "completed"
    # mine and pretrain did not run again.
    for stage in ("mine", "pretrain"):
        assert run.state2["stages"][stage] == run.state1["stages"][stage]
        assert {p: v for p, v in run.snap2.items() if p.startswith(stage + "/")} == \
            {p: v for p, v in run.snap1.items() if p.startswith(stage + "/")}


def test_a_stopped_rl_stage_is_reported_then_continues(run):
    r2 = run.results2
    assert r2["stopped_at"] == "grpo" and not r2["completed"]
    assert r2["stages"]["grpo"]["status"] == "stopped" and r2["stages"]["grpo"]["steps"] == 1
    assert run.grpo_summary2["status"] == "stopped" and run.grpo_summary2["step"] == 1
    assert run.code3 == 0
    total = expected_steps("configs/" + Q.STAGE_CONFIGS["grpo"], "train.steps_per_iteration")
    summary = read_json(run.workdir / "grpo" / "summary.json")
    assert summary["status"] == "completed" and summary["step"] == total
    assert run.state3["stages"]["grpo"]["invocations"] == 2
    # Resumed, not restarted: the step-1 checkpoint is untouched, the evaluation at step 0 was not redone, and the
    # rows logged up to step 1 are kept as they were.
    assert f"resumed RL from step 1 in {run.workdir / 'grpo'}" in run.log3
    assert not any("resumed" in line for line in run.log3 if "grpo" not in line)  # nothing else ran
    ckpt1 = {p: v for p, v in run.snap2.items() if p.startswith("grpo/checkpoints/1/")}
    assert ckpt1 and {p: v for p, v in run.snap3.items() if p.startswith("grpo/checkpoints/1/")} == ckpt1
    assert summary["initial_eval"] == run.grpo_summary2["initial_eval"]
    rows = metrics(run.workdir / "grpo" / "metrics.jsonl")
    assert [r for r in rows if r["step"] <= 1] == run.grpo_metrics2
    for stage in ("mine", "pretrain", "sft"):
        assert run.state3["stages"][stage] == run.state2["stages"][stage]


def test_a_finished_run_is_not_run_again(run):
    assert run.code4 == 0
    assert run.snap4 == run.snap3  # no file of any stage was written
    assert run.state4["stages"] == run.state3["stages"]  # timings, invocations, finish times unchanged
    assert run.results["completed"] and run.results["stopped_at"] is None
    for stage in STAGE_DIRS:
        assert run.run_info["stages"][stage]["invocations"] == (2 if stage in ("sft", "grpo") else 1)


# ------------------------------------------------------------------------------------------- results


def test_results_json_matches_each_stage(run):
    res, wd = run.results, run.workdir
    assert set(res) == {"options", "stages", "completed", "plots", "stopped_at"}
    # What depends on the machine and the run's history is in run.json, not in results.json.
    info = run.run_info
    assert info["workdir"] == str(wd.resolve()) and set(info["stages"]) == set(STAGE_DIRS)
    state = read_json(wd / Q.STATE_FILE)["stages"]
    for stage in STAGE_DIRS:
        assert not set(res["stages"][stage]) & {"seconds", "invocations", "tokens_per_s"}
        assert info["stages"][stage]["seconds"] == round(state[stage]["seconds"], 1) > 0
    assert info["total_seconds"] == pytest.approx(sum(s["seconds"] for s in info["stages"].values()), abs=0.05)
    for stage in ("pretrain", "sft"):
        assert info["stages"][stage]["tokens_per_s"] > 0
    assert res["stages"]["mine"]["corpus"]["tfds_dir"] == "mine/tfds/dsmath_corpus/1.0.0"  # in the run directory
    assert res["options"]["steps_scale"] == STEPS_SCALE and res["options"]["eval_samples"] == 4
    for stage in STAGE_DIRS:
        assert res["stages"][stage]["status"] == "completed"

    # Mining: per-iteration pages and tokens as the iteration reports say; the corpus is the last one's.
    mine = res["stages"]["mine"]
    stats = read_json(wd / "mine" / "stats.json")
    assert stats["status"] == Q.MINING_DONE == DONE
    assert 1 <= len(mine["iterations"]) <= FLAGS["mining_iterations"]
    for row in mine["iterations"]:
        report = read_json(wd / "mine" / f"iter_{row['iteration']}" / "stats.json")
        assert (row["corpus_pages"], row["corpus_tokens"]) == (report["corpus"]["pages"], report["corpus"]["tokens"])
        assert (row["new_pages"], row["new_tokens"]) == (report["new"]["pages"], report["new"]["tokens"])
    assert mine["corpus"]["pages"] == stats["final"]["pages"] == mine["iterations"][-1]["corpus_pages"] > 0
    assert mine["corpus"]["tokens"] == stats["final"]["tokens"] > 0
    assert mine["stage0"]["pages_kept"] == stats["prepare"]["pages"]
    assert (wd / "mine" / "tfds" / "dsmath_corpus").is_dir()

    # The offline crawl: its benchmark is the held-out split GRPO is evaluated on, and the corpus is clean of it.
    from dsmath_jax.data.tasks import load_problems
    from dsmath_jax.mining import files
    manifest = read_json(wd / "mine" / "synthetic" / "manifest.json")
    assert manifest["source"] == "arithmetic" and manifest["benchmarks"] == ["arithmetic"]
    held_out = [p.question for p in load_problems(load_config("configs/" + Q.STAGE_CONFIGS["grpo"]).data.problems,
                                                  "test")]
    bench = [json.loads(line) for line in (wd / "mine/synthetic/benchmarks/arithmetic/test.jsonl").open()]
    assert [r["question"] for r in bench] == held_out
    planted = set(manifest["contaminated"])
    assert len(planted) >= 4 and all(any(q in manifest["pages"][u]["text"] for q in held_out) for u in planted)
    corpus = list(files.iter_jsonl_shards(str(wd / "mine" / f"iter_{stats['final']['iteration']}" / "corpus" / "*")))
    assert len(corpus) == mine["corpus"]["pages"]
    assert not planted & {p["url"] for p in corpus}
    assert not [p["url"] for p in corpus if any(q in p["text"] for q in held_out)]
    assert sum(p["url"].startswith("https://mathhelp.example.org/questions/") for p in corpus) >= 5

    # Pre-training on the mixture, with a tokenizer trained on both sources; SFT and GRPO use that tokenizer.
    for stage, spec in (("pretrain", "configs/pretrain/table1_corpora.py:deepseekmath_corpus,tiny"),
                        ("sft", "configs/" + Q.STAGE_CONFIGS["sft"])):
        summary = read_json(wd / stage / "summary.json")
        assert res["stages"][stage]["final_loss"] == summary["loss"]
        assert res["stages"][stage]["steps"] == summary["step"] == expected_steps(spec)
        last = [r for r in metrics(wd / stage / "metrics.jsonl") if "loss" in r][-1]
        assert last["step"] == summary["step"] and last["loss"] == pytest.approx(summary["loss"], rel=1e-6)
    pre = res["stages"]["pretrain"]
    assert [(s["kind"], s["name"]) for s in pre["sources"]] == [("tfds", "dsmath_corpus"),
                                                                ("corpus", "quickstart_arithmetic")]
    for source in ("mined_corpus", "arithmetic"):
        assert pre["tokenizer"][source]["docs"] > 0
        assert pre["tokenizer"][source]["byte_fallback_fraction"] < 0.01
        assert pre["tokenizer"][source]["chars_per_token"] > 1.2  # merges learned from both sources
    tokenizer = (wd / "pretrain" / "tokenizer.model").read_bytes()
    assert (wd / "sft" / "tokenizer.model").read_bytes() == tokenizer == (wd / "grpo" / "tokenizer.model").read_bytes()
    sft_config = read_json(wd / "sft" / "config.json")
    assert sft_config["init"]["checkpoint"] == str((wd / "pretrain" / "checkpoints").resolve())
    assert sft_config["model"] == read_json(wd / "pretrain" / "config.json")["model"]
    assert read_json(wd / "grpo" / "config.json")["init"]["run_dir"] == str((wd / "sft").resolve())

    # GRPO: before / after as the run's summary says, and consistent with each other.
    g = res["stages"]["grpo"]
    summary = read_json(wd / "grpo" / "summary.json")
    assert g["k"] == 4 and g["steps"] == summary["step"]
    for when, ev in (("before", summary["initial_eval"]), ("after", summary["final_eval"])):
        assert g[when] == {"step": ev["step"], "greedy": ev["eval_accuracy"], "sample": ev["eval_sample_accuracy"],
                           "maj@4": ev["eval_maj@4"], "pass@4": ev["eval_pass@4"]}
        assert 0 <= g[when]["maj@4"] <= g[when]["pass@4"] <= 1  # a majority answer that is right was sampled
        solved = g[when]["greedy"] * FLAGS["eval_problems"]  # a share of the held-out problems
        assert solved == pytest.approx(round(solved))
    assert g["before"]["step"] == 0 and g["after"]["step"] == summary["step"]
    assert g["eval_history"] == summary["eval_history"]
    # Problem by problem: the per-problem verdicts the two evaluations wrote, counted here from the files.
    rows = {when: metrics(wd / "grpo" / "evals" / f"step_{g[when]['step']:06d}.jsonl") for when in ("before", "after")}
    for when in ("before", "after"):
        assert len(rows[when]) == FLAGS["eval_problems"]
        assert sum(r["correct"] for r in rows[when]) / len(rows[when]) == g[when]["greedy"]
        assert all(0 <= r["samples_correct"] <= 4 for r in rows[when])
        # The greedy response itself, whose answer is the row's (the grader's extraction from it).
        assert all(isinstance(r["response"], str) for r in rows[when])
        assert all(r["answer"] is None or r["answer"] in r["response"] for r in rows[when])
    assert [r["id"] for r in rows["before"]] == [r["id"] for r in rows["after"]]
    pairs = [(b["correct"], a["correct"]) for b, a in zip(rows["before"], rows["after"])]
    pc = g["greedy_paired"]
    assert (pc["problems"], pc["gained"], pc["lost"]) == (len(pairs), pairs.count((False, True)),
                                                          pairs.count((True, False)))
    assert pc["difference"] == pytest.approx(g["after"]["greedy"] - g["before"]["greedy"])
    assert pc["low"] <= pc["difference"] <= pc["high"] and 0 < pc["p_value"] <= 1
    rewards = [r["reward_mean"] for r in metrics(wd / "grpo" / "metrics.jsonl") if "reward_mean" in r]
    assert g["reward_curve"]["first"] == rewards[0] and g["reward_curve"]["last"] == rewards[-1]
    assert g["reward_curve"]["max"] == max(rewards)


def test_plots_are_pngs(run):
    names = {pathlib.Path(p).stem for p in run.results["plots"]}
    assert names == {"mining_iterations", "mining_domains", "mining_dedup_decontamination", "training_curves_step",
                     "rl_training", "rl_eval_accuracy", "rl_maj_pass"}
    for rel in run.results["plots"]:
        data = (run.workdir / rel).read_bytes()
        assert data[:8] == PNG and len(data) > 5000, rel


def test_report_has_the_numbers_and_figures(run):
    report = (run.workdir / Q.REPORT_FILE).read_text()
    g = run.results["stages"]["grpo"]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
            for line in report.splitlines() if line.startswith("| ") and line.count("|") == 5}
    for label, key in (("greedy accuracy", "greedy"), ("maj@4", "maj@4"), ("pass@4", "pass@4")):
        before, after = g["before"][key], g["after"][key]
        assert rows[label] == [f"{before:.3f}", f"{after:.3f}", f"{after - before:+.3f}"]
    pc = g["greedy_paired"]
    assert (f"{pc['gained']} of the {pc['problems']} held-out problems are right after GRPO and were wrong before, "
            f"{pc['lost']} the reverse") in report
    length = {e["step"]: e["eval_length"] for e in g["eval_history"]}
    assert (f"greedy responses are {length[g['before']['step']]:.1f} tokens long on average before and "
            f"{length[g['after']['step']]:.1f} after") in report
    for rel in run.results["plots"]:
        assert f"]({rel})" in report
    assert f"final loss {run.results['stages']['sft']['final_loss']:.3f}" in report
    assert f"DSMATH_RUN_DIR={run.workdir}" in report
    assert f"--steps_scale={STEPS_SCALE}" in report  # the command that resumes this run


# ------------------------------------------------------------------------------------------- errors


def test_errors_name_what_to_do(tmp_path, monkeypatch, shared_data, capsys):
    # Benchmark files: a directory without them fails; none means the offline crawl, whatever the environment.
    with pytest.raises(Q.QuickstartError, match=r"--benchmarks_dir=.* lacks gsm8k/train.jsonl.*Leave --benchmarks_dir"):
        Q.resolve_benchmarks_dir(str(tmp_path))
    assert os.path.realpath(Q.resolve_benchmarks_dir(str(shared_data / "benchmarks"))) == \
        os.path.realpath(shared_data / "benchmarks")
    monkeypatch.setenv("DSMATH_BENCHMARKS_DIR", str(shared_data / "benchmarks"))
    assert Q.resolve_benchmarks_dir() is None
    offline = Q.mine_config(str(tmp_path), Q.Options(), None)
    assert (offline.synthetic.source, offline.synthetic.benchmarks_dir, offline.decontamination.benchmarks_dir) == \
        ("arithmetic", "", "")
    rl_task = load_config("configs/" + Q.STAGE_CONFIGS["grpo"]).data.problems
    assert offline.synthetic.arithmetic.to_dict() == {k: rl_task.to_dict()[k] for k in ("n_test", "seed", "knobs")}
    on_files = Q.mine_config(str(tmp_path), Q.Options(), str(shared_data / "benchmarks"))
    assert on_files.synthetic.source == "benchmarks"
    expected = str(shared_data / "benchmarks")
    assert on_files.decontamination.benchmarks_dir == on_files.synthetic.benchmarks_dir == expected
    # A later stage without the earlier one, bad stages and overrides, a missing configs/.
    with pytest.raises(Q.QuickstartError, match=r"starts from the pretrain stage.*--stages=pretrain,sft"):
        Q.run_quickstart(str(tmp_path / "w"), stages=["sft"])
    assert not (tmp_path / "w").exists()
    with pytest.raises(Q.QuickstartError, match="the grpo config has no 'train.nope'"):
        Q.run_quickstart(str(tmp_path / "w2"), overrides={"grpo": {"train.nope": 1}})
    assert not (tmp_path / "w2").exists()
    with pytest.raises(Q.QuickstartError, match="--configs_dir"):
        Q.run_quickstart(str(tmp_path / "w3"), configs_dir=str(tmp_path))
    assert cli.main(["quickstart", "--stages=mine,nope"]) == 2
    assert cli.main(["quickstart", "--set=grpo.train.steps=1"]) == 2
    assert "STAGE:KEY=VALUE" in capsys.readouterr().err
    assert Q.parse_override("grpo:optimizer.schedule.peak=1e-4") == ("grpo", "optimizer.schedule.peak", "1e-4")
    assert Q.parse_override("sft:model.dtype=bfloat16") == ("sft", "model.dtype", "bfloat16")


def test_steps_scale_shrinks_every_stage_config():
    opts = Q.Options(steps_scale=0.1, eval_samples=3, eval_problems=5)
    c = Q.pretrain_config("/nonexistent", opts)
    base = load_config("configs/pretrain/table1_corpora.py:deepseekmath_corpus,tiny")
    assert c.train.steps == Q.scaled(base.train.steps, 0.1)
    assert 1 <= c.train.checkpoint_every <= c.train.steps and c.optimizer.schedule.warmup_steps <= c.train.steps // 4
    assert c.model.to_dict() == load_config("configs/" + Q.STAGE_CONFIGS["sft"]).model.to_dict()
    g = Q.grpo_config("/nonexistent", opts)
    rl = load_config("configs/" + Q.STAGE_CONFIGS["grpo"])
    assert g.train.steps_per_iteration == Q.scaled(rl.train.steps_per_iteration, 0.1)
    assert 1 <= g.eval.every <= g.train.steps_per_iteration
    assert (g.eval.samples, g.eval.n_problems, g.init.run_dir) == (3, 5, os.path.abspath("/nonexistent/sft"))
    assert Q.scaled(40, 0.01) == 1


def test_a_stage_called_alone_names_the_stage_it_needs(tmp_path):
    with pytest.raises(Q.QuickstartError, match=r"sft stage starts from the pretrain stage's checkpoint.*"
                                                r"--stages=pretrain,sft\)"):
        Q.STAGE_FUNCTIONS["sft"](str(tmp_path), Q.Options(), None)
    with pytest.raises(Q.QuickstartError, match=r"grpo stage starts from the sft stage's policy.*--stages=sft,grpo\)"):
        Q.STAGE_FUNCTIONS["grpo"](str(tmp_path), Q.Options(), None)


@pytest.mark.parametrize("stage", Q.STAGES)
def test_packaged_stage_configs_equal_the_experiment_files(stage, monkeypatch):
    """The quickstart runs without a checkout (its stage configs ship in the package); they must stay the
    experiment files' tiny variants, with and without the benchmark directory the mining config reads."""
    spec = Q.STAGE_CONFIGS[stage]
    for benchmarks in (None, "/data/benchmarks"):
        if benchmarks is None:
            monkeypatch.delenv("DSMATH_BENCHMARKS_DIR", raising=False)
        else:
            monkeypatch.setenv("DSMATH_BENCHMARKS_DIR", benchmarks)
        packaged, experiment = Q.load_config(spec), load_config(f"configs/{spec}")
        assert packaged.to_dict() == experiment.to_dict(), stage
        assert repr(packaged) == repr(experiment), stage


def test_deterministic_cpu_math_sets_xla_flags_once(monkeypatch):
    from jax._src import xla_bridge
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)  # as in a fresh `dsmath` process
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert Q.make_cpu_math_deterministic(env)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8", *Q.DETERMINISTIC_XLA_FLAGS]
    assert Q.make_cpu_math_deterministic(env)  # idempotent
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8", *Q.DETERMINISTIC_XLA_FLAGS]
    mine = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"}  # the caller's own choice is kept
    assert Q.make_cpu_math_deterministic(mine) and mine["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=true"
    # Too late once JAX runs (as in this test process): nothing is changed, so processes started later do not
    # inherit flags this one does not run with.
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
    late = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert not Q.make_cpu_math_deterministic(late)
    assert late == {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


GRADIENT_PROBE = """
import hashlib, os, sys
if sys.argv[1:] == ["one_core"]:  # pinned here rather than by the parent (a preexec_fn forks a JAX process)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
import numpy as np
from dsmath_jax.quickstart.config import make_cpu_math_deterministic
cores = os.sched_getaffinity(0)
assert make_cpu_math_deterministic() is True
assert os.sched_getaffinity(0) == cores  # the process keeps its cores
import jax, jax.numpy as jnp
from flax import nnx
from dsmath_jax.model import CausalLM, get_preset
model = CausalLM(get_preset("tiny", vocab_size=512), rngs=nnx.Rngs(0))
graphdef, state = nnx.split(model)
tokens = jnp.asarray(np.random.default_rng(0).integers(0, 512, size=(16, 128)), jnp.int32)
def loss(state):
    logp = jax.nn.log_softmax(nnx.merge(graphdef, state)(tokens).astype(jnp.float32), -1)
    return -jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], -1).mean()
grads = jax.jit(jax.grad(loss))(state)
print(hashlib.sha256(b"".join(np.asarray(g).tobytes() for g in jax.tree.leaves(grads))).hexdigest())
"""


def test_deterministic_cpu_math_gives_the_same_gradients_on_one_core_and_on_all(tmp_path):
    """A train step's gradients (the weight gradients reduce over batch x sequence, in library fusions XLA's CPU
    client splits over its thread pool) are the same bits in a process on every core and in one pinned to one
    core, once `make_cpu_math_deterministic` has started JAX; and the process keeps its cores."""
    import os
    import subprocess
    import sys
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs Linux and two cores to compare one core with several")
    digests = []
    for cores in ("all_cores", "one_core"):
        proc = subprocess.run([sys.executable, "-c", GRADIENT_PROBE, cores], capture_output=True, text=True,
                              timeout=600, env=as_users_run_it(JAX_PLATFORMS="cpu", XLA_FLAGS=""), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        digests.append(proc.stdout.split()[-1])
    assert digests[0] == digests[1]


def as_users_run_it(**extra: str) -> dict[str, str]:
    """The environment of a `dsmath quickstart` subprocess as a user's shell has it: without the 8 host devices
    conftest.py forces for the test session, over which the run would shard its model and sum in another order
    (the README's numbers are of the default, one CPU device); `extra` variables added."""
    import os
    env = dict(os.environ, **extra)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


@pytest.mark.slow
def test_two_runs_on_different_core_counts_write_the_same_results_json(tmp_path):
    """The shrunk quickstart twice through the command line, at once: one process on every core, one pinned to
    one core with another hash seed (set and dict order), so Eigen's thread pools and Python's string hashes
    differ. results.json must be the same bytes, and so must every logged number of SFT and GRPO but
    timings and the data pipeline's read-ahead counts. About 2 minutes on 2 cores."""
    import os
    import subprocess
    import sys
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("needs os.sched_setaffinity (Linux) to pin a run to one core")
    one_core = {min(os.sched_getaffinity(0))}
    procs = {}
    for name, hash_seed, pin in (("all_cores", "0", None), ("one_core", "1", one_core)):
        env = as_users_run_it(PYTHONHASHSEED=hash_seed, JAX_PLATFORMS="cpu")
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "dsmath_jax.cli", *cli_args(tmp_path / name, {"grpo": GRPO_FAST})], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=(lambda cores=pin: os.sched_setaffinity(0, cores)) if pin else None)
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=3600)
        assert proc.returncode == 0, (name, err[-3000:])
    a, b = tmp_path / "all_cores", tmp_path / "one_core"
    assert (a / Q.RESULTS_FILE).read_bytes() == (b / Q.RESULTS_FILE).read_bytes()
    timing = ("tokens_per_s", "step_time_s", "mfu", "time", "seconds")
    for stage in ("pretrain", "sft", "grpo"):
        rows_a, rows_b = metrics(a / stage / "metrics.jsonl"), metrics(b / stage / "metrics.jsonl")
        assert len(rows_a) == len(rows_b) > 0, stage
        for ra, rb in zip(rows_a, rows_b):
            keep = [k for k in ra if not any(t in k for t in timing) and not k.startswith("data_")]
            assert {k: ra[k] for k in keep} == {k: rb.get(k) for k in keep}, (stage, ra.get("step"))


@pytest.mark.slow
def test_the_full_quickstart_raises_held_out_accuracy(tmp_path):
    """The README's command at full size (run with -m slow; the README gives its time on 2 cores): it completes,
    GRPO raises held-out greedy accuracy by at least 5 points and maj@8 above its value before, and the policy
    learns to work the problems out (its greedy responses at least 10 tokens longer on average), as the report
    says. The command is deterministic (seed 0: 52.3% -> 58.6%, responses 18.3 -> 38.9 tokens). The margin is
    measured over seeds: SFT/GRPO seeds 0-3 gain +6.2, +15.2, +7.4 and +9.0 points (mean +9.5, 95% interval
    [+3.1, +15.8]; every seed's responses grow by 15-21 tokens; experiments/results/tiny_rl_tuning.json), while the
    SFT policy's own accuracy varies by 2.4 points (standard deviation) from seed to seed."""
    import subprocess
    import sys
    workdir = tmp_path / "quickstart"
    proc = subprocess.run([sys.executable, "-m", "dsmath_jax.cli", "quickstart", f"--workdir={workdir}"],
                          capture_output=True, text=True, timeout=3600, env=as_users_run_it())
    assert proc.returncode == 0, proc.stderr[-3000:]
    g = read_json(workdir / Q.RESULTS_FILE)["stages"]["grpo"]
    assert g["steps"] == load_config("configs/" + Q.STAGE_CONFIGS["grpo"]).train.steps_per_iteration
    assert g["after"]["greedy"] >= g["before"]["greedy"] + 0.05, (g["before"], g["after"])
    assert g["after"]["maj@8"] > g["before"]["maj@8"], (g["before"], g["after"])
    length = {e["step"]: e["eval_length"] for e in g["eval_history"]}
    assert length[g["after"]["step"]] >= length[g["before"]["step"]] + 10, length
    report = (workdir / Q.REPORT_FILE).read_text()
    assert f"| greedy accuracy | {g['before']['greedy']:.3f} | {g['after']['greedy']:.3f} |" in report
