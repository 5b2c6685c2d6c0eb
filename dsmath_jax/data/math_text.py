"""Small pieces of math-text handling shared by the datasets and the evaluation harness.

* :func:`last_boxed` -- the content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (brace-matched):
  the MATH gold answer of a reference solution, and the DeepSeekMath instruct models' final answer.
* :func:`gsm8k_final_answer` -- the number after ``####`` in a GSM8K reference solution.
* :func:`strip_calculator_annotations` -- removes GSM8K's ``<<48/2=24>>`` calculator annotations.
* :func:`gsm8k_cot_response` -- a GSM8K reference solution as a chain-of-thought target (the SFT data and
  the reference responses of the RL problems).
"""

from __future__ import annotations

import re

__all__ = ["last_boxed", "gsm8k_final_answer", "strip_calculator_annotations", "gsm8k_cot_response"]

# `\boxed` or `\fbox` as a whole LaTeX command (not `\boxedsomething`).
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")


def matching_brace(text: str, start: int) -> int:
    r"""Index of the `}` closing the `{` at `start`, or -1 when it is never closed. `\{`, `\}` and `\\`
    are escapes, not grouping braces."""
    depth = 0
    k = start
    while k < len(text):
        c = text[k]
        if c == "\\":
            k += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return k
        k += 1
    return -1


def last_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` or ``\fbox{...}`` in ``text``, or ``None``.

    * Braces are matched, so ``\boxed{\frac{1}{2}}`` gives ``\frac{1}{2}``; escaped braces ``\{`` and
      ``\}`` inside the box do not count (``\boxed{\{1,2\}}`` gives ``\{1,2\}``).
    * With several boxes the last one (by position, either command) wins:
      ``\boxed{1} ... \fbox{3}`` gives ``3``.
    * The brace-less form ``\boxed 5`` gives the text after the space up to the next whitespace or ``$``
      (``$\boxed 5$`` gives ``5``), as in the MATH reference code.
    * Whitespace between the command and its ``{`` is allowed (``\boxed {7}`` gives ``7``).
    * ``None`` when there is no box, or when the last box is never closed (e.g. a generation cut off
      inside it); ``\boxed{}`` gives ``""``.

    The content is returned as written (not stripped of inner spaces or normalised); answer
    normalisation and equivalence belong to the evaluation code.
    """
    matches = list(_BOX_COMMAND.finditer(text))
    if not matches:
        return None
    i = matches[-1].end()
    n = len(text)
    if i < n and text[i] not in "{ \t\n":
        return None  # e.g. a trailing `\boxed$`: no argument
    j = i
    while j < n and text[j] in " \t\n":
        j += 1
    if j < n and text[j] == "{":
        close = matching_brace(text, j)
        if close >= 0:
            return text[j + 1:close]
        return None  # unbalanced: the box is never closed
    if j == i:  # `\boxed` at the very end of the text
        return None
    m = re.match(r"[^\s$]+", text[j:])
    return m.group(0) if m else None


def gsm8k_final_answer(solution: str) -> str:
    """The final answer of a GSM8K reference solution: the text after the last ``####``, commas removed.

    ``"... \\n#### 70,000"`` gives ``"70000"``. Raises ``ValueError`` when there is no ``####`` or
    nothing after it.
    """
    head, sep, tail = solution.rpartition("####")
    if not sep:
        raise ValueError("GSM8K solution has no '####' final-answer line")
    answer = tail.strip().replace(",", "")
    if not answer:
        raise ValueError("GSM8K solution has an empty '####' final-answer line")
    return answer


def strip_calculator_annotations(text: str) -> str:
    """Remove GSM8K calculator annotations: ``"48/2 = <<48/2=24>>24"`` becomes ``"48/2 = 24"``."""
    return _CALCULATOR_ANNOTATION.sub("", text)


def gsm8k_cot_response(solution: str) -> str:
    r"""A GSM8K reference solution as a chain-of-thought target.

    The ``<<..>>`` calculator annotations are removed and the final ``#### N`` line becomes
    ``The final answer is $\boxed{N}$.``
    """
    answer = gsm8k_final_answer(solution)
    reasoning = strip_calculator_annotations(solution.rpartition("####")[0]).rstrip()
    return f"{reasoning}\nThe final answer is $\\boxed{{{answer}}}$."
