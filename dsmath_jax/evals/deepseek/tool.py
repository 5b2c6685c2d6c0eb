"""DeepSeek-Math's tool-integrated loop and program-of-thought execution, byte for byte, in our sandbox.

Reproduces what deepseek-ai/DeepSeek-Math `evaluation/` (commit b8b0f8c) shows the model and records:

* `run_tool_loop`: `infer/run_tool_integrated_eval.py` `infer()` on its vLLM path (the one every config of
  the paper uses): the texts sent to the model, the stop strings and token budget of each call, the
  programs cut from the transcript (`extract_code`), the output blocks appended after them, and the final
  transcript (`model_output`, from which answers and the program output are extracted).
* `pal_answer`: `infer/run_pal_eval.py`: the program cut from a few-shot PoT completion
  (`grading.pal_program`), its execution and the `program_output` string its evaluation compares.
* Execution: `eval/python_executor.py` `PythonExecutor` (comment rewriting in `process_generation_to_code`,
  `execute` with a 10 s `timeout_decorator` alarm, pebble's 10 s pool timeout, the stdout / answer-symbol /
  answer-expression modes, the error texts). Programs never run in this process: each runs in
  `sandbox.run_python` inside a small driver (`_DRIVER`) that rebuilds the harness's execution context there:
  an empty global namespace (so `__name__` is "builtins" and `if __name__ == "__main__":` blocks do not
  run), stdout redirected into a buffer, the alarm (the real `timeout_decorator` 0.5.0 package, so its
  frames and source lines show in tracebacks as in the harness), and frames of our own code standing in for
  the harness executor's above the program (named by its file, line numbers and function names; their source
  is not ours and is not reproduced), so that Python formats tracebacks as it does in the harness wherever
  the harness's text rule keeps them; the stack is padded to the harness's depth so that a RecursionError
  reports the same "[Previous line repeated N more times]". The host then applies the harness's text rules.

The tool-integrated loop, for a batch of prompts (each left-stripped, as `infer` does):

1. up to `max_rounds` (the harness's `n_iters = 2`) times, generate for the unfinished trajectories with
   `max_new_tokens` (1024) and the stops ["```output"] + the few-shot prompt's stop words (the harness also
   passes the tokenizer's eos text; our sampler always ends a sequence at the eos token, so it is left out);
2. a trajectory is finished when its generation ended with the eos token (vLLM's `token_ids[-1] ==
   eos_token_id`); a generation stopped by "```output" or by the token budget is not, so a generation
   that hit the budget is continued by the next round (from its right-stripped text);
3. for an unfinished trajectory, `extract_code(transcript + generation)` (`harness_code`): only when the
   right-stripped text ends with "```"; every piece of text.split("```python") that holds a "```" gives
   the stripped text before it (the text before the first ```python too), empty ones dropped; the last
   block runs whole after the earlier blocks, of which only lines that are indented by four spaces, start
   with "import" or "def ", or contain no "print(" are kept;
4. the generation, right-stripped, is appended to prompt and transcript; then for every program the
   "\\n```output\\n{shown}\\n```\\n" block, where `shown` is the program's stripped stdout (first 50 + "..."
   + last 50 characters beyond 100), or, when that is empty (a failure, or a program that printed nothing),
   "Runtime errors: {traceback below the program's top level}" cut to first 50 + " ... " + last 50 tokens
   beyond 100 (`concise_errors=False`, the harness default), or with `concise_errors` (their
   `--use_concise_exec_info`) the traceback's last line cut to 50 + "..." + 50 characters beyond 100;
5. the output of a program run after the last round is appended but never continued.

What the runner must pass in: `generate(texts, max_new_tokens, stops) -> [(text, finish_reason)]` with
the text cut before the first stop string (vLLM drops it) and `finish_reason` our sampler's "stop_token"
(the eos token ended it), "stop_string" or "length"; and, for the default error texts, the model's
tokenizer (`encode(text) -> ids` without special tokens, `decode(ids) -> text`: our
`dsmath_jax.data.tokenizers.Tokenizer`), which stands in for the harness's `tokenizer.tokenize` /
`convert_tokens_to_string`.

Where it can differ from the harness (all rare; none changes a program that runs normally):
* the harness's environment ran programs with Python 3.10 (evaluation/environment.yml) and its math
  libraries (sympy 1.12); ours run with the interpreter and libraries of `sys.executable` (3.11 adds "^^^^"
  lines to tracebacks; sympy's printed forms can change between versions). Our fixtures were made with the
  harness's code on our interpreter, so they check everything but that;
* state never leaks between programs here, while the harness's pool workers are reused (e.g. a `decimal`
  context or a monkeypatched module left by one program is seen by the next in that worker);
* the sandbox's limits apply (memory, processes, no network, no writes outside its scratch directory);
  the harness has none, so a program that needs them fails here with the sandbox's error;
* a program that kills its own interpreter (`os._exit`, a signal) shows the sandbox's error line; in
  the harness its pool worker dies and the whole evaluation aborts;
* timeouts: the harness stops a program twice over at 10 s, by the alarm (a traceback ending in
  "TimeoutError: 'Timed Out'") and by pebble ("Timeout Error"), and which comes first is a race that the
  alarm nearly always wins; we give the alarm's outcome, and "Timeout Error" when the program does not get
  back to the interpreter or catches the alarm's exception (the sandbox stops it `grace_s` later). The
  harness's workers have sympy and numpy imported, so importing them here counts against the 10 s unless
  they are in `HarnessExecutor.preload`;
* RecursionError tracebacks: in the harness "[Previous line repeated N more times]" is one less in a worker's
  first few programs than later (CPython's specialising interpreter); we give the later value;
* vLLM 0.2.0 (their environment) tests stop strings with `endswith` after each token, so a token that runs
  past the end of "```output" does not stop the generation; our sampler stops at the first occurrence;
* the traceback of a program refused for containing "input(" or "os.system(" (the harness raises
  RuntimeError before running it) is the one text the model sees that is not cut below the program, and its
  frames of the harness's executor show no source lines here (the harness's show its lines 89 and 28): the
  output block differs (in our fixtures, 3 of the tool-loop scenarios); its last line ("RuntimeError", the
  concise form and PoT's error) does not. The same holds for any traceback that the executor itself raises
  outside the program (a program that closes stdout) and for a program that prints its own stack. That
  traceback also names the executor's path (`HarnessExecutor.executor_file`, default: where the run that
  made our fixtures had it) and timeout_decorator's, which is where it is installed here (the harness
  shortens it to "site-packages/timeout_decorator/..." in every other traceback, which needs an installation
  under a site-packages directory, as in a virtual environment).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dsmath_jax.evals.deepseek.grading import pal_program, program_output
from dsmath_jax.evals.sandbox import ExecutionResult, SandboxLimits, run_python

__all__ = [
    "MAX_NEW_TOKENS",
    "MAX_ROUNDS",
    "OUTPUT_STOP",
    "HarnessExecution",
    "HarnessExecutor",
    "ToolRound",
    "ToolTrace",
    "execute_programs",
    "harness_code",
    "harness_exec_info",
    "harness_lines",
    "output_block",
    "pal_answer",
    "pal_answers",
    "run_tool_loop",
]

OUTPUT_STOP = "```output"  # run_tool_integrated_eval.py: the stop that asks for a program's output
MAX_NEW_TOKENS = 1024  # SamplingParams(max_tokens=1024) on the vLLM path
MAX_ROUNDS = 2  # n_iters
FINISH_REASONS = ("stop_token", "stop_string", "length")
_SHOWN_CHARS = 100  # outputs (and concise errors) longer than this show as first 50 + "..." + last 50
_ERROR_TOKENS = 100  # default error texts longer than this show as first 50 + " ... " + last 50 tokens
_EXEC_LINE = "exec(code_piece, self._global_vars)"  # python_executor.execute cuts tracebacks after it
_CAP = 1 << 20  # characters of one reported text kept by the driver (first and last half beyond)
_FRAME = re.compile(r'(?P<start>.*)File "(?P<file>.*)", line (?P<lno>\d+), (?P<end>.*)')
_SITE_PACKAGES_PATH = re.compile(r"(?P<start>.*)(?P<file>/.*site-packages/.*\.py)(?P<end>.*)")


@dataclasses.dataclass(frozen=True)
class HarnessExecutor:
    """How their `PythonExecutor` is reproduced in our sandbox.

    `timeout_s`: the harness's 10 s (`timeout_decorator` alarm and pebble pool timeout); `grace_s`: how
    long after it the sandbox stops a program the alarm could not stop. `stack_depth`: frames above and
    including the program's top level in the harness's pool worker, and `recursion_frames`: that depth plus
    the frames a runaway recursion gets there (both measured in the harness with Python 3.11.7 and pebble
    5.0.3, as run by its launcher, in a worker that has run a few programs already; they only show in
    stack-walking programs and in RecursionError tracebacks). `preload`: modules imported before the program
    starts (the harness's workers have sympy and numpy imported already; importing them costs time, not
    output). `executor_file`: where the harness's python_executor.py lives (only the traceback of a refused
    "input(" / "os.system(" program shows it whole). `limits`: the
    sandbox's limits (default: no CPU limit below the wall clock, 4 GiB of address space, 32 MiB of output).
    `run`: the sandbox entry point. `max_workers`: programs run at once (default: the CPU count).
    """

    timeout_s: float = 10.0
    grace_s: float = 1.0
    stack_depth: int = 28
    recursion_frames: int = 998
    preload: tuple[str, ...] = ()
    executor_file: str = "/srv/DeepSeek-Math/evaluation/eval/python_executor.py"
    limits: SandboxLimits | None = None
    max_workers: int | None = None
    run: Callable[..., ExecutionResult] = dataclasses.field(default=run_python, compare=False)

    def sandbox_limits(self) -> SandboxLimits:
        if self.limits is not None:
            return self.limits
        wall = self.timeout_s + self.grace_s
        return SandboxLimits(cpu_seconds=wall + 1.0, wall_seconds=wall, memory_bytes=4 << 30,
                             max_output_chars=32 << 20)


@dataclasses.dataclass
class HarnessExecution:
    """One program's `(result, concise_exec_info, exec_info)` as their `PythonExecutor.execute` returns it.

    `result`: str() of the result ("" when the program failed): the stripped stdout in the tool loop, the
    answer in PoT. `exec_info`: in the tool loop the harness's shortened traceback (`harness_exec_info`),
    in PoT the raw one. `sandbox`: what the sandbox reported about the run.
    """

    result: str
    concise_exec_info: str
    exec_info: str
    sandbox: ExecutionResult | None = None


# ------------------------------------------------------------------------------------------- programs
def harness_code(text: str) -> str:
    """The program run for a transcript: run_tool_integrated_eval.extract_code ("" when none).

    Only a text that ends (stripped) with a fence has one. Its blocks: for every "```python" opening, the
    stripped text up to the next fence, when there is one and the block is not empty. The last block runs
    whole after the lines of the earlier ones that `_kept_from_earlier_block` keeps.
    """
    if not text.strip().endswith("```"):
        return ""
    blocks = []
    for piece in text.split("```python"):  # the text before the first opening holds no program
        body, fence, _ = piece.partition("```")
        if fence and body.strip():
            blocks.append(body.strip())
    if not blocks:
        return ""
    *earlier, last = blocks
    kept = [line for block in earlier for line in block.split("\n") if _kept_from_earlier_block(line)]
    return "\n".join([*kept, last]).strip()


def _kept_from_earlier_block(line: str) -> bool:
    """Lines that print are left out of the blocks run again, unless indented four spaces or an import / def."""
    return line.startswith(("    ", "import", "def ")) or "print(" not in line


def harness_lines(program: str) -> list[str]:
    """The lines PythonExecutor.process_generation_to_code makes of a program before joining them with "\\n".

    A line starting (after indentation) with "#" becomes its indentation + "# comments"; a line that starts
    and ends with three double quotes becomes its indentation + '\"\"\"comments\"\"\"'; from a line starting
    with three double quotes (not ending with them) up to a line ending with them, the lines are dropped and
    the last one replaced by an empty line. Inside strings too: that is what the harness runs.
    """
    quotes = '"""'
    out, in_docstring = [], False
    for line in program.split("\n"):
        bare = line.strip()
        indent = line[:len(line) - len(line.lstrip())]
        if bare.startswith("#"):  # comment lines are rewritten even inside a docstring (and do not close it)
            line = indent + "# comments"
        elif in_docstring:
            if bare.endswith(quotes):
                in_docstring, line = False, ""
        elif bare.startswith(quotes):
            if len(bare) >= 2 * len(quotes) and bare.endswith(quotes):
                line = indent + quotes + "comments" + quotes
            else:
                in_docstring = True
        if not in_docstring:
            out.append(line)
    return out


