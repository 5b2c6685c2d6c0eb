r"""Final answers out of model completions, and the LaTeX normalisation applied before comparing them.

This is the extraction of the ``strict`` grading protocol (DESIGN.md: semantically correct, no leniency a
policy could exploit), used by ``dsmath grade``, the RL rewards and the eval runner. It keeps the order of
the public DeepSeek-Math harness (PAPER.md §7) but never pulls an answer out of running text: an answer is
what the completion marks as its answer, or nothing. The byte-exact harness protocol lives in
:mod:`dsmath_jax.evals.deepseek`; the equivalence check itself in :mod:`dsmath_jax.evals.grader`.

Answer kinds (:data:`ANSWER_KINDS`):

* ``"math"``: a free-form LaTeX answer (MATH, MATH-500, OCW, Gaokao-MathCloze);
* ``"number"``: a final number (GSM8K, CMATH, MGSM-zh);
* ``"choice"``: a multiple-choice letter ``A``-``E`` (MMLU-STEM, SAT, Gaokao-MathQA; a few Gaokao-MathQA
  questions have several correct letters, written e.g. ``"AD"``).

:func:`extract_answer` tries, in order, on the completion cut before any following few-shot turn
(``"\nQ:"``, ``"\nProblem:"``, ``"\n问题："`` / ``"\n问题 6."``):

1. the Minerva closing line ``final answer is $X$. I hope it is correct.``;
2. the final group of ``\boxed{}`` (brace-matched): the last box, together with the boxes just before it
   that only connectors separate (``\boxed{3} and \boxed{5}``, ``x = \boxed{3}, y = \boxed{5}``),
   duplicates dropped, joined with ``", "``. So an answer in several boxes is read whole, and hedging
   (``\boxed{3} or \boxed{5}``) is a list that equals no single gold. A last box that is never closed (a
   generation cut off inside it) gives no box answer;
3. a GSM8K-style ``#### X`` line (the reference solutions' format; not in the harness's list);
4. ``the answer is X`` (also ``Answer: X`` at the start of a line, ``答案是`` / ``答案为``), the last one;
5. the last ```` ```output ```` block of a tool-integrated completion, whole (a program that prints
   ``2*sqrt(2)`` answers ``2*sqrt(2)``, a program that prints several lines answers all of them).

Nothing else: no last number of the text (the harness's fallback), no number out of a phrase (``the answer
is 3 + 5 = 8`` answers ``3 + 5 = 8``, not 8). For ``"number"`` an answer that normalises to a number is
returned normalised (``\$1,000`` -> ``1000``, ``18 apples`` -> ``18``), any other answer as written. For
``"choice"`` the answer is mapped to its letter(s) (``(B)``, ``B)``, ``\boxed{B}``, ``\text{(B)}``,
``答案是 B``, or the text of an option when ``options`` are given; a letter whose text names another
option, as ``(C) Plane`` when Plane is option A, names none); with no answer phrase, a last line that is a
letter or an explicit cue (``Answer: B``, ``选 D``) -- never a letter picked out of the reasoning.

:func:`reference_answer` reads a reference solution the same way: the final group of its boxes, so a MATH
solution that boxes each of several answers (``the answers are $\boxed{-2}$ and $\boxed{1}$``) has the
gold ``-2, 1``, and a prediction must give all of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction

from dsmath_jax.data.math_text import gsm8k_final_answer, matching_brace

__all__ = [
    "ANSWER_KINDS",
    "BENCHMARK_KINDS",
    "CHOICE_LETTERS",
    "benchmark_kind",
    "choice_letters",
    "cut_at_next_turn",
    "exact_number",
    "extract_answer",
    "final_boxed",
    "is_prose",
    "normalize_answer",
    "parse_number",
    "reference_answer",
    "split_options",
    "split_top_level",
]

ANSWER_KINDS = ("math", "number", "choice")
CHOICE_LETTERS = "ABCDE"

# Benchmark name -> answer kind (the names of dsmath_jax.evals.benchmarks).
BENCHMARK_KINDS: dict[str, str] = {
    "gsm8k": "number",
    "math": "math",
    "math500": "math",
    "cmath": "number",
    "mgsm_zh": "number",
    "gaokao_mathcloze": "math",
    "gaokao_mathqa": "choice",
    "sat": "choice",
    "ocw": "math",
    "mmlu_stem": "choice",
}


def benchmark_kind(name: str) -> str:
    """The answer kind of a benchmark name (``"MATH-500"``, ``"mgsm-zh"`` and ``"math_500"`` are accepted)."""
    key = str(name).strip().lower().replace("-", "_")
    key = {"math_500": "math500", "mmlu": "mmlu_stem", "gaokao_cloze": "gaokao_mathcloze"}.get(key, key)
    if key not in BENCHMARK_KINDS:
        raise KeyError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARK_KINDS)}")
    return BENCHMARK_KINDS[key]


def _check_kind(kind: str) -> None:
    if kind not in ANSWER_KINDS:
        raise ValueError(f"answer kind must be one of {ANSWER_KINDS}, got {kind!r}")


# ------------------------------------------------------------------------------------------ extraction
# A following few-shot turn: the model went on to invent the next question.
_NEXT_TURN = re.compile(r"\n[ \t]*(?:Q:|Problem:|问题\s*[：:]|问题\s*\d+\s*[.．])")
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
# "the answer is", "The final answer is", "答案是"; and "Answer:" / "**Final Answer:**" opening a line.
_ANSWER_IS = re.compile(r"(?:(?i:the (?:final )?answer is)|答案是|答案为|"
                        r"^[ \t>#*_]*(?i:(?:final )?answer)[*_]*[ \t]*(?:[:：]|(?=\$|\\[\[(])))"
                        r"[*_]*[ \t]*[:：]?[ \t]*", re.MULTILINE)
_OUTPUT_BLOCK = re.compile(r"```output[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# What may stand between two boxes of one answer: math delimiters, spacing, commas, "and"/"or", a unit or
# two, and a variable being set ("x = \boxed{3}, y = \boxed{5}").
_BOX_GAP = re.compile(r"[\s,;.]*(?:(?:[A-Za-z]{2,}\s+|\([a-z0-9]\)\s*){0,3}(?:and|or)(?![A-Za-z])[\s,;]*)?"
                      r"(?:\\?[A-Za-z]+(?:_\{?\w+\}?)?\s*(?:\([^()]{0,10}\))?\s*=\s*)?")


def cut_at_next_turn(completion: str) -> str:
    """The completion up to a following few-shot turn (``"\\nQ:"``, ``"\\nProblem:"``, ``"\\n问题："`` ...)."""
    m = _NEXT_TURN.search(completion)
    return completion[:m.start()] if m else completion


def _strip_math_delimiters(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            return s[len(left):len(s) - len(right)].strip()
    return s


def _answer_phrase(rest: str) -> str:
    """The answer after "the answer is": up to the end of the sentence or of the first `$...$`."""
    rest = rest.lstrip().lstrip("*").lstrip()
    for left, right in (("$$", "$$"), ("\\(", "\\)"), ("\\[", "\\]"), ("$", "$")):
        if rest.startswith(left):
            end = rest.find(right, len(left))
            # `$x = 3$.` gives `x = 3`; `$5$;$10$` (several blanks) is read as a whole line below.
            if end > 0 and re.match(r"\s*(?:[.。,，!！]|\n|$)", rest[end + len(right):]):
                return rest[len(left):end].strip()
            break
    line = rest.split("\n", 1)[0]
    # End of sentence: a period followed by a space/end (not a decimal point), or a Chinese full stop.
    m = re.search(r"\.(?=\s|$)|。|；", line)
    if m:
        line = line[:m.start()]
    return line.strip().strip("*").strip()


def _minerva_answer(text: str) -> str | None:
    """X of the last "final answer is X. I hope" (Minerva's closing line; OCW writes X without `$`)."""
    low = text.lower()  # str.rfind keeps this linear however often the phrases repeat
    end = low.rfind("i hope")
    if end < 0:
        return None
    start = low.rfind("final answer is", 0, end)
    if start < 0:
        return None
    answer = text[start + len("final answer is"):end].strip().rstrip(".").strip()
    answer = re.sub(r'^(?:\\?"|“)(.*?)(?:\\?"|”)$', r"\1", answer).strip()  # quoted: "$12$ and $13$"
    return _strip_math_delimiters(answer) or None


def _boxes(text: str) -> list[tuple[int, int, str | None]]:
    r"""(start, end, content) of each top-level ``\boxed``/``\fbox`` in order; content None when the box is
    never closed (or has no argument)."""
    out: list[tuple[int, int, str | None]] = []
    n = len(text)
    for m in _BOX_COMMAND.finditer(text):
        if out and m.start() < out[-1][1]:
            continue  # inside the previous box
        i = j = m.end()
        while j < n and text[j] in " \t\n":
            j += 1
        if j < n and text[j] == "{":
            close = matching_brace(text, j)
            out.append((m.start(), close + 1, text[j + 1:close]) if close >= 0 else (m.start(), n, None))
        elif j > i and j < n and (b := re.match(r"[^\s$]+", text[j:])):  # `\boxed 5`, as the MATH code reads it
            out.append((m.start(), j + b.end(), b.group(0)))
        else:
            out.append((m.start(), m.end(), None))
    return out


def _box_gap(gap: str) -> str:
    gap = re.sub(r"\$|\\[()\[\]]|\\[,;:! ]|\\q?quad(?![A-Za-z])|~|\*\*", " ", gap)
    return re.sub(r"\\(?:text|textrm|mbox|mathrm)\s*\{([^{}]*)\}", r" \1 ", gap).strip()


def final_boxed(text: str) -> str | None:
    r"""The answer in the final group of boxes of ``text`` (module docstring, rule 2), or None.

    ``"so $\boxed{7}$."`` gives ``"7"``; ``"$x = \boxed{3}$ and $y = \boxed{5}$"`` gives ``"3, 5"``; boxes
    that running text separates (``\boxed{12} ... Thus the answer is \boxed{7}``) give the last one; a
    repeated box counts once; a last box never closed gives None."""
    boxes = _boxes(text)
    if not boxes or boxes[-1][2] is None or not boxes[-1][2].strip():
        return None
    group = [boxes[-1][2].strip()]
    for (_, end, content), (start, _, _) in zip(reversed(boxes[:-1]), reversed(boxes[1:])):
        gap = text[end:start]
        if content is None or not content.strip() or len(gap) > 80 or not _BOX_GAP.fullmatch(_box_gap(gap)):
            break
        group.append(content.strip())
    group.reverse()
    seen, parts = set(), []
    for part in group:
        key = normalize_answer(part)
        if key not in seen:
            seen.add(key)
            parts.append(part)
    return ", ".join(parts)


def _find_candidate(text: str) -> str | None:
    """Rules 1-5 of the extraction order (module docstring); None when none applies."""
    answer = _minerva_answer(text)
    if answer:
        return answer
    boxed = final_boxed(text)
    if boxed:
        return boxed
    matches = list(_HASHES.finditer(text))
    if matches and matches[-1].group(1).strip():
        return matches[-1].group(1).strip()
    matches = list(_ANSWER_IS.finditer(text))
    for m in reversed(matches[-20:]):  # the last phrase that says something (bounded work)
        answer = _answer_phrase(text[m.end():m.end() + 2000])
        if answer:
            return answer
    outputs = [o.strip() for o in _OUTPUT_BLOCK.findall(text)]
    if outputs and outputs[-1]:
        return outputs[-1]
    return None


def extract_answer(completion: str, kind: str = "math", *, options: Sequence[str] | str | None = None) -> str | None:
    """The final answer of a completion (the extraction order of the module docstring), or None.

    A ``"math"`` answer is returned as written (trimmed, a trailing period removed); comparison normalises
    it. A ``"number"`` answer that is a number once normalised is returned normalised (``"\\$1,000"`` ->
    ``"1000"``, ``"18 apples"`` -> ``"18"``), any other answer as written (never a number taken out of it).
    A ``"choice"`` answer is the letter(s), e.g. ``"B"`` or ``"AD"``.
    """
    _check_kind(kind)
    if completion is None:
        return None
    text = cut_at_next_turn(str(completion))
    candidate = _find_candidate(text)
    if candidate is not None:
        candidate = candidate.rstrip().rstrip(".。").rstrip()
    if kind == "choice":
        lines = [candidate] if candidate is not None else []
        cues = list(_ANSWER_IS.finditer(text))
        if cues:  # the whole line after the last "the answer is": option texts can hold periods
            lines.append(text[cues[-1].end():].split("\n", 1)[0].strip().rstrip(".。").strip())
        for line in lines:
            letters = choice_letters(line, options)
            if letters is not None:
                return letters
        return _choice_fallback(text, options)
    if not candidate:
        return None
    if kind == "number":
        number = normalize_answer(candidate)
        if parse_number(number) is not None:
            return number  # "18 apples", "\$1,000" -> "18", "1000"
    return candidate


def reference_answer(gold: str, kind: str = "math") -> str:
    r"""The gold answer from what a benchmark gives: a MATH reference solution gives the final group of its
    boxes (:func:`final_boxed`: ``... are $\boxed{-2}$ and $\boxed{1}$`` gives ``-2, 1``), a GSM8K solution
    its ``#### N``; a bare answer is returned as it is."""
    _check_kind(kind)
    gold = str(gold)
    if _BOX_COMMAND.search(gold):
        boxed = final_boxed(gold)
        if boxed is not None:
            return boxed
    if "####" in gold:
        return gsm8k_final_answer(gold)
    return gold.strip()


# ------------------------------------------------------------------------------------------ choice letters
_LETTER_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm|boxed|fbox)\s*\{([^{}]*)\}")
_OPTION_PREFIX = re.compile(r"^\s*(?:\(\s*[A-Ea-e]\s*\)|[A-E]\s*[).:：．、])\s*")


