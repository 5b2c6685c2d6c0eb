r"""Is an answer right? Equivalence of a predicted and a gold answer, and a pool of worker processes that runs
every check under a timeout.

This is the ``strict`` grading protocol (DESIGN.md): semantically correct and with no leniency a policy could
exploit, for RL rewards, ``dsmath grade`` and the eval runner. (The byte-exact DeepSeek-Math harness, with its
percent leniency and absolute tolerance, is the ``deepseek`` protocol in :mod:`dsmath_jax.evals.deepseek`.)

:func:`is_equiv` (in process, no timeout) decides, for each answer kind:

* ``"choice"``: the same letter(s) (``"(B)"``, ``"\text{(B)}"`` and ``"B"`` are the letter B);
* ``"number"``: both are numbers (:func:`~dsmath_jax.evals.answers.parse_number`) and equal (below);
  otherwise the ``"math"`` rules;
* ``"math"``: in order,

  1. the normalised strings are equal (:func:`~dsmath_jax.evals.answers.normalize_answer`);
  2. an answer that is a sentence (:func:`~dsmath_jax.evals.answers.is_prose`) equals only the same sentence
     (case aside): no number or expression is pulled out of running text; answers that are words
     (``East``, ``\text{east}``) are compared as words, case aside;
  3. a lone choice letter as gold (``\text{(C)}``) is matched by the same letter, also when the option's
     text follows it (``(C) Plane``) and no other letter is named;
  4. both are plain numbers: equal (below);
  5. structures element-wise: matrices (same shape), tuples and intervals (same brackets, so ``[1,2)`` is not
     ``(1,2)``), ``\{...\}`` sets and bare comma lists (unordered: ``\{1,2\}`` is ``\{2,1\}``; ``3 and 5``
     is the list ``3, 5``; a part given twice counts once, so ``x+11, 11+x`` is one answer, and a list is
     never one of its parts), ``;``-separated blanks (ordered), ``\cup`` unions (unordered);
  6. one side a plain number and the other a closed-form constant: the constant's value (``\pi``,
     ``2\sqrt{2}``, a program's ``2*sqrt(2)``) is compared with the number as two numbers are;
  7. symbolic equality by math-verify (``parse`` + ``verify``, with sympy): ``2\sqrt{2}`` is ``\sqrt{8}``
     (floats inside expressions rounded to :data:`MV_FLOAT_ROUNDING` decimals, not math-verify's 6);
  8. two equations whose ``lhs - rhs`` differ by a nonzero constant factor (``y = 2x + 3`` and
     ``2x - y + 3 = 0``; ``y = -\frac{1}{2}x + \frac{3}{4}`` and ``2x + 4y - 3 = 0``).

Two numbers are equal by a relative rule, never an absolute one (``abs_tol`` = :data:`NUMBER_ABS_TOL` = 0),
so a tiny gold (``\frac{2}{1005}``, Planck's constant) never accepts 0 and an answer 1000x off is wrong
whatever the gold's size:

* exact values compare exactly: when both are finite decimals (integers, ``0.25``, ``\frac{1}{4}``,
  ``1.5\times10^{3}``), and whenever the gold is an integer, they must agree to :data:`FLOAT_NOISE` (1e-12
  relative, the noise of a program's float printout such as ``0.30000000000000004``), and an integer gold
  never accepts another integer however large it is (``1450001`` is not ``1450000``);
* an approximation of a value that has no finite decimal (``\frac13``, ``\frac{2}{1005}``, ``\pi``,
  ``\sqrt{2}``; on either side) must agree to ``rel_tol`` = :data:`NUMBER_REL_TOL` = 1e-6 relative to the
  gold: six significant figures (``0.333333`` for ``\frac13``, ``\pi`` for ``3.14159``), nothing rounder
  (``0.333`` is not ``\frac13``: a question that wants a rounded answer has a rounded gold).

Percent: a number carrying a percent sign (``50\%``, ``50%``, ``50 percent``) reads two ways: as the same
digits in percent units (``50\%`` for a gold ``50`` of a "what percent" question) and as its value (``50\%``
is ``0.5``). So a gold ``50\%`` accepts ``50``, ``0.5`` and ``50\%``, a gold ``0.5`` accepts ``50\%``; two
answers that both carry the sign compare their digits (``0.5\%`` is not ``50\%``); a number without the
sign on either side has one reading, so ``2500`` is never ``25`` (the harness's x100 / /100 leniency is
gone). ``percent=False`` keeps only the value reading.

Significant figures (``sig_figs=True``, for OCW-style physical answers whose golds carry few significant
digits, e.g. ``4.5e33``, ``0.006``, ``1.6``): a gold written as a decimal or in scientific notation also
accepts any prediction within half a unit of its last significant digit (``4.5e33`` accepts ``4.45e33`` to
``4.55e33``, ``1.6`` accepts ``1.63``), i.e. a prediction that rounds to the gold at the gold's precision
(a one-figure gold is that coarse: ``4e33`` accepts ``3.5e33`` to ``4.5e33``). An integer gold (``300``,
``6630``) is exact. Off by default: MATH's decimal golds (``0.5``, ``2.25``) are exact values, for which half
a unit would accept wrong answers; a caller grading OCW passes it (``Grader(sig_figs=True)``).

:class:`Grader` runs extraction and equivalence in worker processes (``forkserver``, so a caller running
JAX threads is never forked): a check that takes longer than ``timeout`` seconds gets a timeout verdict
(a SIGALRM inside the worker, or, when the worker is stuck in C code such as a huge integer power, the
worker is killed and replaced), a check that crashes its worker gets an error verdict, and the run goes on.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
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
from fractions import Fraction
from typing import Any

from dsmath_jax.evals.answers import (
    ANSWER_KINDS,
    choice_letters,
    exact_number,
    extract_answer,
    is_prose,
    normalize_answer,
    parse_number,
    split_top_level,
)
from dsmath_jax.evals.deepseek import grading as deepseek_grading

__all__ = ["NUMBER_ABS_TOL", "NUMBER_REL_TOL", "Grader", "Verdict", "is_equiv", "numbers_close"]

NUMBER_REL_TOL = 1e-6  # relative, for approximations: six significant figures (module docstring)
NUMBER_ABS_TOL = 0.0  # none: an absolute tolerance makes every tiny gold accept 0
FLOAT_NOISE = 1e-12  # relative: exact values written as floats (0.30000000000000004 for 0.3)
MV_FLOAT_ROUNDING = 12  # decimals math-verify rounds floats to inside expressions (its default 6 is absolute)
_MAX_DEPTH = 4  # nesting of structures compared element-wise
_MAX_ELEMENTS = 200  # elements of an unordered collection matched pairwise


@dataclasses.dataclass(frozen=True)
class _Tolerance:
    rel_tol: float = NUMBER_REL_TOL
    abs_tol: float = NUMBER_ABS_TOL
    percent: bool = True
    symbolic: bool = True
    sig_figs: bool = False


@dataclasses.dataclass(frozen=True)
class _Number:
    """A plain number: its value, whether it carries a percent sign, its exact value when it has one."""

    value: float
    percent: bool = False
    exact: Fraction | None = None

    def scaled(self) -> _Number:
        """The value reading of a percent: 50% -> 0.5."""
        return _Number(self.value / 100, False, self.exact / 100 if self.exact is not None else None)


def numbers_close(pred: float, gold: float, *, rel_tol: float = NUMBER_REL_TOL, abs_tol: float = NUMBER_ABS_TOL,
                  half_unit: float = 0.0) -> bool:
    """``|pred - gold| <= max(rel_tol * |gold|, abs_tol, half_unit)``: relative to the gold, or within
    ``half_unit`` (half a unit of the gold's last significant digit, with ``sig_figs``)."""
    if not (math.isfinite(pred) and math.isfinite(gold)):
        return False
    return abs(pred - gold) <= max(rel_tol * abs(gold) * (1 + 1e-9), abs_tol, half_unit * (1 + 1e-9))


_SIG_FIG_GOLD = re.compile(r"[-+]?(\d*)(?:\.(\d*))?(?:[eE]([-+]?\d+)|(?:\\times|\\cdot|\*)10\^\{?([-+]?\d{1,3})\}?)?")


def _half_unit(gold: str) -> float:
    """Half a unit of the last significant digit of a gold written as a decimal or in scientific notation
    (``4.5e33`` -> 5e31, ``0.006`` -> 5e-4, ``1.6`` -> 0.05); 0 for an integer or any other gold."""
    m = _SIG_FIG_GOLD.fullmatch(gold)
    if not m or not (m.group(1) or m.group(2)):
        return 0.0
    exponent = int(m.group(3) or m.group(4) or 0)
    if m.group(2) is None and exponent == 0:
        return 0.0  # an integer is exact
    decimals = len(m.group(2) or "")
    return 0.5 * 10.0 ** (exponent - decimals)


def _number(s: str) -> _Number | None:
    """A normalised plain number (``12``, ``0.25``, ``\\frac{1}{3}``, ``50%``); None for anything else."""
    percent = s.endswith("%")
    body = s[:-1] if percent else s
    value = parse_number(body)
    return _Number(value, percent, exact_number(body)) if value is not None else None


def _terminating(x: Fraction | None) -> bool:
    if x is None:
        return False
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _close(p: _Number, g: _Number, tol: _Tolerance, half: float) -> bool:
    """Exact values compare exactly (up to float noise); an approximation to ``rel_tol``; an integer gold
    needs that integer (module docstring)."""
    integer_gold = g.exact is not None and g.exact.denominator == 1
    rel = FLOAT_NOISE if integer_gold or (_terminating(p.exact) and _terminating(g.exact)) else tol.rel_tol
    if integer_gold:
        rel = min(rel, 0.25 / max(abs(g.value), 1.0))  # never the next integer, however large the gold
    return numbers_close(p.value, g.value, rel_tol=rel, abs_tol=tol.abs_tol, half_unit=half)


def _numbers_equal(p: _Number, g: _Number, gold: str, tol: _Tolerance) -> bool:
    """Two plain numbers under the tolerance and the percent rule (module docstring)."""
    half = _half_unit(gold.rstrip("%")) if tol.sig_figs else 0.0
    if p.percent == g.percent:
        return _close(p, g, tol, half)  # the same units on both sides (or none): the digits compare
    if not tol.percent:  # value readings only: 50% is 0.5
        return _close(p.scaled() if p.percent else p, g.scaled() if g.percent else g, tol,
                      half / 100 if g.percent else half)
    if g.percent:  # gold 50%: pred 50 (percent units) or 0.5 (its value)
        return _close(p, dataclasses.replace(g, percent=False), tol, half) or _close(p, g.scaled(), tol, half / 100)
    return _close(dataclasses.replace(p, percent=False), g, tol, half) or _close(p.scaled(), g, tol, half)


def is_equiv(pred: str | None, gold: str, kind: str = "math", *, rel_tol: float = NUMBER_REL_TOL,
             abs_tol: float = NUMBER_ABS_TOL, percent: bool = True, symbolic: bool = True,
             sig_figs: bool = False) -> bool:
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
    tol = _Tolerance(rel_tol, abs_tol, percent, symbolic, sig_figs)
    if kind == "number" and not is_prose(pred):
        g = normalize_answer(gold)
        a, b = _number(normalize_answer(pred)), _number(g)
        if a is not None and b is not None:
            return _numbers_equal(a, b, g, tol)
    return _equiv_math(pred, gold, tol, 0)


_LONE_LETTER = re.compile(r"\(?([A-E])\)?")


def _letter_answer(p: str, g: str) -> bool | None:
    """A gold that is a lone choice letter: the same letter, optionally followed by its option's text."""
    mg = _LONE_LETTER.fullmatch(g)
    if not mg:
        return None
    mp = _LONE_LETTER.fullmatch(p) or re.fullmatch(r"\(([A-E])\)[^()]*", p)
    return mp is not None and mp.group(1) == mg.group(1)


def _equiv_math(pred: str, gold: str, tol: _Tolerance, depth: int) -> bool:
    p, g = normalize_answer(pred), normalize_answer(gold)
    if not p or not g:
        return False
    if p == g:
        return True
    if is_prose(pred) or is_prose(gold) or (p.isalpha() and g.isalpha() and min(len(p), len(g)) >= 3):
        return p.lower() == g.lower()  # sentences and words: as strings, case aside
    letter = _letter_answer(p, g)
    if letter is not None:
        return letter
    a, b = _number(p), _number(g)
    if a is not None and b is not None:
        return _numbers_equal(a, b, g, tol)
    if depth < _MAX_DEPTH:
        verdict = _structured_equiv(p, g, tol, depth)
        if verdict is not None:
            return verdict
    if not tol.symbolic:
        return False
    # a plain number against a closed form: compare values
    if a is None and b is not None:
        value = _numeric_value(p)
        if value is not None:
            return _numbers_equal(_Number(value), b, g, tol)
    elif a is not None and b is None:
        value = _numeric_value(g)
        if value is not None:
            return _numbers_equal(a, _Number(value), "", tol)
    if _symbolic_equal(p, g):
        return True
    return _equations_equal(pred, gold)


def _equations_equal(pred: str, gold: str) -> bool:
    """Two equations with the same solutions because their ``lhs - rhs`` differ by a nonzero constant factor
    (``y = 2x + 3`` and ``2x - y + 3 = 0``; ``y = -\\frac{1}{2}x + \\frac{3}{4}`` and ``2x + 4y - 3 = 0``)."""
    ep, eg = normalize_answer(pred, keep_equation=True), normalize_answer(gold, keep_equation=True)
    if ep.count("=") != 1 or eg.count("=") != 1:
        return False
    (lp, rp), (lg, rg) = ep.split("="), eg.split("=")
    if not all((lp, rp, lg, rg)):
        return False
    target = f"{lg}-({rg})"
    return (_symbolic_equal(f"{lp}-({rp})", target) or _symbolic_equal(f"{rp}-({lp})", target)
            or _proportional(f"{lp}-({rp})", target))


def _proportional(a: str, b: str) -> bool:
    """``a / b`` simplifies to a nonzero number, and both depend on a variable."""
    mv = _mv()
    import sympy  # loaded with math-verify, which imports it
    try:
        ea, eb = _parse(mv, a), _parse(mv, b)
        if not ea or not eb:
            return False
        x, y = ea[0], eb[0]
        if not (isinstance(x, sympy.Expr) and isinstance(y, sympy.Expr)) or not x.free_symbols or y == 0:
            return False
        ratio = sympy.simplify(x / y)
        return bool(ratio.is_number and ratio.is_finite and ratio != 0)
    except Exception:  # noqa: BLE001 - a checker failure is a wrong answer, never a crash
        return False


# ------------------------------------------------------------------------------------------ structures
_MATRIX = re.compile(r"\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.DOTALL)


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
    ep, eg = _list_elements(p), _list_elements(g)
    if len(ep) > 1 or len(eg) > 1:  # "-2, 3": the solutions of an equation, in any order
        ep, eg = _distinct(ep, tol, depth), _distinct(eg, tol, depth)
        if len(ep) == 1 and len(eg) == 1:  # "x+11, 11+x": one answer written twice
            return _equiv_math(ep[0], eg[0], tol, depth + 1)
        if len(ep) > 1 and len(eg) > 1:
            return _unordered_equiv(ep, eg, tol, depth)
    return None


def _list_elements(s: str) -> list[str]:
    """The parts of a bare comma list, or of a set (``\\{1,2\\}``, ``{1,2}``): the same answer, a set of
    values. A single answer gives one part."""
    parts = split_top_level(s)
    if len(parts) == 1:
        for left, right in (("\\{", "\\}"), ("{", "}")):
            if s.startswith(left) and s.endswith(right) and _outer_brackets("\\{" + s[len(left):-len(right)] + "\\}"):
                inner = split_top_level(s[len(left):-len(right)])
                if len(inner) > 1:
                    return inner
    return parts


def _distinct(parts: list[str], tol: _Tolerance, depth: int) -> list[str]:
    """The parts with repeats dropped: equal strings, or (short lists) equivalent answers."""
    out: list[str] = []
    for part in parts:
        key = normalize_answer(part)
        if any(key == normalize_answer(q) or (len(parts) <= 8 and _equiv_math(part, q, tol, depth + 1))
               for q in out):
            continue
        out.append(part)
    return out


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
        return bool(mv.verify(gold, pred, float_rounding=MV_FLOAT_ROUNDING, timeout_seconds=None))
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


def _on_alarm(_signum, _frame):
    raise _CheckTimeout()


def _run_task(op: str, args: tuple, settings: dict) -> tuple[str | None, bool, str | None]:
    extracted = None
    tolerance = {k: settings[k] for k in ("rel_tol", "abs_tol", "percent", "sig_figs")}
    signal.setitimer(signal.ITIMER_REAL, settings["timeout"])
    try:
        if op == "grade":
            completion, gold, kind, options, sig_figs = args
            if sig_figs is not None:
                tolerance["sig_figs"] = bool(sig_figs)
            extracted = extract_answer(completion, kind, options=options)
            return extracted, is_equiv(extracted, gold, kind, **tolerance), None
        if op == "equiv":
            a, b, kind = args
            return None, is_equiv(a, b, kind, **tolerance), None
        if op == "deepseek":  # the DeepSeek-Math harness's extraction and equivalence (evals/deepseek)
            benchmark, mode, item, completion = args
            prediction = deepseek_grading.extract(benchmark, mode, item, completion)
            extracted = prediction if isinstance(prediction, str) else json.dumps(prediction, ensure_ascii=False)
            return extracted, bool(deepseek_grading.is_correct(benchmark, item, prediction)), None
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
    with contextlib.suppress(Exception):
        is_equiv("\\frac{1}{2}", "\\sqrt{2}")  # load the parser before the first timed check
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
    ``rel_tol``, ``abs_tol``, ``percent`` and ``sig_figs`` are the tolerance of :func:`is_equiv` (module
    docstring); ``sig_figs=True`` is meant for OCW-style physical answers.
    """

    def __init__(self, max_workers: int | None = None, *, timeout: float = 5.0, grace: float | None = None,
                 chunk_size: int = 16, rel_tol: float = NUMBER_REL_TOL, abs_tol: float = NUMBER_ABS_TOL,
                 percent: bool = True, sig_figs: bool = False, memory_limit_mb: int | None = 4096,
                 start_method: str | None = None):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.max_workers = max(1, int(max_workers or min(4, os.cpu_count() or 1)))
        self.timeout = float(timeout)
        self.grace = float(grace) if grace is not None else 1.0 + 0.2 * self.timeout
        self.chunk_size = max(1, int(chunk_size))
        self._settings = {"timeout": self.timeout, "rel_tol": rel_tol, "abs_tol": abs_tol, "percent": percent,
                          "sig_figs": sig_figs, "memory_limit_mb": memory_limit_mb}
        self._start_method = start_method
        self._ctx = None
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._start_failures = 0
        # checks, timeouts, kills, crashes, restarts, start_failures
        self.stats: collections.Counter[str] = collections.Counter()

    # -- lifecycle
    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

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
        """Verdicts for ``(completion, gold[, kind[, options[, sig_figs]]])`` items, in order (kind defaults to
        "math"; ``sig_figs`` True/False overrides the Grader's setting for that item, e.g. for OCW rows)."""
        tasks = []
        for item in items:
            item = tuple(item)
            if not 2 <= len(item) <= 5:
                raise ValueError(f"a grading item is (completion, gold[, kind[, options[, sig_figs]]]), got "
                                 f"{len(item)} fields")
            completion, gold = item[0], item[1]
            kind = item[2] if len(item) > 2 else "math"
            options = item[3] if len(item) > 3 else None
            sig_figs = item[4] if len(item) > 4 else None
            if kind not in ANSWER_KINDS:
                raise ValueError(f"answer kind must be one of {ANSWER_KINDS}, got {kind!r}")
            options = None if options is None else (options if isinstance(options, str) else list(options))
            tasks.append(("grade", (completion, gold, kind, options, sig_figs)))
        return [Verdict(*r) for r in self._run(tasks, progress=progress, desc=desc)]

    def grade_deepseek(self, items: Iterable[Sequence[Any]], *, progress: bool = False,
                       desc: str = "grading (deepseek)") -> list[Verdict]:
        """Verdicts of DeepSeek-Math's harness for ``(benchmark, mode, item, completion)`` items, in order:
        `item` is `deepseek.process(benchmark, record)`, `completion` the text its extraction reads (a PoT
        program's output). `extracted` is the harness's prediction (JSON when it is a list)."""
        tasks = []
        for benchmark, mode, item, completion in items:
            deepseek_grading.check_protocol(benchmark, mode)
            tasks.append(("deepseek", (benchmark, mode, dict(item), completion)))
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