def _site_packages(path: str) -> str:
    return "site-packages" + path.split("site-packages", 1)[1]


def _kept_traceback_line(line: str) -> str | None:
    """One traceback line as python_executor.execute keeps it (None: left out); see `harness_exec_info`."""
    frame = _FRAME.search(line)
    if frame is None:
        path = _SITE_PACKAGES_PATH.search(line)
        return line if path is None else path.group("start") + _site_packages(path.group("file")) + path.group("end")
    start, name, end = frame.group("start", "file", "end")
    if "<module>" in end:
        return None
    return f'{start}File "{_site_packages(name)}", {end}' if "site-packages" in name else start + end


def harness_exec_info(raw: str) -> str:
    """The traceback text python_executor.execute keeps when answers come from stdout (the tool loop).

    Below the harness's `exec(code_piece, ...)` line only: frames of the program's top level dropped, file
    names and line numbers dropped except for site-packages files (shortened to "site-packages/...", still
    without line numbers). A traceback that never reached that line (the input( / os.system( refusal) is
    kept whole.
    """
    if _EXEC_LINE not in raw:
        return raw
    below = raw.rsplit(_EXEC_LINE, 1)[1].strip()
    return "\n".join(kept for kept in map(_kept_traceback_line, below.split("\n")) if kept is not None)