def split_options(options: Sequence[str] | str | None) -> list[str] | None:
    """Option texts in letter order. A single string such as SAT's ``"A) $x$ B) $y$ ..."`` (or
    ``"A. 1,190 B. 1,900 ..."``) is split at its letters, taken in order; a leading ``(A)`` / ``A)`` /
    ``A.`` on each option of a list is removed."""
    if options is None:
        return None
    if isinstance(options, str):
        starts = []
        pos = 0
        for letter in CHOICE_LETTERS:
            m = re.compile(r"(?:^|\s)\(?" + letter + r"[).]\s*").search(options, pos)
            if not m:
                break
            starts.append((m.start(), m.end()))
            pos = m.end()
        if not starts:
            return [options.strip()]
        ends = [s for s, _ in starts[1:]] + [len(options)]
        return [options[b:e].strip() for (_, b), e in zip(starts, ends)]
    options = [str(o) for o in options]
    prefixed = all(re.match(r"\s*(?:\(\s*" + letter + r"\s*\)|" + letter + r"\s*[).:：．、])", o)
                   for letter, o in zip(CHOICE_LETTERS, options))
    return [_OPTION_PREFIX.sub("", o).strip() if prefixed else o.strip() for o in options]


def _letters_allowed(options: Sequence[str] | None) -> str:
    return CHOICE_LETTERS[:len(options)] if options else CHOICE_LETTERS


