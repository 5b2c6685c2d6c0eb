r"""§5.1 of the paper (Tables 8-9): is arXiv data enough? 1.3B models trained on arXiv corpora only.

Argument: `mathpile` (MathPile, 8.9B tokens, mostly arXiv) or `arxiv_redpajama` (the arXiv subset of
RedPajama, 28.0B tokens); add `,tiny` for the CPU variant. Each is trained for 150B tokens (several epochs);
the paper finds no clear gain, or a loss, on math benchmarks compared with no math training (PAPER.md §2).
Model: 1.3B (24 layers, d 2048, 16 heads); AdamW (0.9, 0.95, wd 0.1), multi-step schedule to 5.3e-4, batch
4M tokens, context 4K, 35,763 steps.

The tokenizer is DeepSeek's 100K BPE (the `deepseek_1_3b` preset's vocabulary of 102,400): pass its
`tokenizer.json` or a directory holding it, e.g. a DeepSeekMath 7B download, as `--config.tokenizer.path`.

Launch (TPU v5p-128, about 1.5 days each at 45% MFU):
  dsmath pretrain --config=configs/pretrain/arxiv_only.py:arxiv_redpajama --workdir=gs://BUCKET/runs/arxiv_rp \
    --config.data.data_dir=gs://BUCKET/tfds --config.tokenizer.path=gs://BUCKET/models/deepseek-math-7b-base

Tiny variant (CPU, about a minute): the MATH problems' text stands in for arXiv.
"""

from dsmath_jax.config.args import parse_arg
from dsmath_jax.config.train import base_train_config, deepseek_1_3b_ablation, source, tiny_overrides

CORPORA = ("mathpile", "arxiv_redpajama")


def get_config(arg=None):
    args = parse_arg(arg, {"corpus": CORPORA})
    c = base_train_config()
    deepseek_1_3b_ablation(c, steps=35_763)
    c.data.sources = [source("tfds", name=args.get("corpus", "arxiv_redpajama"))]
    if args["tiny"]:
        tiny_overrides(c, steps=60)
        c.data.sources = [source("math")]
        c.data.eval_split = "validation"
    return c
