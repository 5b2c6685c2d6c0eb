"""dsmath_jax.evals.deepseek.tool against DeepSeek-Math's own harness (tests/fixtures/deepseek, made by
experiments/fixtures/deepseek_tool_fixtures.py from their code at commit b8b0f8c).

Tool-integrated loop: every scenario's scripted model is replayed through our `run_tool_loop` (grouped into
batches as the reference run was) and every model call (text sent, stop strings, token budget) and the final
transcript must equal theirs byte for byte. PoT: our `pal_answer` must give their `program_output` and the last
line of their traceback. Scenarios whose programs run into the 10 s timeout replay with a 1 s timeout: the
texts are the same, only the wait is shorter.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path

import pytest
import timeout_decorator

from dsmath_jax.data.tokenizers import HFTokenizer
from dsmath_jax.evals.deepseek.tool import (
    MAX_NEW_TOKENS,
    HarnessExecutor,
    execute_programs,
    harness_code,
    harness_exec_info,
    harness_lines,
    pal_answers,
    run_tool_loop,
)

FIXTURES = Path(__file__).parent / "fixtures" / "deepseek"
MARKER = re.compile(r"\[(?:tool|pal)-[a-z]+\d+\]")
SHORT_TIMEOUT_S = 1.0


def _read(name: str) -> list[dict]:
    with open(FIXTURES / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


TOOL = _read("tool_loop.jsonl")
META = TOOL[0]
SCENARIOS = [row for row in TOOL if row["kind"] == "tool"]
PAL = _read("pal_answers.jsonl")
BENCHMARK = {"PALGSMPrompt": "gsm8k", "PALMathPrompt": "math"}


def _executor(timeout: bool) -> HarnessExecutor:
    """Their executor as the reference run had it: its file paths, its stack, and its timeout (shortened)."""
    return HarnessExecutor(timeout_s=SHORT_TIMEOUT_S if timeout else 10.0, stack_depth=META["stack_depth"],
                           recursion_frames=META["recursion_frames"], executor_file=META["executor_file"],
                           max_workers=2)


def scripted_model(scenarios: list[dict], calls: dict[str, list]):
    """The reference run's model: the next turn of the prompt's scenario, cut before the first stop string."""
    turns = {f"[tool-{row['id']}]": row["script"] for row in scenarios}

    def generate(texts: list[str], max_new_tokens: int, stops: list[str]) -> list[tuple[str, str]]:
        out = []
        for text in texts:
            key = MARKER.search(text).group(0)
            made = calls.setdefault(key, [])
            made.append({"text": text, "stops": list(stops), "max_tokens": max_new_tokens})
            turn, end = turns[key][len(made) - 1]
            hits = [turn.find(stop) for stop in stops if stop in turn]
            if hits:
                out.append((turn[:min(hits)], "stop_string"))
            else:
                out.append((turn, "stop_token" if end == "eos" else "length"))
        return out

    return generate


@functools.cache
def replay(group: str) -> dict[str, tuple[list[dict], object]]:
    """Runs one reference batch through our loop: scenario id -> (our calls, our trace)."""
    scenarios = [row for row in SCENARIOS if row["group"] == group]
    options = scenarios[0]["options"]
    calls: dict[str, list] = {}
    traces = run_tool_loop(scripted_model(scenarios, calls), [row["calls"][0]["text"] for row in scenarios],
                           stop_words=options["stop_words"], concise_errors=options["concise_errors"],
                           tokenizer=HFTokenizer(FIXTURES / "tool_tokenizer.json", eos_token=META["eos"]),
                           executor=_executor(group in META["timeout_groups"]))
    return {row["id"]: (calls[f"[tool-{row['id']}]"], trace) for row, trace in zip(scenarios, traces)}


# Programs refused for "input(" / "os.system(" (the harness raises RuntimeError before running them): their
# traceback is the only one that shows the harness executor's own source lines, which we do not reproduce
# (their code is not copied into ours), so the shown text differs; the concise form ("RuntimeError") still
# matches (c05 and the PoT refusal).
NOT_REPRODUCED = {"t25", "t26", "t27"}
NOT_REPRODUCED_REASON = ("source lines of the harness's executor are not reproduced (their code is not copied "
                         "into ours)")


def _scenario(row: dict):
    marks = [pytest.mark.xfail(reason=NOT_REPRODUCED_REASON, strict=True)] if row["id"] in NOT_REPRODUCED else []
    return pytest.param(row, marks=marks, id=f"{row['group']}-{row['id']}")


@pytest.mark.parametrize("row", [_scenario(row) for row in SCENARIOS])
def test_tool_loop_matches_the_harness(row):
    ours, trace = replay(row["group"])[row["id"]]
    theirs = row["calls"]
    assert len(ours) == len(theirs), "number of model calls"
    for k, (mine, ref) in enumerate(zip(ours, theirs)):
        assert mine["text"] == ref["text"], f"text of call {k + 1}"
        assert ref["stops"][0] == META["eos"]  # the harness's eos stop: our sampler always stops at eos
        assert mine["stops"] == ref["stops"][1:], f"stops of call {k + 1}"
        assert mine["max_tokens"] == ref["max_tokens"] == MAX_NEW_TOKENS
    assert trace.transcript == row["transcript"]
    assert trace.program_output == row["program_output"]


@pytest.mark.parametrize("row", PAL, ids=[row["id"] for row in PAL])
def test_pal_answer_matches_the_harness(row):
    answers = _pal_batch(row["few_shot_prompt"], bool(row.get("timeout")))
    assert answers[row["id"]] == (row["program_output"], row["concise_exec_info"])


@functools.cache
def _pal_batch(prompt_class: str, timeout: bool) -> dict[str, tuple[str, str]]:
    rows = [r for r in PAL if r["few_shot_prompt"] == prompt_class and bool(r.get("timeout")) == timeout]
    got = pal_answers([r["completion"] for r in rows], benchmark=BENCHMARK[prompt_class],
                      executor=_executor(timeout))
    return {r["id"]: answer for r, answer in zip(rows, got)}


def test_fixture_coverage():
    """The reference covers what the loop can do: errors, timeouts, the second generation, both error styles."""
    assert len(SCENARIOS) >= 60 and len(PAL) >= 50
    transcripts = "\n".join(row["transcript"] for row in SCENARIOS)
    for text in ("Runtime errors: Timeout Error", "TimeoutError: 'Timed Out'", "Runtime errors: in f",
                 " ... ", "[Previous line repeated", "site-packages/sympy", "\n```output\n\n```\n"):
        assert text in transcripts, text
    assert any(turn[1] == "length" for row in SCENARIOS for turn in row["script"])
    assert {row["language"] for row in SCENARIOS} == {"en", "zh"}
    assert {r["program_output"] for r in PAL} >= {"", "[invalid]", "3/4", "None"}


def test_defaults_are_the_harness_measurements():
    """HarnessExecutor's defaults: the reference run's paths, its stack as run as a script, 10 s."""
    default = HarnessExecutor()
    assert default.executor_file == META["executor_file"]
    assert default.stack_depth == META["harness_stack_depth"]
    assert default.recursion_frames == META["recursion_frames"]
    assert default.timeout_s == 10.0


def test_program_rules_by_hand():
    """extract_code and process_generation_to_code on hand-worked texts."""
    text = "```python\nx = 1\nprint(x)\n    print(x)\n```\nok\n```python\nprint(x + 1)\n```"
    assert harness_code(text) == "x = 1\n    print(x)\nprint(x + 1)"
    assert harness_code(text + "\nmore") == ""  # must end with a fence
    assert harness_code("see ```a``` then\n```python\nb = 2\n```") == "see\nb = 2"
    assert harness_lines('  # note\nx = 1\n"""doc"""\n"""\nmulti\n"""\ny = 2') == [
        "  # comments", "x = 1", '"""comments"""', "", "y = 2"]
    raw = ('Traceback (most recent call last):\n  File "/h/python_executor.py", line 89, in execute\n'
           '    exec(code_piece, self._global_vars)\n  File "<string>", line 2, in <module>\n'
           '  File "<string>", line 1, in g\n  File "/x/lib/site-packages/sympy/core.py", line 7, in h\n'
           '    return 1/0\nZeroDivisionError: division by zero\n')
    assert harness_exec_info(raw) == ('  in g\n  File "site-packages/sympy/core.py", in h\n    return 1/0\n'
                                      'ZeroDivisionError: division by zero')


def test_refused_program_names_the_harness_frames():
    """The NOT_REPRODUCED traceback as we give it: the harness executor's frames by file, line and function
    (without their source), around the real timeout_decorator's frame with its source line."""
    [run] = execute_programs(["n = int(input())\nprint(n)"], executor=_executor(False))
    lines = run.exec_info.splitlines()
    executor, decorator = META["executor_file"], timeout_decorator.timeout_decorator.__file__
    assert [line for line in lines if line.startswith("  File ")] == [
        f'  File "{executor}", line 89, in execute', f'  File "{decorator}", line 82, in new_function',
        f'  File "{executor}", line 28, in exec_code']
    assert lines[0] == "Traceback (most recent call last):" and lines[-1] == run.concise_exec_info == "RuntimeError"
    assert lines[2:4] == [f'  File "{decorator}", line 82, in new_function', "    return function(*args, **kwargs)"]
    assert lines[-2] == f'  File "{executor}", line 28, in exec_code'  # no source line of theirs
    assert run.result == ""


