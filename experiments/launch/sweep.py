r"""Sweeps over the paper's ablations: one `dsmath` run per arm, one work directory per arm under a root.

A sweep is a predefined name (below) or a config file with a list of its arguments; `--seeds` repeats every
arm per seed. The arms are built into `dsmath` commands with deterministic work directories
(`<root>/<config>.<argument>[.seed<N>]`), each arm's config is loaded with its argument and overrides through
the loader the commands use (`dsmath_jax.config.loader`: a typo, a wrong type or a bad value fails before
anything runs), and then the commands are

  printed (`--dry_run`),
  run one after another on this machine (the default): arms whose summary.json says completed are skipped,
    so running the sweep again resumes it (and a half-finished arm resumes from its checkpoint),
  or emitted as a bash script of `tpu_vm.sh` / `gpu.sh` lines (`--emit tpu_vm|gpu`).

After a local run (or with `--collect`, e.g. after the emitted script ran on a TPU) every arm's summary.json
goes into one results JSON (`<root>/results.json`, or `--results`).

Predefined sweeps (`--list` prints their arms):
  table1     Table 1: 1.3B pre-training on each math corpus (configs/pretrain/table1_corpora.py)
  code_math  Table 6: code then math, two stages vs one (configs/pretrain/code_then_math.py); stage 2 starts
             from stage 1's checkpoints
  arxiv      Tables 8-9: arXiv-only pre-training (configs/pretrain/arxiv_only.py)
  paradigm   Figure 5: SFT, RFT, online RFT, DPO, PPO, GRPO+OS, GRPO+PS (configs/rl/paradigm.py) from --policy;
             GRPO+PS gets a PRM trained in the sweep unless --prm is given
  maj_pass   Figure 7: maj@k and pass@k of an instruct and an RL model (configs/eval/maj_pass_sweep.py) for
             each --models NAME=PATH
  iterative  Figure 6: iterative GRPO with a process or an outcome reward model (configs/rl/iterative_grpo.py)
  With --tiny every sweep is its CPU variant, and the RL sweeps train their own tiny policy first
  (configs/sft/arithmetic.py:tiny), and the reward models and RL model they need.
  With --eval the pre-training sweeps also evaluate every model few-shot (configs/eval/base_few_shot.py; and
  program-aided for code_math).

Examples:
  python experiments/launch/sweep.py table1 --root gs://BUCKET/sweeps/table1 --dry_run \
      --set data.data_dir=gs://BUCKET/tfds tokenizer.path=gs://BUCKET/models/deepseek-math-7b-base
  python experiments/launch/sweep.py paradigm --tiny --seeds 0 1 2 --root runs/paradigm_tiny
  python experiments/launch/sweep.py configs/rl/paradigm.py --args rft grpo_outcome --seeds 0 1 \
      --policy gs://BUCKET/runs/instruct_1_3b --root gs://BUCKET/sweeps/paradigm --emit tpu_vm > paradigm.sh
  python experiments/launch/sweep.py table1 --root gs://BUCKET/sweeps/table1 --collect

`--set KEY=VALUE` adds `--config.KEY=VALUE` to every arm whose config has KEY (it is an error when none has);
flags after `--` are added to every arm's command verbatim.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from dsmath_jax.config import ConfigError
from dsmath_jax.config.loader import FOLDER_COMMANDS, command_of, config_module, has_key, load_config

REPO = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = "experiments/launch"
DONE = ("completed", "finished")  # a training/RL/RM run that completed; an evaluation that wrote its summary
# Config keys a seed sets, where the config has them.
SEED_KEYS = ("seed", "data.seed", "train.seed", "sampling.seed", "eval.seed")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One run of a sweep: `dsmath <command> --config=<config>[:<arg>] --workdir=<workdir> ...`."""
    name: str  # the workdir under the root; unique in the sweep; "/" nests (an evaluation inside its model's run)
    command: str
    config: str  # repository-relative path of the config file
    arg: str | None
    workdir: str
    overrides: tuple[tuple[str, Any], ...] = ()  # (config key, value) -> --config.key=value
    flags: tuple[str, ...] = ()  # other dsmath flags (e.g. --model=...)
    after: tuple[str, ...] = ()  # names of arms that must be complete first
    seed: int | None = None  # set as every SEED_KEYS key the config has (when the sweep is built)

    @property
    def config_flag(self) -> str:
        return f"--config={self.config}" + (f":{self.arg}" if self.arg else "")

    def argv(self, extra: Sequence[str] = ()) -> list[str]:
        """The dsmath arguments (after `dsmath`)."""
        return ([self.command, self.config_flag, f"--workdir={self.workdir}"]
                + [f"--config.{key}={value}" for key, value in self.overrides]
                + list(self.flags) + list(extra))


