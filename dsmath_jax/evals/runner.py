"""Evaluation runs: prompts -> samples -> (programs executed) -> answers graded -> metrics and result files.

Modes (PAPER.md §7): `few_shot_cot` (base models), `few_shot_pot` (PAL programs, executed in the sandbox;
their output is the answer), `zero_shot_cot` (instruct / RL models, chat format) and `tool` (tool-integrated:
generate until "```output", run the python blocks, append the output, continue; at most 2 rounds).

Two protocols (`EvalSpec.protocol`):

* ``"deepseek"`` (the default, to reproduce the paper's tables): prompts, stops, the tool loop, program
  execution, answer extraction and equivalence exactly as DeepSeek-Math's public harness
  (`dsmath_jax.evals.deepseek`), bugs included; defined for the (benchmark, mode) pairs the harness has.
* ``"strict"``: our prompts and tool loop (`dsmath_jax.evals.prompts`, `tool_loop`) and the strict grader
  (`dsmath_jax.evals.grader`), the one RL rewards use: semantically correct, no leniency to exploit.

Whichever protocol generates, every sample is graded by both (the DeepSeek verdict where the harness defines
the benchmark and mode), so each run reports `accuracy_deepseek` and `accuracy_strict` side by side;
`accuracy`, pass@k and maj@k are the protocol's own.

Metrics per benchmark: accuracy of the first sample (greedy when temperature is 0), pass@k (unbiased
estimator) and maj@k (votes grouped by strict equivalence of the extracted answers) for every k <= n, and
accuracy by subject and level. Files written to `output_dir`: `<benchmark>.<mode>.jsonl` (every prompt,
completion, extracted answer and verdict under both protocols), `summary.json` and `summary.md`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from dsmath_jax.config.eval import MODES, PROTOCOLS
from dsmath_jax.evals import deepseek
from dsmath_jax.evals.benchmarks import Problem, get_benchmark, load_benchmark
from dsmath_jax.evals.deepseek import tool as deepseek_tool
from dsmath_jax.evals.grader import Grader, Verdict
from dsmath_jax.evals.metrics import accuracy_breakdown, group_answers, pass_at_k
from dsmath_jax.evals.prompts import build_prompt
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
    protocol: str = "deepseek"  # "deepseek" (the harness's, exactly) or "strict" (module docstring)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown evaluation mode {self.mode!r}; expected one of {MODES}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; expected one of {PROTOCOLS}")
        if self.protocol == "deepseek":
            missing = [name for name in self.benchmarks if (name, self.mode) not in deepseek.PROTOCOL]
            if missing:
                raise ValueError(f"DeepSeek-Math's harness does not evaluate {missing} in mode {self.mode!r} "
                                 f"(it defines {sorted(deepseek.PROTOCOL)}); use protocol='strict' for them")
        bad = [k for k in self.ks if not 1 <= k <= self.n]
        if bad:
            raise ValueError(f"ks {bad} must lie in [1, n={self.n}]")
        for name in self.benchmarks:
            get_benchmark(name)


def _write_jsonl(path: str, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _samples(sampler: Sampler, spec: EvalSpec, benchmark: str, prompts: list[str],
             stops: tuple[str, ...]) -> list[list[dict]]:
    """Per prompt, `n` dicts {completion, answer_text, program_output?, rounds?, finish_reason, tokens}:
    `answer_text` is what both graders read (the completion; a PoT program's output; a tool transcript)."""
    params = SamplingParams(max_new_tokens=spec.max_new_tokens, temperature=spec.temperature, top_p=spec.top_p,
                            n=spec.n, stop_strings=stops, seed=spec.seed)
    if spec.mode in ("few_shot_cot", "zero_shot_cot"):
        results = sampler.generate(prompts, params, progress=True)
        return [[{"completion": c.text, "answer_text": c.text, "finish_reason": c.finish_reason,
                  "tokens": len(c.tokens)} for c in per_prompt] for per_prompt in results]
    if spec.mode == "few_shot_pot":
        results = sampler.generate(prompts, params, progress=True)
        completions = [c for per_prompt in results for c in per_prompt]
        executed: Sequence[tuple[str, str | None]]  # (program output, error) per completion
        if spec.protocol == "deepseek":  # the harness's program cut, execution context and answer value
            executed = deepseek_tool.pal_answers([c.text for c in completions], benchmark=benchmark)
        else:
            runs = [run_program_of_thought(c.text) for c in completions]
            executed = [(r.stdout.strip() if r.ok else "", r.error) for r in runs]
        # The strict grader reads a program's printed output as the last "```output" block, whole.
        rows = [{"completion": c.text, "answer_text": out, "strict_text": f"```output\n{out}\n```",
                 "program_output": out, "program_error": err or None, "finish_reason": c.finish_reason,
                 "tokens": len(c.tokens)} for c, (out, err) in zip(completions, executed)]
        return [rows[i * spec.n:(i + 1) * spec.n] for i in range(len(prompts))]
    # tool-integrated: every sample is its own trajectory
    expanded = [p for p in prompts for _ in range(spec.n)]
    calls = {"count": 0}

    def sample(texts: list[str], max_new_tokens: int, stop_strings: Sequence[str]):
        calls["count"] += 1
        step = dataclasses.replace(params, n=1, max_new_tokens=max_new_tokens, stop_strings=tuple(stop_strings),
                                   seed=spec.seed + 7919 * calls["count"])
        return [c for [c] in sampler.generate(texts, step)]

    flat: list[dict[str, Any]]
    if spec.protocol == "deepseek":
        harness_traces = deepseek_tool.run_tool_loop(
            lambda texts, budget, stop: [(c.text, c.finish_reason) for c in sample(texts, budget, stop)],
            expanded, max_new_tokens=spec.max_new_tokens, max_rounds=spec.max_tool_rounds,
            tokenizer=sampler.tokenizer)
        flat = [{"completion": t.transcript, "answer_text": t.transcript, "rounds": len(t.rounds),
                 "program_output": t.program_output, "finish_reason": t.rounds[-1].finish_reason}
                for t in harness_traces]
    else:
        def generate(texts: list[str]) -> list[str]:
            return [c.text + (TOOL_STOP if c.stop == TOOL_STOP else "")
                    for c in sample(texts, spec.max_new_tokens, tuple(stops) + (TOOL_STOP,))]

        traces = run_tool_loop(generate, expanded, max_rounds=spec.max_tool_rounds, limits=SandboxLimits())
        flat = [{"completion": t.completion, "answer_text": t.completion, "rounds": t.rounds,
                 "finish_reason": "tool"} for t in traces]
    return [flat[i * spec.n:(i + 1) * spec.n] for i in range(len(prompts))]


def _record(problem: Problem) -> dict[str, Any]:
    """The file's record of a loaded problem (`load_benchmark` keeps it: the harness reads its own fields)."""
    if problem.record is None:
        raise ValueError(f"problem {problem.benchmark}/{problem.id} has no source record for DeepSeek-Math's harness")
    return problem.record


def evaluate_benchmark(sampler: Sampler, name: str, spec: EvalSpec, grader: Grader, *,
                       data_dir: str | None = None) -> tuple[dict[str, Any], list[dict]]:
    """Runs one benchmark; returns (metrics, result rows)."""
    benchmark = get_benchmark(name)
    problems: list[Problem] = load_benchmark(name, data_dir, limit=spec.limit)
    graded_by_deepseek = (name, spec.mode) in deepseek.PROTOCOL
    harness_items = [deepseek.process(name, _record(p), p.index) for p in problems] if graded_by_deepseek else []
    items: Sequence[dict[str, Any] | None] = harness_items if graded_by_deepseek else [None] * len(problems)
    if spec.protocol == "deepseek":  # EvalSpec checked that the harness defines (name, mode): harness_items is full
        built = [deepseek.build_prompt(name, item, spec.mode) for item in harness_items]
    else:
        built = [build_prompt(benchmark, p, spec.mode) for p in problems]
    prompts = [prompt for prompt, _ in built]
    samples = _samples(sampler, spec, name, prompts, built[0][1])
    flat = [(p, item, s) for p, item, per in zip(problems, items, samples) for s in per]
    # OCW's golds are physical quantities given to a few significant figures (the strict grader's sig_figs rule)
    strict = grader.grade([(s.get("strict_text", s["answer_text"]), p.gold, benchmark.kind, p.options,
                            name == "ocw") for p, _, s in flat])
    harness: Sequence[Verdict | None] = (
        grader.grade_deepseek([(name, spec.mode, item, s["answer_text"]) for _, item, s in flat])
        if graded_by_deepseek else [None] * len(flat))
    rows, per_problem = [], []
    verdicts = iter(zip(strict, harness))
    for p, prompt, per in zip(problems, prompts, samples):
        graded = []
        for k, s in enumerate(per):
            v_strict, v_deepseek = next(verdicts)
            v = v_strict
            if spec.protocol == "deepseek":
                assert v_deepseek is not None  # graded_by_deepseek holds for every protocol="deepseek" spec
                v = v_deepseek
            rows.append({"benchmark": name, "mode": spec.mode, "protocol": spec.protocol, "id": p.id, "sample": k,
                         "prompt": prompt,
                         **{key: val for key, val in s.items() if key not in ("answer_text", "strict_text")},
                         "extracted": v.extracted, "gold": p.gold, "correct": v.correct, "error": v.error,
                         "strict_extracted": v_strict.extracted, "strict_correct": v_strict.correct,
                         "deepseek_extracted": v_deepseek and v_deepseek.extracted,
                         "deepseek_correct": v_deepseek and v_deepseek.correct,
                         "subject": p.subject, "level": p.level})
            graded.append((v.extracted, v.correct))
        per_problem.append(graded)
    first = [r for r in rows if r["sample"] == 0]
    metrics: dict[str, Any] = {"benchmark": name, "mode": spec.mode, "protocol": spec.protocol,
                               "problems": len(problems), "n": spec.n,
                               "accuracy": sum(g[0][1] for g in per_problem) / len(per_problem),
                               "accuracy_strict": sum(r["strict_correct"] for r in first) / len(first),
                               "accuracy_deepseek": (sum(r["deepseek_correct"] for r in first) / len(first)
                                                     if graded_by_deepseek else None)}
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
    metrics["breakdown"] = accuracy_breakdown(first, keys=("subject", "level"))
    return metrics, rows


def run_eval(sampler: Sampler, spec: EvalSpec, output_dir: str, *, data_dir: str | None = None,
             grader: Grader | None = None, extra: dict | None = None) -> dict[str, Any]:
    """Evaluates every benchmark of `spec`; writes result rows, summary.json and summary.md to output_dir
    (a local path or gs://...)."""
    own = grader is None
    grader = grader or Grader(timeout=15.0)  # the harness grades each item under a 15 s timeout
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
    """A Markdown table: benchmark, mode, protocol, problems, accuracy (the protocol's, then under each
    protocol) and pass@k / maj@k in percent."""
    head = (["benchmark", "mode", "protocol", "problems", "n", "accuracy", "deepseek", "strict"]
            + [f"pass@{k}" for k in ks] + [f"maj@{k}" for k in ks])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
    for r in results:
        cells = [r["benchmark"], r["mode"], r.get("protocol", "-"), str(r["problems"]), str(r["n"]),
                 pct(r["accuracy"]), pct(r.get("accuracy_deepseek")), pct(r.get("accuracy_strict"))]
        cells += [f"{100 * r[f'pass@{k}']:.1f}" for k in ks] + [f"{100 * r[f'maj@{k}']:.1f}" for k in ks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
