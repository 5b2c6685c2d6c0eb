"""HTML to text with the mathematics kept, in the manner of OpenWebMath (Paster et al. 2023).

Before Resiliparse extracts the visible text, math markup is replaced by its LaTeX source:

* MathJax v2 `<script type="math/tex">` (inline `$...$`) and `; mode=display` (`$$...$$`); the
  rendered preview/output (`.MathJax_Preview`, `.MathJax`, `.MathJax_Display`, `mjx-container`) is skipped;
* KaTeX: the MathML `annotation[encoding="application/x-tex"]` source replaces the `<math>` element
  (`$$...$$` when it is `display="block"`), the rendered `.katex-html` is skipped;
* MathML `<math alttext="...">` becomes `$alttext$` (without alttext its text content is kept);
* LaTeX images (`img.tex`, `img.latex`, `img[src*=latex]`, `img[src*=mathtex]`) become `$alt$`;
* `$...$` and `\\(...\\)` already in the text are left as they are.

The replacements are made on the HTML string with regular expressions, before parsing: walking
Resiliparse's DOM from Python costs ~25 us per element visited (a math page has dozens), while the
string pass costs a few microseconds when a page has no math markup (`math_markers`), as most pages
do not. Navigation, headers, footers and other boilerplate go with Resiliparse's `main_content`
heuristics when `main_content=True`.
"""

from __future__ import annotations

import html as html_lib
import re

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.html import HTMLTree

_SCRIPT_TEX = re.compile(r"""<script\b[^>]*\btype\s*=\s*["']?math/tex([^"'>]*)["']?[^>]*>(.*?)</script\s*>""",
                         re.I | re.S)
_MATH = re.compile(r"<math\b([^>]*)>(.*?)</math\s*>", re.I | re.S)
_ANNOTATION = re.compile(r"""<annotation\b[^>]*encoding\s*=\s*["']application/x-tex["'][^>]*>(.*?)</annotation\s*>""",
                         re.I | re.S)
_IMG = re.compile(r"<img\b[^>]*>", re.I)
_ATTR = re.compile(r"""([a-zA-Z_:][-a-zA-Z0-9_:.]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""")
_RENDERED = [".katex-html", ".MathJax_Preview", ".MathJax", ".MathJax_Display", ".MathJax_SVG", ".MathJax_CHTML",
             "mjx-container", ".MJX_Assistive_MathML"]


def _attrs(tag: str) -> dict[str, str]:
    return {m.group(1).lower(): html_lib.unescape(m.group(2) or m.group(3) or m.group(4) or "")
            for m in _ATTR.finditer(tag)}


def _tex(source: str, display: bool) -> str:
    source = html_lib.escape(source.strip(), quote=False)
    return f" $${source}$$ " if display else f"${source}$"


def math_markers(html: str) -> set[str]:
    """Which kinds of math markup the raw HTML may hold (cheap substring tests)."""
    lower = html.lower()
    found = set()
    if "math/tex" in lower:
        found.add("mathjax")
    if "<math" in lower:
        found.add("mathml")
    if "<img" in lower and "tex" in lower:
        found.add("img")
    if "katex" in lower or "mathjax" in lower or "mjx-" in lower:
        found.add("rendered")
    return found


def inline_math(html: str, markers: set[str] | None = None) -> str:
    """`html` with math markup replaced by escaped LaTeX text (see the module docstring)."""
    markers = math_markers(html) if markers is None else markers
    if "mathjax" in markers:
        html = _SCRIPT_TEX.sub(lambda m: _tex(html_lib.unescape(m.group(2)) if "&lt;" in m.group(2) else m.group(2),
                                              "mode=display" in m.group(1).lower()), html)
    if "mathml" in markers:
        def mathml(m: re.Match) -> str:
            attrs = _attrs(m.group(1))
            display = attrs.get("display", "").lower() == "block" or attrs.get("mode", "").lower() == "display"
            annotation = _ANNOTATION.search(m.group(2))
            if annotation is not None:
                return _tex(html_lib.unescape(annotation.group(1)), display)
            if attrs.get("alttext"):
                return _tex(attrs["alttext"], display)
            return m.group(0)
        html = _MATH.sub(mathml, html)
    if "img" in markers:
        def image(m: re.Match) -> str:
            attrs = _attrs(m.group(0))
            classes = attrs.get("class", "").split()
            src = attrs.get("src", "")
            if attrs.get("alt") and ("tex" in classes or "latex" in classes or "latex" in src or "mathtex" in src):
                return _tex(attrs["alt"], False)
            return m.group(0)
        html = _IMG.sub(image, html)
    return html


def html_to_text(html: str, *, main_content: bool = True) -> tuple[str, str]:
    """(title, text) of an HTML document, paragraphs separated by newlines, math as LaTeX."""
    markers = math_markers(html)
    if markers:
        html = inline_math(html, markers)
    tree = HTMLTree.parse(html)
    title = (tree.title or "").strip()
    text = extract_plain_text(tree, preserve_formatting=True, main_content=main_content, list_bullets=True,
                              alt_texts=False, links=False, form_fields=False, noscript=False,
                              skip_elements=_RENDERED if "rendered" in markers else None)
    return title, text.strip()
