r"""The paper's RL findings at CPU scale, over seeds, with statistics: Figure 5 (the unified paradigm's methods
from one SFT policy), Figure 6 (iterative GRPO) and Figure 7 (RL raises maj@k, not pass@k); PAPER.md §4-§5.

For each seed:
  1. SFT a tiny policy (configs/sft/arithmetic.py:tiny with that seed): the `sft` arm, every arm's start.
  2. If an arm needs one (grpo_process_prm, iterative_grpo), a process reward model trained from the SFT
     policy's samples with Math-Shepherd labels (configs/rm/prm_math_shepherd.py:tiny, `dsmath rm`).
  3. Each RL arm from the SFT policy for `--steps` steps, held-out greedy accuracy every `--eval-every` steps
     (Figures 5 and 6):
       rft, online_rft, dpo, ppo, grpo_outcome   configs/rl/paradigm.py:<arm>,tiny
       grpo_process_prm     configs/rl/paradigm.py:grpo_process,tiny with reward.kind=prm, rule_weight 0 and
                            the seed's PRM (reward.rm_dir): GRPO+PS as the paper runs it
       grpo_process_oracle  configs/rl/paradigm.py:grpo_process,tiny as it is: the task's exact step checker
                            (reward.kind=step_rule) as an oracle PRM
       iterative_grpo       configs/rl/iterative_grpo.py:tiny: 2 iterations of `--iteration-steps` steps, the
                            seed's PRM retrained after each with 10% replay
  4. maj@k and pass@k for k = 1, 2, 4, ..., `--k` from one set of `--k` samples per problem at temperature 0.7
     (Figure 7) of the SFT policy and of every arm's final policy (iterative GRPO: after each iteration): pass@k
     is the unbiased estimator of Chen et al. 2021 (dsmath_jax.evals.metrics.pass_at_k), maj@k the mean vote
     over the `--k`/k disjoint blocks of k samples (each block voting as dsmath_jax.evals.metrics.maj_at_k).

Everything goes to `<out>/results.json`, rewritten (atomically) after every run with the statistics of
dsmath_jax/analysis/paradigm.py so far: per arm and metric the mean over seeds with a 95% Student-t interval,
and for each ordering the paper claims (online RFT > RFT, GRPO+OS > online RFT, GRPO+PS > GRPO+OS, PPO vs GRPO,
iteration 2 > iteration 1 > SFT, maj@K gain vs pass@K gain) the paired per-seed differences, their mean with
its t-interval, an exact sign-flip permutation p-value and a verdict. notebooks/rl_findings.ipynb draws the
figures with error bars.

  python experiments/rl_findings.py --out runs/rl_findings                       # 5 seeds, every arm
  python experiments/rl_findings.py --out runs/rl_findings --seeds 0 1 --arms grpo_outcome grpo_process_oracle
  python experiments/rl_findings.py --out runs/rl_findings_hard --task '{"knobs": {"max_steps": 3}}'

`--task` names the arithmetic problem spec of every stage (the SFT data, the RL and the reward model's
problems): a JSON object (dsmath_jax.data.tasks; kind "arithmetic" is implied) or the name of a constant of
dsmath_jax.data.arithmetic (e.g. ARITHMETIC_TINY, the tiny configs' own and the default). A task whose question
and solution exceed the tiny SFT config's 128 tokens (three distractors, four steps) needs `--sft-seq-len 192`,
else its SFT examples are truncated. XLA's CPU math runs on one thread (as in the quickstart: single-threaded
Eigen and a one-thread intra-op pool), so a rerun gives the same numbers on any number of cores. (The recorded
experiments in experiments/results/ were run before the pool was limited, with the 2-thread pool of a 2-core
machine: a rerun with this code differs from them in the last bits, then in sampled tokens.)

Runs resume: a stage whose run directory holds a completed summary is reused (its evaluations too), so a
stopped experiment continues where it was; the seeds, steps and task must stay the same per `--out`.
Wall time on 2 CPU cores at the defaults, measured on the recorded experiment (experiments/results/
rl_findings_level1.json, every arm over 5 seeds, two or three processes splitting the seeds, so each stage
shared the cores): SFT ~2.3 min and its evaluation ~1 min per seed, a PRM ~1.2 min, an RL arm 2-6 min (PPO and
iterative GRPO the longest) plus 0.5-1.3 min of evaluation; 2.74 h of training and 0.60 h of evaluation in all,
about 2 hours of wall clock. Run seeds in parallel with `--seeds` on one `--out`, then once with every seed
(everything reused) for the combined results.json. The smoke run (1 seed, 2 RL steps of 4 questions, k = 4 on 8
problems; --sft-steps 20 --rm-steps 4 --rm-problems 8), mostly compilation: SFT 72 s + 58 s evaluation, PRM
198 s, GRPO+OS 183 s + 16 s, GRPO+PS (PRM) 114 s + 10 s; 11 min in all. Each run's wall time and the
experiment's are recorded in results.json (`wall_s`, `eval_wall_s`, `elapsed_s`); a run directory's
`findings_timing.json` keeps its training time across resumptions.
"""