def _names_other_option(letter: str, text: str, options: Sequence[str] | None) -> bool:
    """Whether the text after a letter is the text of another option than the letter's."""
    rest = normalize_answer(text).lower()
    if not options or not rest:
        return False
    named = [c for c, option in zip(CHOICE_LETTERS, options) if normalize_answer(option).lower() == rest]
    return bool(named) and letter not in named


def choice_letters(text: str | None, options: Sequence[str] | str | None = None) -> str | None:
    r"""The letter(s) a short answer names: ``"B"``, ``"(B)"``, ``"B)"``, ``"B. 24"``, ``"\boxed{B}"``,
    ``"\text{(B)}"``, ``"A, D"`` -> ``"AD"``; else, with ``options``, the letter of the option whose text the
    answer equals (normalised string or number equality). None when it names none, or when a letter comes
    with the text of another option (``"(C) Plane"`` when Plane is option A's text)."""
    if text is None:
        return None
    opts = split_options(options)
    allowed = _letters_allowed(opts)
    t = str(text).strip()
    for _ in range(3):
        t = _LETTER_WRAPPER.sub(r"\1", t)
    t = t.replace("$", "").replace("**", "").strip().rstrip(".。").strip()
    m = re.fullmatch(r"\(?\s*([A-Ea-e])\s*\)?", t)
    if m:
        letter = m.group(1).upper()
        return letter if letter in allowed else None
    target = normalize_answer(t) if opts else ""
    if opts and target:  # the text of an option ("A and D" can be an option's text, not two letters)
        hits = [letter for letter, option in zip(CHOICE_LETTERS, opts) if normalize_answer(option) == target]
        if len(hits) == 1:
            return hits[0]
    if len(t) <= 40 and re.fullmatch(r"\(?[A-E]\)?(?:\s*(?:(?:,|，|、|和|and|&)\s*)?\(?[A-E]\)?)*", t):
        letters = "".join(sorted(set(re.findall(r"[A-E]", t))))
        if letters and all(c in allowed for c in letters):
            return letters
    m = re.match(r"\(\s*([A-E])\s*\)|([A-E])\s*[).:：．、]", t)
    if m:
        letter = m.group(1) or m.group(2)
        if _names_other_option(letter, t[m.end():], opts):  # "(C) Plane" when Plane is option A's text
            return None
        if letter in allowed:
            return letter
    value = parse_number(target)
    if opts and value is not None:  # the same number written differently (0.50 for 1/2)
        hits = [letter for letter, option in zip(CHOICE_LETTERS, opts)
                if (v := parse_number(normalize_answer(option))) is not None
                and math.isclose(v, value, rel_tol=1e-9, abs_tol=1e-12)]
        if len(hits) == 1:
            return hits[0]
    return None


