r"""Table 1 of the paper: the same 1.3B model trained for 150B tokens on each math corpus (PAPER.md §2).

Argument: the corpus, one of `mathpile` (8.9B), `openwebmath` (13.6B), `proof_pile_2` (51.9B),
`deepseekmath_corpus` (120.2B); add `,tiny` for the CPU variant. The "none" row of Table 1 is the
untrained-on-math DeepSeek-LLM 1.3B, evaluated directly.
Model: DeepSeek-LLM 1.3B style (24 layers, d_model 2048, 16 heads, MLP 5504, vocab 102400), from scratch.
Optimizer: AdamW (0.9, 0.95, wd 0.1), multi-step schedule to peak 5.3e-4 (2,000 warm-up steps), batch 4M
tokens (1,024 x 4,096), context 4K: 150B / 4.19M = 35,763 steps. Expected (few-shot CoT, after training
on the DeepSeekMath Corpus): GSM8K 23.8, MATH 13.6, CMATH 41.5 (Table 1).

Data: the corpus is a TFDS dataset named like the argument in `data.data_dir` (mining output for
`deepseekmath_corpus`; the public dumps built with `build_text_corpus` for the others).

The tokenizer is DeepSeek's 100K BPE (the `deepseek_1_3b` preset's vocabulary of 102,400): pass its
`tokenizer.json` or a directory holding it, e.g. a DeepSeekMath 7B download, as `--config.tokenizer.path`.

Launch (TPU v5p-128 = 64 chips; about 1.5 days per corpus at 45% MFU; the compile-only
plan predicts 2.1 s per step of 1,024 x 4K tokens, 74% MFU, a roofline estimate):
  # on every host of the slice: gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command='...'
  dsmath pretrain --config=configs/pretrain/table1_corpora.py:openwebmath \
      --workdir=gs://BUCKET/runs/table1_openwebmath --config.data.data_dir=gs://BUCKET/tfds \
      --config.tokenizer.path=gs://BUCKET/models/deepseek-math-7b-base
All four: for c in mathpile openwebmath proof_pile_2 deepseekmath_corpus; do dsmath pretrain \
      --config=configs/pretrain/table1_corpora.py:$c --workdir=gs://BUCKET/runs/table1_$c ...; done

Tiny variant (`deepseekmath_corpus,tiny`, CPU, about a minute): the tiny model on GSM8K + MATH text.
"""

from dsmath_jax.config.args import parse_arg
from dsmath_jax.config.train import base_train_config, deepseek_1_3b_ablation, source, tiny_overrides

CORPORA = ("mathpile", "openwebmath", "proof_pile_2", "deepseekmath_corpus")


def get_config(arg=None):
    args = parse_arg(arg, {"corpus": CORPORA})
    corpus = args.get("corpus", "deepseekmath_corpus")
    c = base_train_config()
    deepseek_1_3b_ablation(c, steps=35_763)  # 150B tokens / 4.19M per step
    c.data.sources = [source("tfds", name=corpus)]
    if args["tiny"]:
        tiny_overrides(c)
        c.data.sources = [source("gsm8k", weight=0.5), source("math", weight=0.5)]
        c.data.eval_split = "validation"
    return c
