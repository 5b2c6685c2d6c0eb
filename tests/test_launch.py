"""The launch scripts (experiments/launch/): tpu_vm.sh and gpu.sh are run against a fake `gcloud` / fake
python that record what would have run (and, for a pod, run the per-worker script in two fake worker homes);
sweep.py builds every predefined sweep (each arm's config loads with its argument), skips completed arms,
blocks arms whose prerequisites failed, and collects the summaries."""

import importlib.util
import json
import os
import pathlib
import shlex
import shutil
import stat
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "experiments" / "launch"
TPU_VM = LAUNCH / "tpu_vm.sh"
GPU = LAUNCH / "gpu.sh"


def _load_sweep():
    spec = importlib.util.spec_from_file_location("launch_sweep", LAUNCH / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["launch_sweep"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


sweep = _load_sweep()


def _executable(path: pathlib.Path, text: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


# A gcloud that records its arguments (one JSON list per line). For `tpu-vm ssh --command=...` with
# FAKE_TPU_HOMES set it runs the script once per worker home, as a pod's workers would; `describe` prints
# FAKE_TPU_STATE; `storage cat` prints FAKE_SUMMARY's file.
FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if args[:4] == ["compute", "tpus", "tpu-vm", "describe"]:
    print(os.environ.get("FAKE_TPU_STATE", "READY"))
    sys.exit(0 if os.environ.get("FAKE_TPU_STATE", "READY") != "MISSING" else 1)
if args[:2] == ["storage", "cat"]:
    path = os.environ.get("FAKE_SUMMARY", "")
    if not os.path.exists(path):
        sys.exit(1)
    print(open(path).read())
    sys.exit(0)
if args[:4] == ["compute", "tpus", "tpu-vm", "ssh"] and os.environ.get("FAKE_TPU_HOMES"):
    script = next(a for a in args if a.startswith("--command="))[len("--command="):]
    chosen = next(a for a in args if a.startswith("--worker="))[len("--worker="):]
    rc = 0
    for worker, home in enumerate(os.environ["FAKE_TPU_HOMES"].split(",")):
        if chosen != "all" and int(chosen) != worker:
            continue
        env = dict(os.environ, HOME=home, FAKE_WORKER=str(worker))
        rc |= subprocess.run(["bash", "-c", script], env=env).returncode
    sys.exit(rc)
"""

# curl on a fake worker: the metadata server's answers.
FAKE_CURL = """#!/usr/bin/env bash
url=${@: -1}
case $url in
  */agent-worker-number) echo -n "$FAKE_WORKER" ;;
  */worker-network-endpoints) echo -n "w-0:0:10.0.0.2,w-1:1:10.0.0.3" ;;
  *) exit 22 ;;
esac
"""

# dsmath on a fake worker: records its arguments and the environment that matters, prints a line.
FAKE_DSMATH = f"""#!{sys.executable}
import json, os, sys
with open(os.path.join(os.environ["HOME"], "dsmath_call.json"), "w") as f:
    json.dump({{"argv": sys.argv[1:], "coordinator": os.environ.get("JAX_COORDINATOR_ADDRESS"),
               "libtpu": os.environ.get("LIBTPU_INIT_ARGS"), "venv": os.environ.get("VIRTUAL_ENV")}}, f)