# Cues like "Answer: B", "answer (C)", "正确答案是B", "选 D", "the correct option is A" (not "option A fails ...")
_CHOICE_CUE = re.compile(r"(?:(?i:answer|(?:correct|right|best) (?:option|choice))|答案|选)"
                         r"\s*(?:(?i:is)|是|为|应选|应为)?\s*[:：]?\s*"
                         r"(\(?[A-E]\)?(?:\s*(?:(?:,|，|、|和|and)\s*)?\(?[A-E]\)?)*)(?![A-Za-z])")


def _choice_fallback(text: str, options: Sequence[str] | str | None) -> str | None:
    """No answer phrase: the last line if it names a letter, else the last cue ("Answer: B", "选 D"). A letter
    merely mentioned in the reasoning ("(A) fails because ...") is not an answer."""
    lines = [line for line in text.strip().split("\n") if line.strip()]
    if lines:
        letters = choice_letters(lines[-1], options)
        if letters is not None:
            return letters
    found = []
    for m in _CHOICE_CUE.finditer(text):
        letters = choice_letters(m.group(1), options)
        rest = text[m.end():].split("\n", 1)[0]
        if letters and not (len(letters) == 1 and _names_other_option(letters, rest, split_options(options))):
            found.append(letters)
    return found[-1] if found else None


