"""Program-of-thought and tool-integrated execution, as the public DeepSeek-Math harness does it (PAPER.md §7).

Model-independent: the caller brings a `generate(texts) -> continuations` function (our sampler stopping at
"```output"); programs run in the sandbox (`dsmath_jax.evals.sandbox.run_python`).

Tool-integrated loop (harness `infer/run_tool_integrated_eval.py`), for a batch of prompts:

1. generate a continuation of every unfinished trajectory, stopping at "```output";
2. if it ends by closing a ```python block (with the stop string kept, or dropped as vLLM does) and has not
   given a \\boxed{} answer without asking for output, run that block *together with the trajectory's earlier
   blocks* (`build_program`: the harness concatenates all cells so variables persist; earlier cells lose their
   top-level `print(` lines so old output is not repeated; a cell that failed fails again);
3. append "\\n```output\\n{output}\\n```\\n" (`format_output_block`: stdout, or the error's last line,
   truncated to first 50 + "..." + last 50 characters beyond 100);
4. repeat for the trajectories that ran code, `max_rounds` (2) generations in all. As in the harness the
   output of the last round's program is appended but not continued; answer extraction then falls back to
   the last ```output block (PAPER.md §7).

Deviations, all for texts the harness would mishandle: text before the first ```python is never taken for
code, a generation that says "```output" without a python block just ends, and comment lines are not
rewritten (the harness replaces them with "# comments", which changes nothing else).

Program-of-thought (harness `infer/run_pal_eval.py`): PAL GSM8K programs define `solution()` and its return
value is the answer; PAL MATH completions hold a program block and an imports block, the imports run first and
the global `answer` is the answer; anything else is a plain program whose printed output is the answer.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from dsmath_jax.evals.sandbox import ExecutionResult, SandboxLimits, run_python

__all__ = ["TOOL_STOP", "PROTOCOL_OUTPUT_CHARS", "ToolTrace", "extract_code_blocks", "last_program",
           "build_program", "truncate_output", "format_output_block", "run_tool_loop", "pot_program",
           "run_program_of_thought"]

TOOL_STOP = "```output"
PROTOCOL_OUTPUT_CHARS = 100  # the harness shows outputs longer than this as first 50 + "..." + last 50

Executor = Callable[..., ExecutionResult]


def extract_code_blocks(text: str) -> list[str]:
    """The closed ```python blocks of `text`, stripped, empty ones dropped (the harness's block rule)."""
    blocks = []
    for piece in text.split("```python")[1:]:
        if "```" in piece:
            block = piece.split("```", 1)[0].strip()
            if block:
                blocks.append(block)
    return blocks


def last_program(text: str) -> str:
    """The last closed ```python block of `text` ("" if none)."""
    blocks = extract_code_blocks(text)
    return blocks[-1] if blocks else ""


def build_program(blocks: Sequence[str]) -> str:
    """The program the harness runs for the last cell: earlier cells (minus top-level print lines) + the last.

    Harness rule, kept verbatim: a line of an earlier cell is kept if it is indented by four spaces, starts
    with "import" or "def ", or does not contain "print(".
    """
    if not blocks:
        return ""
    code = []
    for block in blocks[:-1]:
        for line in block.split("\n"):
            if line.startswith("    ") or line.startswith("import") or line.startswith("def "):
                code.append(line)
            elif "print(" not in line:
                code.append(line)
    return ("\n".join(code) + "\n" + blocks[-1]).strip()


def _harness_program(completion: str) -> str:
    """The harness's `extract_code`: only when the completion ends by closing a code block."""
    if not completion.strip().endswith("```"):
        return ""
    return build_program(extract_code_blocks(completion))