print("fake dsmath ran on worker", os.environ["FAKE_WORKER"])
"""


@pytest.fixture
def fake_cloud(tmp_path):
    """PATH with the fake gcloud and curl; the gcloud log; a per-test launch-state directory."""
    bin_dir = tmp_path / "bin"
    _executable(bin_dir / "gcloud", FAKE_GCLOUD)
    _executable(bin_dir / "curl", FAKE_CURL)
    log = tmp_path / "gcloud.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSMATH_TPU_", "DSMATH_REPO", "DSMATH_REF"))}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_GCLOUD_LOG=str(log),
               DSMATH_LAUNCH_STATE=str(tmp_path / "state"), DSMATH_TPU_NAME="dsm-pod", DSMATH_TPU_ZONE="us-east5-a")

    def run(*args, check=True, **extra_env):
        result = subprocess.run(["bash", str(TPU_VM), *args], env={**env, **extra_env}, capture_output=True,
                                text=True, timeout=120)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    run.calls, run.tmp, run.env = calls, tmp_path, env
    return run


PRETRAIN = ["pretrain", "--config=configs/pretrain/table1_corpora.py:openwebmath",
            "--workdir=gs://bucket/runs/table1_openwebmath", "--config.data.data_dir=gs://bucket/tfds",
            "--config.data.template=Q: {q} 'quoted' $HOME"]


def _script_of(call):
    return next(a for a in call if a.startswith("--command="))[len("--command="):]


def _dsmath_line(script):
    line = next(ln for ln in script.splitlines() if ln.startswith(("nohup dsmath ", "dsmath ")))
    words = shlex.split(line)
    words = words[1:] if words[0] == "nohup" else words
    return words[1:words.index(">>") if ">>" in words else words.index("2>&1")]


# --- shell scripts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", [TPU_VM, GPU])
def test_shell_scripts_parse_and_print_usage(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    result = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage:" in result.stdout
    assert subprocess.run(["bash", str(script)], capture_output=True, text=True).returncode == 2


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_is_clean():
    result = subprocess.run(["shellcheck", str(TPU_VM), str(GPU)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_tpu_create_dry_run_prints_the_gcloud_commands(fake_cloud):
    out = fake_cloud("--dry_run", "--accelerator=v5p-64", "--spot", "create").stdout
    assert out.strip() == ("gcloud compute tpus tpu-vm create dsm-pod --zone=us-east5-a --accelerator-type=v5p-64 "
                           "--version=v2-alpha-tpuv5 --spot")
    out = fake_cloud("--dry_run", "--queued", "--spot", "--project=proj", "--accelerator=v5e-16", "create").stdout
    assert shlex.split(out) == ["gcloud", "compute", "tpus", "queued-resources", "create", "dsm-pod",
                                "--node-id=dsm-pod", "--zone=us-east5-a", "--project=proj",
                                "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]
    out = fake_cloud("--dry_run", "--accelerator=v4-32", "--preemptible", "create").stdout
    assert "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --preemptible" in out
    assert fake_cloud.calls() == []  # a dry run runs nothing
    assert fake_cloud("--dry_run", "--spot", "--preemptible", "create", check=False).returncode == 2
    missing_zone = fake_cloud("--dry_run", "create", check=False, DSMATH_TPU_ZONE="")
    assert missing_zone.returncode == 2 and "zone is required" in missing_zone.stderr


def test_tpu_install_runs_on_every_worker(fake_cloud):
    fake_cloud("--repo=https://example.com/dsmath_jax.git", "--ref=v0.1", "install")
    (call,) = fake_cloud.calls()
    assert call[:7] == ["compute", "tpus", "tpu-vm", "ssh", "dsm-pod", "--zone=us-east5-a", "--worker=all"]
    script = _script_of(call)
    assert "git clone https://example.com/dsmath_jax.git dsmath_jax" in script
    assert "checkout --force --detach" in script and "v0.1" in script
    assert "pip install -q -e '.[tpu]'" in script
    out = fake_cloud("--dry_run", "--copy", "--ref=HEAD", "install").stdout.splitlines()
    assert out[0].startswith("git -C ") and " archive --format=tar.gz " in out[0]
    assert shlex.split(out[1])[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and "scp" in out[1]
    assert "--worker=all" in out[1] and "--worker=all" in out[2]


def test_tpu_run_on_a_pod_passes_the_command_through_to_every_worker(fake_cloud):
    """The dry run prints exactly what a real run executes; on each of two fake workers the script starts
    dsmath with the same flags, the coordinator of the slice (worker 0) and a log file of its own."""
    dry = fake_cloud("--dry_run", "--env=LIBTPU_INIT_ARGS=--xla_tpu_a=1 --b", "run", *PRETRAIN).stdout
    homes = []
    for worker in range(2):
        home = fake_cloud.tmp / f"worker{worker}"
        _executable(home / "dsmath_jax" / ".venv" / "bin" / "dsmath", FAKE_DSMATH)
        homes.append(str(home))
    fake_cloud("--env=LIBTPU_INIT_ARGS=--xla_tpu_a=1 --b", "run", *PRETRAIN, FAKE_TPU_HOMES=",".join(homes))
    (call,) = fake_cloud.calls()
    assert shlex.split(dry) == ["gcloud"] + call
    assert call[:7] == ["compute", "tpus", "tpu-vm", "ssh", "dsm-pod", "--zone=us-east5-a", "--worker=all"]
    assert _dsmath_line(_script_of(call)) == PRETRAIN
    for worker, home in enumerate(homes):
        record = pathlib.Path(home) / "dsmath_call.json"
        for _ in range(100):  # dsmath runs in the background (nohup)
            if record.exists() and record.stat().st_size:
                break
            time.sleep(0.1)
        ran = json.loads(record.read_text())
        assert ran["argv"] == PRETRAIN
        assert ran["coordinator"] == "10.0.0.2:8482"
        assert ran["libtpu"] == "--xla_tpu_a=1 --b"
        assert ran["venv"] == f"{home}/dsmath_jax/.venv"
        logs = pathlib.Path(home) / "dsmath_jax" / "logs"
        log = logs / f"table1_openwebmath.worker{worker}.log"
        for _ in range(50):
            if f"fake dsmath ran on worker {worker}" in log.read_text():
                break
            time.sleep(0.1)
        assert f"fake dsmath ran on worker {worker}" in log.read_text()
        assert (logs / f"table1_openwebmath.worker{worker}.pid").read_text().strip().isdigit()
        assert (logs / "latest_run").read_text().strip() == "table1_openwebmath"


FAKE_DSMATH_UNTIL_SIGTERM = f"""#!{sys.executable}
import os, signal, sys, time
def stop(*_):
    open(os.path.join(os.environ["HOME"], "sigterm"), "w").write("checkpoint saved")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(os.path.join(os.environ["HOME"], "started"), "w").write(str(os.getpid()))
