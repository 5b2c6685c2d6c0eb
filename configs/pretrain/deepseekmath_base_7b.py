r"""DeepSeekMath-Base 7B: continued pre-training of DeepSeek-Coder-Base-v1.5 7B for 500B tokens
(PAPER.md §2; paper §2.3, the model behind Tables 2-4).

Mixture: 56% DeepSeekMath Corpus, 4% AlgebraicStack, 10% arXiv, 20% GitHub code, 10% Common Crawl natural
language (English and Chinese). AdamW (0.9, 0.95, wd 0.1); multi-step schedule: 2,000 warm-up steps to
4.2e-4, 31.6% of the peak after 80% of training, 10% after 90%; batch 10M tokens; context 4096.
Batch: 2,560 sequences x 4,096 tokens = 10.5M tokens (the nearest size that divides pod slices);
500B / 10.5M = 47,684 steps.

Data: each source is a TFDS dataset in `data.data_dir`: `deepseekmath_corpus` is what `dsmath mine` writes;
the others are built once from their public dumps with `dsmath_jax.data.corpus.build_text_corpus` (e.g.
AlgebraicStack and arXiv from Proof-Pile-2, code from the DeepSeek-Coder mixture or The Stack).

Launch (TPU v5p-512 = 256 chips, FSDP; about 5 days at 45% MFU; the compile-only plan predicts
5.8 s per step of 2,560 x 4K tokens, 69% MFU, a roofline estimate):
  # on every host of the slice: gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command='...'
  dsmath pretrain --config=configs/pretrain/deepseekmath_base_7b.py --workdir=gs://BUCKET/runs/dsm_base_7b \
      --config.init.hf_dir=gs://BUCKET/models/deepseek-coder-7b-base-v1.5 --config.data.data_dir=gs://BUCKET/tfds

Tiny variant (`:tiny`, CPU, about a minute): the tiny model on GSM8K + MATH training text:
  dsmath pretrain --config=configs/pretrain/deepseekmath_base_7b.py:tiny --workdir=runs/base_tiny \
    --config.data.benchmarks_dir=PATH/TO/benchmarks
"""

from dsmath_jax.config.args import parse_arg
from dsmath_jax.config.train import base_train_config, deepseekmath_7b, source, tiny_overrides

MIXTURE = (("deepseekmath_corpus", 0.56), ("algebraic_stack", 0.04), ("arxiv", 0.10), ("github_code", 0.20),
           ("common_crawl_en_zh", 0.10))


def get_config(arg=None):
    args = parse_arg(arg, {})
    c = base_train_config()
    deepseekmath_7b(c)
    c.data.sources = [source("tfds", name=name, weight=w) for name, w in MIXTURE]
    c.optimizer.schedule = dict(name="multi_step", peak=4.2e-4, warmup_steps=2000)
    c.train.update(steps=47_684, batch_size=2560, checkpoint_every=500, log_every=10)
    if args["tiny"]:
        tiny_overrides(c)
        c.init.hf_dir = None
        c.data.sources = [source("gsm8k", weight=0.7), source("math", weight=0.3)]
        c.data.eval_split = "validation"
    return c