# ------------------------------------------------------------------------------------------ normalisation
_SPACING = re.compile(r"(\\\\)|\\[,;:! ]|\\q?quad(?![A-Za-z])")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)(?![A-Za-z])\s*")
_FRAC_VARIANT = re.compile(r"\\[dtc]frac(?![A-Za-z])")
_BINOM_VARIANT = re.compile(r"\\[dt]binom(?![A-Za-z])")
_TEXT_COMMANDS = r"text|textrm|textup|textnormal|mbox|mathrm|textbf|mathbf|boldsymbol|textit|mathit"
_TRAILING_TEXT = re.compile(r"\\(?:text|textrm|textup|mbox|mathrm)\s*\{([^{}]*)\}\s*(?:\^\s*\{?\s*[23]\s*\}?)?\s*$")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|°|\\degree(?![A-Za-z])")
_SHORT_VARIABLE = re.compile(r"^\s*(?:[A-Za-z]{1,2}|\\[A-Za-z]+)(?:_\{?\w+\}?)?\s*=\s*")
_IN_PREFIX = re.compile(r"^\s*[A-Za-z]\s*\\in(?![A-Za-z])\s*")
_THOUSANDS_BANG = re.compile(r"(\d)\s*,\s*\\!\s*(?=\d{3}(?!\d))")
_WHOLE_THOUSANDS = re.compile(r"-?(?:[1-9]\d{0,2})(?:,\d{3})+(?:\.\d+)?%?")  # not 0,111
# Unit words after a number: "18 integers", "5.4 cents", "4 sq. units^2" (each word at least two letters).
_UNIT_WORDS = re.compile(r"(?:\s+[A-Za-z]{2,}\.?)+(?:\^\{?[23]\}?)?$")
_NOT_UNITS = {"and", "or", "to", "in", "pi", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "sqrt",
              "frac", "infty", "cdot", "times"}
# Words that make an answer a sentence (is_prose); a sentence is compared as a string, never mined for values.
_PROSE_WORDS = frozenset({
    "is", "are", "was", "were", "be", "been", "the", "of", "which", "that", "this", "these", "those", "so", "when",
    "where", "because", "since", "then", "than", "there", "therefore", "thus", "hence", "answer", "equals", "equal",
    "not", "with", "from", "we", "it", "its", "has", "have", "can", "will", "would", "should", "must", "if", "what",
    "how", "why", "get", "gives", "got", "yields",
})
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}(?![A-Za-z])")
# "12th", "2^{nd}", "3^{\text{rd}}" (after \text{} unwrapping): an ordinal is its number.
_ORDINAL = re.compile(r"(\d+)\s*(?:\^\s*\{?\s*(st|nd|rd|th)\s*\}?|(st|nd|rd|th))(?![A-Za-z])")
_PERCENT_WORD = re.compile(r"(?<=[\d}])\s*(?:percent(?:age)?|per\s*cent|pct)(?![A-Za-z])", re.IGNORECASE)
# "and"/"or" joining the parts of an answer ("3 and 5", "6 \text{ and } 8", "(11,7) or (7,11)").
_CONNECTOR = re.compile(r"\s*,?\s*(?<![A-Za-z\\])(?:and|or)(?![A-Za-z])\s*,?\s*")
_LIST_COMMA = "\x01"  # a comma followed by a space between digits: a list, never a thousands separator