time.sleep(60)
"""


def _worker_homes(fake_cloud, dsmath_script: str, workers: int = 2) -> list[str]:
    """Home directories of fake TPU workers whose installed `dsmath` is `dsmath_script`."""
    homes = []
    for worker in range(workers):
        home = fake_cloud.tmp / f"worker{worker}"
        _executable(home / "dsmath_jax" / ".venv" / "bin" / "dsmath", dsmath_script)
        homes.append(str(home))
    return homes


def test_tpu_stop_sends_sigterm_to_the_run_on_every_worker(fake_cloud):
    homes = _worker_homes(fake_cloud, FAKE_DSMATH_UNTIL_SIGTERM)
    fake_cloud("run", *PRETRAIN, FAKE_TPU_HOMES=",".join(homes))
    for home in homes:
        for _ in range(100):
            if (pathlib.Path(home) / "started").exists():
                break
            time.sleep(0.1)
    out = fake_cloud("stop", FAKE_TPU_HOMES=",".join(homes)).stdout
    assert out.count("stopped") == 2, out
    for home in homes:
        assert (pathlib.Path(home) / "sigterm").read_text() == "checkpoint saved"


FAKE_DSMATH_BRIEF = f"""#!{sys.executable}
import os, time
time.sleep(1.5)
print("done on worker", os.environ["FAKE_WORKER"])
"""


def test_tpu_run_wait_returns_when_the_run_has_exited(fake_cloud):
    homes = _worker_homes(fake_cloud, FAKE_DSMATH_BRIEF)
    start = time.monotonic()
    result = fake_cloud("--wait", "--interval=1", "run", *PRETRAIN, FAKE_TPU_HOMES=",".join(homes))
    assert time.monotonic() - start >= 1.5
    assert "has exited on worker 0" in result.stderr and "done on worker 0" in result.stderr
    polls = [c for c in fake_cloud.calls() if "--worker=0" in c]
    assert polls and all(c[:5] == ["compute", "tpus", "tpu-vm", "ssh", "dsm-pod"] for c in polls)


@pytest.mark.parametrize("subcommand", [["install", "--repo=u", "--ref=r"], ["install", "--copy"],
                                        ["run", *PRETRAIN], ["stop"], ["status"], ["logs", "--run=x"],
                                        ["exec", "ls"]])
def test_worker_scripts_are_valid_bash(fake_cloud, subcommand):
    options = [w for w in subcommand[1:] if subcommand[0] == "install"]
    words = [subcommand[0]] + ([] if subcommand[0] == "install" else subcommand[1:])
    out = fake_cloud("--dry_run", *options, *words).stdout
    script = _script_of(shlex.split(out[out.index("gcloud compute tpus tpu-vm ssh"):]))
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", "-s", "bash", "--severity=warning", "-"], input=script,
                              capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


def test_tpu_run_needs_config_and_workdir(fake_cloud):
    result = fake_cloud("--dry_run", "run", "pretrain", "--config=configs/pretrain/table1_corpora.py:tiny",
                        check=False)
    assert result.returncode == 2 and "--workdir" in result.stderr
    local = fake_cloud("--dry_run", "run", "sft", "--config=c.py", "--workdir=runs/x")
    assert "not on GCS" in local.stderr


def test_tpu_resume_reruns_the_same_command_and_recreates_a_preempted_slice(fake_cloud):
    fake_cloud("run", *PRETRAIN)
    (first,) = fake_cloud.calls()
    resumed = fake_cloud("--dry_run", "resume").stdout
    assert shlex.split(resumed) == ["gcloud"] + first
    # A preempted spot slice cannot be restarted: delete, create, install, then the same run.
    fake_cloud("--spot", "--accelerator=v5p-64", "--repo=https://example.com/d.git", "--ref=abc123", "resume",
               FAKE_TPU_STATE="PREEMPTED")
    calls = fake_cloud.calls()[1:]
    kinds = [c[3] if c[2] == "tpu-vm" else c[2] for c in calls]
    assert kinds == ["describe", "delete", "create", "ssh", "ssh"]
    assert "--spot" in calls[2] and "--accelerator-type=v5p-64" in calls[2]
    assert "pip install" in _script_of(calls[3])
    assert calls[4] == first


def test_tpu_watch_stops_when_the_run_completed(fake_cloud):
    fake_cloud("run", *PRETRAIN)
    summary = fake_cloud.tmp / "summary.json"
    summary.write_text(json.dumps({"status": "completed", "step": 10}))
    out = fake_cloud("watch", "--interval=1", FAKE_SUMMARY=str(summary)).stdout
    assert "completed" in out
    assert fake_cloud.calls()[-1] == ["storage", "cat", "gs://bucket/runs/table1_openwebmath/summary.json"]


def test_tpu_stop_status_logs_delete(fake_cloud):
    stop = shlex.split(fake_cloud("--dry_run", "stop").stdout)
    assert "--worker=all" in stop and "kill -TERM" in stop[-1]
    logs = shlex.split(fake_cloud("--dry_run", "logs", "--worker=3", "--lines=20", "--follow").stdout)
    assert "--worker=3" in logs and "tail -n 20 -F logs/latest.log" in logs[-1]
    status = fake_cloud("--dry_run", "status").stdout
    assert "gcloud compute tpus tpu-vm describe dsm-pod --zone=us-east5-a" in status
    delete = fake_cloud("--dry_run", "delete").stdout
    assert delete.strip() == "gcloud compute tpus tpu-vm delete dsm-pod --zone=us-east5-a --quiet"
    delete = fake_cloud("--dry_run", "--queued", "delete").stdout
    assert delete.strip() == "gcloud compute tpus queued-resources delete dsm-pod --zone=us-east5-a --force --quiet"


# --- gpu.sh --------------------------------------------------------------------------------------------


def _gpu(*args, env=None):
    return subprocess.run(["bash", str(GPU), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def _xla_flags_of(dry_run_output: str) -> str:
    line = next(ln for ln in dry_run_output.splitlines() if ln.startswith("XLA_FLAGS="))
    return shlex.split(line)[0][len("XLA_FLAGS="):]


def test_gpu_dry_run_and_its_xla_flags_exist_in_the_installed_jaxlib():
    out = _gpu("--dry_run", "--gpus=0,1", "--mem_fraction=0.8", "pretrain", "--config=configs/x.py:tiny",
               "--workdir=runs/x", env={"XLA_FLAGS": ""}).stdout
    flags = _xla_flags_of(out)
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags.split()
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.8" in out and "CUDA_VISIBLE_DEVICES=0,1" in out
    assert out.splitlines()[3].split()[1:] == ["-m", "dsmath_jax.cli", "pretrain", "--config=configs/x.py:tiny",
                                               "--workdir=runs/x"]
    # XLA aborts on a flag it does not know: these must all parse (GPU flags are parsed on any backend).
    check = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; print(jnp.ones(2).sum())"],
                           env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and check.stdout.strip() == "2.0", check.stderr[-2000:]


@pytest.fixture
def fake_python(tmp_path):
    """A venv whose python fakes `-m dsmath_jax.cli` (one behaviour per attempt, from FAKE_PLAN) and runs the
    real python for anything else (gpu.sh reads summary.json with it)."""
    script = f"""#!/usr/bin/env bash
