r"""Figure 7 of the paper: Maj@K and Pass@K of the Instruct and RL models (PAPER.md §5.2.2): 64 samples per
question at temperature 0.7 on GSM8K and MATH, K = 1, 2, 4, ..., 64. RL raises Maj@K but not Pass@K.

Add `,tiny` for the first 20 problems of each with 8 samples and 48 tokens.

Launch (8 GPUs or TPU v5p-8; about 10 hours per model for MATH's 5000 x 64 samples):
  dsmath eval --config=configs/eval/maj_pass_sweep.py --model=path/to/deepseek-math-7b-instruct \
    --workdir=runs/fig7_instruct
  dsmath eval --config=configs/eval/maj_pass_sweep.py --model=path/to/deepseek-math-7b-rl --workdir=runs/fig7_rl
"""

from dsmath_jax.config.args import parse_arg
from dsmath_jax.config.eval import base_eval_config, tiny


def get_config(arg=None):
    args = parse_arg(arg, {})
    c = base_eval_config(("gsm8k", "math"), "zero_shot_cot", n=64, temperature=0.7, top_p=1.0,
                         ks=[1, 2, 4, 8, 16, 32, 64], seed=0)
    c.plan.preset = "deepseekmath_7b"  # what --compile_only assumes when --model cannot be read
    if args["tiny"]:
        tiny(c)
        c.eval.n = 8
        c.eval.ks = [1, 2, 4, 8]
    return c
