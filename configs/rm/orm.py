r"""Outcome reward model (PAPER.md §4.1 "outcome supervision"; the ORM of §5.2 Figure 5's GRPO+OS).

An ORM scores a whole solution: its score at the last token is trained (binary cross-entropy on the logit)
to say whether the final answer is right. Data as the paper builds its reward-model data: completions of
the SFT model (DeepSeekMath-Instruct 7B) on the GSM8K and MATH training questions in the chain-of-thought
format of its SFT data, labelled by the rule checker (PAPER.md §4.2, §7). The reward model is initialised
from DeepSeekMath-Base 7B and trained at lr 2e-5 (PAPER.md §4.2). The paper does not state the number of
samples per question, the batch size, the number of steps or the weight decay: we sample 15 solutions per
question (as Math-Shepherd does, arXiv 2312.08935) and train 2,000 steps of 256 examples, constant lr,
no weight decay.

Launch (TPU v5p-64; sampling about 3 hours, training about 2 hours):
  dsmath rm --config=configs/rm/orm.py --workdir=gs://BUCKET/runs/orm_7b \
    --config.init.run_dir=gs://BUCKET/runs/dsm_instruct_7b \
    --config.init.rm_init_dir=gs://BUCKET/models/deepseek-math-7b-base --config.data.data_dir=gs://BUCKET/tfds
Then `dsmath rl --config=configs/rl/grpo_outcome.py --config.reward.kind=orm --config.reward.rm_dir=...`.

Tiny variant (`:tiny`, CPU, about a minute): the arithmetic task's training questions, 4 samples each from a
tiny SFT policy (`dsmath sft --config=configs/sft/arithmetic.py:tiny`, passed as `--config.init.run_dir`),
RM initialised from that policy, 60 steps.
"""

from dsmath_jax.config.args import parse_arg
from dsmath_jax.config.rm import base_rm_config, tiny_rm_overrides
from dsmath_jax.data.tasks import COT_TEMPLATE


def get_config(arg=None):
    args = parse_arg(arg, {})
    c = base_rm_config()
    c.kind = "orm"
    c.labels.mode = "outcome"
    c.init.rm_init_dir = "deepseek-math-7b-base"  # a local or gs:// Hugging Face directory: override it
    c.model.update(preset="deepseekmath_7b", dtype="bfloat16", remat_policy="save_qkv", scan_layers=True)
    c.data.update(problems=[dict(kind="gsm8k"), dict(kind="math")], template=COT_TEMPLATE)
    c.sampling.update(samples_per_problem=15, temperature=0.7, max_new_tokens=1024)
    if args["tiny"]:
        tiny_rm_overrides(c)
        c.init.rm_init_dir = None
        c.model.update(preset=None, dtype=None, remat_policy=None, scan_layers=None)
        c.data.template = "{question}"
    return c