# --------------------------------------------------------------------------------- the sandbox driver
# The harness's executor file (eval/python_executor.py at b8b0f8c) is not ours to copy; these are facts about
# its layout that its tracebacks show: the frames above the program are `execute` (calling the alarm-wrapped
# `exec_code` at line 89 in stdout mode, 93 in symbol mode, 96 and 97 in expression mode, the last one for
# `eval_code`), timeout_decorator's `new_function` (the real package) and `exec_code` (refusing "input(" /
# "os.system(" programs at line 28, running the program at line 29); `eval_code` evaluates at line 32. The
# driver compiles its own stand-ins with their calls on those lines under the harness's file name, and formats
# those frames without source lines, except the one running the program, which carries `_EXEC_LINE` because
# the harness cuts tracebacks at that text.
_EXEC_LINENO = 29

_DRIVER = r'''
import io, json, os, pickle, re, sys, traceback
from contextlib import redirect_stdout

import timeout_decorator

# Our stand-ins for the harness executor's frames (see _EXEC_LINENO in tool.py): line -> our statement.
_EXECUTOR = {
    20: "class Runtime:",
    21: "    def __init__(self):",
    22: "        self.namespace = {}",
    26: "    def exec_code(self, program):",
    27: "        if REFUSED.search(program) is not None:",
    28: "            raise RuntimeError()",
    29: "        exec(program, self.namespace)",  # _EXEC_LINENO
    31: "    def eval_code(self, expression):",
    32: "        return eval(expression, self.namespace)",
    77: "def execute(program, mode, target, runtime, seconds):",
    78: "    run = alarm(seconds)(runtime.exec_code)",
    79: "    try:",
    80: "        if mode == 'stdout':",
    81: "            with redirect_stdout(io.StringIO()) as printed:",
    89: "                run(program)",
    90: "            result = printed.getvalue()",
    92: "        elif mode == 'symbol':",
    93: "            run(program)",
    94: "            result = runtime.namespace[target]",
    95: "        else:",
    96: "            run(program)",
    97: "            result = alarm(seconds)(runtime.eval_code)(target)",
    103: "        str(result)",
    104: "        pickle.dumps(result)",
    105: "    except BaseException as error:",
    106: "        return '', error",
    107: "    return result, None",
}


def _compiled(filename, numbered, namespace):
    """Runs our statements at their line numbers under `filename` (no source is registered for it)."""
    source = "\n".join(numbered.get(n, "") for n in range(1, max(numbered) + 1)) + "\n"
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def _traceback_text(error, cfg):
    """traceback.format_exc() of `error` as the harness's executor gets it, frames of its file without source
    lines but the one running the program, which shows the text the harness cuts at."""
    shown = traceback.TracebackException(type(error), error, error.__traceback__, lookup_lines=False, compact=True)
    pending, seen = [shown], set()
    while pending:
        part = pending.pop()
        if id(part) in seen:
            continue
        seen.add(id(part))
        for k, frame in enumerate(part.stack):
            if frame.filename == cfg["executor_file"]:
                line = cfg["exec_line"] if frame.lineno == cfg["exec_lineno"] else ""
                part.stack[k] = traceback.FrameSummary(frame.filename, frame.lineno, frame.name,
                                                       lookup_line=False, line=line)
        pending += [p for p in (part.__cause__, part.__context__) if p is not None]
        pending += getattr(part, "exceptions", None) or []
    return "".join(shown.format())


def _depth():
    frame, n = sys._getframe(1), 0
    while frame is not None:
        n, frame = n + 1, frame.f_back
    return n


def _padded(plain, pads, function, *args):
    """Calls function(*args) below `plain` + 2 * `pads` more frames; each pad also costs one more unit of the
    recursion limit (a call through tp_call), as some of the harness's frames do."""
    if pads > 0:
        return _PAD(plain, pads - 1, function, *args)
    if plain > 0:
        return _padded(plain - 1, 0, function, *args)
    return function(*args)


class _Pad:
    def __call__(self, plain, pads, function, *args):
        return _padded(plain, pads, function, *args)


_PAD = _Pad()


def _capped(text, cap):
    if len(text) <= cap:
        return text, False
    return text[:cap // 2] + text[-(cap // 2):], True


def _write(data):
    while data:
        data = data[os.write(1, data):]


def _main(cfg):
    for name in cfg["preload"]:
        try:
            __import__(name)
        except Exception:
            pass
    executor = _compiled(cfg["executor_file"], _EXECUTOR,
                         {"__name__": "eval.python_executor", "io": io, "pickle": pickle,
                          "redirect_stdout": redirect_stdout, "alarm": timeout_decorator.timeout,
                          "REFUSED": re.compile(r"input\(|os.system\(")})
    execute, runtime = executor["execute"], executor["Runtime"]
    for _ in range(cfg["warmup"]):  # the harness's pool workers have run many programs: a warm interpreter
        execute("pass", "stdout", None, runtime(), cfg["timeout"])
    # Put the program at the harness's stack depth with its recursion budget (the frames a runaway recursion
    # gets, plus the depth; both measured in a run of the harness): `plain` frames cost one unit of the
    # recursion limit each, `pads` two frames and three units. A runaway recursion run at the same place
    # measures the budget (the interpreter's specialisation makes it drift by a unit, hence the loop).
    base = _depth() + 5  # the program's <module> frame below _padded, execute, new_function, exec_code
    frames = max(0, cfg["stack_depth"] - base)
    plain, pads = frames, 0
    for _ in range(4):
        _, error = _padded(plain, pads, execute, "def f(n):\n    return f(n + 1)\nf(0)", "stdout", None,
                           runtime(), cfg["timeout"])
        found = None if error is None else re.search(r"\[Previous line repeated (\d+) more times\]",
                                                     _traceback_text(error, cfg))
        if found is None:
            break
        surplus = base + plain + 2 * pads + int(found.group(1)) + 3 - cfg["recursion_frames"]
        wanted = max(0, min(pads + surplus, frames // 2))
        if wanted == pads:
            break
        plain, pads = frames - 2 * wanted, wanted
    result, error = _padded(plain, pads, execute, "\n".join(cfg["code"]), cfg["mode"], cfg["target"], runtime(),
                            cfg["timeout"])
    info = "" if error is None else _traceback_text(error, cfg)
    concise = info.split("\n")[-2] if info else ""
    try:
        if cfg["mode"] == "stdout":
            text = str(result).strip()
        else:  # the harness's parent process gets the unpickled value and takes str() of it
            text = str(pickle.loads(pickle.dumps(result))) if error is None else str(result)
    except BaseException as exc:
        text, concise, info = "", "%s: %s" % (type(exc).__name__, exc), ""
    text, elided = _capped(text, cfg["cap"])
    info, _ = _capped(info, cfg["cap"])
    report = {"result": text, "elided": elided, "concise": concise[:cfg["cap"]], "exec_info": info}
    _write(("\n" + cfg["mark"] + json.dumps(report) + "\n").encode("utf-8"))


_main(json.loads(CONFIG))
'''