def is_prose(text: str | None) -> bool:
    """Whether an answer is a sentence rather than a mathematical answer: it has a word such as "is", "the",
    "which", "therefore", or four words or more (LaTeX commands and function names aside). Unit words
    ("18 apples", "0.06 yuan") and one-word answers ("Friday", "odd") are not prose."""
    if text is None:
        return False
    words = [w.lower() for w in _WORD.findall(str(text))]
    words = [w for w in words if w not in _NOT_UNITS - {"and", "or"}]
    return any(w in _PROSE_WORDS for w in words) or len(words) >= 4


def _ordinal(m: re.Match) -> str:
    n, suffix = m.group(1), m.group(2) or m.group(3)
    expected = "th" if n[-2:] in ("11", "12", "13") else {"1": "st", "2": "nd", "3": "rd"}.get(n[-1], "th")
    return n if suffix == expected else m.group(0)


def _split_connectors(s: str) -> str:
    """Top-level "and"/"or" between the parts of an answer become list commas (``3 and 5`` -> ``3, 5``)."""
    cuts, depth, last = [], 0, 0
    for m in _CONNECTOR.finditer(s):
        for c in s[last:m.start()]:
            depth += c in "([{"
            depth -= c in ")]}"
        last = m.start()
        if depth == 0:
            cuts.append(m)
    if not cuts:
        return s
    parts, start = [], 0
    for m in cuts:
        parts.append(s[start:m.start()])
        start = m.end()
    parts.append(s[start:])
    if not all(p.strip() for p in parts):
        return s
    return ("," + _LIST_COMMA).join(p.strip() for p in parts)


def _unwrap_commands(s: str, commands: str) -> str:
    r"""``\text{abc}`` -> ``abc`` for each listed command (brace-matched, innermost content kept)."""
    pattern = re.compile(r"\\(?:" + commands + r")\s*\{")
    for _ in range(20):
        m = pattern.search(s)
        if not m:
            break
        end = matching_brace(s, m.end() - 1)
        if end < 0:
            break
        s = s[:m.start()] + s[m.end():end] + s[end + 1:]
    return s


def _unwrap_whole(s: str, command: str) -> str:
    """`\\command{X}` spanning the whole string -> `X`."""
    m = re.match(r"\\" + command + r"\s*\{", s)
    if m and matching_brace(s, m.end() - 1) == len(s) - 1:
        return s[m.end():-1].strip()
    return s