def test_loop_contract_errors():
    def ok(texts, _n, _stops):
        return [("x", "stop_token") for _ in texts]

    with pytest.raises(ValueError, match="tokenizer"):
        run_tool_loop(ok, ["p"])
    with pytest.raises(ValueError, match="finish_reason"):
        run_tool_loop(lambda texts, _n, _stops: [("x", "stop") for _ in texts], ["p"], concise_errors=True)
    with pytest.raises(ValueError, match="results"):
        run_tool_loop(lambda _texts, _n, _stops: [], ["p"], concise_errors=True)
    [trace] = run_tool_loop(ok, ["  p"], concise_errors=True)
    assert (trace.prompt, trace.transcript, trace.finished, len(trace.rounds)) == ("p", "x", True, 1)
    seen = []
    block = "```python\nprint(1)\n```"

    def code(texts, _n, stops):
        return seen.append(stops) or [(block, "stop_string")] * len(texts)

    [trace] = run_tool_loop(code, ["p"], execute=False, max_rounds=1)  # --no-execution
    assert seen == [[]] and trace.rounds[0].program == "" and trace.transcript == block
    assert dataclasses.replace(HarnessExecutor(), timeout_s=2.0).sandbox_limits().wall_seconds == 3.0


def test_a_forged_driver_report_does_not_crash_the_batch():
    """A program can find the driver's report mark through its frames and print a report of the wrong shape;
    that run gets no report (its own output is what it showed), the others in the batch are unaffected."""
    forge = r'''import sys, os
mark = ""
f = sys._getframe()
while f is not None and not mark:
    for scope in (f.f_locals, f.f_globals):
        for v in list(scope.values()):
            if isinstance(v, dict) and isinstance(v.get("mark"), str):
                mark = v["mark"]
            elif isinstance(v, str) and v.startswith("\x1edeepseek-executor-"):
                mark = v
    f = f.f_back
assert mark
os.write(1, (mark + "{}\n").encode())
os._exit(0)'''
    forged, fine = execute_programs([forge, "print(6 * 7)"], executor=_executor(False))
    assert forged.result == "" and "deepseek-executor-" in forged.sandbox.stdout  # the mark was found and used
    assert fine.result.strip() == "42"