def _driver_program(lines: list[str], mode: str, target: str | None, executor: HarnessExecutor, mark: str) -> str:
    config = {"code": lines, "mode": mode, "target": target, "timeout": executor.timeout_s, "mark": mark,
              "stack_depth": executor.stack_depth, "recursion_frames": executor.recursion_frames,
              "preload": list(executor.preload), "cap": _CAP, "warmup": 16, "executor_file": executor.executor_file,
              "exec_line": _EXEC_LINE, "exec_lineno": _EXEC_LINENO}
    return f"CONFIG = {json.dumps(config)!r}\n" + _DRIVER


def _execute_one(program: str, mode: str, target: str | None, executor: HarnessExecutor) -> HarnessExecution:
    mark = f"\x1edeepseek-executor-{secrets.token_hex(8)}:"
    ran = executor.run(_driver_program(harness_lines(program), mode, target, executor, mark),
                       limits=executor.sandbox_limits())
    _, found, tail = ran.stdout.rpartition(mark)
    if found:  # the program can reach the mark through its frames: a report of the wrong shape is no report
        try:
            report = json.loads(tail.split("\n", 1)[0])
            if not (isinstance(report, dict) and isinstance(report.get("result"), str)
                    and isinstance(report.get("concise"), str) and isinstance(report.get("exec_info"), str)):
                raise ValueError("not a driver report")
        except ValueError:
            found = ""
    if not found:  # no report: the sandbox stopped it (pebble's "Timeout Error"), or it killed itself
        line = "Timeout Error" if ran.error == "timeout" else (ran.error_line or ran.error or "")
        return HarnessExecution("", line, line, ran)
    text = report["result"]
    if report.get("elided"):  # only its ends were kept; the 100-character rule needs no more
        half = len(text) // 2
        text = text[:half] + "..." + text[half:]
    info = report["exec_info"]
    return HarnessExecution(text, report["concise"], harness_exec_info(info) if mode == "stdout" else info, ran)


