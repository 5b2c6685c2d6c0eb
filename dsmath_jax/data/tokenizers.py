"""One tokenizer interface over sentencepiece models and Hugging Face ``tokenizer.json`` files.

* :class:`SentencePieceTokenizer` wraps a ``.model`` file (e.g. one made by
  :func:`train_sentencepiece`, ids pad=0, unk=1, bos=2, eos=3).
* :class:`HFTokenizer` wraps a ``tokenizer.json`` via the ``tokenizers`` library
  (e.g. DeepSeek's BPE tokenizer: bos ``<｜begin▁of▁sentence｜>`` = 100000,
  eos ``<｜end▁of▁sentence｜>`` = 100001).
* :func:`load_tokenizer` picks one from a path; :func:`check_tokenizer_fits`
  verifies that a tokenizer's ids fit a model's embedding table.

``encode`` never adds special tokens implicitly: bos/eos are added only when
``add_bos`` / ``add_eos`` are passed, whatever the underlying tokenizer's
post-processor would do.
"""

from __future__ import annotations

import abc
import io
import itertools
import json
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import sentencepiece as spm
import tokenizers as hf_tokenizers
from etils import epath  # local paths and gs:// alike

logger = logging.getLogger(__name__)

__all__ = [
    "Tokenizer",
    "SentencePieceTokenizer",
    "HFTokenizer",
    "TokenizerMismatchError",
    "load_tokenizer",
    "train_sentencepiece",
    "check_tokenizer_fits",
]


class TokenizerMismatchError(ValueError):
    """A tokenizer emits ids that do not fit a model's embedding table."""


class Tokenizer(abc.ABC):
    """Common interface. ``pad_id`` falls back to ``eos_id`` when there is no pad token."""

    path: str | None = None  # where the tokenizer was loaded from (for error messages)

    @abc.abstractmethod
    def _encode_batch_raw(self, texts: list[str]) -> list[list[int]]:
        """Encode without any special tokens."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Decode ids to text; special (control) tokens are dropped unless asked otherwise."""

    @property
    @abc.abstractmethod
    def bos_id(self) -> int | None: ...

    @property
    @abc.abstractmethod
    def eos_id(self) -> int | None: ...

    @property
    @abc.abstractmethod
    def _pad_id(self) -> int | None: ...

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit: max id + 1, added special tokens included."""

    @abc.abstractmethod
    def id_to_token(self, i: int) -> str:
        """Token string of id ``i``; ``IndexError`` if ``i`` is not a valid id."""

    @abc.abstractmethod
    def token_to_id(self, s: str) -> int | None:
        """Id of token ``s``, or ``None`` if it is not in the vocabulary."""

    @property
    def pad_id(self) -> int | None:
        """Pad token id; ``eos_id`` when the tokenizer defines no pad token."""
        pad = self._pad_id
        return self.eos_id if pad is None else pad

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Encode one string, adding bos/eos only when asked."""
        return self.encode_batch([text], add_bos=add_bos, add_eos=add_eos)[0]

    def encode_batch(
        self, texts: Iterable[str], *, add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        """Encode many strings, adding bos/eos to each only when asked."""
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("encode expects str inputs")
        prefix = [self._require("bos")] if add_bos else []
        suffix = [self._require("eos")] if add_eos else []
        return [prefix + ids + suffix for ids in self._encode_batch_raw(texts)]

    def _require(self, name: str) -> int:
        value = getattr(self, f"{name}_id")
        if value is None:
            raise ValueError(f"tokenizer at {self.path} has no {name} token; cannot add_{name}")
        return value

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={self.path!r}, vocab_size={self.vocab_size}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id}, pad_id={self.pad_id})"
        )