from __future__ import annotations

import os

# 8 host devices as in the tests (the tiny configs' FSDP meshes); before JAX starts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse
import copy
import dataclasses
import json
import math
import pathlib
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from dsmath_jax.analysis.paradigm import paradigm_statistics
from dsmath_jax.config import load_config
from dsmath_jax.config.loader import validate
from dsmath_jax.data import arithmetic
from dsmath_jax.data.tasks import load_problems, problem_spec
from dsmath_jax.data.tokenizers import Tokenizer
from dsmath_jax.evals.grader import Grader
from dsmath_jax.evals.metrics import maj_at_k, pass_at_k
from dsmath_jax.generate import Sampler, SamplingParams
from dsmath_jax.generate.engine import make_sampler
from dsmath_jax.parallel.mesh import get_params, make_mesh, rules_from_config
from dsmath_jax.rl.rollout import encode_prompts
from dsmath_jax.train.restore import load_run
from dsmath_jax.train.rundir import read_json, write_json

REPO = pathlib.Path(__file__).resolve().parents[1]
SFT_CONFIG = "configs/sft/arithmetic.py:tiny"
PRM_CONFIG = "configs/rm/prm_math_shepherd.py:tiny"
ITERATIVE = "iterative_grpo"


@dataclasses.dataclass(frozen=True)
class Arm:
    """One RL arm: its config file and argument, overrides on top, and whether it needs the seed's PRM."""

    config: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    needs_prm: bool = False


RL_ARMS: dict[str, Arm] = {
    "rft": Arm("configs/rl/paradigm.py:rft,tiny"),
    "online_rft": Arm("configs/rl/paradigm.py:online_rft,tiny"),
    "grpo_outcome": Arm("configs/rl/paradigm.py:grpo_outcome,tiny"),
    "grpo_process_prm": Arm("configs/rl/paradigm.py:grpo_process,tiny",
                            {"reward.kind": "prm", "reward.rule_weight": 0.0}, needs_prm=True),
    "grpo_process_oracle": Arm("configs/rl/paradigm.py:grpo_process,tiny"),
    "ppo": Arm("configs/rl/paradigm.py:ppo,tiny"),
    "dpo": Arm("configs/rl/paradigm.py:dpo,tiny"),
    ITERATIVE: Arm("configs/rl/iterative_grpo.py:tiny", needs_prm=True),
}
ARMS = ("sft", *RL_ARMS)  # sft: the starting policy itself, evaluated (always run: every comparison needs it)


# ------------------------------------------------------------------------------------------- the task
def parse_task(text: str | None) -> dict[str, Any] | None:
    """`--task`: None / "" (the configs' own task), a JSON object, or the name of a mapping constant of
    dsmath_jax.data.arithmetic; returns the checked problem spec (kind "arithmetic" added when missing)."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--task {text!r}: not valid JSON ({e})") from None
    elif text.isidentifier():
        spec = getattr(arithmetic, text, None)
        if not isinstance(spec, Mapping):
            names = sorted(n for n in dir(arithmetic) if n.isupper() and isinstance(getattr(arithmetic, n), Mapping))
            raise ValueError(f"--task {text!r}: dsmath_jax.data.arithmetic has no problem spec of that name; its "
                             f"specs are {names}")
    else:
        raise ValueError(f"--task {text!r}: expected a JSON object or the name of a spec in "
                         "dsmath_jax.data.arithmetic (e.g. ARITHMETIC_TINY)")
    if not isinstance(spec, Mapping):
        raise ValueError(f"--task {text!r}: expected a JSON object, got {type(spec).__name__}")
    spec = copy.deepcopy(dict(spec))
    spec.setdefault("kind", "arithmetic")
    if spec["kind"] != "arithmetic":
        raise ValueError(f"--task {text!r}: kind {spec['kind']!r}; the SFT policy is trained on the arithmetic task "
                         "(kind 'arithmetic')")
    try:
        return problem_spec(spec)
    except ValueError as e:
        raise ValueError(f"--task {text!r}: {e}") from None


def _apply_sft_task(c, task: Mapping[str, Any]) -> None:
    """The SFT config's arithmetic source (inside `data.sources[0]`) set to `task`."""
    outer = dict(c.data.sources[0])
    inner = [dict(s) for s in outer.get("sources", [])]
    hits = [i for i, s in enumerate(inner) if s.get("kind") == "arithmetic"]
    if not hits:
        raise ValueError(f"{SFT_CONFIG}: data.sources[0] has no arithmetic source to apply --task to: {outer}")
    for i in hits:
        inner[i]["arithmetic"] = {k: v for k, v in task.items() if k != "kind"}
    outer["sources"] = inner
    c.data.sources = [outer] + list(c.data.sources[1:])