@dataclasses.dataclass
class Options:
    root: str
    tiny: bool = False
    args: list[str] | None = None  # restricts a predefined sweep's arms, or the arguments of a config file
    seeds: list[int] | None = None
    policy: str | None = None  # the RL/RM starting policy (a run or Hugging Face directory)
    prm: str | None = None
    orm: str | None = None
    models: dict[str, str] | None = None  # name -> model directory, for evaluation sweeps
    eval: bool = False
    sets: list[tuple[str, str]] = dataclasses.field(default_factory=list)


class SweepError(ValueError):
    """A sweep that cannot be built; the message says what is missing or wrong."""


def join(root: str, name: str) -> str:
    """root/name for local paths and gs:// URLs alike."""
    return root.rstrip("/") + "/" + name


# --- configs -------------------------------------------------------------------------------------------


def config_path(config: str) -> pathlib.Path:
    """A config file given repository-relative (looked up in the repository, then the working directory) or as
    a path."""
    path = pathlib.Path(config)
    if not path.is_absolute():
        path = REPO / config if (REPO / config).exists() else pathlib.Path.cwd() / config
    if not path.exists():
        raise SweepError(f"config file {config} not found (looked in {REPO} and {pathlib.Path.cwd()})")
    return path


def load_module(config: str):
    """A config file as a module (its constants: CORPORA, VARIANTS, ARMS), through the shared loader."""
    return config_module(config_path(config))


def _with_arg(arg: str | None, tiny: bool) -> str | None:
    parts = [p for p in (arg or "").split(",") if p]
    if tiny and "tiny" not in parts:
        parts.append("tiny")
    return ",".join(parts) or None


def _name(config: str, arg: str | None, seed: int | None, suffix: str = "") -> str:
    """<config stem>.<argument parts>[.<suffix>][.seed<N>], e.g. table1_corpora.openwebmath.tiny.seed0."""
    name = pathlib.Path(config).stem + "".join(f".{p}" for p in (arg or "").split(",") if p)
    return name + (f".{suffix}" if suffix else "") + (f".seed{seed}" if seed is not None else "")


def arm_command(config: str) -> str:
    """The `dsmath` command of a config file, by its folder under configs/."""
    command = command_of(config)
    if command is None:
        raise SweepError(f"cannot tell the dsmath command of {config}: its folder must be one of "
                         f"{sorted(FOLDER_COMMANDS)}")
    return command