def _fix_shorthand(s: str) -> str:
    r"""``\frac12`` -> ``\frac{1}{2}``, ``\frac1{72}`` -> ``\frac{1}{72}``, ``\frac{625}4`` -> ``\frac{625}{4}``,
    ``\sqrt3`` -> ``\sqrt{3}`` (LaTeX reads one token after a brace-less command)."""
    token = r"(\\[A-Za-z]+|[^\s{}\\^_\[])"
    s = re.sub(r"\\frac\s*" + token + r"\s*" + token, r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*" + token + r"\s*(?=\{)", r"\\frac{\1}", s)
    s = re.sub(r"\\frac\s*(\{(?:[^{}]|\{[^{}]*\})*\})\s*" + token, r"\\frac\1{\2}", s)
    s = re.sub(r"\\sqrt\s*" + token, r"\\sqrt{\1}", s)
    return s


def _collapse_spaces(s: str) -> str:
    # Keep one space where it separates a command from a following letter (`\pi r`, `\cos x`).
    s = re.sub(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])", "\\1\x00", s)
    s = re.sub(r"\s+", "", s)
    return s.replace("\x00", " ")


def normalize_answer(text: str | None, *, keep_equation: bool = False) -> str:
    r"""The canonical string of an answer, used for string equality before any symbolic check.

    Removes ``$``, ``\(``/``\)``, a whole ``\boxed{}``, ``\left``/``\right``, spacing commands (``\!``, ``\,``,
    ``\ ``, ``\quad``), ``\$`` and ``\%`` escapes (``%`` stays: the percent rule of the grader reads it;
    ``50 percent`` -> ``50%``), degrees (``^\circ``), a trailing ``\text{...}``/``\mbox{...}`` unit
    (``5\text{ cm}^2`` -> ``5``) and unit words after a number (``18 integers`` -> ``18``, ``18 个`` -> ``18``;
    never words of a sentence, :func:`is_prose`), an ordinal suffix on an integer (``12th``,
    ``12^{\text{th}}`` -> ``12``; only the right suffix, so ``12st`` stays), other ``\text{}``/``\mathrm{}``
    wrappers (content kept), ``x =`` / ``y=`` / ``x \in`` prefixes on a short variable, thousands separators
    (``1,000``, ``5,\!040``,
    ``1{,}000``; a comma followed by a space is a list comma, so ``32, 349`` stays a list of two), trailing
    periods; top-level ``and``/``or`` between parts become list commas (``3 and 5`` -> ``3, 5``);
    ``\dfrac``/``\tfrac`` -> ``\frac``, ``\frac12`` -> ``\frac{1}{2}``, ``\sqrt3`` -> ``\sqrt{3}``, ``.5`` ->
    ``0.5``, Python's ``**`` -> ``^{}`` and a bare ``pi`` -> ``\pi`` (a program's printed output);
    whitespace goes except between a command and a letter and after a list comma. The result is still
    valid LaTeX (it is what the symbolic checker parses). ``keep_equation=True`` keeps the ``x =`` prefix
    (to compare equations side by side).
    """
    if text is None:
        return ""
    s = str(text).replace("\n", " ").replace("\r", " ").strip()
    s = _strip_math_delimiters(s)
    s = _unwrap_whole(s, "boxed")
    s = _strip_math_delimiters(s)
    s = re.sub(r"\{\s*,\s*\}", ",", s)
    s = _THOUSANDS_BANG.sub(r"\1", s)
    s = re.sub(r"(\d)\s*,\s+(?=\d{3}(?!\d))", r"\1," + _LIST_COMMA, s)
    s = _SPACING.sub(lambda m: m.group(1) or " ", s)
    s = s.replace("~", " ")
    s = _LEFT_RIGHT.sub("", s)
    s = re.sub(r"\\(?:displaystyle|textstyle)(?![A-Za-z])", "", s)
    s = _FRAC_VARIANT.sub(r"\\frac", s)
    s = _BINOM_VARIANT.sub(r"\\binom", s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "%")
    s = s.strip()
    s = _unwrap_whole(s, "text")
    # A trailing unit in \text{}/\mbox{}/\mathrm{}; \mathrm{} only when it is a word (not \mathrm{i}, \mathrm{e}).
    for _ in range(3):
        m = _TRAILING_TEXT.search(s)
        if not m or not s[:m.start()].strip():
            break
        word = m.group(1).strip()
        if s[m.start():].startswith("\\mathrm") and len(word.strip("~ ")) < 2:
            break
        s = s[:m.start()].strip()
    s = _DEGREES.sub("", s)
    s = _unwrap_commands(s, _TEXT_COMMANDS)
    s = s.replace("∞", "\\infty").replace("infinity", "\\infty")
    s = _ORDINAL.sub(_ordinal, s)
    s = _PERCENT_WORD.sub("%", s)
    s = _split_connectors(s.strip())
    if "**" in s:  # Python's power, as a program prints it
        s = re.sub(r"\*\*\s*(\([^()]*\)|-?[\w.]+)", r"^{\1}", s)
    s = re.sub(r"(?<![\\A-Za-z])pi(?![A-Za-z])", r"\\pi", s)
    s = s.strip()
    m = _UNIT_WORDS.search(s) if len(s) <= 80 else None
    if m and not {w.lower() for w in re.findall(r"[A-Za-z]+", m.group(0))} & (_NOT_UNITS | _PROSE_WORDS):
        head = s[:m.start()].strip()
        if parse_number(_collapse_spaces(head)) is not None:
            s = head
    m = re.search(r"\s*[\u4e00-\u9fff]{1,4}$", s)  # a Chinese measure word or unit: "18 个", "5元"
    if m and parse_number(_collapse_spaces(s[:m.start()])) is not None:
        s = s[:m.start()]
    s = _IN_PREFIX.sub("", s)
    if not keep_equation and s.count("=") == 1 and _SHORT_VARIABLE.match(s) and s.split("=", 1)[1].strip():
        s = _SHORT_VARIABLE.sub("", s, count=1)
    s = _fix_shorthand(s)
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)
    s = _collapse_spaces(s)
    s = re.sub(r"[.,;]+$", "", s)
    s = re.sub(r"(?:\\\\)+$", "", s)
    if _WHOLE_THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    s = re.sub(r"^\+(?=\d|\\infty)", "", s)
    return s.replace(_LIST_COMMA, " ")


