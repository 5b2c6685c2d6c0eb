r"""Is an answer right? Equivalence of a predicted and a gold answer (PAPER.md §7), and a pool of worker
processes that runs every check under a timeout.

:func:`is_equiv` (in process, no timeout) decides, for each answer kind:

* ``"choice"``: the same letter(s) (``"(B)"``, ``"\text{(B)}"`` and ``"B"`` are the letter B);
* ``"number"``: both parse as numbers (:func:`~dsmath_jax.evals.answers.parse_number`) and are close (below);
  otherwise the ``"math"`` rules;
* ``"math"``: in order,

  1. the normalised strings are equal (:func:`~dsmath_jax.evals.answers.normalize_answer`);
  2. both are plain numbers: close, with percent leniency;
  3. structures element-wise: matrices (same shape), tuples and intervals (same brackets, so ``[1,2)`` is not
     ``(1,2)``), ``\{...\}`` sets and bare comma lists (unordered: ``\{1,2\}`` is ``\{2,1\}``), ``;``-separated
     blanks (ordered), ``\cup`` unions (unordered);
  4. symbolic equality by math-verify (``parse`` + ``verify``, with sympy): ``2\sqrt{2}`` is ``\sqrt{8}``;
  5. one side a plain number and the other a closed-form constant: compared numerically with the tolerance,
     as the harness's ``N(a)`` vs ``N(b)`` check (so ``\pi`` equals ``3.14159`` but not ``3.14``);
  6. two equations with the same ``lhs - rhs`` up to sign (``y = 2x + 3`` and ``2x - y + 3 = 0``), as the
     harness compares them.

Numbers are close when ``math.isclose(pred, gold', rel_tol=NUMBER_REL_TOL, abs_tol=NUMBER_ABS_TOL)`` for
``gold'`` in ``(gold, gold / 100, gold * 100)`` (the percent leniency; so ``50`` equals ``0.5``). The tolerance
is the DeepSeek-Math harness's own (``isclose(..., abs_tol=1e-3)`` in ``eval_utils.math_equal``): an absolute
1e-3 on top of Python's default relative 1e-9. (PAPER.md §7 words it "1e-3 relative"; pass
``rel_tol=1e-3`` to get that, at the price of judging e.g. 1000 equal to 1001.)

:class:`Grader` runs extraction and equivalence in worker processes (``forkserver``, so a caller running
JAX threads is never forked): a check that takes longer than ``timeout`` seconds gets a timeout verdict
(a SIGALRM inside the worker, or, when the worker is stuck in C code such as a huge integer power, the
worker is killed and replaced), a check that crashes its worker gets an error verdict, and the run goes on.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from dsmath_jax.evals.answers import (ANSWER_KINDS, choice_letters, extract_answer, normalize_answer, parse_number,
                                      split_top_level)

__all__ = ["NUMBER_ABS_TOL", "NUMBER_REL_TOL", "Verdict", "Grader", "is_equiv", "numbers_close"]

NUMBER_ABS_TOL = 1e-3
NUMBER_REL_TOL = 1e-9  # Python's default: the harness passes only abs_tol
_MAX_DEPTH = 4  # nesting of structures compared element-wise
_MAX_ELEMENTS = 200  # elements of an unordered collection matched pairwise


@dataclasses.dataclass(frozen=True)
class _Tolerance:
    rel_tol: float = NUMBER_REL_TOL
    abs_tol: float = NUMBER_ABS_TOL
    percent: bool = True
    symbolic: bool = True


def numbers_close(pred: float, gold: float, *, rel_tol: float = NUMBER_REL_TOL, abs_tol: float = NUMBER_ABS_TOL,
                  percent: bool = True) -> bool:
    """``pred`` is within the tolerance of ``gold`` (or, with ``percent``, of ``gold / 100`` or ``gold * 100``)."""
    targets = (gold, gold / 100, gold * 100) if percent else (gold,)
    return any(math.isclose(pred, t, rel_tol=rel_tol, abs_tol=abs_tol) for t in targets)


def is_equiv(pred: str | None, gold: str, kind: str = "math", *, rel_tol: float = NUMBER_REL_TOL,
             abs_tol: float = NUMBER_ABS_TOL, percent: bool = True, symbolic: bool = True) -> bool:
    """Whether the predicted answer equals the gold one (module docstring). In process and without a
    timeout: use :class:`Grader` for answers a model wrote. ``symbolic=False`` skips math-verify."""
    if kind not in ANSWER_KINDS:
        raise ValueError(f"answer kind must be one of {ANSWER_KINDS}, got {kind!r}")
    if pred is None or gold is None:
        return False
    pred, gold = str(pred), str(gold)
    if kind == "choice":
        letters = choice_letters(gold)
        return letters is not None and choice_letters(pred) == letters
    tol = _Tolerance(rel_tol, abs_tol, percent, symbolic)
    if kind == "number":
        a, b = parse_number(normalize_answer(pred)), parse_number(normalize_answer(gold))
        if a is not None and b is not None:
            return numbers_close(a, b, rel_tol=rel_tol, abs_tol=abs_tol, percent=percent)
    return _equiv_math(pred, gold, tol, 0)


def _equiv_math(pred: str, gold: str, tol: _Tolerance, depth: int) -> bool:
    p, g = normalize_answer(pred), normalize_answer(gold)
    if not p or not g:
        return False
    if p == g:
        return True
    a, b = parse_number(p), parse_number(g)
    if a is not None and b is not None:
        return numbers_close(a, b, rel_tol=tol.rel_tol, abs_tol=tol.abs_tol, percent=tol.percent)
    if depth < _MAX_DEPTH:
        verdict = _structured_equiv(p, g, tol, depth)
        if verdict is not None:
            return verdict
    if not tol.symbolic:
        return False
    if _symbolic_equal(p, g):
        return True
    if (a is None) != (b is None):  # a plain number against a closed form: compare values
        value = _numeric_value(p if a is None else g)
        number = b if a is None else a
        if value is not None:
            return math.isclose(value, number, rel_tol=tol.rel_tol, abs_tol=tol.abs_tol)
    return _equations_equal(pred, gold)


def _equations_equal(pred: str, gold: str) -> bool:
    """Two equations (``y = 2x + 3`` and ``2x - y + 3 = 0``) with the same ``lhs - rhs`` up to sign."""
    ep, eg = normalize_answer(pred, keep_equation=True), normalize_answer(gold, keep_equation=True)
    if ep.count("=") != 1 or eg.count("=") != 1:
        return False
    (lp, rp), (lg, rg) = ep.split("="), eg.split("=")
    if not all((lp, rp, lg, rg)):
        return False
    target = f"{lg}-({rg})"
    return _symbolic_equal(f"{lp}-({rp})", target) or _symbolic_equal(f"{rp}-({lp})", target)


# ------------------------------------------------------------------------------------------ structures
_MATRIX = re.compile(r"\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.S)


def _matrix_cells(s: str) -> list[list[str]] | None:
    m = _MATRIX.fullmatch(s)
    if not m:
        return None
    rows = [r for r in split_top_level(m.group(2), "\\\\") if r.strip()]
    return [split_top_level(r, "&") for r in rows]


def _outer_brackets(s: str) -> tuple[str, str, str] | None:
    """(open, inside, close) when `s` is one bracketed group `(...)`, `[...)`, `\\{...\\}`."""
    if s.startswith("\\{") and s.endswith("\\}"):
        open_, close, inner = "\\{", "\\}", s[2:-2]
    elif len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        open_, close, inner = s[0], s[-1], s[1:-1]
    else:
        return None
    depth = 0
    for c in inner:  # the outer pair must enclose everything: `(1)(2)` is not one group
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                return None
    return (open_, inner, close) if depth == 0 else None


def _unordered_equiv(ps: list[str], gs: list[str], tol: _Tolerance, depth: int) -> bool:
    if len(ps) != len(gs) or len(ps) > _MAX_ELEMENTS:
        return False
    unused = list(range(len(gs)))
    for p in ps:
        for j in unused:
            if _equiv_math(p, gs[j], tol, depth + 1):
                unused.remove(j)
                break
        else:
            return False
    return True


def _ordered_equiv(ps: list[str], gs: list[str], tol: _Tolerance, depth: int) -> bool:
    return len(ps) == len(gs) and all(_equiv_math(p, g, tol, depth + 1) for p, g in zip(ps, gs))


def _structured_equiv(p: str, g: str, tol: _Tolerance, depth: int) -> bool | None:
    """True/False when both answers are the same kind of structure; None to let the symbolic check decide."""
    mp, mg = _matrix_cells(p), _matrix_cells(g)
    if mp is not None and mg is not None:
        if [len(r) for r in mp] != [len(r) for r in mg]:
            return False
        return all(_ordered_equiv(rp, rg, tol, depth) for rp, rg in zip(mp, mg))
    if mp is not None or mg is not None:
        return None
    up, ug = split_top_level(p, "\\cup"), split_top_level(g, "\\cup")
    if len(up) > 1 and len(ug) > 1:
        return True if _unordered_equiv(up, ug, tol, depth) else None
    sp, sg = split_top_level(p, ";"), split_top_level(g, ";")
    if len(sp) > 1 and len(sg) > 1:  # Gaokao-MathCloze blanks, in order
        return _ordered_equiv(sp, sg, tol, depth)
    bp, bg = _outer_brackets(p), _outer_brackets(g)
    if bp is not None and bg is not None:
        if (bp[0], bp[2]) != (bg[0], bg[2]):
            return False  # [1,2) is not (1,2); a tuple is not a set
        ep, eg = split_top_level(bp[1]), split_top_level(bg[1])
        if bp[0] == "\\{":
            return _unordered_equiv(ep, eg, tol, depth)
        return _ordered_equiv(ep, eg, tol, depth)
    ep, eg = split_top_level(p), split_top_level(g)
    if len(ep) > 1 and len(eg) > 1:  # "-2, 3": the solutions of an equation, in any order
        return _unordered_equiv(ep, eg, tol, depth)
    return None


# ------------------------------------------------------------------------------------------ symbolic
_math_verify = None


def _mv():
    """math-verify, imported on first use (it pulls in sympy and an ANTLR parser)."""
    global _math_verify
    if _math_verify is None:
        for name in ("math_verify", "latex2sympy2_extended"):
            logging.getLogger(name).setLevel(logging.ERROR)  # it warns once per process about disabled timeouts
        import math_verify
        _math_verify = math_verify
    return _math_verify


def _parse(mv, s: str) -> list:
    # The timeouts of math-verify use SIGALRM, which would cancel the worker's own; the worker bounds the
    # whole check instead.
    return mv.parse(f"${s}$", parsing_timeout=None)


def _symbolic_equal(p: str, g: str) -> bool:
    mv = _mv()  # outside the try: a missing checker must fail loudly, not grade everything by strings
    try:
        gold, pred = _parse(mv, g), _parse(mv, p)
        if not gold or not pred:
            return False
        return bool(mv.verify(gold, pred, timeout_seconds=None))
    except Exception:  # noqa: BLE001 - a checker failure is a wrong answer, never a crash
        return False


def _numeric_value(s: str) -> float | None:
    """The real value of a closed-form constant (``\\pi``, ``\\sqrt{2}/2``), or None."""
    mv = _mv()
    import sympy
    try:
        for expr in _parse(mv, s):
            if isinstance(expr, sympy.Basic) and not isinstance(expr, sympy.MatrixBase) and expr.is_number:
                value = complex(sympy.N(expr, 30))
                if abs(value.imag) <= 1e-12 * max(1.0, abs(value.real)) and math.isfinite(value.real):
                    return value.real
                return None
    except Exception:  # noqa: BLE001
        return None
    return None


# ------------------------------------------------------------------------------------------ worker pool
@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of grading one completion: the extracted answer, whether it is correct, and why not when
    the check itself failed (``"timeout: ..."``, ``"worker crashed ..."``, an exception)."""

    extracted: str | None
    correct: bool
    error: str | None = None