class Builder:
    """Collects the arms of one seed of a sweep."""

    def __init__(self, opts: Options, seed: int | None):
        self.opts, self.seed, self.arms = opts, seed, []

    def arm(self, config: str, arg: str | None = None, *, overrides: dict[str, Any] | None = None,
            flags: Sequence[str] = (), after: Sequence[Arm] = (), name: str | None = None,
            command: str | None = None) -> Arm:
        arg = _with_arg(arg, self.opts.tiny)
        name = name or _name(config, arg, self.seed)
        arm = Arm(name=name, command=command or arm_command(config), config=config, arg=arg,
                  workdir=join(self.opts.root, name), overrides=tuple((overrides or {}).items()),
                  flags=tuple(flags), after=tuple(a.name for a in after), seed=self.seed)
        self.arms.append(arm)
        return arm

    def evaluation(self, model: Arm, mode: str) -> Arm:
        """Few-shot evaluation of a trained model, in a folder inside its run."""
        return self.arm("configs/eval/base_few_shot.py", mode, flags=[f"--model={model.workdir}"], after=[model],
                        name=f"{model.name}/eval_{mode}")

    def policy(self) -> tuple[str, list[Arm]]:
        """The RL/RM starting policy: --policy, or (tiny) the arithmetic SFT run trained first."""
        if self.opts.policy:
            return self.opts.policy, []
        if not self.opts.tiny:
            raise SweepError("this sweep starts from an instruct policy: pass --policy=RUN_OR_HF_DIR "
                             "(e.g. gs://BUCKET/runs/dsm_instruct_7b), or --tiny")
        sft = self.arm("configs/sft/arithmetic.py")
        return sft.workdir, [sft]

    def reward_model(self, kind: str, policy: str, needs: list[Arm]) -> tuple[str, list[Arm]]:
        """A PRM / ORM directory: --prm / --orm, or one trained in the sweep from the policy's samples."""
        given = self.opts.prm if kind == "prm" else self.opts.orm
        if given:
            return given, []
        config = "configs/rm/prm_math_shepherd.py" if kind == "prm" else "configs/rm/orm.py"
        rm = self.arm(config, overrides={"init.run_dir": policy}, after=needs)
        return rm.workdir, [rm]


def _choices(opts: Options, available: Sequence[str], what: str) -> list[str]:
    if not opts.args:
        return list(available)
    unknown = [a for a in opts.args if a not in available]
    if unknown:
        raise SweepError(f"unknown {what} {unknown}; this sweep's are {list(available)}")
    return list(opts.args)


def _pretrain_sweep(config: str, constant: str, eval_modes: Sequence[str] = ("cot",)):
    def build(b: Builder) -> None:
        for arg in _choices(b.opts, getattr(load_module(config), constant), "arguments"):
            arm = b.arm(config, arg)
            if b.opts.eval:
                for mode in eval_modes:
                    b.evaluation(arm, mode)
    return build


def sweep_code_math(b: Builder) -> None:
    config = "configs/pretrain/code_then_math.py"
    variants = _choices(b.opts, load_module(config).VARIANTS, "variants")
    if "two_stage_math" in variants and "two_stage_code" not in variants:
        variants.insert(0, "two_stage_code")  # stage 2 starts from stage 1
    arms = {}
    for variant in variants:
        overrides, after = {}, []
        if variant == "two_stage_math":
            stage1 = arms["two_stage_code"]
            overrides, after = {"init.checkpoint": join(stage1.workdir, "checkpoints")}, [stage1]
        arms[variant] = b.arm(config, variant, overrides=overrides, after=after)
    if b.opts.eval:  # Table 6: every model without and with tool use (program-aided)
        for arm in arms.values():
            for mode in ("cot", "pot"):
                b.evaluation(arm, mode)


def sweep_paradigm(b: Builder) -> None:
    config = "configs/rl/paradigm.py"
    arms = _choices(b.opts, load_module(config).ARMS, "methods")
    policy, needs = b.policy()
    prm, prm_needs = None, []
    if "grpo_process" in arms and not b.opts.tiny:  # tiny: the task's exact step checker is the PRM
        prm, prm_needs = b.reward_model("prm", policy, needs)
    for arm in arms:
        overrides = {"init.run_dir": policy}
        after = list(needs)
        if arm == "grpo_process" and prm:
            overrides["reward.rm_dir"] = prm
            after += prm_needs
        b.arm(config, arm, overrides=overrides, after=after)


def sweep_maj_pass(b: Builder) -> None:
    config = "configs/eval/maj_pass_sweep.py"
    if b.opts.models:
        for name, path in b.opts.models.items():
            b.arm(config, flags=[f"--model={path}"], name=_name(config, _with_arg(None, b.opts.tiny), b.seed, name))
        return
    if not b.opts.tiny:
        raise SweepError("maj_pass evaluates given models: pass --models instruct=DIR rl=DIR (run or Hugging Face "
                         "directories, e.g. deepseek-math-7b-instruct and deepseek-math-7b-rl), or --tiny")
    policy, needs = b.policy()  # tiny: the arithmetic SFT model ("instruct") and GRPO from it ("RL")
    rl = b.arm("configs/rl/grpo_outcome.py", overrides={"init.run_dir": policy}, after=needs)
    for model in needs + [rl]:
        b.arm(config, flags=[f"--model={model.workdir}"], after=[model], name=f"{model.name}/maj_pass")