def _load(spec: str, overrides: Mapping[str, Any], command: str, task: Mapping[str, Any] | None,
          apply_task: Callable[[Any, Mapping[str, Any]], None]):
    """A config with `overrides`, then the task applied, validated for `command`."""
    c = load_config(spec, dict(overrides), root=REPO)
    if task is not None:
        with c.unlocked():
            apply_task(c, task)
    validate(c, command, where=spec)
    return c


def sft_config(seed: int, args, task: Mapping[str, Any] | None):
    steps = args.sft_steps
    overrides: dict[str, Any] = {"seed": seed, "data.seed": seed, "train.steps": steps, "train.tensorboard": False,
                                 "train.checkpoint_every": min(150, steps), "train.eval_every": min(150, steps)}
    if args.sft_seq_len:  # a task with longer problems than the config's context would be truncated
        overrides["data.seq_len"] = args.sft_seq_len
    return _load(SFT_CONFIG, overrides, "sft", task, _apply_sft_task)


def prm_config(seed: int, sft_dir: str, args, task: Mapping[str, Any] | None):
    overrides: dict[str, Any] = {"seed": seed, "init.run_dir": sft_dir, "sampling.seed": seed, "labels.seed": seed + 1,
                                 "train.seed": seed, "train.tensorboard": False}
    if args.rm_steps:
        overrides.update({"train.steps": args.rm_steps, "train.eval_every": max(1, args.rm_steps // 2),
                          "train.checkpoint_every": max(1, args.rm_steps // 2)})
    if args.rm_problems:
        overrides["data.limit_per_source"] = args.rm_problems
    return _load(PRM_CONFIG, overrides, "rm", task, lambda c, t: setattr(c.data, "problems", [dict(t)]))


def rl_config(arm: str, seed: int, sft_dir: str, prm_dir: str | None, args, task: Mapping[str, Any] | None):
    spec = RL_ARMS[arm]
    steps = args.iteration_steps if arm == ITERATIVE else args.steps
    overrides: dict[str, Any] = {
        "seed": seed, "data.seed": seed, "init.run_dir": sft_dir, "train.steps_per_iteration": steps,
        "train.checkpoint_every": steps, "train.keep_checkpoints": 2, "train.tensorboard": False,
        # Greedy accuracy along the way (every iteration's end included); maj@k / pass@k come from this script.
        "eval.every": math.gcd(args.eval_every, steps) if arm == ITERATIVE else args.eval_every,
        "eval.samples": 0, "eval.n_problems": args.eval_problems, **spec.overrides}
    if spec.needs_prm:
        if not prm_dir:
            raise ValueError(f"arm {arm} needs the seed's process reward model (reward.rm_dir)")
        overrides["reward.rm_dir"] = prm_dir
    if args.questions_per_step:
        overrides["rollout.questions_per_step"] = args.questions_per_step
    return _load(spec.config, overrides, "rl", task, lambda c, t: setattr(c.data, "problems", dict(t)))


# ------------------------------------------------------------------------------------------- maj@k / pass@k
def k_values(k: int) -> list[int]:
    """1, 2, 4, ... up to `k`, and `k` itself."""
    if k < 1:
        raise ValueError(f"--k must be >= 1, got {k}")
    out = [2 ** i for i in range(k.bit_length()) if 2 ** i <= k]
    return out + ([k] if out[-1] != k else [])


def maj_pass_at_ks(per_problem: Sequence[Sequence[tuple[str | None, bool]]], ks: Sequence[int]) -> dict[str, Any]:
    """maj@k and pass@k for each k of `ks` from the same n samples per problem ((answer, correct) each, answers
    compared as strings: the grader's normalised forms): pass@k is the unbiased estimator averaged over
    problems; maj@k votes in each of the n // k disjoint blocks of k consecutive samples (ties: the answer
    seen first) and averages the blocks, then the problems. {ks, maj, pass, sample_accuracy}."""
    if not per_problem:
        raise ValueError("maj@k / pass@k need at least one problem")
    n = len(per_problem[0])
    if any(len(s) != n for s in per_problem):
        raise ValueError("every problem needs the same number of samples")
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ValueError(f"k {bad} outside [1, n={n}]")
    same = lambda a, b: a == b  # noqa: E731 - answers are compared after the grader's normalisation
    maj, passes = [], []
    for k in ks:
        passes.append(float(np.mean([pass_at_k(n, sum(bool(c) for _, c in s), k) for s in per_problem])))
        maj.append(float(np.mean([np.mean([maj_at_k(list(s[b * k:(b + 1) * k]), k, same) for b in range(n // k)])
                                  for s in per_problem])))
    accuracy = float(np.mean([bool(c) for s in per_problem for _, c in s]))
    return {"ks": list(ks), "maj": maj, "pass": passes, "sample_accuracy": accuracy}


class PolicyEvaluator:
    """Greedy accuracy and maj@k / pass@k (one set of k samples per problem) of saved policies. One sampler per
    tokenizer lineage (`lineage`: the SFT run the policy descends from), new weights swapped in, one grader."""

    def __init__(self, grader: Grader, settings: Mapping[str, Any]):
        self.grader, self.settings = grader, dict(settings)
        self.mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
        self.rules = rules_from_config(None)
        self._lineage: str | None = None
        self._sampler: Sampler | None = None
        self._tokenizer: Tokenizer | None = None

    def __call__(self, run_dir: str, step: int | None, lineage: str) -> dict[str, Any]:
        s = self.settings
        t0 = time.perf_counter()
        model, tokenizer = load_run(run_dir, mesh=self.mesh, rules=self.rules, step=step)
        if self._lineage != lineage or self._sampler is None or self._tokenizer is None:
            self._sampler = make_sampler("continuous", model, tokenizer, rows=s["sampler_rows"], chunk_size=16,
                                         mesh=self.mesh, rules=self.rules)
            self._lineage, self._tokenizer = lineage, tokenizer
        sampler, tokenizer = self._sampler, self._tokenizer
        sampler.update_params(get_params(model))
        del model
        problems = load_problems(s["task"], "test")[:s["eval_problems"]]
        prompts, dropped = encode_prompts(tokenizer, problems, s["template"], s["max_prompt_tokens"])
        kept = [(p, ids) for p, ids in zip(problems, prompts) if ids is not None]
        if not kept:
            raise ValueError(f"no held-out problem has a prompt within {s['max_prompt_tokens']} tokens")
        problems, ids = [p for p, _ in kept], [i for _, i in kept]
        greedy = sampler.generate(ids, SamplingParams(max_new_tokens=s["max_new_tokens"], temperature=0.0, n=1))
        verdicts = self.grader.grade([(g[0].text, p.answer, p.kind) for p, g in zip(problems, greedy)])
        out: dict[str, Any] = {"step": step, "greedy": float(np.mean([v.correct for v in verdicts])),
                               "eval_problems": len(problems), "prompts_too_long": dropped}
        n, sub = s["k"], problems[:s["k_problems"]]
        sampled = sampler.generate(ids[:len(sub)], SamplingParams(max_new_tokens=s["max_new_tokens"],
                                                                  temperature=s["temperature"], n=n, seed=s["seed"]))
        flat = self.grader.grade([(x.text, p.answer, p.kind) for p, g in zip(sub, sampled) for x in g])
        per = [[(v.extracted, v.correct) for v in flat[i * n:(i + 1) * n]] for i in range(len(sub))]
        out.update(maj_pass_at_ks(per, k_values(n)), samples=n, k_problems=len(sub), temperature=s["temperature"])
        sampler.release_params()
        out["wall_s"] = time.perf_counter() - t0
        return out


# ------------------------------------------------------------------------------------------- the experiment
def _completed(workdir: pathlib.Path) -> dict | None:
    path = workdir / "summary.json"
    if path.exists():
        summary = read_json(path)
        if summary.get("status") == "completed":
            return summary
    return None


def _timed(workdir: pathlib.Path, run: Callable[[], dict]) -> tuple[dict, float | None]:
    """(summary, wall seconds) of the stage in `workdir`: reused when completed (its recorded wall time), else
    run and its wall time recorded in `findings_timing.json`."""
    timing = workdir / "findings_timing.json"
    summary = _completed(workdir)
    if summary is not None:
        return summary, (read_json(timing).get("wall_s") if timing.exists() else None)
    t0 = time.perf_counter()
    summary = run()
    wall = time.perf_counter() - t0
    if summary.get("status") == "completed":
        write_json(timing, {"wall_s": wall})
    return summary, wall


class Experiment:
    """The runs of one `--out` directory and results.json (see the module docstring)."""

    def __init__(self, args, task: dict | None):
        self.args, self.task, self.out = args, task, pathlib.Path(args.out)
        self.records: dict[tuple[str, int], dict] = {}
        self.reward_models: dict[int, dict] = {}
        self.failed: list[str] = []
        self.t0 = time.perf_counter()
        previous = self.out / "results.json"
        self.invocations = read_json(previous).get("invocations", []) if previous.exists() else []
        self.invocations = [i for i in self.invocations if isinstance(i, dict)]
        self.invocations.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "elapsed_s": 0.0,
                                 "argv": list(args.argv)})
        rl = rl_config("grpo_outcome", 0, "unused", None, args, task)
        self.eval_settings = {
            "task": rl.data.problems.to_dict(), "template": rl.data.template,
            "max_prompt_tokens": rl.data.max_prompt_tokens,
            "max_new_tokens": rl.eval.max_new_tokens or rl.rollout.max_new_tokens, "eval_problems": args.eval_problems,
            "k": args.k, "k_problems": min(args.k_problems or args.eval_problems, args.eval_problems),
            "temperature": args.temperature, "seed": 12345, "sampler_rows": rl.rollout.sampler_batch_size}

    # ---------------------------------------------------------------------------------- results
    def results(self) -> dict[str, Any]:
        a = self.args
        runs = [self.records[key] for key in sorted(self.records, key=lambda k: (k[1], ARMS.index(k[0])))]
        self.invocations[-1]["elapsed_s"] = time.perf_counter() - self.t0
        walls = [r.get(key) or 0.0 for r in runs for key in ("wall_s", "eval_wall_s")]
        walls += [m.get("wall_s") or 0.0 for m in self.reward_models.values()]
        results: dict[str, Any] = {
            "experiment": "rl_findings", "format": 2, "arms": list(a.arms), "seeds": list(a.seeds), "steps": a.steps,
            "iteration_steps": a.iteration_steps, "eval_every": a.eval_every, "k": a.k, "ks": k_values(a.k),
            "temperature": a.temperature, "eval_problems": a.eval_problems,
            "k_problems": self.eval_settings["k_problems"], "sft_steps": a.sft_steps,
            "sft_seq_len": a.sft_seq_len or None, "task": self.task,
            "runs": runs, "reward_models": [self.reward_models[s] for s in sorted(self.reward_models)],
            "complete": len(runs) == len(a.arms) * len(a.seeds) and all(r["status"] == "completed" for r in runs),
            "failed": list(self.failed), "wall_s": float(sum(walls)),
            "elapsed_s": float(sum(i["elapsed_s"] for i in self.invocations)), "invocations": self.invocations}
        results["statistics"] = paradigm_statistics(results, a.level)
        return results

    def save(self) -> None:
        write_json(self.out / "results.json", self.results())

    # ---------------------------------------------------------------------------------- stages
    def _evaluate(self, evaluator: PolicyEvaluator, run_dir: pathlib.Path, step: int | None, lineage: str) -> dict:
        """The evaluation of `run_dir` at `step` (None: latest), reused from its file when the settings match."""
        path = run_dir / f"findings_eval_step{step if step is not None else 'latest'}.json"
        settings = {k: v for k, v in self.eval_settings.items() if k != "sampler_rows"}
        if path.exists():
            saved = read_json(path)
            if saved.get("settings") == json.loads(json.dumps(settings)):
                return saved["result"]
        result = evaluator(str(run_dir), step, lineage)
        write_json(path, {"settings": settings, "result": result})
        return result

    def sft(self, seed: int, evaluator: PolicyEvaluator) -> str:
        from dsmath_jax.train.loop import train
        workdir = self.out / f"sft_seed{seed}"
        c = sft_config(seed, self.args, self.task)
        summary, wall = _timed(workdir, lambda: train(c, str(workdir), task="sft"))
        if summary.get("status") != "completed":
            raise RuntimeError(f"the SFT run {workdir} ended with status {summary.get('status')!r}")
        ev = self._evaluate(evaluator, workdir, None, str(workdir))
        self.records[("sft", seed)] = {
            "arm": "sft", "seed": seed, "workdir": str(workdir), "status": "completed", "steps": 0,
            "sft_steps": summary.get("step"), "wall_s": wall, "eval_wall_s": ev.get("wall_s"),
            "eval_history": [{"step": 0, "eval_accuracy": ev["greedy"]}], "maj_pass": ev}
        return str(workdir)

    def prm(self, seed: int, sft_dir: str) -> str:
        from dsmath_jax.commands.rm import run as run_rm
        workdir = self.out / f"prm_seed{seed}"
        c = prm_config(seed, sft_dir, self.args, self.task)
        summary, wall = _timed(workdir, lambda: run_rm(c, str(workdir)))
        self.reward_models[seed] = {"seed": seed, "workdir": str(workdir), "status": summary.get("status"),
                                    "wall_s": wall, "eval": summary.get("eval"), "labels": summary.get("labels")}
        if summary.get("status") != "completed":
            raise RuntimeError(f"the reward model {workdir} ended with status {summary.get('status')!r}")
        return str(workdir)

    def rl(self, arm: str, seed: int, sft_dir: str, prm_dir: str | None, evaluator: PolicyEvaluator) -> None:
        from dsmath_jax.rl.loop import run_rl
        workdir = self.out / f"{arm}_seed{seed}"
        c = rl_config(arm, seed, sft_dir, prm_dir, self.args, self.task)
        M, iterations = c.train.steps_per_iteration, c.train.iterations
        summary, wall = _timed(workdir, lambda: run_rl(c, str(workdir)))
        record: dict[str, Any] = {"arm": arm, "seed": seed, "workdir": str(workdir), "status": summary.get("status"),
                                  "steps": M * iterations, "steps_per_iteration": M, "iterations": iterations,
                                  "wall_s": wall, "eval_history": summary.get("eval_history", []),
                                  "reward_model": prm_dir if RL_ARMS[arm].needs_prm else None}
        self.records[(arm, seed)] = record
        if summary.get("status") != "completed":
            raise RuntimeError(f"the RL run {workdir} ended with status {summary.get('status')!r}")
        if summary.get("step") != M * iterations:
            raise RuntimeError(f"{workdir} finished at step {summary.get('step')} but this experiment runs "
                               f"{M * iterations} steps: use another --out for other --steps")
        evals = [self._evaluate(evaluator, workdir, it * M, sft_dir) for it in range(1, iterations + 1)]
        record.update(maj_pass=evals[-1], eval_wall_s=sum(e.get("wall_s") or 0.0 for e in evals))
        if iterations > 1:
            record["iteration_evals"] = [{"iteration": it, "step": it * M, "maj_pass": e}
                                         for it, e in enumerate(evals, 1)]

    # ---------------------------------------------------------------------------------- the loop
    def run(self) -> int:
        a = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        rl_arms = [arm for arm in a.arms if arm != "sft"]
        total, done = len(a.seeds) * len(a.arms), 0

        def progress(arm: str, seed: int, what: str) -> None:
            print(f"[{done}/{total} runs, {time.perf_counter() - self.t0:.0f} s] seed {seed} {arm}: {what}",
                  flush=True)

        with Grader() as grader:
            evaluator = PolicyEvaluator(grader, self.eval_settings)
            for seed in a.seeds:
                progress("sft", seed, f"SFT ({a.sft_steps} steps) and its evaluation")
                try:
                    sft_dir = self.sft(seed, evaluator)
                except Exception as e:  # noqa: BLE001 - recorded; the other seeds still run
                    self._failed("sft", seed, e)
                    done += len(a.arms)
                    self.save()
                    continue
                done += 1
                self.save()
                prm_dir = None
                if any(RL_ARMS[arm].needs_prm for arm in rl_arms):
                    progress("prm", seed, "process reward model (Math-Shepherd labels)")
                    try:
                        prm_dir = self.prm(seed, sft_dir)
                    except Exception as e:  # noqa: BLE001 - recorded; the arms without a PRM still run
                        self._failed("prm", seed, e)
                    self.save()
                for arm in rl_arms:
                    if RL_ARMS[arm].needs_prm and prm_dir is None:
                        self._failed(arm, seed, RuntimeError("no process reward model for this seed"))
                        done += 1
                        continue
                    progress(arm, seed, "RL run and its evaluation")
                    try:
                        self.rl(arm, seed, sft_dir, prm_dir, evaluator)
                    except Exception as e:  # noqa: BLE001 - recorded; one failed arm does not stop the others
                        self._failed(arm, seed, e)
                    done += 1
                    self.save()
                    rec = self.records.get((arm, seed), {})
                    progress(arm, seed, f"{rec.get('status')}; train {rec.get('wall_s') or 0:.0f} s, "
                                        f"evaluation {rec.get('eval_wall_s') or 0:.0f} s")
        self.save()
        summary = self.results()
        print(json.dumps({"wall_s": summary["wall_s"], "elapsed_s": summary["elapsed_s"],
                          "findings": [{k: r[k] for k in ("claim", "n", "mean_diff", "low", "high", "p_value",
                                                           "verdict")}
                                       for r in summary["statistics"]["findings"]]}, indent=2))
        print(f"results: {self.out / 'results.json'}", flush=True)
        return 1 if self.failed else 0

    def _failed(self, arm: str, seed: int, error: BaseException) -> None:
        """Records a stage that raised (the run's status becomes "failed" unless it ended otherwise) and goes on."""
        message = f"seed {seed} {arm}: {type(error).__name__}: {error}"
        self.failed.append(message)
        if arm != "prm":
            rec = self.records.setdefault((arm, seed), {"arm": arm, "seed": seed, "workdir": None,
                                                        "eval_history": []})
            if rec.get("status") in (None, "completed"):
                rec["status"] = "failed"
            rec["error"] = message
        traceback.print_exception(error)
        print(f"FAILED {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for the runs and results.json")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS,
                   help="arms to run (sft, every arm's start, is always run)")
    p.add_argument("--steps", type=int, default=40, help="RL steps of each single-iteration arm")
    p.add_argument("--iteration-steps", type=int, default=20, help="steps per iteration of iterative GRPO (2 of them)")
    p.add_argument("--eval-every", type=int, default=10, help="held-out greedy accuracy every N RL steps")
    p.add_argument("--eval-problems", type=int, default=256, help="held-out problems for greedy accuracy")
    p.add_argument("--k", type=int, default=64, help="samples per problem for maj@k / pass@k, k = 1, 2, 4, ..., K")
    p.add_argument("--k-problems", type=int, default=128,
                   help="held-out problems sampled K times (the first of --eval-problems; 0: all of them)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of maj@k / pass@k")
    p.add_argument("--sft-steps", type=int, default=450)
    p.add_argument("--sft-seq-len", type=int, default=0,
                   help="SFT context length in tokens (0: the tiny config's 128; longer tasks need more)")
    p.add_argument("--rm-steps", type=int, default=0, help="PRM training steps (0: the tiny config's)")
    p.add_argument("--rm-problems", type=int, default=0, help="PRM labelling problems (0: the tiny config's)")
    p.add_argument("--questions-per-step", type=int, default=0, help="RL questions per step (0: the configs')")
    p.add_argument("--task", default="", help="the arithmetic problem spec: JSON or a dsmath_jax.data.arithmetic name")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if "sft" not in args.arms:
        args.arms = ["sft", *args.arms]
    args.arms = [arm for arm in ARMS if arm in args.arms]  # the paper's order, once each
    for name in ("steps", "iteration_steps", "eval_every", "eval_problems", "k", "sft_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.sft_seq_len < 0:
        p.error(f"--sft-seq-len {args.sft_seq_len}: a context length in tokens, or 0 for the config's")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds {args.seeds}: repeated seeds")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # XLA's CPU matrix products on one thread: a rerun gives the same numbers on any core count (as the quickstart)
    from dsmath_jax.quickstart.config import make_cpu_math_deterministic
    make_cpu_math_deterministic()
    task = parse_task(args.task)
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # runs of one experiment share their compiled programs
        jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(args.out).resolve() / ".jax_cache"))
    return Experiment(args, task).run()


if __name__ == "__main__":
    sys.exit(main())
