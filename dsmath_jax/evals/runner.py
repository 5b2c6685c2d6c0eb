"""Evaluation runs: prompts -> samples -> (programs executed) -> answers graded -> metrics and result files.

Modes (PAPER.md §7): `few_shot_cot` (base models), `few_shot_pot` (PAL programs, executed in the sandbox;
their output is the answer), `zero_shot_cot` (instruct / RL models, chat format) and `tool` (tool-integrated:
generate until "```output", run the python blocks, append the output, continue; at most 2 rounds).

Metrics per benchmark: accuracy of the first sample (greedy when temperature is 0), pass@k (unbiased
estimator) and maj@k (votes grouped by equivalence) for every k <= n, and accuracy by subject and level.
Files written to `output_dir`: `<benchmark>.<mode>.jsonl` (every prompt, completion, extracted answer and
verdict), `summary.json` and `summary.md`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from dsmath_jax.evals.benchmarks import Problem, get_benchmark, load_benchmark
from dsmath_jax.evals.grader import Grader
from dsmath_jax.evals.metrics import accuracy_breakdown, group_answers, pass_at_k
from dsmath_jax.evals.prompts import MODES, build_prompt
from dsmath_jax.evals.sandbox import SandboxLimits
from dsmath_jax.evals.tool_loop import run_program_of_thought, run_tool_loop
from dsmath_jax.generate import Sampler, SamplingParams
from dsmath_jax.train.rundir import write_atomic, write_json

log = logging.getLogger(__name__)

TOOL_STOP = "```output"


@dataclasses.dataclass
class EvalSpec:
    """What to evaluate: benchmarks, the protocol mode, and how to sample."""

    benchmarks: Sequence[str]
    mode: str = "few_shot_cot"
    n: int = 1  # samples per problem
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    limit: int | None = None  # first `limit` problems of each benchmark
    ks: Sequence[int] = (1,)  # pass@k and maj@k reported for these k (<= n)
    seed: int = 0
    max_tool_rounds: int = 2

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown evaluation mode {self.mode!r}; expected one of {MODES}")
        bad = [k for k in self.ks if not 1 <= k <= self.n]
        if bad:
            raise ValueError(f"ks {bad} must lie in [1, n={self.n}]")
        for name in self.benchmarks:
            get_benchmark(name)


def _write_jsonl(path: str, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _samples(sampler: Sampler, spec: EvalSpec, prompts: list[str], stops: tuple[str, ...]) -> list[list[dict]]:
    """Per prompt, `n` dicts {completion, answer_text, program_output?, rounds?, finish_reason, tokens}."""
    params = SamplingParams(max_new_tokens=spec.max_new_tokens, temperature=spec.temperature, top_p=spec.top_p,
                            n=spec.n, stop_strings=stops, seed=spec.seed)
    if spec.mode in ("few_shot_cot", "zero_shot_cot"):
        results = sampler.generate(prompts, params, progress=True)
        return [[{"completion": c.text, "answer_text": c.text, "finish_reason": c.finish_reason,
                  "tokens": len(c.tokens)} for c in per_prompt] for per_prompt in results]
    if spec.mode == "few_shot_pot":
        results = sampler.generate(prompts, params, progress=True)
        out = []
        for per_prompt in results:
            rows = []
            for c in per_prompt:
                executed = run_program_of_thought(c.text)
                output = executed.stdout.strip() if executed.ok else ""
                rows.append({"completion": c.text, "answer_text": output, "program_output": output,
                             "program_error": executed.error, "finish_reason": c.finish_reason,
                             "tokens": len(c.tokens)})
            out.append(rows)
        return out
    # tool-integrated: every sample is its own trajectory
    step_params = dataclasses.replace(params, n=1, stop_strings=tuple(stops) + (TOOL_STOP,))
    calls = {"count": 0}

    def generate(texts: list[str]) -> list[str]:
        calls["count"] += 1
        step = dataclasses.replace(step_params, seed=spec.seed + 7919 * calls["count"])
        continued = sampler.generate(texts, step)
        return [c.text + (TOOL_STOP if c.stop == TOOL_STOP else "") for [c] in continued]

    expanded = [p for p in prompts for _ in range(spec.n)]
    traces = run_tool_loop(generate, expanded, max_rounds=spec.max_tool_rounds, limits=SandboxLimits())
    out = []
    for i in range(len(prompts)):
        rows = []
        for trace in traces[i * spec.n:(i + 1) * spec.n]:
            rows.append({"completion": trace.completion, "answer_text": trace.completion, "rounds": trace.rounds,
                         "finish_reason": "tool"})
        out.append(rows)
    return out


def evaluate_benchmark(sampler: Sampler, name: str, spec: EvalSpec, grader: Grader, *,
                       data_dir: str | None = None) -> tuple[dict[str, Any], list[dict]]:
    """Runs one benchmark; returns (metrics, result rows)."""
    benchmark = get_benchmark(name)
    problems: list[Problem] = load_benchmark(name, data_dir, limit=spec.limit)
    built = [build_prompt(benchmark, p, spec.mode) for p in problems]
    prompts = [prompt for prompt, _ in built]
    samples = _samples(sampler, spec, prompts, built[0][1])
    items = [(s["answer_text"], p.gold, benchmark.kind, p.options) for p, per in zip(problems, samples) for s in per]
    verdicts = iter(grader.grade(items))
    rows, per_problem = [], []
    for p, prompt, per in zip(problems, prompts, samples):
        graded = []
        for k, s in enumerate(per):
            v = next(verdicts)
            rows.append({"benchmark": name, "mode": spec.mode, "id": p.id, "sample": k, "prompt": prompt,
                         **{key: val for key, val in s.items() if key != "answer_text"},
                         "extracted": v.extracted, "gold": p.gold, "correct": v.correct, "error": v.error,
                         "subject": p.subject, "level": p.level})
            graded.append((v.extracted, v.correct))
        per_problem.append(graded)
    metrics: dict[str, Any] = {"benchmark": name, "mode": spec.mode, "problems": len(problems), "n": spec.n,
                               "accuracy": sum(g[0][1] for g in per_problem) / len(per_problem)}
    same = lambda a, b: grader.same_answer(a, b, benchmark.kind)  # noqa: E731
    # Equivalence classes once per problem (string-equal answers never reach the grader); maj@k votes
    # over the first k samples, and the majority is right when its class's answers are.
    classes = [group_answers([a for a, _ in g], same) if max(spec.ks) > 1 else None for g in per_problem]
    for k in spec.ks:
        metrics[f"pass@{k}"] = sum(pass_at_k(spec.n, sum(c for _, c in g), k) for g in per_problem) / len(per_problem)
        maj = 0
        for g, cls in zip(per_problem, classes):
            votes = Counter(c for c in (cls[:k] if cls is not None else [0 if g[0][0] is not None else None])
                            if c is not None)
            if votes:
                winner = min(votes, key=lambda c: (-votes[c], c))  # ties: the class seen first
                maj += g[winner][1]
        metrics[f"maj@{k}"] = maj / len(per_problem)
    first = [r for r in rows if r["sample"] == 0]
    metrics["breakdown"] = accuracy_breakdown(first, keys=("subject", "level"))
    return metrics, rows


def run_eval(sampler: Sampler, spec: EvalSpec, output_dir: str, *, data_dir: str | None = None,
             grader: Grader | None = None, extra: dict | None = None) -> dict[str, Any]:
    """Evaluates every benchmark of `spec`; writes result rows, summary.json and summary.md to output_dir
    (a local path or gs://...)."""
    own = grader is None
    grader = grader or Grader()
    summary: dict[str, Any] = {"spec": dataclasses.asdict(spec), **(extra or {}), "results": []}
    try:
        for name in spec.benchmarks:
            metrics, rows = evaluate_benchmark(sampler, name, spec, grader, data_dir=data_dir)
            _write_jsonl(os.path.join(output_dir, f"{name}.{spec.mode}.jsonl"), rows)
            summary["results"].append(metrics)
            log.info("%s (%s): accuracy %.4f on %d problems", name, spec.mode, metrics["accuracy"],
                     metrics["problems"])
    finally:
        if own:
            grader.close()
    write_json(os.path.join(output_dir, "summary.json"), summary, ensure_ascii=False)
    write_atomic(os.path.join(output_dir, "summary.md"), summary_table(summary["results"], spec.ks))
    return summary


def summary_table(results: list[dict], ks: Sequence[int]) -> str:
    """A Markdown table: benchmark, mode, problems, accuracy and pass@k / maj@k in percent."""
    head = ["benchmark", "mode", "problems", "n", "accuracy"] + [f"pass@{k}" for k in ks] + [f"maj@{k}" for k in ks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["benchmark"], r["mode"], str(r["problems"]), str(r["n"]), f"{100 * r['accuracy']:.1f}"]
        cells += [f"{100 * r[f'pass@{k}']:.1f}" for k in ks] + [f"{100 * r[f'maj@{k}']:.1f}" for k in ks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