class SentencePieceTokenizer(Tokenizer):
    """Tokenizer over a sentencepiece ``.model`` file."""

    def __init__(self, model_file: str | os.PathLike) -> None:
        path = epath.Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(f"sentencepiece model file not found: {path}")
        self.path = str(path)
        self.sp = spm.SentencePieceProcessor(model_proto=path.read_bytes())

    def _encode_batch_raw(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self.sp.encode(texts)] if texts else []

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            return self.sp.decode(ids)
        # sentencepiece always drops control tokens; render them literally between runs.
        out: list[str] = []
        for is_ctrl, group in itertools.groupby(ids, key=self.sp.is_control):
            run = list(group)
            out.append("".join(map(self.sp.id_to_piece, run)) if is_ctrl else self.sp.decode(run))
        return "".join(out)

    @staticmethod
    def _opt(i: int) -> int | None:
        return None if i < 0 else i

    @property
    def bos_id(self) -> int | None:
        return self._opt(self.sp.bos_id())

    @property
    def eos_id(self) -> int | None:
        return self._opt(self.sp.eos_id())

    @property
    def _pad_id(self) -> int | None:
        return self._opt(self.sp.pad_id())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def id_to_token(self, i: int) -> str:
        if not 0 <= i < self.vocab_size:
            raise IndexError(f"id {i} out of range [0, {self.vocab_size})")
        return self.sp.id_to_piece(i)

    def token_to_id(self, s: str) -> int | None:
        i = self.sp.piece_to_id(s)
        return None if i == self.sp.unk_id() and self.sp.id_to_piece(i) != s else i


def _token_content(value: Any) -> str | None:
    """``bos_token`` etc. in HF configs is a string, ``{"content": ...}`` or null."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer(Tokenizer):
    """Tokenizer over a Hugging Face ``tokenizer.json`` (``tokenizers`` library only).

    ``path`` is a ``tokenizer.json`` file or a directory holding one. bos/eos/pad
    tokens come from ``tokenizer_config.json`` next to it, else ``special_tokens_map.json``,
    and are overridden by the ``bos_token`` / ``eos_token`` / ``pad_token`` arguments.
    Encoding disables the file's post-processor, so bos/eos appear only when asked.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
    ) -> None:
        p = epath.Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json found at {p}")
        self.path = str(file)
        self.tok = hf_tokenizers.Tokenizer.from_str(file.read_text(encoding="utf-8"))
        self.config: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # later wins
            cfg = file.parent / name
            if cfg.is_file():
                with cfg.open(encoding="utf-8") as f:
                    self.config.update({k: v for k, v in json.load(f).items() if v is not None})
        overrides = {"bos": bos_token, "eos": eos_token, "pad": pad_token}
        self._special: dict[str, int | None] = {}
        for name, override in overrides.items():
            token = override if override is not None else _token_content(self.config.get(f"{name}_token"))
            tid = None if token is None else self.tok.token_to_id(token)
            if token is not None and tid is None:
                raise ValueError(f"{name}_token {token!r} is not in the vocabulary of {self.path}")
            self._special[name] = tid
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1 if vocab else 0

    def _encode_batch_raw(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    @property
    def bos_id(self) -> int | None:
        return self._special["bos"]

    @property
    def eos_id(self) -> int | None:
        return self._special["eos"]

    @property
    def _pad_id(self) -> int | None:
        return self._special["pad"]

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def id_to_token(self, i: int) -> str:
        token = self.tok.id_to_token(i) if i >= 0 else None
        if token is None:
            raise IndexError(f"id {i} is not in the vocabulary of {self.path}")
        return token

    def token_to_id(self, s: str) -> int | None:
        return self.tok.token_to_id(s)


def load_tokenizer(path: str | os.PathLike, **kwargs: Any) -> Tokenizer:
    """Load a tokenizer, dispatching on ``path``.

    A ``.model`` file -> sentencepiece; a ``.json`` file (``tokenizer.json``) or a directory
    holding ``tokenizer.json`` -> :class:`HFTokenizer` (``kwargs`` go to it); a directory
    holding only ``tokenizer.model`` -> sentencepiece.
    """
    p = epath.Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"tokenizer path {p} does not exist (expected a sentencepiece .model file, "
            "a tokenizer.json file, or a directory containing one of them)"
        )
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return HFTokenizer(p, **kwargs)
        if (p / "tokenizer.model").is_file():
            return SentencePieceTokenizer(p / "tokenizer.model", **kwargs)
        raise FileNotFoundError(
            f"directory {p} contains neither tokenizer.json nor tokenizer.model"
        )
    if p.suffix == ".model":
        return SentencePieceTokenizer(p, **kwargs)
    if p.suffix == ".json":
        return HFTokenizer(p, **kwargs)
    raise ValueError(
        f"cannot tell the tokenizer type of {p}: expected a sentencepiece .model file, "
        "a tokenizer.json file, or a directory containing one of them"
    )