def sweep_iterative(b: Builder) -> None:
    config = "configs/rl/iterative_grpo.py"
    supervisions = _choices(b.opts, ("process", "outcome"), "supervisions")
    policy, needs = b.policy()
    for supervision in supervisions:
        rm, rm_needs = b.reward_model("prm" if supervision == "process" else "orm", policy, needs)
        b.arm(config, supervision, overrides={"init.run_dir": policy, "reward.rm_dir": rm}, after=needs + rm_needs)


SWEEPS: dict[str, tuple[Callable[[Builder], None], str]] = {
    "table1": (_pretrain_sweep("configs/pretrain/table1_corpora.py", "CORPORA"),
               "Table 1: 1.3B pre-training on each math corpus"),
    "code_math": (sweep_code_math, "Table 6: code then math (two stages) vs mixed (one stage)"),
    "arxiv": (_pretrain_sweep("configs/pretrain/arxiv_only.py", "CORPORA"), "Tables 8-9: arXiv-only pre-training"),
    "paradigm": (sweep_paradigm, "Figure 5: the unified paradigm's methods from one policy"),
    "maj_pass": (sweep_maj_pass, "Figure 7: maj@k and pass@k before and after RL"),
    "iterative": (sweep_iterative, "Figure 6: iterative GRPO with process / outcome reward models"),
}


def sweep_config_file(b: Builder, config: str) -> None:
    """A config file over --args (one arm without an argument when none are given)."""
    command = arm_command(config)
    overrides = {}
    if command in ("rl", "rm") and b.opts.policy:
        overrides["init.run_dir"] = b.opts.policy
    if command == "rl" and b.opts.prm:
        overrides["reward.rm_dir"] = b.opts.prm
    for arg in b.opts.args or [None]:
        if command == "eval":
            if not b.opts.models:
                raise SweepError(f"{config} evaluates models: pass --models NAME=DIR ...")
            for name, path in b.opts.models.items():
                b.arm(config, arg, flags=[f"--model={path}"],
                      name=_name(config, _with_arg(arg, b.opts.tiny), b.seed, name))
        else:
            b.arm(config, arg, overrides=overrides)


