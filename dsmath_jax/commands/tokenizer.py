"""`dsmath tokenizer`: train a sentencepiece tokenizer, or encode text with any tokenizer.

  dsmath tokenizer train --input corpus.jsonl --field text --vocab-size 32000 --output out/spm
  dsmath tokenizer encode --tokenizer out/spm.model "What is 2+2?"
"""

from __future__ import annotations

import argparse
import json

from dsmath_jax.data.text_files import iter_texts
from dsmath_jax.data.tokenizers import Tokenizer, load_tokenizer, train_sentencepiece


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dsmath tokenizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    train = sub.add_parser("train", help="train a sentencepiece model from text / JSONL files")
    train.add_argument("--input", nargs="+", required=True, help=".jsonl files (one document per line) or text files")
    train.add_argument("--field", default="text", help="JSONL field holding the document")
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--output", required=True, help="model prefix: writes PREFIX.model")
    train.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])
    encode = sub.add_parser("encode", help="print the ids and pieces of a text")
    encode.add_argument("--tokenizer", required=True, help="a .model file, tokenizer.json or their directory")
    encode.add_argument("text")
    args = parser.parse_args(argv)
    tok: Tokenizer
    if args.action == "train":
        tok = train_sentencepiece(iter_texts(args.input, field=args.field), args.output,
                                  vocab_size=args.vocab_size, model_type=args.model_type)
        print(json.dumps({"model": f"{args.output}.model", "vocab_size": tok.vocab_size, "bos_id": tok.bos_id,
                          "eos_id": tok.eos_id, "pad_id": tok.pad_id}))
    else:
        tok = load_tokenizer(args.tokenizer)
        ids = tok.encode(args.text)
        print(json.dumps({"ids": ids, "pieces": [tok.id_to_token(i) for i in ids]}, ensure_ascii=False))
    return 0