_READY = -1  # the task id of a worker's first message: started, parser loaded
_START_TIMEOUT = 120.0  # seconds a new worker may take to say it is ready
_MAX_START_FAILURES = 3  # consecutive workers dying before ready: the pool cannot work here


class _CheckTimeout(BaseException):
    """Raised by SIGALRM inside a worker. A BaseException, so checkers' `except Exception` cannot swallow it."""


def _on_alarm(signum, frame):
    raise _CheckTimeout()


def _run_task(op: str, args: tuple, settings: dict) -> tuple[str | None, bool, str | None]:
    extracted = None
    tolerance = {k: settings[k] for k in ("rel_tol", "abs_tol", "percent")}
    signal.setitimer(signal.ITIMER_REAL, settings["timeout"])
    try:
        if op == "grade":
            completion, gold, kind, options = args
            extracted = extract_answer(completion, kind, options=options)
            return extracted, is_equiv(extracted, gold, kind, **tolerance), None
        if op == "equiv":
            a, b, kind = args
            return None, is_equiv(a, b, kind, **tolerance), None
        # Test hooks: a check that takes its worker down, and one that hangs (with SIGALRM blocked, like a
        # check stuck in C code, which only the parent's kill can stop).
        if op == "crash":
            os._exit(int(args[0]))
        if op == "sleep":
            seconds, blocked = args
            if blocked:
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(float(seconds))
            return None, False, None
        raise ValueError(f"unknown grader task {op!r}")
    except _CheckTimeout:
        return extracted, False, f"timeout: the check took longer than {settings['timeout']:g}s"
    except Exception as e:  # noqa: BLE001
        return extracted, False, f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _worker_main(conn, settings: dict) -> None:
    """A grading worker: receives lists of (task id, op, args), answers (task id, result) one by one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if settings.get("exit_before_ready") is not None:  # test hook: a worker that cannot start
        os._exit(int(settings["exit_before_ready"]))
    signal.signal(signal.SIGALRM, _on_alarm)
    limit = settings.get("memory_limit_mb")
    if limit:
        try:
            import resource
            resource.setrlimit(resource.RLIMIT_AS, (limit << 20, limit << 20))
        except (ImportError, ValueError, OSError):
            pass
    try:
        is_equiv("\\frac{1}{2}", "\\sqrt{2}")  # load the parser before the first timed check
    except Exception:  # noqa: BLE001
        pass
    conn.send((_READY, os.getpid()))
    while True:
        try:
            tasks = conn.recv()
        except (EOFError, OSError):
            return
        if tasks is None:
            return
        for task_id, op, args in tasks:
            conn.send((task_id, _run_task(op, args, settings)))


class _Worker:
    def __init__(self, ctx, settings: dict):
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child, settings), daemon=True,
                                   name="dsmath-grader")
        self.process.start()
        child.close()
        self.pending: collections.deque[int] = collections.deque()
        self.ready = False
        self.deadline = time.monotonic() + _START_TIMEOUT

    def stop(self, kill: bool = False) -> None:
        if not kill and self.process.is_alive():
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                kill = True
            else:
                self.process.join(2.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2.0)
        self.conn.close()


def _context(start_method: str | None):
    methods = multiprocessing.get_all_start_methods()
    method = start_method or ("forkserver" if "forkserver" in methods else "spawn")
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # Imported once by the fork server, so each new worker starts without re-importing sympy.
        ctx.set_forkserver_preload(["dsmath_jax.evals.grader", "math_verify"])
    return ctx


class Grader:
    """A pool of worker processes that extracts and checks answers, each check under a timeout.

    >>> with Grader(timeout=5) as grader:
    ...     verdicts = grader.grade([("... so the answer is $\\boxed{\\frac12}$.", "0.5", "math", None)])
    >>> verdicts[0]
    Verdict(extracted='\\\\frac12', correct=True, error=None)

    Workers start on first use (``forkserver``; ``spawn`` where there is none) and stay until :meth:`close`.
    A check that runs past ``timeout`` seconds is stopped inside its worker; one stuck in C code is killed,
    with its worker, ``grace`` seconds later, and the worker is replaced. Either way its verdict is incorrect
    with the reason in ``error``, and the run goes on. Items go to the workers in chunks of up to
    ``chunk_size``. One Grader is not meant to be shared between threads (calls are serialised by a lock).
    """

    def __init__(self, max_workers: int | None = None, *, timeout: float = 5.0, grace: float | None = None,
                 chunk_size: int = 16, rel_tol: float = NUMBER_REL_TOL, abs_tol: float = NUMBER_ABS_TOL,
                 percent: bool = True, memory_limit_mb: int | None = 4096, start_method: str | None = None):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.max_workers = max(1, int(max_workers or min(4, os.cpu_count() or 1)))
        self.timeout = float(timeout)
        self.grace = float(grace) if grace is not None else 1.0 + 0.2 * self.timeout
        self.chunk_size = max(1, int(chunk_size))
        self._settings = {"timeout": self.timeout, "rel_tol": rel_tol, "abs_tol": abs_tol, "percent": percent,
                          "memory_limit_mb": memory_limit_mb}
        self._start_method = start_method
        self._ctx = None
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._start_failures = 0
        self.stats = collections.Counter()  # checks, timeouts, kills, crashes, restarts, start_failures

    # -- lifecycle
    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        """Stops the workers (a closed Grader cannot be used again)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for w in self._workers:
            w.stop()
        self._workers = []

    @property
    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def _start_worker(self) -> _Worker:
        if self._ctx is None:
            self._ctx = _context(self._start_method)
        return _Worker(self._ctx, self._settings)

    def _replace(self, w: _Worker, kill: bool) -> None:
        w.stop(kill=kill)
        self._workers[self._workers.index(w)] = self._start_worker()
        self.stats["restarts"] += 1

    # -- public checks
    def grade(self, items: Iterable[Sequence[Any]], *, progress: bool = False,
              desc: str = "grading") -> list[Verdict]:
        """Verdicts for ``(completion, gold[, kind[, options]])`` items, in order (kind defaults to "math")."""
        tasks = []
        for item in items:
            item = tuple(item)
            if not 2 <= len(item) <= 4:
                raise ValueError(f"a grading item is (completion, gold[, kind[, options]]), got {len(item)} fields")
            completion, gold = item[0], item[1]
            kind = item[2] if len(item) > 2 else "math"
            options = item[3] if len(item) > 3 else None
            if kind not in ANSWER_KINDS:
                raise ValueError(f"answer kind must be one of {ANSWER_KINDS}, got {kind!r}")
            options = None if options is None else (options if isinstance(options, str) else list(options))
            tasks.append(("grade", (completion, gold, kind, options)))
        return [Verdict(*r) for r in self._run(tasks, progress=progress, desc=desc)]

    def same_answers(self, pairs: Iterable[Sequence[Any]], *, progress: bool = False) -> list[bool]:
        """For ``(a, b[, kind])`` pairs: whether the two answers are equivalent (a failed check is False)."""
        out: list[bool | None] = []
        tasks, where = [], []
        for pair in pairs:
            a, b = pair[0], pair[1]
            kind = pair[2] if len(pair) > 2 else "math"
            if a is None or b is None:
                out.append(False)
            elif str(a) == str(b):
                out.append(True)
            else:
                where.append(len(out))
                out.append(None)
                tasks.append(("equiv", (str(a), str(b), kind)))
        for i, (_, correct, _) in zip(where, self._run(tasks, progress=progress, desc="comparing")):
            out[i] = correct
        return out  # type: ignore[return-value]

    def same_answer(self, a: str | None, b: str | None, kind: str = "math") -> bool:
        """Whether two extracted answers are equivalent (for maj@k votes), under the same protection."""
        return self.same_answers([(a, b, kind)])[0]

    # -- the scheduler
    def _run(self, tasks: list[tuple[str, tuple]], *, progress: bool = False,
             desc: str = "grading") -> list[tuple[str | None, bool, str | None]]:
        if self._closed:
            raise RuntimeError("this Grader is closed")
        if not tasks:
            return []
        with self._lock:
            return self._schedule(tasks, progress, desc)

    def _schedule(self, tasks, progress, desc):
        n = len(tasks)
        results: list[Any] = [None] * n
        todo = collections.deque(range(n))
        while len(self._workers) < min(self.max_workers, n):
            self._workers.append(self._start_worker())
        hard = self.timeout + self.grace
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=n, desc=desc, unit="check")
        done = 0
        finished = False

        def finish(i, result):
            nonlocal done
            results[i] = result
            done += 1
            if bar is not None:
                bar.update(1)

        def fail(w: _Worker, message: str, counter: str):
            finish(w.pending.popleft(), (None, False, message))
            todo.extendleft(reversed(w.pending))
            w.pending.clear()
            self.stats[counter] += 1
            self._replace(w, kill=True)

        def failed_start(w: _Worker, why: str):
            # Not the items' fault: they go back to the queue. Several in a row: this environment cannot
            # run workers (e.g. a script without `if __name__ == "__main__":`), so stop instead of grading
            # everything as wrong.
            todo.extendleft(reversed(w.pending))
            w.pending.clear()
            self.stats["start_failures"] += 1
            self._start_failures += 1
            if self._start_failures >= _MAX_START_FAILURES:
                w.stop(kill=True)
                raise RuntimeError(f"grader workers fail to start ({why}, {self._start_failures} times in a row); "
                                   "a script that creates a Grader must guard its entry point with "
                                   "`if __name__ == '__main__':` (workers start with forkserver/spawn)")
            self._replace(w, kill=True)

        try:
            while done < n:
                idle = [w for w in self._workers if not w.pending]
                for w in idle:
                    if not todo:
                        break
                    size = max(1, min(self.chunk_size, len(todo) // (2 * len(self._workers))))
                    chunk = [todo.popleft() for _ in range(min(size, len(todo)))]
                    try:
                        w.conn.send([(i, *tasks[i]) for i in chunk])
                    except (OSError, ValueError):  # died while idle: start another, retry the chunk
                        todo.extendleft(reversed(chunk))
                        self.stats["crashes"] += 1
                        self._replace(w, kill=True)
                        continue
                    w.pending.extend(chunk)
                    if w.ready:
                        w.deadline = time.monotonic() + hard
                busy = [w for w in self._workers if w.pending]
                if not busy:
                    continue
                wait = max(0.0, min(w.deadline for w in busy) - time.monotonic())
                multiprocessing.connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy],
                                                timeout=wait)
                for w in busy:
                    broken = False
                    while w.pending:
                        try:
                            if not w.conn.poll():
                                break
                            task_id, result = w.conn.recv()
                        except (EOFError, OSError):
                            broken = True
                            break
                        if task_id == _READY:
                            w.ready = True
                            self._start_failures = 0
                            w.deadline = time.monotonic() + hard
                            continue
                        expected = w.pending.popleft()
                        if task_id != expected:
                            raise RuntimeError(f"grader worker answered task {task_id}, expected {expected}")
                        finish(task_id, tuple(result))
                        self.stats["checks"] += 1
                        if result[2] is not None and result[2].startswith("timeout"):
                            self.stats["timeouts"] += 1
                        w.deadline = time.monotonic() + hard
                    if not w.pending:
                        continue
                    if broken or not w.process.is_alive():
                        w.process.join(0.5)
                        code = w.process.exitcode
                        if not w.ready:
                            failed_start(w, f"exit code {code}")
                        else:
                            fail(w, f"worker crashed (exit code {code}) while checking this item", "crashes")
                    elif time.monotonic() > w.deadline:
                        if not w.ready:
                            failed_start(w, f"not ready within {_START_TIMEOUT:g}s")
                        else:
                            fail(w, f"timeout: no verdict within {self.timeout:g}s (worker killed and replaced)",
                                 "kills")
            finished = True
        finally:
            if bar is not None:
                bar.close()
            if not finished:  # interrupted: workers still busy would answer the next run with stale results
                for w in list(self._workers):
                    if w.pending:
                        w.pending.clear()
                        self._replace(w, kill=True)
        return results