def execute_programs(programs: Sequence[str], *, mode: str = "stdout", target: str | None = None,
                     executor: HarnessExecutor = HarnessExecutor()) -> list[HarnessExecution]:
    """PythonExecutor.batch_apply: runs programs (in parallel, each in the sandbox), one result each.

    `mode`: "stdout" (get_answer_from_stdout, the tool loop), "symbol" (get_answer_symbol=`target`) or
    "expression" (get_answer_expr=`target`).
    """
    if mode not in ("stdout", "symbol", "expression"):
        raise ValueError(f"mode must be 'stdout', 'symbol' or 'expression', got {mode!r}")
    if mode != "stdout" and not target:
        raise ValueError(f"mode {mode!r} needs a target (the answer variable or expression)")
    if not programs:
        return []
    workers = min(len(programs), executor.max_workers or os.cpu_count() or 1)
    if workers == 1:
        return [_execute_one(p, mode, target, executor) for p in programs]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # each run is a subprocess: threads only wait
        return list(pool.map(lambda p: _execute_one(p, mode, target, executor), programs))


# ---------------------------------------------------------------------------------- the output block
def _shorten(text: str) -> str:
    return text[:50] + "..." + text[-50:] if len(text) > _SHOWN_CHARS else text


def output_block(execution: HarnessExecution, *, concise_errors: bool = False, tokenizer: Any = None) -> str:
    """The "\\n```output\\n...\\n```\\n" text the harness appends after a program ran (module docstring, 4)."""
    shown = _shorten(execution.result.strip())
    if not shown:
        if concise_errors:
            shown = _shorten(execution.concise_exec_info.strip())
        else:
            message = execution.exec_info.strip()
            ids = tokenizer.encode(message)
            if len(ids) > _ERROR_TOKENS:
                half = _ERROR_TOKENS // 2
                message = f"{tokenizer.decode(ids[:half]).strip()} ... {tokenizer.decode(ids[-half:]).strip()}"
            shown = f"Runtime errors: {message}"
    return f"\n```output\n{shown.strip()}\n```\n"