def build(sweep: str, opts: Options) -> list[Arm]:
    """The arms of a predefined sweep or a config file, in an order that runs dependencies first; every arm's
    config is loaded with its argument and every override key checked."""
    arms: list[Arm] = []
    for seed in opts.seeds if opts.seeds else [None]:
        b = Builder(opts, seed)
        if sweep in SWEEPS:
            SWEEPS[sweep][0](b)
        elif sweep.endswith(".py"):
            sweep_config_file(b, sweep)
        else:
            raise SweepError(f"unknown sweep {sweep!r}: one of {sorted(SWEEPS)} or a config file (configs/...py)")
        arms += b.arms
    names = [a.name for a in arms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SweepError(f"arms with the same work directory: {duplicates}")
    configs = {}
    for arm in arms:
        if (arm.config, arm.arg) not in configs:
            try:
                configs[(arm.config, arm.arg)] = _load(arm)
            except ConfigError as e:
                raise SweepError(f"arm {arm.name}: {arm.config_flag} does not load: {e}") from e
    arms = _apply_sets(_check(arms, configs), opts.sets, configs)
    for arm in arms:  # every arm as its command will load it: overrides of the right type and in range
        try:
            _load(arm, arm.overrides)
        except ConfigError as e:
            raise SweepError(f"arm {arm.name}: {e}") from e
    return arms


def _load(arm: Arm, overrides: Sequence[tuple[str, Any]] = ()):
    """An arm's config with `overrides`, validated against its command's schema (the shared loader)."""
    spec = str(config_path(arm.config)) + (f":{arm.arg}" if arm.arg else "")
    return load_config(spec, dict(overrides), command=arm.command)


def _check(arms: list[Arm], configs: dict) -> list[Arm]:
    """Every override key must exist in the arm's config; seeds become the seed keys the config has."""
    out = []
    for arm in arms:
        cfg = configs[(arm.config, arm.arg)]
        missing = [key for key, _ in arm.overrides if not has_key(cfg, key)]
        if missing:
            raise SweepError(f"arm {arm.name}: {arm.config} has no key(s) {missing}")
        if arm.seed is not None:
            seeds = tuple((key, arm.seed) for key in SEED_KEYS if has_key(cfg, key))
            if not seeds:
                raise SweepError(f"arm {arm.name}: {arm.config} has none of the seed keys {SEED_KEYS}")
            arm = dataclasses.replace(arm, overrides=arm.overrides + seeds)
        out.append(arm)
    return out


def _apply_sets(arms: list[Arm], sets: Sequence[tuple[str, str]], configs: dict) -> list[Arm]:
    out = list(arms)
    for key, value in sets:
        hit = [i for i, a in enumerate(out) if has_key(configs[(a.config, a.arg)], key)]
        if not hit:
            raise SweepError(f"--set {key}=...: no arm's config has the key {key}")
        skipped = [a.name for i, a in enumerate(out) if i not in hit]
        if skipped:
            print(f"sweep: --set {key} does not apply to {len(skipped)} arm(s) whose config lacks it: "
                  f"{', '.join(skipped)}", file=sys.stderr)
        for i in hit:
            items = dict(out[i].overrides)
            items[key] = value
            out[i] = dataclasses.replace(out[i], overrides=tuple(items.items()))
    return out


# --- state of a run ------------------------------------------------------------------------------------


def read_summary(workdir: str) -> dict | None:
    """The workdir's summary.json (local or gs://), or None when there is none."""
    if "://" in workdir:
        from etils import epath
        path = epath.Path(workdir) / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None
    path = pathlib.Path(workdir) / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def status_of(summary: dict | None) -> str:
    """completed / preempted / stopped / data_exhausted / ... from a summary; "finished" for an evaluation's
    summary (it has results and no status); "missing" when there is none."""
    if summary is None:
        return "missing"
    return str(summary.get("status") or ("finished" if "results" in summary else "unknown"))


_UNREADABLE_REMOTE: list[str] = []  # the error that makes remote summaries unreadable here (said once)


def arm_status(arm: Arm) -> str:
    """The arm's status from its summary.json; "unreadable" (never skipped) when it cannot be read."""
    if "://" in arm.workdir and _UNREADABLE_REMOTE:
        return "unreadable"
    try:
        return status_of(read_summary(arm.workdir))
    except ImportError as e:  # e.g. gcsfs missing for gs://: no remote summary is readable from this machine
        _UNREADABLE_REMOTE.append(str(e))
        print(f"sweep: cannot read summaries under {arm.workdir.rsplit('/', 1)[0]} ({e}); every arm is "
              "listed as not complete", file=sys.stderr)
        return "unreadable"
    except Exception as e:  # noqa: BLE001 - unreadable (no access, bad JSON): say so, never skip the arm
        print(f"sweep: cannot read {arm.workdir}/summary.json: {type(e).__name__}: {e}", file=sys.stderr)
        return "unreadable"


# --- modes ---------------------------------------------------------------------------------------------


def shell_line(words: Sequence[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def dry_run(arms: list[Arm], extra: Sequence[str]) -> str:
    lines = []
    for arm in arms:
        status = arm_status(arm)
        note = "  # completed: skipped when run" if status in DONE else ""
        lines.append(shell_line(["dsmath"] + arm.argv(extra)) + note)
    return "\n".join(lines)


def emit(arms: list[Arm], extra: Sequence[str], target: str, sweep: str, root: str) -> str:
    """A bash script running the arms one after another with tpu_vm.sh (`run --wait`: detached on every
    worker, waited for) or gpu.sh; arms completed when it was made are commented out. Running it again after
    an interruption waits for an arm still running, and a finished arm's run ends at once."""
    if target == "tpu_vm" and not root.startswith("gs://"):
        print(f"sweep: warning: --root {root} is not on GCS; TPU workers need a shared gs:// workdir",
              file=sys.stderr)
    lines = ["#!/usr/bin/env bash",
             f"# sweep {sweep}: {len(arms)} arm(s) under {root}; made by {LAUNCH}/sweep.py.",
             "# Run it from the repository root" + (" with DSMATH_TPU_NAME and DSMATH_TPU_ZONE set" if target ==
                                                   "tpu_vm" else "") + "; then collect the results with:",
             f"#   python {LAUNCH}/sweep.py {sweep} --root {root} --collect", "set -euo pipefail"]
    for arm in arms:
        if target == "tpu_vm":
            words = [f"{LAUNCH}/tpu_vm.sh", "--wait", f"--run={arm.name.replace('/', '.')}", "run"]
        else:
            words = [f"{LAUNCH}/gpu.sh"]
        line = shell_line(words + arm.argv(extra))
        if arm_status(arm) in DONE:
            line = "# completed: " + line
        lines.append(line)
    return "\n".join(lines) + "\n"


def run_local(arms: list[Arm], extra: Sequence[str], dsmath: Sequence[str]) -> dict[str, dict]:
    """Runs the arms one after another, skipping completed ones and those whose prerequisites did not
    complete. Returns {name: {"status", "returncode", "seconds"}}."""
    outcome: dict[str, dict] = {}
    for i, arm in enumerate(arms, 1):
        status = arm_status(arm)
        header = f"[{i}/{len(arms)}] {arm.name}"
        if status in DONE:
            print(f"{header}: {status}, skipped", flush=True)
            outcome[arm.name] = {"status": status, "returncode": None, "seconds": 0.0, "skipped": True}
            continue
        blocked = [n for n in arm.after if outcome.get(n, {}).get("status") not in DONE]
        if blocked:
            print(f"{header}: blocked (not complete: {', '.join(blocked)})", flush=True)
            outcome[arm.name] = {"status": "blocked", "returncode": None, "seconds": 0.0, "blocked_by": blocked}
            continue
        argv = list(dsmath) + arm.argv(extra)
        print(f"{header}: {shell_line(argv)}", flush=True)
        start = time.perf_counter()
        returncode = subprocess.run(argv, cwd=REPO, check=False).returncode
        status = arm_status(arm)
        if returncode != 0 and status not in DONE:
            status = "failed"
        outcome[arm.name] = {"status": status, "returncode": returncode,
                             "seconds": round(time.perf_counter() - start, 1)}
        print(f"{header}: {status} (exit code {returncode})", flush=True)
    return outcome


def collect(arms: list[Arm], extra: Sequence[str], sweep: str, root: str,
            outcome: dict[str, dict] | None = None) -> dict:
    """Every arm's summary.json (and how this invocation ran it) in one results object."""
    rows = []
    for arm in arms:
        try:
            summary = read_summary(arm.workdir)
            status = status_of(summary)
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            summary, status = {"error": f"{type(e).__name__}: {e}"}, "unreadable"
        row = {"name": arm.name, "command": arm.command, "config": arm.config, "arg": arm.arg,
               "seed": arm.seed, "workdir": arm.workdir,
               "argv": ["dsmath"] + arm.argv(extra), "status": status, "summary": summary}
        if outcome and arm.name in outcome:
            row["run"] = outcome[arm.name]
            if outcome[arm.name]["status"] in ("failed", "blocked"):
                row["status"] = outcome[arm.name]["status"]
        rows.append(row)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return {"sweep": sweep, "root": root, "collected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "counts": counts, "arms": rows}


def write_json(path: str, obj: dict) -> None:
    """Writes JSON whole: a temporary file renamed into place (local), or one object write (gs://)."""
    text = json.dumps(obj, indent=2, default=str)
    if "://" in path:
        from etils import epath
        epath.Path(path).write_text(text)
        return
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


# --- command line --------------------------------------------------------------------------------------


def _pairs(values: Sequence[str] | None, what: str) -> list[tuple[str, str]]:
    out = []
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise SweepError(f"{what} takes KEY=VALUE, got {value!r}")
        out.append((key.removeprefix("config."), rest))
    return out


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", nargs="?", help=f"one of {sorted(SWEEPS)}, or a config file (configs/...py)")
    p.add_argument("--root", help="directory (local or gs://) holding one work directory per arm")
    p.add_argument("--tiny", action="store_true", help="the CPU variants (config argument `tiny`)")
    p.add_argument("--args", nargs="+", help="config arguments (arms) of a config file, or a subset of a sweep's")
    p.add_argument("--seeds", nargs="+", type=int, help="repeat every arm per seed (sets the configs' seeds)")
    p.add_argument("--policy", help="RL / RM starting policy (run or Hugging Face directory)")
    p.add_argument("--prm", help="a trained process reward model (`dsmath rm` run); default: train one")
    p.add_argument("--orm", help="a trained outcome reward model (`dsmath rm` run); default: train one")
    p.add_argument("--models", nargs="+", metavar="NAME=DIR", help="models to evaluate (evaluation sweeps)")
    p.add_argument("--eval", action="store_true", help="pre-training sweeps: evaluate every trained model")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="--config.KEY=VALUE for every arm whose config has KEY")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry_run", action="store_true", help="print the commands")
    mode.add_argument("--emit", choices=("tpu_vm", "gpu"), help="print a bash script of launcher commands")
    mode.add_argument("--collect", action="store_true", help="only gather the arms' summaries into the results")
    mode.add_argument("--list", action="store_true", help="list the predefined sweeps and their arms")
    p.add_argument("--results", help="results JSON (default: <root>/results.json)")
    p.add_argument("--dsmath", default=f"{shlex.quote(sys.executable)} -m dsmath_jax.cli",
                   help="how to call dsmath for local runs (default: this python -m dsmath_jax.cli)")
    return p.parse_args(argv), extra


def list_sweeps(root: str, tiny: bool) -> str:
    lines = []
    for name, (_, title) in SWEEPS.items():
        lines.append(f"{name}: {title}")
        opts = Options(root=root, tiny=tiny, policy=None if tiny else "POLICY", models=None if tiny else
                       {"instruct": "INSTRUCT_DIR", "rl": "RL_DIR"})
        try:
            for arm in build(name, opts):
                lines.append(f"  {arm.name:<48} dsmath {arm.command} {arm.config_flag}")
        except SweepError as e:
            lines.append(f"  ({e})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.list:
            print(list_sweeps(args.root or "ROOT", args.tiny))
            return 0
        if not args.sweep or not args.root:
            raise SweepError("a sweep (name or config file) and --root are required (see --help)")
        root = args.root
        local_mode = not (args.dry_run or args.emit)
        if local_mode and "://" not in root:
            root = str(pathlib.Path(root).resolve())  # local runs work in the repository root
        models = dict(_pairs(args.models, "--models")) if args.models else None
        opts = Options(root=root, tiny=args.tiny, args=args.args, seeds=args.seeds, policy=args.policy,
                       prm=args.prm, orm=args.orm, models=models, eval=args.eval, sets=_pairs(args.set, "--set"))
        arms = build(args.sweep, opts)
    except SweepError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(dry_run(arms, extra))
        return 0
    if args.emit:
        sys.stdout.write(emit(arms, extra, args.emit, args.sweep, args.root))
        return 0
    outcome = None if args.collect else run_local(arms, extra, shlex.split(args.dsmath))
    results = collect(arms, extra, args.sweep, root, outcome)
    path = args.results or join(root, "results.json")
    write_json(path, results)
    print(json.dumps({"results": path, "counts": results["counts"]}))
    return 0 if all(r["status"] in DONE for r in results["arms"]) or args.collect else 1


if __name__ == "__main__":
    sys.exit(main())
