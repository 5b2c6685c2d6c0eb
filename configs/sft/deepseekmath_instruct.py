r"""DeepSeekMath-Instruct 7B: SFT of DeepSeekMath-Base 7B (PAPER.md §3; paper §3, Table 5's Instruct rows).

776K English and Chinese examples in chain-of-thought, program-of-thought and tool-integrated formats, in
the chat format `User: {question}\n\nAssistant: {response}<eos>` with the loss on responses only, packed
into 4K contexts; batch 256, constant lr 5e-5, 500 steps. Expected (greedy, zero-shot CoT): GSM8K 82.9,
MATH 46.8 (PAPER.md §6).

Data: `data.sources[0].sources` lists the SFT files, e.g. {"kind": "jsonl", "files": ["gs://.../sft/*.jsonl"]}
rows of {"question", "response", "format": "cot"|"pot"|"tool"} (or chat "messages"), plus GSM8K converted to
CoT. Start from the base model in Hugging Face format (`--config.init.hf_dir`), whose tokenizer is used.

Launch (TPU v5p-64 = 32 chips; about 1 hour at 45% MFU):
  dsmath sft --config=configs/sft/deepseekmath_instruct.py --workdir=gs://BUCKET/runs/dsm_instruct_7b \
    --config.init.hf_dir=gs://BUCKET/models/deepseek-math-7b-base --config.data.data_dir=gs://BUCKET/tfds

Tiny variant (`:tiny`, CPU, about a minute): the tiny model and a trained tokenizer on GSM8K CoT examples.
"""

from dsmath_jax.config.args import parse_arg
from dsmath_jax.config.train import base_train_config, deepseekmath_7b, source, tiny_overrides


def get_config(arg=None):
    args = parse_arg(arg, {})
    c = base_train_config()
    deepseekmath_7b(c)
    c.init.hf_dir = "deepseek-math-7b-base"  # a local or gs:// Hugging Face directory: override it
    c.data.sources = [source("sft", name="dsmath_sft", sources=[{"kind": "gsm8k"}], validation_fraction=0.01)]
    c.data.packing = "first_fit"
    c.data.overlong = "truncate"
    c.optimizer.schedule = dict(name="constant", peak=5e-5, warmup_steps=0)
    c.optimizer.weight_decay = 0.0
    c.train.update(steps=500, batch_size=256, checkpoint_every=100, log_every=5)
    if args["tiny"]:
        tiny_overrides(c, steps=120, seq_len=256, batch_size=8)
        c.init.hf_dir = None
        c.optimizer.schedule = dict(name="constant", peak=3e-3, warmup_steps=10)
        c.data.sources = [source("sft", name="dsmath_sft_tiny", sources=[{"kind": "gsm8k"}],
                                 validation_fraction=0.02)]
        c.data.eval_split = "validation"
    return c