# ------------------------------------------------------------------------------------------ the loop
@dataclasses.dataclass
class ToolRound:
    """One generation of a trajectory and what ran after it."""

    generation: str  # the model's text, right-stripped, as appended to the transcript
    finish_reason: str
    program: str = ""  # the program run after it ("" when none)
    execution: HarnessExecution | None = None
    output: str = ""  # the "\n```output\n...\n```\n" block appended after it ("" when none)


@dataclasses.dataclass
class ToolTrace:
    """One tool-integrated trajectory: the transcript is the harness's `model_output`."""

    prompt: str
    transcript: str = ""
    rounds: list[ToolRound] = dataclasses.field(default_factory=list)
    finished: bool = False  # the last generation ended with the eos token

    @property
    def program_outputs(self) -> list[str]:
        """The shown text of every output block, in order."""
        return [r.output[len("\n```output\n"):-len("\n```\n")] for r in self.rounds if r.output]

    @property
    def program_output(self) -> str:
        """answer_extraction.extract_program_output of the transcript: what the harness records."""
        return program_output(self.transcript)


Generate = Callable[[list[str], int, list[str]], Sequence[tuple[str, str]]]


def run_tool_loop(generate: Generate, prompts: Sequence[str], *, max_new_tokens: int = MAX_NEW_TOKENS,
                  max_rounds: int = MAX_ROUNDS, stop_words: Sequence[str] = (), concise_errors: bool = False,
                  tokenizer: Any = None, execute: bool = True,
                  executor: HarnessExecutor = HarnessExecutor()) -> list[ToolTrace]:
    """run_tool_integrated_eval.infer for a batch of prompts (module docstring); one `ToolTrace` each.

    `generate(texts, max_new_tokens, stops)` returns one `(text, finish_reason)` per text (see the module
    docstring). `stop_words`: the few-shot prompt's stop words (`--prompt_format few_shot`; none for the
    paper's chat prompts). `concise_errors`: `--use_concise_exec_info`. `execute=False`: `--no-execution`
    (no "```output" stop, nothing runs). `tokenizer` is needed for the default (not concise) error texts.
    """
    if max_rounds < 1 or max_new_tokens < 1:
        raise ValueError(f"max_rounds and max_new_tokens must be >= 1, got {max_rounds}, {max_new_tokens}")
    if execute and not concise_errors and tokenizer is None:
        raise ValueError("run_tool_loop needs the model's tokenizer to shorten error texts as the harness does "
                         "(or concise_errors=True)")
    stops = ([OUTPUT_STOP] if execute else []) + list(stop_words)
    traces = [ToolTrace(prompt=p.lstrip()) for p in prompts]
    texts = [t.prompt for t in traces]
    unfinished = list(range(len(traces)))
    for _ in range(max_rounds):
        if not unfinished:
            break
        outputs = list(generate([texts[i] for i in unfinished], max_new_tokens, list(stops)))
        if len(outputs) != len(unfinished):
            raise ValueError(f"generate returned {len(outputs)} results for {len(unfinished)} texts")
        jobs: list[tuple[int, str]] = []
        for i, (text, reason) in zip(unfinished, outputs):
            if reason not in FINISH_REASONS:
                raise ValueError(f"generate returned finish_reason {reason!r}; expected one of {FINISH_REASONS}")
            trace, text = traces[i], text.rstrip()
            trace.finished = reason == "stop_token"
            trace.rounds.append(ToolRound(generation=text, finish_reason=reason))
            if execute and not trace.finished:
                program = harness_code(trace.transcript + text)
                if program:
                    trace.rounds[-1].program = program
                    jobs.append((i, program))
            texts[i] += text
            trace.transcript += text
        results = execute_programs([p for _, p in jobs], executor=executor)
        for (i, _), execution in zip(jobs, results):
            block = output_block(execution, concise_errors=concise_errors, tokenizer=tokenizer)
            round_ = traces[i].rounds[-1]
            round_.execution, round_.output = execution, block
            texts[i] += block
            traces[i].transcript += block
        unfinished = [i for i in unfinished if not traces[i].finished]
    return traces