def truncate_output(text: str, limit: int = PROTOCOL_OUTPUT_CHARS) -> str:
    """The harness's prompt truncation: beyond `limit` characters, first half + "..." + last half."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + "..." + text[-half:]


_FRAME = re.compile(r'(?P<start>.*)File "(?P<file>.*)", line (?P<lno>\d+), (?P<end>.*)')


def _runtime_errors(result: ExecutionResult) -> str:
    """The harness's non-concise error text: the traceback below the program's top level, paths shortened."""
    if result.error == "timeout" or not result.stderr.strip():
        return result.error_line
    lines = result.stderr.strip().split("\n")
    if lines and lines[0].startswith("Traceback"):
        lines = lines[1:]
    kept = []
    skip_source = False
    for line in lines:
        frame = _FRAME.match(line)
        if frame is not None:
            skip_source = "<module>" in frame.group("end")
            if skip_source:
                continue
            fname = frame.group("file")
            if "site-packages" in fname:
                short = "site-packages" + fname.split("site-packages", 1)[1]
                line = f'{frame.group("start")}File "{short}", {frame.group("end")}'
            else:
                line = f'{frame.group("start")}{frame.group("end")}'
        elif skip_source and line.startswith("    "):
            continue  # the source line of a dropped top-level frame
        else:
            skip_source = False
        kept.append(line)
    text = "\n".join(kept).strip()
    if len(text) > 400:  # the harness keeps 50 + 50 tokens; about 200 + 200 characters
        text = f"{text[:200].strip()} ... {text[-200:].strip()}"
    return f"Runtime errors: {text}"


def format_output_block(result: ExecutionResult, *, concise: bool = True) -> str:
    """"```output\\n{output}\\n```\\n" as the harness builds it from one execution.

    The program's stdout (stripped, truncated as the protocol does); when there is none (failed runs, or a
    program that printed nothing and failed), the error: with `concise` its last line ("ZeroDivisionError:
    division by zero", "Timeout Error"), else the harness's default "Runtime errors: <traceback>". A program
    that succeeds silently gives an empty block. As in the harness, output printed before an exception is
    not shown.
    """
    finished = result.returncode == 0 and result.error != "timeout"
    text = truncate_output(result.stdout.strip()) if finished else ""
    if not text and not result.ok:
        text = truncate_output(result.error_line.strip()) if concise else _runtime_errors(result)
    return f"```output\n{text.strip()}\n```\n"


@dataclasses.dataclass
class ToolTrace:
    """One tool-integrated trajectory: the completion (without the prompt) and what ran in it."""

    prompt: str
    completion: str = ""
    programs: list[str] = dataclasses.field(default_factory=list)
    results: list[ExecutionResult] = dataclasses.field(default_factory=list)
    rounds: int = 0  # executions
    generations: int = 0


def _ends_with_python_block(text: str) -> bool:
    start = text.rfind("```python")
    if start < 0:
        return False
    rest = text[start + len("```python"):]
    return rest.endswith("```") and rest.count("```") == 1


def _execute(executor: Executor, programs: list[str], limits: SandboxLimits,
             max_workers: int | None) -> list[ExecutionResult]:
    if not programs:
        return []

    def one(program: str) -> ExecutionResult:  # an injected executor that raises fails its run, not the batch
        try:
            return executor(program, limits=limits)
        except Exception as e:  # noqa: BLE001
            message = f"sandbox failure: {type(e).__name__}: {e}"
            return ExecutionResult("", "", False, message, None, 0.0, error_line=message)

    if len(programs) == 1 or max_workers == 1:
        return [one(p) for p in programs]
    workers = max_workers or min(len(programs), os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # each run is a subprocess: threads only wait
        return list(pool.map(one, programs))


def run_tool_loop(generate: Callable[[list[str]], list[str]], prompts: Sequence[str], *, max_rounds: int = 2,
                  limits: SandboxLimits = SandboxLimits(),  # noqa: B008 - a frozen dataclass
                  executor: Executor = run_python,
                  max_workers: int | None = None, concise: bool = True) -> list[ToolTrace]:
    """Runs the tool-integrated protocol (module docstring) for a batch; one `ToolTrace` per prompt.

    `generate(texts)` gets prompt + completion-so-far for the unfinished trajectories and returns one
    continuation each, stopped at (and optionally ending with) TOOL_STOP. At most `max_rounds` calls to
    `generate` and as many executions per trajectory.
    """
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    traces = [ToolTrace(prompt=p) for p in prompts]
    active = list(range(len(traces)))
    for _ in range(max_rounds):
        if not active:
            break
        outputs = generate([traces[i].prompt + traces[i].completion for i in active])
        if len(outputs) != len(active):
            raise ValueError(f"generate returned {len(outputs)} continuations for {len(active)} texts")
        jobs: list[tuple[int, str]] = []
        for i, output in zip(active, outputs):
            trace = traces[i]
            trace.generations += 1
            asked = output.rstrip().endswith(TOOL_STOP)
            body = output.rstrip()[:-len(TOOL_STOP)] if asked else output
            body = body.rstrip()
            trace.completion += body
            if not asked and (not _ends_with_python_block(body) or "\\boxed" in body):
                continue  # finished: an answer, the end of text, or the token budget
            program = _harness_program(trace.completion)
            if program:
                jobs.append((i, program))
        results = _execute(executor, [p for _, p in jobs], limits, max_workers)
        for (i, program), result in zip(jobs, results):
            trace = traces[i]
            trace.programs.append(program)
            trace.results.append(result)
            trace.rounds += 1
            trace.completion += "\n" + format_output_block(result, concise=concise)
        active = [i for i, _ in jobs]
    return traces


def pot_program(text: str) -> tuple[str, str | None]:
    """(program, answer expression) for a program-of-thought completion, as the harness's PAL runner reads it.

    PAL MATH (fenced program, then a fenced imports block): imports + program, answer `answer`; exactly four
    fences are required, else the harness's "answer = '[invalid]'". PAL GSM8K (`def solution(`): the text,
    answer `solution()`. Otherwise the text itself (a ```python block if there is one), answer printed.
    """
    if "def solution(" in text and "```" not in text:
        return text, "solution()"
    if "```python" in text:
        return last_program(text), None
    if "```" in text:
        if text.count("```") != 4:
            return "answer = '[invalid]'", "answer"
        segments = text.split("```")
        program, imports = (re.sub(r"\A(?:python|py)[ \t]*\n", "", s) for s in (segments[1], segments[3]))
        return f"{imports}\n\n{program}", "answer"
    return text, None


def run_program_of_thought(code_text: str, *, limits: SandboxLimits = SandboxLimits(),  # noqa: B008 - frozen
                           executor: Executor = run_python) -> ExecutionResult:
    """Executes a program-of-thought completion; `stdout` and `answer` hold its answer (see `pot_program`).

    With an answer expression, str() of its value is the answer and the program's own prints are dropped,
    as in the harness; for plain programs the stripped printed output is the answer.
    """
    program, expression = pot_program(code_text)
    if expression is None:
        result = executor(program, limits=limits)
        if result.ok:
            result.answer = result.stdout.strip()
        return result
    mark = f"<<pot-answer-{secrets.token_hex(8)}>>"
    epilogue = (f"\n\nimport sys as _pot_sys\n_pot_value = str({expression})\n"
                f"_pot_sys.stdout.write('\\n{mark}' + _pot_value + '\\n')\n")
    result = executor(program + epilogue, limits=limits)
    _, found, answer = result.stdout.rpartition(mark)
    if found:
        result.stdout = answer.strip()
        result.answer = result.stdout if result.ok else None
    return result