def train_sentencepiece(
    texts: Iterable[str],
    model_prefix: str | os.PathLike,
    *,
    vocab_size: int,
    model_type: str = "bpe",
    character_coverage: float = 1.0,
    user_defined_symbols: Sequence[str] = (),
    byte_fallback: bool = True,
    num_threads: int | None = None,
    input_sentence_size: int = 0,
    seed_sentencepiece_size: int = 1_000_000,
    max_sentence_length: int = 16384,
) -> SentencePieceTokenizer:
    """Train a sentencepiece model on ``texts`` and write ``<model_prefix>.model`` atomically.

    Ids: pad=0, unk=1, bos=2, eos=3. Digits are split (as in DeepSeek), whitespace is
    kept verbatim (identity normalization, no whitespace squeezing, whitespace-only
    pieces allowed) so newlines and indentation round-trip. Each item of ``texts`` is
    one training "sentence" (it may contain newlines); items longer than
    ``max_sentence_length`` bytes are skipped by sentencepiece.
    """
    it = iter(texts)
    first = next(it, None)
    if first is None:
        raise ValueError(f"train_sentencepiece got no texts to train {model_prefix} on")
    out = epath.Path(f"{os.fspath(model_prefix)}.model")
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=itertools.chain([first], it),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        user_defined_symbols=list(user_defined_symbols),
        byte_fallback=byte_fallback,
        num_threads=num_threads or min(os.cpu_count() or 1, 16),
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        seed_sentencepiece_size=seed_sentencepiece_size,
        max_sentence_length=max_sentence_length,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    tmp = out.with_name(f".{out.name}.tmp.{os.getpid()}")
    try:
        tmp.write_bytes(buf.getvalue())
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("trained sentencepiece %s model (vocab_size=%d) -> %s", model_type, vocab_size, out)
    return SentencePieceTokenizer(out)


def check_tokenizer_fits(tokenizer: Tokenizer, vocab_size: int, *, what: str = "model") -> None:
    """Raise :class:`TokenizerMismatchError` unless every id ``tokenizer`` emits is < ``vocab_size``.

    ``vocab_size`` is the number of rows of the model's embedding; a smaller tokenizer is
    fine (DeepSeek pads its 100015-token tokenizer to 102400 rows).
    """
    n = tokenizer.vocab_size
    hint = (
        f"use the tokenizer the {what} was trained with or a config whose vocab_size >= "
    )
    if n > vocab_size:
        raise TokenizerMismatchError(
            f"tokenizer at {tokenizer.path} emits ids up to {n - 1} (vocab_size {n}) but the "
            f"{what}'s embedding has only {vocab_size} rows ({what}.vocab_size={vocab_size}); "
            f"{hint}{n}"
        )
    for name in ("bos", "eos", "pad"):
        tid = getattr(tokenizer, f"{name}_id")
        if tid is not None and tid >= vocab_size:
            raise TokenizerMismatchError(
                f"tokenizer at {tokenizer.path} has {name}_id={tid} but the {what}'s embedding "
                f"has only {vocab_size} rows ({what}.vocab_size={vocab_size}); {hint}{tid + 1}"
            )
