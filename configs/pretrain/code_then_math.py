r"""§5.1 of the paper (Table 6): does code training help mathematical reasoning? 1.3B models, two ways.

Arguments:
  `two_stage_code`  stage 1 of two-stage training: 400B tokens of code;
  `two_stage_math`  stage 2: 150B tokens of the DeepSeekMath Corpus, starting from stage 1's checkpoint
                    (`--config.init.checkpoint=<stage-1 workdir>/checkpoints`);
  `one_stage`       one-stage training: 400B code + 150B math tokens mixed from the start (73/27).
(add `,tiny` for the CPU variant). The paper finds code training first helps math reasoning with and without
tool use, and mixed training keeps coding ability while gaining math (PAPER.md §2, §5.1).
Model: 1.3B (24 layers, d 2048, 16 heads), from scratch; AdamW (0.9, 0.95, wd 0.1), multi-step schedule to
5.3e-4, batch 4M tokens, context 4K. Steps: 400B -> 95,367; 150B -> 35,763; 550B -> 131,130.

Data: TFDS datasets `github_code` and `deepseekmath_corpus` in `--config.data.data_dir`. The tokenizer is
DeepSeek's 100K BPE (the `deepseek_1_3b` preset's vocabulary of 102,400): pass its `tokenizer.json` or a
directory holding it, e.g. a DeepSeekMath 7B download, as `--config.tokenizer.path`; both stages use the same.

Launch (TPU v5p-128; at 45% MFU about 4 days for stage 1, 1.5 days for stage 2, 5.5 days one-stage):
  dsmath pretrain --config=configs/pretrain/code_then_math.py:two_stage_code --workdir=gs://BUCKET/runs/code_stage1 \
    --config.data.data_dir=gs://BUCKET/tfds --config.tokenizer.path=gs://BUCKET/models/deepseek-math-7b-base
  dsmath pretrain --config=configs/pretrain/code_then_math.py:two_stage_math --workdir=gs://BUCKET/runs/code_stage2 \
    --config.init.checkpoint=gs://BUCKET/runs/code_stage1/checkpoints \
    --config.data.data_dir=gs://BUCKET/tfds --config.tokenizer.path=gs://BUCKET/models/deepseek-math-7b-base
  dsmath pretrain --config=configs/pretrain/code_then_math.py:one_stage --workdir=gs://BUCKET/runs/code_math_mixed \
    --config.data.data_dir=gs://BUCKET/tfds --config.tokenizer.path=gs://BUCKET/models/deepseek-math-7b-base

Tiny variant (CPU, about a minute each): "code" is the GSM8K text, "math" the MATH text.
"""

from dsmath_jax.config.args import parse_arg
from dsmath_jax.config.train import base_train_config, deepseek_1_3b_ablation, source, tiny_overrides

TOKENS_PER_STEP = 1024 * 4096
VARIANTS = ("two_stage_code", "two_stage_math", "one_stage")


def get_config(arg=None):
    args = parse_arg(arg, {"variant": VARIANTS})
    variant = args.get("variant", "two_stage_code")
    c = base_train_config()
    code, math = source("tfds", name="github_code"), source("tfds", name="deepseekmath_corpus")
    if variant == "two_stage_code":
        c.data.sources, tokens = [code], 400e9
    elif variant == "two_stage_math":
        c.data.sources, tokens = [math], 150e9
    else:
        code["weight"], math["weight"] = 400 / 550, 150 / 550
        c.data.sources, tokens = [code, math], 550e9
    deepseek_1_3b_ablation(c, steps=round(tokens / TOKENS_PER_STEP))
    if args["tiny"]:
        tiny_overrides(c, steps=60)
        code, math = source("gsm8k"), source("math")
        if variant == "one_stage":
            code["weight"], math["weight"] = 400 / 550, 150 / 550
        c.data.sources = {"two_stage_code": [code], "two_stage_math": [math], "one_stage": [code, math]}[variant]
        c.data.eval_split = "validation"
    return c
