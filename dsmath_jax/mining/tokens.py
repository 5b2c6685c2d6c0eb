"""Token counts for token budgets and reports.

The default is a cheap regex count that tracks a byte-level BPE tokenizer closely enough for budgets:
every run of Latin letters is one token, every digit is one token (DeepSeek's tokenizer splits
numbers into digits), every other non-space character (CJK, punctuation, LaTeX symbols) is one token.
Pass a tokenizer path (sentencepiece `.model` or `tokenizer.json`, see
`dsmath_jax.data.tokenizers.load_tokenizer`) for exact counts at about 10x the cost.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_TOKEN = re.compile(r"[A-Za-z]+|[^\sA-Za-z]")


def count_tokens(text: str) -> int:
    """Approximate BPE token count of `text` (see the module docstring)."""
    return len(_TOKEN.findall(text))


def token_counter(tokenizer_path: str | None = None) -> Callable[[str], int]:
    """`count_tokens`, or the length of `load_tokenizer(tokenizer_path).encode(text)` when a path is given."""
    if not tokenizer_path:
        return count_tokens
    from dsmath_jax.data.tokenizers import load_tokenizer  # sentencepiece / tokenizers: only with a tokenizer path

    tokenizer = load_tokenizer(tokenizer_path)
    return lambda text: len(tokenizer.encode(text))
