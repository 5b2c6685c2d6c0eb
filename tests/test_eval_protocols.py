"""The eval runner under both protocols, with a scripted sampler: the DeepSeek protocol sends the harness's
prompts and stops (dsmath_jax.evals.deepseek, checked byte for byte against the harness's own output in
test_deepseek_protocol.py / test_deepseek_tool.py), runs its tool loop and PoT execution, and every sample is
graded under both protocols."""

import json

import pytest

from dsmath_jax.evals import deepseek
from dsmath_jax.evals.benchmarks import BENCHMARKS, load_benchmark
from dsmath_jax.evals.prompts import build_prompt
from dsmath_jax.evals.runner import EvalSpec, run_eval
from dsmath_jax.generate.sampler import Completion


class ScriptedSampler:
    """Answers every prompt with `script(prompt, call)` -> (text, finish_reason); records what it was sent."""

    def __init__(self, script):
        self.script, self.calls = script, []
        self.tokenizer = _CharTokenizer()

    def generate(self, prompts, params, progress=False):  # noqa: ARG002 - the runner passes progress=
        self.calls.append((list(prompts), params))
        out = []
        for i, prompt in enumerate(prompts):
            group = []
            for k in range(params.n):
                text, reason = self.script(prompt, len(self.calls))
                group.append(Completion(i, k, [1] * max(1, len(text)), [0.0] * max(1, len(text)), text, reason,
                                        "```output" if reason == "stop_string" else None))
            out.append(group)
        return out


class _CharTokenizer:
    def encode(self, text, **_):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def _rows(path):
    return [json.loads(line) for line in path.open(encoding="utf-8")]


@pytest.fixture(scope="module")
def gsm8k(shared_data):
    return load_benchmark("gsm8k", shared_data / "benchmarks", limit=4)


def test_deepseek_protocol_sends_the_harness_prompts_and_grades_both_ways(gsm8k, shared_data, tmp_path):
    golds = {p.question: p.gold for p in gsm8k}
    wrong = gsm8k[3].question

    def script(prompt, _call):  # the last question's answer is wrong
        question = next(q for q in golds if q in prompt)
        return ("Let's think. The answer is 0." if question == wrong else
                f"She makes so much. The answer is {golds[question]}."), "stop_string"

    sampler = ScriptedSampler(script)
    spec = EvalSpec(benchmarks=["gsm8k"], mode="few_shot_cot", limit=4)
    summary = run_eval(sampler, spec, str(tmp_path), data_dir=str(shared_data / "benchmarks"))
    expected = [deepseek.build_prompt("gsm8k", deepseek.process("gsm8k", p.record, p.index), "few_shot_cot")
                for p in gsm8k]
    [(prompts, params)] = sampler.calls
    assert prompts == [prompt for prompt, _ in expected]
    assert params.stop_strings == expected[0][1] == ("\nQ:",)
    rows = _rows(tmp_path / "gsm8k.few_shot_cot.jsonl")
    assert [r["deepseek_correct"] for r in rows] == [True, True, True, False]
    assert [r["strict_correct"] for r in rows] == [True, True, True, False]
    assert [r["correct"] for r in rows] == [r["deepseek_correct"] for r in rows]
    result = summary["results"][0]
    assert (result["protocol"], result["accuracy"], result["accuracy_deepseek"], result["accuracy_strict"]) == (
        "deepseek", 0.75, 0.75, 0.75)
    assert "| gsm8k | few_shot_cot | deepseek | 4 | 1 | 75.0 | 75.0 | 75.0 |" in (tmp_path / "summary.md").read_text()


