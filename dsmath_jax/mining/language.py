"""Language identification of page text with Resiliparse's fast n-gram detector (about 100 languages,
no model file to download), with a CJK-share fallback for short Chinese text."""

from __future__ import annotations

import re

from resiliparse.parse.lang import detect_fast

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SAMPLE_CHARS = 4000


def detect_language(text: str) -> str:
    """ISO 639-1 code of the text's main language ("en", "zh", ...), or "unknown".

    Reads at most the first 4,000 characters. Resiliparse's detector needs a few dozen characters;
    for shorter or undecided text a majority of CJK ideographs among the letters means "zh".
    """
    sample = text[:_SAMPLE_CHARS]
    if not sample.strip():
        return "unknown"
    lang, _ = detect_fast(sample)
    if lang == "unknown" or not lang:
        letters = sum(ch.isalpha() for ch in sample)
        if letters and len(_CJK.findall(sample)) / letters > 0.5:
            return "zh"
        return "unknown"
    return lang
