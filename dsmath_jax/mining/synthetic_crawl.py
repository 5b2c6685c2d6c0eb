"""A small crawl made of real text, for tests, the `tiny` config and the quickstart.

Nothing here is random filler. The math pages come from a `CrawlSource`, one of:

* `benchmark_source(dir)`: GSM8K and MATH *train* problems and solutions (from a benchmarks directory
  laid out like the project's shared data: `gsm8k/train.jsonl`, `math/train.jsonl`); the planted
  contamination is GSM8K / MATH *test* problems (`gsm8k/test.jsonl`, `math/test.jsonl`);
* `arithmetic_source(spec, dir)`: needs no files, so the quickstart runs offline. Word problems and
  TeX expressions (`Evaluate $\\frac{9 + 9}{2} - 3$.`) made by the arithmetic task's generator
  (`dsmath_jax.data.arithmetic`) from the task's knobs and another seed. The benchmark is the task's
  held-out test split, written to `<dir>/arithmetic/test.jsonl` for decontamination, and the planted
  contamination is test questions.

They are rendered into HTML with MathJax v2 scripts, KaTeX spans, MathML `alttext` and LaTeX images;
other pages are documentation prose that Python itself ships (standard-library docstrings). Into it
are planted, and listed in the manifest so tests can check the pipeline against what was planted:

* exact URL duplicates (the same page again, under a cosmetically different URL, and in a WET file),
* near-duplicates (a page copied to a mirror site with a few words changed),
* copies of benchmark test problems inside otherwise clean pages, including (from MATH) one
  benchmark text shorter than 10 n-gram tokens,
* bad input: a truncated WARC, a corrupt record between good ones, a non-UTF-8 page, a binary page,
  a very large page, empty files, a bad JSONL line, an HTTP 404 and an image response.

Layout written under `out_dir`:

    crawl/*.warc.gz, crawl/*.warc.wet.gz, crawl/*.jsonl    the crawl
    seed.jsonl                                            OpenWebMath-style positives {url, text, style}
                                                          (style: word_problems (GSM8K) | competition (MATH))
    manifest.json                                         what was planted (see `build_crawl`)
    benchmarks/arithmetic/test.jsonl                      arithmetic_source only: the decontamination benchmark

Sites: `mathhelp.example.org` (a math Q&A site: `/questions/` GSM8K word problems, `/problems/`
MATH problem sets in KaTeX, and prose under `/about/` and `/blog/`), `algebra-notes.example.net`
(MATH problems in MathML and LaTeX images), and prose sites `news.example.com`, `docs.example.io`,
`wiki.example.org`, `forum.example.com`; `mirror.example.net` holds the near-duplicates.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import gzip
import hashlib
import html
import io
import json
import logging
import os
import random
import re
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from dsmath_jax.data.arithmetic import generate_problems, train_test_split
from dsmath_jax.data.text_files import iter_jsonl
from dsmath_jax.mining.benchmarks import benchmark_texts
from dsmath_jax.mining.urls import normalize_url, url_domain, url_path_prefix

logger = logging.getLogger(__name__)

MATH_SITE = "mathhelp.example.org"
NOTES_SITE = "algebra-notes.example.net"
MIRROR_SITE = "mirror.example.net"
PROSE_SITES = {
    "news.example.com": ["/articles/", "/opinion/"],
    "docs.example.io": ["/guide/", "/api/"],
    "wiki.example.org": ["/wiki/"],
    "forum.example.com": ["/threads/"],
}


# ----------------------------------------------------------------------------------------------- text


def _clean_gsm8k_answer(answer: str) -> tuple[str, str]:
    """(worked solution without the <<calculator>> annotations, final answer)."""
    solution, _, final = answer.partition("####")
    return re.sub(r"<<[^>]*>>", "", solution).strip(), final.strip()


def math_items(benchmarks_dir: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """GSM8K train items {question, solution, answer} and MATH train items {problem, answer, subject}."""
    root = Path(benchmarks_dir)
    gsm8k, math = [], []
    for _, rec in iter_jsonl(root / "gsm8k" / "train.jsonl"):
        solution, final = _clean_gsm8k_answer(rec["answer"])
        gsm8k.append({"question": rec["question"].strip(), "solution": solution, "answer": final})
    for _, rec in iter_jsonl(root / "math" / "train.jsonl"):
        if "[asy]" in rec["problem"]:
            continue  # Asymptote drawings are code, not text
        math.append({"problem": rec["problem"].strip(), "answer": str(rec.get("answer", "")).strip(),
                     "subject": rec.get("subject", rec.get("type", ""))})
    return gsm8k, math


def _is_prose(paragraph: str) -> bool:
    if len(paragraph) < 200 or len(paragraph) > 1500:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in paragraph)
    if letters / len(paragraph) < 0.93:
        return False
    return not paragraph.lstrip().startswith(("```", ">>>", "|", "#", "..", "*", "-", "+", "=", ":"))


def prose_paragraphs() -> list[str]:
    """Documentation prose shipped with this Python: standard-library docstrings (not the descriptions
    of installed packages, which would make the crawl depend on what else is installed); paragraphs of
    200-1500 characters that are mostly words, exact duplicates removed, in a stable order."""
    paragraphs: list[str] = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip_modules = {"statistics", "fractions", "decimal", "_pydecimal", "random", "cmath", "numbers", "colorsys"}
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if path.stem in skip_modules or "test" in path.parts[-2:][0]:
            continue
        try:
            module = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in [module] + [n for n in ast.walk(module) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]:
            doc = ast.get_docstring(node)
            if doc:
                paragraphs.extend(" ".join(p.split()) for p in re.split(r"\n\s*\n", doc))
    seen: set[str] = set()
    out = []
    for p in paragraphs:
        if _is_prose(p) and p not in seen:
            seen.add(p)
            out.append(p)
    return out


# ----------------------------------------------------------------------------------------------- HTML

_INLINE_TEX = re.compile(r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)", re.S)
_CALCULATION = re.compile(r"(?<![\w$])(\d[\d.,]*(?:\s*[-+*/x×]\s*\$?\d[\d.,]*)+\s*=\s*\$?\d[\d.,]*)")


def _katex(tex: str, display: bool) -> str:
    rendered = html.escape(re.sub(r"[\\{}^_]", "", tex))
    span = ('<span class="katex"><span class="katex-mathml"><math xmlns="http://www.w3.org/1998/Math/MathML">'
            f'<semantics><mrow><mi>{rendered[:20]}</mi></mrow><annotation encoding="application/x-tex">'
            f'{html.escape(tex)}</annotation></semantics></math></span>'
            f'<span class="katex-html" aria-hidden="true"><span class="base">{rendered}</span></span></span>')
    return f'<span class="katex-display">{span}</span>' if display else span


def _mathjax(tex: str, display: bool) -> str:
    kind = "math/tex; mode=display" if display else "math/tex"
    preview = html.escape(re.sub(r"[\\{}^_]", "", tex))
    source = tex.replace("</", "<\\/")
    return f'<span class="MathJax_Preview">{preview}</span><script type="{kind}">{source}</script>'


def _mathml(tex: str, display: bool) -> str:
    return (f'<math alttext="{html.escape(tex)}" display="{"block" if display else "inline"}">'
            f'<mi>{html.escape(tex[:10])}</mi></math>')


def _latex_img(tex: str, _display: bool) -> str:
    digest = hashlib.md5(tex.encode()).hexdigest()
    return f'<img class="latex" src="/latex.php?latex={digest}" alt="{html.escape(tex)}">'


RENDERERS = {"katex": _katex, "mathjax": _mathjax, "mathml": _mathml, "latex_img": _latex_img}


def render_math_text(text: str, style: str) -> str:
    """HTML of a text whose `$...$`, `$$...$$` and `\\(...\\)` spans become math markup of `style`
    (katex | mathjax | mathml | latex_img); the rest is escaped."""
    render = RENDERERS[style]
    out, pos = [], 0
    for m in _INLINE_TEX.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        tex = m.group(1) or m.group(2) or m.group(3)
        out.append(render(tex.strip(), m.group(1) is not None))
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _gsm8k_html(text: str) -> str:
    """GSM8K prose with its calculations (`48/2 = 24`) typeset by MathJax, as a tutoring site would."""
    out, pos = [], 0
    for m in _CALCULATION.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        out.append(_mathjax(m.group(1).replace("$", r"\$").replace("*", r"\times "), False))
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _page_html(site: str, title: str, body: str, charset: str = "utf-8") -> str:
    nav = " | ".join(f'<a href="/{x}/">{x.title()}</a>' for x in ("home", "questions", "tags", "users", "about"))
    mathjax = ('<script type="text/x-mathjax-config">MathJax.Hub.Config({tex2jax: {inlineMath: [["$","$"]]}});'
               '</script>' if site in (MATH_SITE, NOTES_SITE) else "")
    return (f'<!DOCTYPE html><html><head><meta charset="{charset}"><title>{html.escape(title)}</title>{mathjax}'
            f'</head><body><header><div class="logo">{site}</div><nav>{nav}</nav></header>'
            f'<main><article><h1>{html.escape(title)}</h1>\n{body}\n</article></main>'
            f'<aside class="sidebar"><h3>Related</h3><ul><li><a href="/r/1">More like this</a></li></ul></aside>'
            f'<footer><p>Copyright {site}. All rights reserved. Privacy policy. Terms of service.</p></footer>'
            '</body></html>')


# ----------------------------------------------------------------------------------------------- pages


def _word_text(it: dict) -> str:
    """The visible text of a word problem on a page (what decontamination sees, so what must be clean)."""
    return f'{it["question"]}\n{it["solution"]}\nThe answer is {it["answer"]}'


def _problem_text(it: dict) -> str:
    return it["problem"] + (f'\nAnswer: ${it["answer"]}$' if it["answer"] else "")



def _gsm8k_page(items: list[dict], test_item: dict | None) -> tuple[str, str, str]:
    """(title, html body, plain text) of a Q&A page of GSM8K items (and a planted test item)."""
    blocks, texts = [], []
    all_items = list(items)
    if test_item is not None:
        all_items.insert(len(all_items) // 2, test_item)
    for k, it in enumerate(all_items, 1):
        blocks.append(f'<section class="question"><h2>Question {k}</h2><p>{_gsm8k_html(it["question"])}</p>'
                      '<div class="answer"><h3>Answer</h3>'
                      + "".join(f"<p>{_gsm8k_html(line)}</p>" for line in it["solution"].split("\n") if line.strip())
                      + f'<p>The answer is {_mathjax(it["answer"], True)}</p></div></section>')
        texts.append(_word_text(it))
    title = "Word problem help: " + " ".join(all_items[0]["question"].split()[:8])
    return title, "\n".join(blocks), "\n\n".join(texts)


def _math_page(items: list[dict], style: str, test_problem: str | None) -> tuple[str, str, str]:
    blocks, texts = [], []
    problems = [(it["problem"], it["answer"]) for it in items]
    if test_problem is not None:
        problems.insert(len(problems) // 2, (test_problem, ""))
    for k, (problem, answer) in enumerate(problems, 1):
        answer_html = f'<p class="answer">Answer: {render_math_text("$" + answer + "$", style)}</p>' if answer else ""
        blocks.append(f'<div class="problem"><h2>Problem {k}</h2><p>{render_math_text(problem, style)}</p>'
                      f"{answer_html}</div>")
        texts.append(_problem_text({"problem": problem, "answer": answer}))
    subject = items[0].get("subject") or "Mathematics"
    title = f"{subject} practice problems: " + " ".join(items[0]["problem"].split()[:6])
    return title, "\n".join(blocks), "\n\n".join(texts)


def _prose_page(paragraphs: list[str], quote: str | None = None) -> tuple[str, str, str]:
    paras = list(paragraphs)
    if quote is not None:
        paras.insert(1, "Someone asked me this yesterday: " + quote)
    title = " ".join(paragraphs[0].split()[:7]).rstrip(".,;:")
    body = "\n".join(f"<p>{html.escape(p)}</p>" for p in paras)
    return title, body, "\n\n".join(paras)


def _perturb_html(body: str, text: str, rng: random.Random, n_changes: int) -> tuple[str, str]:
    """(body, text) with `n_changes` words of the visible text changed in both (never inside tags)."""
    words = sorted({w for w in re.findall(r"[A-Za-z]{5,}", text)})
    for word in rng.sample(words, min(n_changes, len(words))):
        new = word[::-1]
        pattern = re.compile(rf"(>[^<]*?)\b{word}\b")
        body = pattern.sub(lambda m: m.group(1) + new, body, count=1)  # noqa: B023 - used in this iteration
        text = re.sub(rf"\b{word}\b", new, text, count=1)
    return body, text


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


class BenchmarkOverlap:
    """A plain-Python reference of what decontamination must catch: the set of every benchmark
    n-gram (joined tokens) and of every 3..n-1 token benchmark text. Used to keep clean pages clean
    (MATH train and test problems share phrasing such as "express your answer as a common fraction",
    so many train problems hold a test 10-gram) and, in tests, as an independent check of the index."""

    def __init__(self, benchmarks_dir: str | os.PathLike, n: int = 10, min_n: int = 3,
                 benchmarks: tuple[str, ...] | None = None):
        from dsmath_jax.mining.decontamination import ngram_tokens  # imports Apache Beam (the `beam` extra)

        self.n, self.min_n, self._tokens = n, min_n, ngram_tokens
        self.ngrams: set[str] = set()
        self.short: set[str] = set()
        for _, text in benchmark_texts(benchmarks_dir, benchmarks=benchmarks):
            t = ngram_tokens(text)
            if len(t) >= n:
                self.ngrams.update(" ".join(t[i:i + n]) for i in range(len(t) - n + 1))
            elif len(t) >= min_n:
                self.short.add(" ".join(t))
        self.short_lengths = sorted({s.count(" ") + 1 for s in self.short})

    def overlaps(self, text: str) -> bool:
        """Whether `text` holds a benchmark n-gram or a whole short benchmark text."""
        t = self._tokens(text)
        if any(" ".join(t[i:i + self.n]) in self.ngrams for i in range(len(t) - self.n + 1)):
            return True
        return any(" ".join(t[i:i + k]) in self.short for k in self.short_lengths for i in range(len(t) - k + 1))


def _short_test_problems(benchmarks_dir: Path) -> list[str]:
    """MATH test problems of 3-9 n-gram tokens (matched exactly, not by 10-grams)."""
    from dsmath_jax.mining.decontamination import ngram_tokens  # imports Apache Beam (the `beam` extra)

    out = []
    for _, rec in iter_jsonl(benchmarks_dir / "math" / "test.jsonl"):
        if 3 <= len(ngram_tokens(rec["problem"])) <= 9:
            out.append(rec["problem"].strip())
    return out


def _clean(items: list, text_of, overlap: BenchmarkOverlap, need: int) -> list:
    """The first `need` items whose text shares nothing with the benchmarks."""
    out: list = []
    for it in items:
        if len(out) >= need:
            break
        if not overlap.overlaps(text_of(it)):
            out.append(it)
    return out


# ----------------------------------------------------------------------------------------------- sources


@dataclasses.dataclass
class CrawlSource:
    """What the math pages of a synthetic crawl are made of, and the benchmark they must be clean of.

    word_problems: {question, solution, answer} for Q&A pages and word-problem seed pages;
    problems: {problem (TeX in `$...$`), answer, subject} for problem sets, notes and competition seeds;
    word_tests / problem_tests: benchmark test items planted into Q&A pages (and one forum page) and
    problem texts planted into problem-set pages; short_tests: benchmark texts of 3-9 n-gram tokens;
    labels: the benchmark names of (word_tests, problem_tests) in the manifest's `contaminated`;
    benchmarks_dir, benchmarks: what decontamination reads (`mining.benchmarks.benchmark_texts`).
    The item lists are in a stable order; `build_crawl` shuffles and cleans them.
    """

    name: str
    word_problems: list[dict]
    problems: list[dict]
    word_tests: list[dict]
    problem_tests: list[str]
    short_tests: list[str]
    labels: tuple[str, str]
    benchmarks_dir: str
    benchmarks: tuple[str, ...] | None = None  # the benchmarks of benchmarks_dir it is clean of; None: all

    @functools.cached_property
    def overlap(self) -> BenchmarkOverlap:
        return BenchmarkOverlap(self.benchmarks_dir, benchmarks=self.benchmarks)


def benchmark_source(benchmarks_dir: str | os.PathLike) -> CrawlSource:
    """GSM8K and MATH train items, with GSM8K / MATH test items to plant (see the module docstring)."""
    root = Path(benchmarks_dir)
    gsm8k, math = math_items(root)
    gsm8k_test = []
    for _, rec in iter_jsonl(root / "gsm8k" / "test.jsonl"):
        solution, final = _clean_gsm8k_answer(rec["answer"])
        gsm8k_test.append({"question": rec["question"], "solution": solution, "answer": final})
    math_test = [rec["problem"] for _, rec in iter_jsonl(root / "math" / "test.jsonl") if "[asy]" not in rec["problem"]]
    return CrawlSource("benchmarks", gsm8k, math, gsm8k_test, math_test, _short_test_problems(root),
                       ("gsm8k", "math"), str(root))


_TEX_ASKS = ("Evaluate ${}$.", "Compute ${}$.", "What is the value of ${}$?", "Simplify ${}$.")


def tex_expression(start: int, operations: list[tuple[str, int]]) -> str:
    """The arithmetic problem `start`, then each (op, operand), as one TeX expression evaluated left to right:
    (5, [('+', 4), ('/', 3)]) -> `\\frac{5 + 4}{3}`."""
    expr, loose = str(start), False  # loose: a top-level + or - that a following \times must bracket
    for op, b in operations:
        if op in "+-":
            expr, loose = f"{expr} {op} {b}", True
        elif op == "*":
            expr, loose = (f"\\left({expr}\\right) \\times {b}" if loose else f"{expr} \\times {b}"), False
        elif op == "/":
            expr, loose = f"\\frac{{{expr}}}{{{b}}}", False
        else:
            raise ValueError(f"unknown operation {op!r}")
    return expr


def arithmetic_source(spec: Mapping[str, Any], benchmarks_dir: str | os.PathLike, *, seed: int = 0,
                      n_word: int = 4000, n_tex: int = 4000) -> CrawlSource:
    """Word problems and TeX expressions from the arithmetic task's generator (the task's knobs, seeds
    derived from `seed` and distinct from the task's), with the task's held-out test split (`spec`: the
    arithmetic spec of `dsmath_jax.data.tasks`, {n_test, seed, knobs}) as the benchmark: written to
    `<benchmarks_dir>/arithmetic/test.jsonl` and planted. Items whose question is a test question are
    left out; `build_crawl` also drops those sharing an n-gram with the test split."""
    spec = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
    knobs = dict(spec.get("knobs") or {})
    task_seed = int(spec.get("seed", 0))
    _, test = train_test_split(0, int(spec.get("n_test", 256)), seed=task_seed, **knobs)
    root = Path(benchmarks_dir)
    (root / "arithmetic").mkdir(parents=True, exist_ok=True)
    rows = [{"question": p.question, "response": p.response, "answer": p.answer, "id": p.id} for p in test]
    _atomic_write(root / "arithmetic" / "test.jsonl",
                  "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    test_questions = {p.question for p in test}
    base = 1_000_003 * (seed + 1) + task_seed
    word = [{"question": p.question, "solution": "\n".join(p.steps), "answer": p.answer}
            for p in generate_problems(n_word, seed=base, **knobs) if p.question not in test_questions]
    tex = []
    for k, p in enumerate(generate_problems(n_tex, seed=base + 1, **knobs)):
        subject = "Prealgebra" if p.num_steps == 1 else "Algebra"
        tex.append({"problem": _TEX_ASKS[k % len(_TEX_ASKS)].format(tex_expression(p.start, p.operations)),
                    "answer": p.answer, "subject": subject})
    word_tests = [{"question": p.question, "solution": "\n".join(p.steps), "answer": p.answer} for p in test]
    return CrawlSource("arithmetic", word, tex, word_tests, [p.question for p in test], [],
                       ("arithmetic", "arithmetic"), str(root), ("arithmetic",))


# ----------------------------------------------------------------------------------------------- writing


def _write_warc(path: Path, records: list[tuple[str, str, bytes, str]]) -> None:
    """records: (url, kind: response|conversion, payload, content type or HTTP status line + type)."""
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    writer.write_record(writer.create_warcinfo_record(path.name, {"software": "dsmath_jax synthetic_crawl"}))
    for url, kind, payload, content_type in records:
        writer.write_record(_make_record(writer, url, kind, payload, content_type))
    _atomic_write(path, buf.getvalue())


def _make_record(writer: WARCWriter, url: str, kind: str, payload: bytes, content_type: str,
                 status: str = "200 OK"):
    if kind == "response":
        headers = StatusAndHeaders(status, [("Content-Type", content_type), ("Content-Length", str(len(payload)))],
                                   protocol="HTTP/1.1")
        return writer.create_warc_record(url, "response", payload=io.BytesIO(payload), http_headers=headers)
    return writer.create_warc_record(url, "conversion", payload=io.BytesIO(payload), warc_content_type=content_type)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _warc_bytes(records: list[tuple[str, bytes, str, str]]) -> bytes:
    """Gzipped WARC of (url, payload, content type, HTTP status) response records, without warcinfo."""
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    for url, payload, content_type, status in records:
        writer.write_record(_make_record(writer, url, "response", payload, content_type, status))
    return buf.getvalue()


def build_crawl(source: str | os.PathLike | CrawlSource, out_dir: str | os.PathLike, *, seed: int = 0,
                n_questions: int = 60, n_problems: int = 40, n_notes: int = 24, n_prose: int = 200,
                n_seed: int = 300, n_near_duplicates: int = 12, n_url_duplicates: int = 10,
                n_contaminated: int = 8, with_bad_input: bool = True, warc_files: int = 4) -> dict[str, Any]:
    """Writes the crawl, seed and manifest under `out_dir` (see the module docstring); returns the manifest.
    `source` is a CrawlSource or a benchmarks directory (`benchmark_source(dir)`). The manifest:

        pages:            {url: {kind: math|other, site, path, style, split: train|test, text}}
                          one entry per distinct page (normalised URL), near-duplicates included
        url_duplicates:   [url, ...]  extra fetches of pages already in `pages` (other spellings, WET copies)
        near_duplicates:  {copy url: original url}
        contaminated:     {url: benchmark}   pages holding a benchmark test problem (gsm8k, math, arithmetic)
        short_contaminated: [url]           the subset planted with a benchmark text of 3-9 tokens
        bad_input:        {counter: expected minimum}
        seed:             number of seed pages; files: crawl file names
        source:           the CrawlSource's name; benchmarks_dir, benchmarks: what decontamination reads
    """
    if not isinstance(source, CrawlSource):
        source = benchmark_source(source)
    out = Path(out_dir)
    (out / "crawl").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    overlap = source.overlap
    gsm8k, math = list(source.word_problems), list(source.problems)
    rng.shuffle(gsm8k)
    rng.shuffle(math)
    n_gsm8k = 3 * n_questions + 2 * n_seed
    n_math = 5 * (n_problems + n_notes) + 4 * n_seed
    gsm8k = _clean(gsm8k, _word_text, overlap, n_gsm8k)
    math = _clean(math, _problem_text, overlap, n_math)
    if len(gsm8k) < n_gsm8k or len(math) < n_math:
        raise ValueError(f"{source.name} source ({source.benchmarks_dir}): {len(gsm8k)} clean word problems and "
                         f"{len(math)} clean problems, need {n_gsm8k} and {n_math}: ask for fewer pages")
    prose = prose_paragraphs()
    rng.shuffle(prose)
    prose = _clean(prose, lambda p: p, overlap, len(prose))
    gsm8k_test, math_test, short_tests = list(source.word_tests), list(source.problem_tests), list(source.short_tests)
    word_label, problem_label = source.labels
    rng.shuffle(gsm8k_test)
    rng.shuffle(math_test)

    pages: dict[str, dict] = {}
    html_of: dict[str, bytes] = {}
    body_of: dict[str, str] = {}
    contaminated: dict[str, str] = {}
    short_contaminated: list[str] = []
    styles = ["katex", "mathjax", "mathml", "latex_img"]

    def add(url: str, kind: str, path: str, site: str, style: str, title: str, body: str, text: str) -> None:
        url = normalize_url(url)
        pages[url] = {"kind": kind, "site": site, "path": path, "style": style, "title": title, "text": text,
                      "split": "train" if int(hashlib.md5(url.encode()).hexdigest(), 16) % 2 == 0 else "test"}
        html_of[url] = _page_html(site, title, body).encode("utf-8")
        body_of[url] = body

    gi, mi, pi = 0, 0, 0
    n_contam_gsm = n_contaminated // 2
    for k in range(n_questions):
        items, gi = gsm8k[gi:gi + 3], gi + 3
        test_item = None
        if k < n_contam_gsm:
            test_item = gsm8k_test[k]
        title, body, text = _gsm8k_page(items, test_item)
        url = f"https://{MATH_SITE}/questions/{1000 + k}/{_slug(items[0]['question'])}"
        add(url, "math", "/questions/", MATH_SITE, "mathjax", title, body, text)
        if test_item is not None:
            contaminated[normalize_url(url)] = word_label
    n_contam_math = n_contaminated - n_contam_gsm
    for k in range(n_problems):
        items, mi = math[mi:mi + 5], mi + 5
        test_problem = None
        if k < n_contam_math:
            test_problem = short_tests[k] if (k == 0 and short_tests) else math_test[k]
        title, body, text = _math_page(items, "katex", test_problem)
        url = f"https://{MATH_SITE}/problems/{2000 + k}"
        add(url, "math", "/problems/", MATH_SITE, "katex", title, body, text)
        if test_problem is not None:
            contaminated[normalize_url(url)] = problem_label
            if k == 0 and short_tests:
                short_contaminated.append(normalize_url(url))
    for k in range(n_notes):
        items, mi = math[mi:mi + 5], mi + 5
        style = styles[2 + k % 2]
        title, body, text = _math_page(items, style, None)
        url = f"https://{NOTES_SITE}/notes/{_slug(items[0]['subject'] or 'algebra')}-{k}.html"
        add(url, "math", "/notes/", NOTES_SITE, style, title, body, text)
    prose_slots = [(MATH_SITE, "/about/"), (MATH_SITE, "/blog/")] * 6
    sites = [(site, path) for site, paths in PROSE_SITES.items() for path in paths]
    prose_slots += [sites[k % len(sites)] for k in range(max(0, n_prose - len(prose_slots)))]
    reserved, prose = prose[-20:], prose[:-20]  # for the bad-input pages
    if len(prose) < 60:
        raise ValueError(f"not enough documentation prose: found {len(prose)} paragraphs, need at least 60")
    for k, (site, path) in enumerate(prose_slots[:n_prose]):
        n_par = 3 + k % 4
        if pi + n_par <= len(prose):
            paras, pi = prose[pi:pi + n_par], pi + n_par
        else:  # pool used up (large crawls): pages of paragraphs drawn at random, near-duplicates are unlikely
            paras = rng.sample(prose, n_par)
        quote = None
        if site == "forum.example.com" and sum(1 for b in contaminated.values() if b.endswith("/forum")) < 1:
            quote = gsm8k_test[n_contam_gsm]["question"]
        title, body, text = _prose_page(paras, quote)
        url = f"https://{'www.' if k % 3 == 0 else ''}{site}{path}{_slug(title)}-{k}"
        add(url, "other", path, site, "plain", title, body, text)
        if quote is not None:
            contaminated[normalize_url(url)] = word_label + "/forum"
    contaminated = {u: b.split("/")[0] for u, b in contaminated.items()}

    # Near-duplicates: clean pages copied to a mirror with a few words changed.
    originals = [u for u in pages if u not in contaminated and len(pages[u]["text"].split()) >= 200]
    rng.shuffle(originals)
    near: dict[str, str] = {}
    for k, orig in enumerate(originals[:n_near_duplicates]):
        page = pages[orig]
        body, text = _perturb_html(body_of[orig], page["text"], rng, 2)
        copy_url = normalize_url(f"https://{MIRROR_SITE}/copy/{k}")
        pages[copy_url] = {**page, "site": MIRROR_SITE, "path": "/copy/", "style": "plain", "text": text,
                           "split": page["split"]}
        html_of[copy_url] = _page_html(MIRROR_SITE, page["title"], body).encode("utf-8")
        near[copy_url] = orig

    # Files: pages spread over WARC files; some pages again as WET conversions or other URL spellings.
    urls = sorted(pages)
    rng.shuffle(urls)
    records: list[list[tuple[str, str, bytes, str]]] = [[] for _ in range(warc_files)]
    for k, url in enumerate(urls):
        records[k % warc_files].append((url, "response", html_of[url], "text/html; charset=utf-8"))
    duplicates = [u for u in urls if u not in contaminated and u not in near and u not in near.values()]
    url_dups: list[str] = []
    wet_records = []
    for k, url in enumerate(duplicates[:n_url_duplicates]):
        if k % 2 == 0:
            wet_records.append((url, "conversion", pages[url]["text"].encode("utf-8"), "text/plain"))
            url_dups.append(url)
        else:
            scheme, _, rest = url.partition("://")
            host, _, path = rest.partition("/")
            variant = (f"{scheme}://{host.upper()}:443/{path}" + ("&" if "?" in url else "?")
                       + "utm_source=feed#comments")
            records[(k + 1) % warc_files].append((variant, "response", html_of[url], "text/html; charset=utf-8"))
            url_dups.append(url)
    files = []
    for k, recs in enumerate(records):
        name = f"crawl/part-{k:05d}.warc.gz"
        _write_warc(out / name, recs)
        files.append(name)
    _write_warc(out / "crawl/part-00000.warc.wet.gz", wet_records)
    files.append("crawl/part-00000.warc.wet.gz")

    bad: dict[str, int] = {}
    if with_bad_input:
        files += _write_bad_input(out, rng, reserved, pages, bad)

    # Seed: OpenWebMath-style pages {url, text} from train items the crawl does not use.
    seed_pages = []
    for k in range(n_seed):
        if k % 3 < 2 and gi + 2 <= len(gsm8k):
            items, gi = gsm8k[gi:gi + 2], gi + 2
            text = "\n\n".join(_word_text(it) for it in items)
            style = "word_problems"
        else:
            items, mi = math[mi:mi + 4], mi + 4
            text = "\n\n".join(_problem_text(it) for it in items)
            style = "competition"
        seed_pages.append({"url": f"https://seed.example.org/{style}/{k}", "text": text, "style": style})
    _atomic_write(out / "seed.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in seed_pages).encode())

    manifest = {"pages": pages, "url_duplicates": url_dups, "near_duplicates": near,
                "contaminated": contaminated, "short_contaminated": short_contaminated, "bad_input": bad,
                "seed": len(seed_pages), "files": files, "source": source.name,
                "benchmarks_dir": os.path.abspath(source.benchmarks_dir),
                "benchmarks": list(source.benchmarks) if source.benchmarks is not None else None}
    _atomic_write(out / "manifest.json", json.dumps(manifest, ensure_ascii=False, indent=1).encode())
    logger.info("synthetic crawl in %s: %d pages (%d math), %d URL duplicates, %d near-duplicates, "
                "%d contaminated, %d seed pages", out, len(pages),
                sum(p["kind"] == "math" for p in pages.values()), len(url_dups), len(near), len(contaminated),
                len(seed_pages))
    return manifest


def _write_bad_input(out: Path, rng: random.Random, paragraphs: list[str], pages: dict, bad: dict) -> list[str]:
    """Files and records that must be skipped and counted, never crash the pipeline."""
    good = [(f"https://badinput.example.com/ok/{k}", _page_html("badinput.example.com", f"Page {k}",
             "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs[3 * k:3 * k + 3])).encode(), "text/html",
             "200 OK") for k in range(4)]
    # A WARC cut off inside its last record.
    noise = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(20000)).encode()
    truncated = _warc_bytes(good[:2] + [("https://badinput.example.com/cut", b"<html>" + noise + b"</html>",
                                         "text/html", "200 OK")])
    _atomic_write(out / "crawl/bad-truncated.warc.gz", truncated[:-3000])
    # A corrupt record between good ones: a gzip member that holds no WARC record.
    corrupt = (_warc_bytes(good[2:3]) + gzip.compress(b"this is not a WARC record\r\n" * 40)
               + _warc_bytes(good[3:4]))
    _atomic_write(out / "crawl/bad-corrupt.warc.gz", corrupt)
    # Non-UTF-8, binary, too large, HTTP 404, an image.
    latin = ("<html><head><meta charset='iso-8859-1'><title>Caf\xe9</title></head><body><p>"
             + html.escape(" ".join(paragraphs[12:14])) + " Caf\xe9 cr\xe8me br\xfbl\xe9e.</p></body></html>")
    binary = bytes(rng.getrandbits(8) for _ in range(4000))
    large = ("<html><body>" + "<p>" + "lorem ipsum " * 300_000 + "</p></body></html>").encode()
    misc = _warc_bytes([
        ("https://badinput.example.com/latin1", latin.encode("latin-1"), "text/html; charset=iso-8859-1", "200 OK"),
        ("https://badinput.example.com/binary", binary, "text/html", "200 OK"),
        ("https://badinput.example.com/large", large, "text/html", "200 OK"),
        ("https://badinput.example.com/missing", b"<html>not found</html>", "text/html", "404 Not Found"),
        ("https://badinput.example.com/logo.png", b"\x89PNG\r\n" + binary[:500], "image/png", "200 OK"),
    ])
    _atomic_write(out / "crawl/bad-misc.warc.gz", misc)
    _atomic_write(out / "crawl/empty.warc.gz", b"")
    _atomic_write(out / "crawl/empty.jsonl", b"")
    lines = [json.dumps({"url": f"https://jsonl.example.org/doc/{k}", "title": f"Doc {k}",
                         "text": "\n\n".join(paragraphs[15 + k:16 + k] * 1)}) for k in range(2)]
    lines.insert(1, '{"url": "https://jsonl.example.org/broken", "text": ')
    _atomic_write(out / "crawl/pages.jsonl", ("\n".join(lines) + "\n").encode())
    survivors = [(good[k][0], f"Page {k}", " ".join(paragraphs[3 * k:3 * k + 3])) for k in range(4)]
    survivors += [("https://badinput.example.com/latin1", "Caf\xe9", " ".join(paragraphs[12:14]))]
    survivors += [(f"https://jsonl.example.org/doc/{k}", f"Doc {k}", paragraphs[15 + k]) for k in range(2)]
    for url, title, text in survivors:
        url = normalize_url(url)
        pages[url] = {"kind": "other", "site": url_domain(url), "path": url_path_prefix(url), "style": "plain",
                      "title": title, "text": text, "split": "train"}
    bad.update({"files_truncated": 1, "records_truncated": 1, "records_corrupt": 1, "pages_non_utf8": 1,
                "pages_undecodable": 1, "pages_too_large": 1, "records_http_error": 1, "records_not_html": 1,
                "files_empty": 2, "jsonl_bad_lines": 1})
    return ["crawl/bad-truncated.warc.gz", "crawl/bad-corrupt.warc.gz", "crawl/bad-misc.warc.gz",
            "crawl/empty.warc.gz", "crawl/empty.jsonl", "crawl/pages.jsonl"]