def test_strict_protocol_uses_our_prompts_and_still_reports_deepseek(gsm8k, shared_data, tmp_path):
    golds = {p.question: p.gold for p in gsm8k}
    # by gold: "$18" is right for both; a bare "3 bolts" with no answer phrase only the harness's last-number
    # rule reads; 700 for 70000 only its percent leniency (x100) accepts; "540 meters" is right for both
    by_gold = {"18": "The answer is $18.", "3": "So it takes 3 bolts in total.", "70000": "The answer is 700.",
               "540": "The answer is 540 meters."}

    def script(prompt, _call):
        question = next(q for q in golds if q in prompt)
        return by_gold[golds[question]], "stop_string"

    sampler = ScriptedSampler(script)
    spec = EvalSpec(benchmarks=["gsm8k"], mode="few_shot_cot", limit=4, protocol="strict")
    summary = run_eval(sampler, spec, str(tmp_path), data_dir=str(shared_data / "benchmarks"))
    [(prompts, _)] = sampler.calls
    assert prompts == [build_prompt(BENCHMARKS["gsm8k"], p, "few_shot_cot")[0] for p in gsm8k]
    rows = _rows(tmp_path / "gsm8k.few_shot_cot.jsonl")
    assert [r["gold"] for r in rows] == ["18", "3", "70000", "540"]
    assert [r["strict_correct"] for r in rows] == [True, False, False, True]
    assert [r["deepseek_correct"] for r in rows] == [True, True, True, True]
    assert [r["correct"] for r in rows] == [r["strict_correct"] for r in rows]
    result = summary["results"][0]
    assert (result["protocol"], result["accuracy"], result["accuracy_strict"], result["accuracy_deepseek"]) == (
        "strict", 0.5, 0.5, 1.0)
    for r in rows:  # each verdict is the one its own grader gives
        item = deepseek.process("gsm8k", gsm8k[int(r["id"])].record, int(r["id"]))
        assert r["deepseek_correct"] == deepseek.is_correct(
            "gsm8k", item, deepseek.extract("gsm8k", "few_shot_cot", item, r["completion"]))


def test_deepseek_protocol_rejects_modes_the_harness_lacks():
    with pytest.raises(ValueError, match=r"does not evaluate \['mgsm_zh'\] in mode 'few_shot_cot'.*protocol='strict'"):
        EvalSpec(benchmarks=["mgsm_zh"], mode="few_shot_cot")
    EvalSpec(benchmarks=["mgsm_zh"], mode="few_shot_cot", protocol="strict")
    with pytest.raises(ValueError, match="unknown protocol 'lenient'"):
        EvalSpec(benchmarks=["gsm8k"], protocol="lenient")


@pytest.mark.usefixtures("gsm8k")
def test_deepseek_tool_loop_and_pot_through_the_runner(shared_data, tmp_path):
    def tool_script(prompt, _call):
        if "```output" not in prompt:
            return "Compute it.\n```python\nprint(16 - 3 - 4)\n```", "stop_string"
        return "Times two is $\\boxed{18}$.", "stop_token"

    sampler = ScriptedSampler(tool_script)
    spec = EvalSpec(benchmarks=["gsm8k"], mode="tool", limit=1)
    summary = run_eval(sampler, spec, str(tmp_path), data_dir=str(shared_data / "benchmarks"))
    [row] = _rows(tmp_path / "gsm8k.tool.jsonl")
    assert row["completion"] == ("Compute it.\n```python\nprint(16 - 3 - 4)\n```\n```output\n9\n```\n"
                                 "Times two is $\\boxed{18}$.")
    assert row["rounds"] == 2 and row["program_output"] == "9"
    assert [params.stop_strings for _, params in sampler.calls] == [("```output",), ("```output",)]
    assert row["deepseek_correct"] and row["strict_correct"] and summary["results"][0]["accuracy"] == 1.0

    program = "\n\n\ndef solution():\n    return (16 - 3 - 4) * 2\n"
    pot = ScriptedSampler(lambda _prompt, _call: (program, "stop_string"))
    run_eval(pot, EvalSpec(benchmarks=["gsm8k"], mode="few_shot_pot", limit=1), str(tmp_path / "pot"),
             data_dir=str(shared_data / "benchmarks"))
    [row] = _rows(tmp_path / "pot" / "gsm8k.few_shot_pot.jsonl")
    assert row["program_output"] == "18" and row["deepseek_correct"] and row["strict_correct"]
