"""Tests for dsmath_jax.data.tokenizers with real sentencepiece / tokenizers / transformers."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from tokenizers import Tokenizer as RawHFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from dsmath_jax.data.tokenizers import (
    HFTokenizer,
    SentencePieceTokenizer,
    TokenizerMismatchError,
    check_tokenizer_fits,
    load_tokenizer,
    train_sentencepiece,
)

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"

SAMPLES = [
    "  Hello 12345\n\tworld  \\frac{1}{2}\n\n  x = 7  \n",
    "Solve $x^2 - 5x + 6 = 0$.\nThe roots are 2 and 3.",
    "def f(n):\n    return sum(range(n + 1))  # 2024\n",
    "日本語 and émigré: π ≈ 3.14159",
    "",
]


def make_corpus(n: int = 300, seed: int = 0) -> list[str]:
    """Real-ish math/code documents with numbers, LaTeX, newlines and indentation."""
    rng = random.Random(seed)
    words = ["Let", "the", "sum", "of", "prove", "that", "integer", "prime", "number", "equation",
             "solve", "for", "where", "is", "and", "therefore", "answer", "triangle", "area", "root"]
    docs = []
    for _ in range(n):
        a, b, c = rng.randint(0, 9999), rng.randint(1, 99), rng.randint(2, 12)
        sent = " ".join(rng.choice(words) for _ in range(rng.randint(4, 10)))
        kind = rng.randrange(3)
        if kind == 0:
            docs.append(f"{sent} $x = \\frac{{{a}}}{{{b}}}$.\nThen $x^{c} + {b}x = {a * b}$.\n")
        elif kind == 1:
            docs.append(f"def f{c}(x):\n    if x > {b}:\n        return x * {a}\n    return {c}\n")
        else:
            docs.append(f"{sent}:\n\t\\sqrt{{{a}}} \\approx {a ** 0.5:.3f}\n\n  {sent.lower()} {b}\n")
    return docs


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory) -> SentencePieceTokenizer:
    prefix = tmp_path_factory.mktemp("sp") / "math"
    return train_sentencepiece(make_corpus(), prefix, vocab_size=400, num_threads=2)


def build_hf_dir(root: Path, *, post_processor: bool = False, config: dict | None = None) -> Path:
    """Train a small byte-level BPE, add DeepSeek-style specials after the vocab, save a dir."""
    tok = RawHFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(make_corpus(seed=1), trainer=trainer)
    tok.add_special_tokens([BOS, EOS])
    if post_processor:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
        )
    root.mkdir(parents=True, exist_ok=True)
    tok.save(str(root / "tokenizer.json"))
    cfg = config if config is not None else {
        "add_bos_token": True,
        "bos_token": {"__type": "AddedToken", "content": BOS},
        "eos_token": EOS,
        "pad_token": None,
    }
    (root / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return build_hf_dir(tmp_path_factory.mktemp("hf"))


# ----------------------------------------------------------------------------- sentencepiece


def test_sp_special_ids_and_file(sp_tok):
    assert Path(sp_tok.path).name == "math.model" and Path(sp_tok.path).is_file()
    assert not any(p.name.startswith(".") for p in Path(sp_tok.path).parent.iterdir())
    assert (sp_tok.pad_id, sp_tok.bos_id, sp_tok.eos_id) == (0, 2, 3)
    assert sp_tok.vocab_size == 400
    assert sp_tok.id_to_token(2) == "<s>" and sp_tok.token_to_id("</s>") == 3
    assert sp_tok.token_to_id("definitely-not-a-piece") is None
    with pytest.raises(IndexError):
        sp_tok.id_to_token(400)


@pytest.mark.parametrize("text", SAMPLES)
def test_sp_round_trip(sp_tok, text):
    ids = sp_tok.encode(text)
    assert all(0 <= i < sp_tok.vocab_size for i in ids)
    assert sp_tok.decode(ids) == text


def test_sp_bos_eos_only_when_asked(sp_tok):
    text = "Let x = 42.\n"
    plain = sp_tok.encode(text)
    assert 2 not in plain and 3 not in plain
    assert sp_tok.encode(text, add_bos=True) == [2] + plain
    assert sp_tok.encode(text, add_eos=True) == plain + [3]
    assert sp_tok.encode(text, add_bos=True, add_eos=True) == [2] + plain + [3]
    assert sp_tok.decode([2] + plain + [3]) == text
    assert sp_tok.decode([2] + plain + [3], skip_special_tokens=False) == f"<s>{text}</s>"
    batch = sp_tok.encode_batch([text, "7"], add_bos=True)
    assert batch[0] == [2] + plain and batch[1][0] == 2


def test_sp_splits_digits(sp_tok):
    ids = sp_tok.encode("12345 and 9876543210")
    pieces = [sp_tok.id_to_token(i) for i in ids]
    assert all(sum(ch.isdigit() for ch in p) <= 1 for p in pieces), pieces
    assert sum(sum(ch.isdigit() for ch in p) for p in pieces) == 15


def test_train_sentencepiece_empty_raises(tmp_path):
    with pytest.raises(ValueError, match="no texts"):
        train_sentencepiece(iter([]), tmp_path / "empty", vocab_size=100)
    assert not (tmp_path / "empty.model").exists()


def test_load_tokenizer_sentencepiece(sp_tok, tmp_path):
    assert isinstance(load_tokenizer(sp_tok.path), SentencePieceTokenizer)
    (tmp_path / "tokenizer.model").write_bytes(Path(sp_tok.path).read_bytes())
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.encode(SAMPLES[0]) == sp_tok.encode(SAMPLES[0])


# ----------------------------------------------------------------------------- Hugging Face


def test_hf_load_and_special_ids(hf_dir):
    tok = load_tokenizer(hf_dir)
    assert isinstance(tok, HFTokenizer)
    assert (tok.bos_id, tok.eos_id) == (400, 401)
    assert tok.pad_id == tok.eos_id  # no pad token -> falls back to eos
    assert tok.vocab_size == 402
    assert tok.id_to_token(400) == BOS and tok.token_to_id(EOS) == 401
    assert tok.token_to_id("definitely-not-a-token") is None
    # a tokenizer.json file path reads the sibling config too
    assert load_tokenizer(hf_dir / "tokenizer.json").bos_id == 400


@pytest.mark.parametrize("text", SAMPLES)
def test_hf_round_trip(hf_dir, text):
    tok = HFTokenizer(hf_dir)
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=False) == BOS + text + EOS


def test_hf_matches_transformers(hf_dir):
    from transformers import PreTrainedTokenizerFast

    ref = PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / "tokenizer.json"))
    tok = HFTokenizer(hf_dir)
    texts = SAMPLES[:4]
    expected = [ref.encode(t, add_special_tokens=False) for t in texts]
    assert [tok.encode(t) for t in texts] == expected
    assert tok.encode_batch(texts) == expected


def test_hf_post_processor_bos_not_doubled(tmp_path):
    d = build_hf_dir(tmp_path / "pp", post_processor=True)
    raw = RawHFTokenizer.from_file(str(d / "tokenizer.json"))
    assert raw.encode("x = 1").ids[0] == 400  # the file itself would add bos
    tok = HFTokenizer(d)
    with_bos = tok.encode("x = 1", add_bos=True)
    assert with_bos.count(tok.bos_id) == 1 and with_bos[0] == tok.bos_id
    assert tok.bos_id not in tok.encode("x = 1")
    assert all(ids.count(tok.bos_id) == 1 for ids in tok.encode_batch(["a", "b 2"], add_bos=True))


def test_hf_special_tokens_map_fallback_and_overrides(tmp_path):
    d = build_hf_dir(tmp_path / "map", config={"add_bos_token": True})
    (d / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": {"content": BOS}, "eos_token": EOS}, ensure_ascii=False),
        encoding="utf-8",
    )
    tok = HFTokenizer(d)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (400, 401, 401)
    tok = HFTokenizer(d, pad_token=BOS, eos_token=BOS)
    assert (tok.eos_id, tok.pad_id) == (400, 400)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        HFTokenizer(d, bos_token="<nope>")


def test_hf_without_bos_cannot_add_bos(tmp_path):
    d = build_hf_dir(tmp_path / "nobos", config={})
    tok = HFTokenizer(d)
    assert tok.bos_id is None and tok.pad_id is None
    assert tok.encode("x") == tok.encode("x", add_bos=False)
    with pytest.raises(ValueError, match="no bos token"):
        tok.encode("x", add_bos=True)


# ----------------------------------------------------------------------------- checks / errors


def test_check_tokenizer_fits(sp_tok, hf_dir):
    check_tokenizer_fits(sp_tok, 400)
    check_tokenizer_fits(sp_tok, 512)  # a padded embedding is fine
    with pytest.raises(TokenizerMismatchError) as exc:
        check_tokenizer_fits(sp_tok, 100)
    msg = str(exc.value)
    assert "399" in msg and "400" in msg and "100 rows" in msg and "model.vocab_size=100" in msg
    assert sp_tok.path in msg
    assert isinstance(exc.value, ValueError)

    hf = HFTokenizer(hf_dir)
    check_tokenizer_fits(hf, 402)
    with pytest.raises(TokenizerMismatchError, match=r"vocab_size 402.*401 rows"):
        check_tokenizer_fits(hf, 401, what="draft")


def test_load_tokenizer_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_tokenizer(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="tokenizer.json nor tokenizer.model") as exc:
        load_tokenizer(empty)
    assert str(empty) in str(exc.value)
    odd = tmp_path / "vocab.txt"
    odd.write_text("a\nb\n")
    with pytest.raises(ValueError, match="vocab.txt"):
        load_tokenizer(odd)