# ------------------------------------------------------------------------------------ program of thought
def pal_answers(completions: Sequence[str], *, benchmark: str,
                executor: HarnessExecutor = HarnessExecutor()) -> list[tuple[str, str]]:
    """run_pal_eval.py for a batch: (`program_output`, error) per completion (see `pal_answer`)."""
    cut = [pal_program(benchmark, c) for c in completions]
    by_target: dict[tuple[str, str | None], list[int]] = {}
    for k, (_, expression, symbol) in enumerate(cut):
        key = ("expression", expression) if expression else ("symbol", symbol)
        by_target.setdefault(key, []).append(k)
    out: list[tuple[str, str]] = [("", "")] * len(cut)
    for (mode, target), indices in by_target.items():
        runs = execute_programs([cut[k][0] for k in indices], mode=mode, target=target, executor=executor)
        for k, execution in zip(indices, runs):
            out[k] = (execution.result, execution.concise_exec_info.strip())
    return out


def pal_answer(completion: str, *, benchmark: str, executor: HarnessExecutor = HarnessExecutor()) -> tuple[str, str]:
    """(answer, error) of a few-shot PoT completion as run_pal_eval.py gets them.

    The program is cut as `grading.pal_program` says (GSM8K: the completion, answer `solution()`; MATH:
    imports + program of a four-fence completion, answer variable `answer`, else "answer = '[invalid]'"),
    runs in the sandbox as their PythonExecutor runs it, and the answer is str() of the value ("" when the
    program fails or times out): the `program_output` their evaluation compares. `error` is the last line of
    the traceback (their `concise_exec_info`; "Timeout Error" when the sandbox stopped it; "" when fine).
    """
    return pal_answers([completion], benchmark=benchmark, executor=executor)[0]