# ------------------------------------------------------------------------------------------ numbers
_NUM = r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RE_DECIMAL = re.compile(rf"([-+]?){_NUM}(%?)")
_RE_FRAC = re.compile(rf"(-?)\\frac\{{(-?{_NUM})\}}\{{(-?{_NUM})\}}(%?)")
_RE_SLASH = re.compile(rf"(-?{_NUM})/(-?{_NUM})(%?)")
_RE_MIXED = re.compile(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")
_RE_SCI = re.compile(rf"(-?{_NUM})(?:\\times|\\cdot|\*|x)10\^\{{?(-?\d{{1,3}})\}}?")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def parse_number(text: str | None) -> float | None:
    r"""The value of a plain number in a normalised answer, or None: ``12``, ``-3.5``, ``.5``, ``4.5e33``,
    ``50%`` (0.5), ``\frac{3}{4}``, ``-\frac{1}{2}``, ``3/4``, ``-1./3``, ``6\frac{1}{5}`` (a mixed number,
    as MATH writes them: 6.2), ``2\times10^{5}``. Nothing is evaluated beyond that (no powers, no
    functions), so a pathological expression cannot make it slow."""
    if text is None:
        return None
    s = str(text).strip()
    if not s or len(s) > 80:
        return None
    s = s.replace(",", "") if _WHOLE_THOUSANDS.fullmatch(s) else s
    try:
        m = _RE_DECIMAL.fullmatch(s)
        if m:
            value = float(s.rstrip("%"))
            return _finite(value / 100 if m.group(2) else value)
        m = _RE_FRAC.fullmatch(s) or _RE_SLASH.fullmatch(s.replace(" ", ""))
        if m:
            groups = m.groups()
            sign = -1.0 if len(groups) == 4 and groups[0] == "-" else 1.0
            num, den, percent = groups[-3], groups[-2], groups[-1]
            value = sign * float(num) / float(den)
            return _finite(value / 100 if percent else value)
        m = _RE_MIXED.fullmatch(s)
        if m:
            sign = -1.0 if m.group(1) else 1.0
            return _finite(sign * (float(m.group(2)) + float(m.group(3)) / float(m.group(4))))
        m = _RE_SCI.fullmatch(s)
        if m:
            return _finite(float(m.group(1)) * 10.0 ** int(m.group(2)))
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def _fraction(s: str) -> Fraction:
    m = re.search(r"[eE]([-+]?\d+)$", s)
    if m and abs(int(m.group(1))) > 400:
        raise ValueError("exponent out of range")
    return Fraction(s)


def exact_number(text: str | None) -> Fraction | None:
    r"""The exact rational value of a plain number in a normalised answer (the forms of :func:`parse_number`,
    without a percent sign), or None: ``0.25`` -> 1/4, ``\frac{2}{6}`` -> 1/3, ``4.5e33``, ``6\frac{1}{5}``."""
    if text is None:
        return None
    s = str(text).strip()
    if not s or len(s) > 80 or s.endswith("%"):
        return None
    s = s.replace(",", "") if _WHOLE_THOUSANDS.fullmatch(s) else s
    try:
        if _RE_DECIMAL.fullmatch(s):
            return _fraction(s.lstrip("+"))
        m = _RE_FRAC.fullmatch(s) or _RE_SLASH.fullmatch(s.replace(" ", ""))
        if m:
            groups = m.groups()
            sign = -1 if len(groups) == 4 and groups[0] == "-" else 1
            return sign * _fraction(groups[-3]) / _fraction(groups[-2])
        m = _RE_MIXED.fullmatch(s)
        if m:
            sign = -1 if m.group(1) else 1
            return sign * (int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4))))
        m = _RE_SCI.fullmatch(s)
        if m:
            return _fraction(m.group(1)) * Fraction(10) ** int(m.group(2))
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


# ------------------------------------------------------------------------------------------ structure
_OPEN, _CLOSE = "([{", ")]}"


def split_top_level(s: str, sep: str = ",") -> list[str]:
    r"""``s`` split at ``sep`` outside brackets (``()``, ``[]``, ``{}``, ``\{ \}``)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            if s[i + 1] in "{}":
                depth += 1 if s[i + 1] == "{" else -1
            elif depth == 0 and s.startswith(sep, i):
                parts.append(s[start:i])
                start = i + len(sep)
                i += len(sep)
                continue
            i += 2
            continue
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
            i += len(sep)
            continue
        i += 1
    parts.append(s[start:])
    return parts