if [ "$1" != "-m" ]; then exec {shlex.quote(sys.executable)} "$@"; fi
n=$(( $(cat "$FAKE_DIR/attempts" 2>/dev/null || echo 0) + 1 )); echo $n > "$FAKE_DIR/attempts"
plan=(${{FAKE_PLAN}}); step=${{plan[$((n - 1))]}}
workdir=""; for a in "$@"; do case $a in --workdir=*) workdir=${{a#--workdir=}};; esac; done
mkdir -p "$workdir"; echo "attempt $n: $step"
case $step in
  crash) exit 1 ;;
  usage) exit 2 ;;
  *) echo "{{\\"status\\": \\"$step\\"}}" > "$workdir/summary.json"; exit 0 ;;
esac
"""
    _executable(tmp_path / "venv" / "bin" / "python", script)
    return tmp_path


def _gpu_loop(fake_python, plan, *extra):
    workdir = fake_python / "run"
    result = _gpu(f"--venv={fake_python / 'venv'}", "--restart_delay=0", f"--log={fake_python / 'run.log'}", *extra,
                  "sft", "--config=configs/sft/arithmetic.py:tiny", f"--workdir={workdir}",
                  env={"FAKE_PLAN": plan, "FAKE_DIR": str(fake_python)})
    attempts = int((fake_python / "attempts").read_text())
    return result, attempts


def test_gpu_relaunches_until_the_summary_says_completed(fake_python):
    result, attempts = _gpu_loop(fake_python, "crash preempted completed")
    assert result.returncode == 0, result.stderr
    assert attempts == 3
    log = (fake_python / "run.log").read_text()
    assert "attempt 1: crash" in log and "attempt 3: completed" in log
    assert "exit code 1, summary status: none" in log and "summary status: preempted" in log


def test_gpu_does_not_relaunch_usage_errors_and_gives_up_after_max_restarts(fake_python):
    result, attempts = _gpu_loop(fake_python, "usage completed")
    assert result.returncode == 2 and attempts == 1
    (fake_python / "attempts").unlink()
    result, attempts = _gpu_loop(fake_python, "crash crash crash completed", "--max_restarts=1")
    assert result.returncode == 1 and attempts == 2 and "giving up" in result.stderr


# --- sweep.py ------------------------------------------------------------------------------------------


def _config_module(path):
    return sweep.load_module(path)


def _assert_arms_load(arms):
    """Independently of the sweep: each arm's config file imports, get_config(arg) works, and every
    --config.KEY the arm sets exists in that config."""
    for arm in arms:
        cfg = _config_module(arm.config).get_config(arm.arg)
        for key, _ in arm.overrides:
            node = cfg
            for part in key.split("."):
                assert part in node, (arm.name, key)
                node = node[part]


def test_table1_and_arxiv_sweeps_cover_every_corpus():
    corpora = _config_module("configs/pretrain/table1_corpora.py").CORPORA
    arms = sweep.build("table1", sweep.Options(root="gs://b/t1"))
    assert [a.name for a in arms] == [f"table1_corpora.{c}" for c in corpora]
    assert arms[1].argv() == ["pretrain", "--config=configs/pretrain/table1_corpora.py:openwebmath",
                              "--workdir=gs://b/t1/table1_corpora.openwebmath"]
    _assert_arms_load(arms)
    tiny = sweep.build("table1", sweep.Options(root="runs/t", tiny=True, eval=True, seeds=[0, 1]))
    assert len(tiny) == 2 * 2 * len(corpora)  # seeds x (train + evaluation) x corpora
    assert tiny[0].argv()[:3] == ["pretrain", "--config=configs/pretrain/table1_corpora.py:mathpile,tiny",
                                  "--workdir=runs/t/table1_corpora.mathpile.tiny.seed0"]
    assert dict(tiny[0].overrides) == {"seed": 0, "data.seed": 0}
    evaluation = tiny[1]
    assert evaluation.name == "table1_corpora.mathpile.tiny.seed0/eval_cot"
    assert evaluation.config_flag == "--config=configs/eval/base_few_shot.py:cot,tiny"
    assert "--model=runs/t/table1_corpora.mathpile.tiny.seed0" in evaluation.argv()
    assert dict(evaluation.overrides) == {"eval.seed": 0} and evaluation.after == (tiny[0].name,)
    _assert_arms_load(tiny)
    arxiv = sweep.build("arxiv", sweep.Options(root="r"))
    assert [a.arg for a in arxiv] == list(_config_module("configs/pretrain/arxiv_only.py").CORPORA)
    _assert_arms_load(arxiv)


def test_code_math_stage_two_starts_from_stage_one():
    arms = sweep.build("code_math", sweep.Options(root="gs://b/c", eval=True))
    by_name = {a.name: a for a in arms}
    stage2 = by_name["code_then_math.two_stage_math"]
    assert dict(stage2.overrides)["init.checkpoint"] == "gs://b/c/code_then_math.two_stage_code/checkpoints"
    assert stage2.after == ("code_then_math.two_stage_code",)
    assert [a.name for a in arms].index("code_then_math.two_stage_code") < [a.name for a in arms].index(stage2.name)
    assert {a.arg for a in arms if a.command == "eval"} == {"cot", "pot"}  # Table 6: without and with tools
    _assert_arms_load(arms)
    only2 = sweep.build("code_math", sweep.Options(root="r", args=["two_stage_math"]))
    assert [a.arg for a in only2] == ["two_stage_code", "two_stage_math"]


def test_paradigm_sweep_has_every_figure5_arm():
    methods = _config_module("configs/rl/paradigm.py").ARMS
    tiny = sweep.build("paradigm", sweep.Options(root="runs/p", tiny=True, seeds=[3]))
    assert tiny[0].name == "arithmetic.tiny.seed3" and tiny[0].command == "sft"
    rl = tiny[1:]
    assert [a.arg for a in rl] == [f"{m},tiny" for m in methods]
    for arm in rl:
        assert arm.command == "rl" and arm.after == ("arithmetic.tiny.seed3",)
        assert dict(arm.overrides) == {"init.run_dir": "runs/p/arithmetic.tiny.seed3", "seed": 3, "data.seed": 3}
    _assert_arms_load(tiny)
    full = sweep.build("paradigm", sweep.Options(root="gs://b/p", policy="gs://b/instruct_1_3b"))
    assert full[0].name == "prm_math_shepherd" and full[0].command == "rm"  # GRPO+PS needs a PRM
    process = next(a for a in full if a.arg == "grpo_process")
    assert dict(process.overrides)["reward.rm_dir"] == "gs://b/p/prm_math_shepherd"
    assert all(dict(a.overrides)["init.run_dir"] == "gs://b/instruct_1_3b" for a in full)
    _assert_arms_load(full)
    given = sweep.build("paradigm", sweep.Options(root="r", policy="P", prm="PRM", args=["grpo_process"]))
    assert [a.name for a in given] == ["paradigm.grpo_process"]
    assert dict(given[0].overrides)["reward.rm_dir"] == "PRM"
    with pytest.raises(sweep.SweepError, match="--policy"):
        sweep.build("paradigm", sweep.Options(root="r"))
    with pytest.raises(sweep.SweepError, match="unknown methods"):
        sweep.build("paradigm", sweep.Options(root="r", tiny=True, args=["grpo_outcome", "reinforce"]))


def test_maj_pass_and_iterative_sweeps():
    tiny = sweep.build("maj_pass", sweep.Options(root="r", tiny=True))
    assert [(a.name, a.command) for a in tiny] == [
        ("arithmetic.tiny", "sft"), ("grpo_outcome.tiny", "rl"),
        ("arithmetic.tiny/maj_pass", "eval"), ("grpo_outcome.tiny/maj_pass", "eval")]
    assert "--model=r/grpo_outcome.tiny" in tiny[3].argv()
    _assert_arms_load(tiny)
    full = sweep.build("maj_pass", sweep.Options(root="gs://b/f7", models={"instruct": "gs://m/i", "rl": "gs://m/r"}))
    assert [a.name for a in full] == ["maj_pass_sweep.instruct", "maj_pass_sweep.rl"]
    assert full[1].argv() == ["eval", "--config=configs/eval/maj_pass_sweep.py",
                              "--workdir=gs://b/f7/maj_pass_sweep.rl", "--model=gs://m/r"]
    with pytest.raises(sweep.SweepError, match="--models"):
        sweep.build("maj_pass", sweep.Options(root="r"))
    iterative = sweep.build("iterative", sweep.Options(root="r", tiny=True))
    by_name = {a.name: a for a in iterative}
    assert dict(by_name["iterative_grpo.process.tiny"].overrides)["reward.rm_dir"] == "r/prm_math_shepherd.tiny"
    assert dict(by_name["iterative_grpo.outcome.tiny"].overrides)["reward.rm_dir"] == "r/orm.tiny"
    assert by_name["orm.tiny"].command == "rm"
    _assert_arms_load(iterative)
    given = sweep.build("iterative", sweep.Options(root="r", policy="P", prm="PRM", orm="ORM"))
    assert [a.name for a in given] == ["iterative_grpo.process", "iterative_grpo.outcome"]
    _assert_arms_load(given)


def test_config_file_sweeps_sets_and_errors():
    arms = sweep.build("configs/rl/paradigm.py", sweep.Options(
        root="gs://b/s", args=["rft", "grpo_outcome"], seeds=[0, 1], policy="gs://b/pol",
        sets=[("data.data_dir", "gs://b/tfds")]))
    assert [a.name for a in arms] == ["paradigm.rft.seed0", "paradigm.grpo_outcome.seed0", "paradigm.rft.seed1",
                                      "paradigm.grpo_outcome.seed1"]
    assert arms[3].argv()[3:] == ["--config.init.run_dir=gs://b/pol", "--config.seed=1", "--config.data.seed=1",
                                  "--config.data.data_dir=gs://b/tfds"]
    with pytest.raises(sweep.SweepError, match="no arm's config has the key"):
        sweep.build("table1", sweep.Options(root="r", sets=[("train.stepz", "3")]))
    with pytest.raises(sweep.SweepError, match="does not load"):
        sweep.build("configs/pretrain/table1_corpora.py", sweep.Options(root="r", args=["common_crawl"]))
    with pytest.raises(sweep.SweepError, match="unknown sweep"):
        sweep.build("table2", sweep.Options(root="r"))


def test_dry_run_and_emit_mark_completed_arms(tmp_path, capsys):
    root = tmp_path / "sweep"
    done = root / "table1_corpora.mathpile.tiny"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({"status": "completed"}))
    assert sweep.main(["table1", "--tiny", "--root", str(root), "--dry_run", "--", "--log_level=WARNING"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("dsmath pretrain --config=") for line in lines)
    assert lines[0].endswith("# completed: skipped when run") and "#" not in lines[1]
    assert shlex.split(lines[1]) == ["dsmath", "pretrain",
                                     "--config=configs/pretrain/table1_corpora.py:openwebmath,tiny",
                                     f"--workdir={root}/table1_corpora.openwebmath.tiny", "--log_level=WARNING"]
    assert sweep.main(["table1", "--tiny", "--root", str(root), "--emit", "tpu_vm"]) == 0
    script = capsys.readouterr().out.splitlines()
    commands = [line for line in script if "tpu_vm.sh" in line and not line.startswith("#   ")]
    assert commands[0].startswith("# completed: experiments/launch/tpu_vm.sh")
    words = shlex.split(commands[1])
    assert words[:4] == ["experiments/launch/tpu_vm.sh", "--wait", "--run=table1_corpora.openwebmath.tiny", "run"]
    assert sweep.main(["table1", "--root", str(root), "--emit", "gpu"]) == 0
    assert "experiments/launch/gpu.sh pretrain --config=configs/pretrain/table1_corpora.py:mathpile" in \
        capsys.readouterr().out


def test_an_emitted_line_is_what_tpu_vm_sh_runs(fake_cloud, capsys):
    assert sweep.main(["paradigm", "--root", "gs://b/p", "--policy", "gs://b/pol", "--args", "ppo",
                       "--emit", "tpu_vm"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("experiments/")][0]
    words = shlex.split(line)
    result = fake_cloud("--dry_run", *words[1:])
    start, wait = result.stdout.split("\ngcloud ")  # the start on every worker, then the wait on worker 0
    gcloud = shlex.split(start)
    assert "--worker=all" in gcloud
    script = _script_of(gcloud[1:])
    assert "dsmath rl --config=configs/rl/paradigm.py:ppo --workdir=gs://b/p/paradigm.ppo" in script
    assert _dsmath_line(script) == words[4:]
    assert "--worker=0" in shlex.split(wait) and "logs/paradigm.ppo.worker0.pid" in wait


FAKE_DSMATH_LOCAL = f"""#!{sys.executable}
# Records the call; writes summary.json (completed) unless the workdir's name is in FAIL_ARMS.
import json, os, pathlib, sys
args = sys.argv[1:]
workdir = pathlib.Path(next(a for a in args if a.startswith("--workdir="))[len("--workdir="):])
with open(os.environ["CALLS"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if workdir.name in os.environ.get("FAIL_ARMS", "").split(","):
    sys.exit(1)
workdir.mkdir(parents=True, exist_ok=True)
(workdir / "summary.json").write_text(json.dumps({{"status": "completed", "step": 7, "args": args}}))
"""


def test_local_sweep_skips_completed_arms_blocks_on_failures_resumes_and_collects(tmp_path, monkeypatch):
    fake = _executable(tmp_path / "fake_dsmath", FAKE_DSMATH_LOCAL)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("CALLS", str(calls))
    monkeypatch.setenv("FAIL_ARMS", "code_then_math.two_stage_code.tiny")
    root = tmp_path / "sweep"
    done = root / "code_then_math.one_stage.tiny"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({"status": "completed", "step": 60}))
    argv = ["code_math", "--tiny", "--root", str(root), "--dsmath", str(fake), "--", "--config.train.steps=7"]

    assert sweep.main(argv) == 1  # stage 1 failed, so stage 2 is blocked
    ran = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [r[1] for r in ran] == ["--config=configs/pretrain/code_then_math.py:two_stage_code,tiny"]
    assert ran[0][-1] == "--config.train.steps=7"
    results = json.loads((root / "results.json").read_text())
    status = {a["name"]: a["status"] for a in results["arms"]}
    assert status == {"code_then_math.two_stage_code.tiny": "failed", "code_then_math.two_stage_math.tiny": "blocked",
                      "code_then_math.one_stage.tiny": "completed"}
    assert results["counts"] == {"failed": 1, "blocked": 1, "completed": 1}

    monkeypatch.setenv("FAIL_ARMS", "")
    calls.unlink()
    assert sweep.main(argv) == 0  # resumes: the two missing arms run, the completed one is skipped
    ran = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [r[1].split(":")[1] for r in ran] == ["two_stage_code,tiny", "two_stage_math,tiny"]
    assert f"--config.init.checkpoint={root}/code_then_math.two_stage_code.tiny/checkpoints" in ran[1]
    results = json.loads((root / "results.json").read_text())
    assert results["counts"] == {"completed": 3}
    by_name = {a["name"]: a for a in results["arms"]}
    assert by_name["code_then_math.one_stage.tiny"]["run"]["skipped"] is True
    assert by_name["code_then_math.one_stage.tiny"]["summary"] == {"status": "completed", "step": 60}
    assert by_name["code_then_math.two_stage_math.tiny"]["summary"]["args"] == ran[1]

    calls.unlink()
    assert sweep.main(argv) == 0 and not calls.exists()  # everything complete: nothing runs
    out = tmp_path / "collected.json"
    assert sweep.main(argv[:4] + ["--collect", "--results", str(out)]) == 0
    assert json.loads(out.read_text())["counts"] == {"completed": 3}


@pytest.mark.slow
def test_a_real_tiny_two_arm_sweep(tmp_path):
    """Two seeds of the tiny arithmetic SFT, a few steps each, through the real `dsmath` (about 80 s)."""
    root = tmp_path / "sweep"
    cmd = [sys.executable, str(LAUNCH / "sweep.py"), "configs/sft/arithmetic.py", "--tiny", "--seeds", "0", "1",
           "--root", str(root), "--", "--config.train.steps=2", "--config.train.checkpoint_every=2",
           "--config.train.eval_every=0", "--config.train.tensorboard=False", "--config.tokenizer.train_docs=500"]
    assert subprocess.run(cmd, timeout=600).returncode == 0
    results = json.loads((root / "results.json").read_text())
    assert [(a["name"], a["status"], a["summary"]["step"]) for a in results["arms"]] == [
        ("arithmetic.tiny.seed0", "completed", 2), ("arithmetic.tiny.seed1", "completed", 2)]
    assert subprocess.run(cmd, timeout=600, capture_output=True, text=True).stdout.count("skipped") == 2
