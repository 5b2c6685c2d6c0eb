"""The benchmark registry: where each benchmark comes from, how its records become problems with a gold
answer, and which few-shot exemplars and stop strings its prompts use (the public DeepSeek-Math evaluation
protocol, PAPER.md §7).

`load_benchmark(name, data_dir=None)` reads `<data_dir>/<relative path>` when a local directory is given
(the layout of the DeepSeek-Math harness copies: `gsm8k/test.jsonl`, `math/test.jsonl`, ...), and otherwise
downloads the public file once into a cache directory (`$DSMATH_CACHE`, default `~/.cache/dsmath_jax`).
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import os
import re
import tempfile
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

from dsmath_jax.data.math_text import gsm8k_final_answer, last_boxed
from dsmath_jax.data.text_files import DataFormatError, iter_jsonl
from dsmath_jax.evals.answers import reference_answer, split_options

log = logging.getLogger(__name__)

DEEPSEEK_MATH_DATA = "https://raw.githubusercontent.com/deepseek-ai/DeepSeek-Math/main/evaluation/datasets"
CHOICE_LETTERS = "ABCDE"


@dataclasses.dataclass
class Problem:
    """One test question with its gold answer as the grader compares it."""

    benchmark: str
    id: str
    question: str  # the text put into prompts (options appended for multiple choice)
    gold: str
    options: list[str] | None = None  # option texts, in letter order, for multiple choice
    subject: str | None = None
    level: str | None = None
    record: dict | None = dataclasses.field(default=None, repr=False)  # the file's record, as read
    index: int = 0  # position in the file (the DeepSeek harness numbers items by it)


@dataclasses.dataclass(frozen=True)
class FewShot:
    exemplars: str  # file name under dsmath_jax/evals/few_shot
    template: str  # appended after the exemplars; {question}
    stop: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str  # answer kind: "math", "number" or "choice" (dsmath_jax.evals.answers)
    path: str  # relative path in a local benchmarks directory
    url: str  # public source of the same file
    parse: Callable[[Mapping[str, Any], int], Problem]
    language: str = "en"
    cot: FewShot | None = None  # few-shot chain-of-thought (base models)
    pot: FewShot | None = None  # few-shot program-of-thought (base models)


# ------------------------------------------------------------------------------------------ parsers
def _field(record: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in record or record[key] is None:
        raise DataFormatError(f"{where}: missing field {key!r} (fields: {sorted(record)})")
    return record[key]


def _choice_question(question: str, options: Sequence[str]) -> str:
    listed = ", ".join(f"({CHOICE_LETTERS[i]}) {opt}" for i, opt in enumerate(options))
    return f"{question}\nWhat of the following is the right choice? Explain your answer.\n{listed}"


def _gsm8k(r, i):
    return Problem("gsm8k", str(i), _field(r, "question", "gsm8k"), gsm8k_final_answer(_field(r, "answer", "gsm8k")))


def _math(name):
    def parse(r, i):
        solution = _field(r, "solution", name)
        # the final group of the solution's boxes: a solution that boxes each of several answers has them all
        gold = r.get("answer") or (reference_answer(solution, "math") if last_boxed(solution) is not None else None)
        if gold is None:
            raise DataFormatError(f"{name} record {i}: no `answer` and no \\boxed{{}} in the solution")
        return Problem(name, str(r.get("unique_id", r.get("idx", i))), _field(r, "problem", name), gold,
                       subject=r.get("subject") or r.get("type"), level=str(r.get("level", "")) or None)
    return parse


def _cmath(r, i):
    return Problem("cmath", str(i), _field(r, "question", "cmath"), str(_field(r, "golden", "cmath")),
                   level=str(r.get("grade", "")) or None)


def _mgsm_zh(r, i):
    messages = _field(r, "messages", "mgsm_zh")
    question = next(m["content"] for m in messages if m.get("role") == "user")
    return Problem("mgsm_zh", str(r.get("id", i)), question, str(_field(r, "answer", "mgsm_zh")))


def _gaokao_cloze(r, i):
    return Problem("gaokao_mathcloze", str(i), _field(r, "question", "gaokao_mathcloze"),
                   str(_field(r, "answer", "gaokao_mathcloze")))


def _gaokao_qa(r, i):
    options = [re.sub(r"^\([A-E]\)\s*", "", o) for o in _field(r, "options", "gaokao_mathqa")]
    question = r["question"].rstrip() + "\n" + " ".join(f"({CHOICE_LETTERS[k]}){o}" for k, o in enumerate(options))
    return Problem("gaokao_mathqa", str(i), question, str(_field(r, "label", "gaokao_mathqa")), options=options)


def _sat(r, i):
    options = split_options(_field(r, "options", "sat"))  # "A) ... B) ..." or "A. ... B. ..."
    if not options:
        raise DataFormatError(f"sat record {i}: cannot split the options {r['options']!r}")
    return Problem("sat", str(r.get("id", i)), _choice_question(r["question"], options),
                   str(_field(r, "Answer", "sat")), options=options)


def _mmlu_stem(r, i):
    options = _field(r, "options", "mmlu_stem")
    if isinstance(options, str):
        options = ast.literal_eval(options)
    return Problem("mmlu_stem", str(r.get("id", i)), _choice_question(r["question"], options),
                   str(_field(r, "answer", "mmlu_stem")), options=list(options), subject=r.get("topic"))


def _ocw(r, i):
    return Problem("ocw", str(r.get("id", i)), _field(r, "problem", "ocw"), str(_field(r, "answer", "ocw")))


# ------------------------------------------------------------------------------------------ the registry
_EN_COT = FewShot("cot_minerva_math_4_shot.txt", "\n\nProblem:\n{question}\n\nSolution:\n", ("\nProblem:",))
_PAL_MATH = FewShot("pal_math_4_shot.txt", "\n\nProblem:\n{question}\n\nYou are an expert programmer. Solve the above "
                    "mathematical problem by writing a Python program. Express your answer as a numeric type or a "
                    "SymPy object.\n", ("\nProblem:", "Problem:"))

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("gsm8k", "number", "gsm8k/test.jsonl",
              "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/test.jsonl",
              _gsm8k, cot=FewShot("cot_gsm_8_shot.txt", "\n\n\nQ: {question}\nA:", ("\nQ:",)),
              pot=FewShot("pal_gsm_8_shot.txt", "\n\n\n\n\n\nQ: {question}\n\n# solution in Python:",
                          ("\nQ:", "Q: "))),
    Benchmark("math", "math", "math/test.jsonl", f"{DEEPSEEK_MATH_DATA}/math/test.jsonl", _math("math"),
              cot=_EN_COT, pot=_PAL_MATH),
    Benchmark("math500", "math", "math500/test.jsonl",
              "https://raw.githubusercontent.com/openai/prm800k/main/prm800k/math_splits/test.jsonl",
              _math("math500"), cot=_EN_COT, pot=_PAL_MATH),
    Benchmark("cmath", "number", "cmath/test.jsonl", f"{DEEPSEEK_MATH_DATA}/cmath/test.jsonl", _cmath, language="zh",
              cot=FewShot("cot_cmath_6_shot.txt", "\n\n\n问题：{question}\n答案：", ("\n问题：",))),
    Benchmark("mgsm_zh", "number", "mgsm_zh/test.jsonl", f"{DEEPSEEK_MATH_DATA}/mgsm_zh/mgsm_zh.jsonl", _mgsm_zh,
              language="zh"),
    Benchmark("gaokao_mathcloze", "math", "gaokao/mathcloze.jsonl",
              f"{DEEPSEEK_MATH_DATA}/agieval/gaokao-mathcloze.jsonl", _gaokao_cloze, language="zh",
              cot=FewShot("cot_gaokao_mathcloze_5_shot.txt", "\n\n\n问题 6.   {question}\n问题 6的解析:   ",
                          ("\n问题 ",))),
    Benchmark("gaokao_mathqa", "choice", "gaokao/mathqa.jsonl", f"{DEEPSEEK_MATH_DATA}/agieval/gaokao-mathqa.jsonl",
              _gaokao_qa, language="zh",
              cot=FewShot("cot_gaokao_mathqa_5_shot.txt", "\n\n\n问题 6.    {question}\n问题 6的解析:   ",
                          ("\n问题 ",))),
    Benchmark("sat", "choice", "sat/test.jsonl", f"{DEEPSEEK_MATH_DATA}/sat/test.jsonl", _sat,
              cot=FewShot("cot_math_sat_4_shot.txt", "\n\nProblem:\n{question}\nSolution:\n", ("\nProblem:",))),
    Benchmark("ocw", "math", "ocw/test.jsonl", f"{DEEPSEEK_MATH_DATA}/ocw/test.jsonl", _ocw,
              cot=FewShot("cot_ocwcourses_4_shot.txt", "\n\nProblem:\n{question}\nSolution:\n", ("\nProblem:",))),
    Benchmark("mmlu_stem", "choice", "mmlu_stem/test.jsonl", f"{DEEPSEEK_MATH_DATA}/mmlu_stem/test.jsonl",
              _mmlu_stem,
              cot=FewShot("cot_mmlu_stem_4_shot.txt", "\n\nProblem:\n{question}\nSolution:\n", ("\nProblem:",))),
]}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        import difflib
        hint = difflib.get_close_matches(name, BENCHMARKS, n=1)
        raise KeyError(f"unknown benchmark {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                       + f"; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def few_shot_text(filename: str) -> str:
    """The exemplar block shipped with the package (dsmath_jax/evals/few_shot)."""
    return resources.files("dsmath_jax.evals").joinpath("few_shot").joinpath(filename).read_text(encoding="utf-8")


def _cache_dir() -> str:
    return os.environ.get("DSMATH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "dsmath_jax"))


def benchmark_file(benchmark: Benchmark, data_dir: str | os.PathLike | None = None) -> str:
    """The local file of a benchmark: under `data_dir`, or downloaded once into the cache."""
    if data_dir is not None:
        path = os.path.join(os.fspath(data_dir), benchmark.path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"benchmark {benchmark.name!r}: {path} not found (expected the layout "
                                    f"<data_dir>/{benchmark.path}; omit the directory to download {benchmark.url})")
        return path
    path = os.path.join(_cache_dir(), "benchmarks", benchmark.path)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        log.info("downloading %s -> %s", benchmark.url, path)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".download-")
        try:
            with urllib.request.urlopen(benchmark.url, timeout=60) as response, os.fdopen(fd, "wb") as out:
                out.write(response.read())
            os.replace(tmp, path)
        except OSError as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise OSError(f"cannot download benchmark {benchmark.name!r} from {benchmark.url}: {e}; pass a local "
                          f"directory holding {benchmark.path} instead") from e
    return path


def load_benchmark(name: str, data_dir: str | os.PathLike | None = None, *, limit: int | None = None) -> list[Problem]:
    """The problems of a benchmark (the first `limit` when given), in file order."""
    benchmark = get_benchmark(name)
    path = benchmark_file(benchmark, data_dir)
    problems = []
    for i, (lineno, record) in enumerate(iter_jsonl(path)):
        try:
            problems.append(dataclasses.replace(benchmark.parse(record, i), record=record, index=i))
        except (KeyError, StopIteration, ValueError, SyntaxError) as e:
            raise DataFormatError(f"{path}:{lineno}: cannot read a {name} problem: {e}") from e
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise DataFormatError(f"{path}: no {name} problems")
    return problems
