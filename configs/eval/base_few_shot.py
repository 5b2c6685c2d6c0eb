r"""Base models, few-shot (Tables 1-3 of the paper, PAPER.md §2 and §6): greedy, 1024 new tokens.

Argument: `cot` (default: chain-of-thought on GSM8K, MATH, OCW, SAT, MMLU-STEM, CMATH, Gaokao-MathCloze,
Gaokao-MathQA) or `pot` (program-aided, PAL exemplars, on GSM8K and MATH); add `,tiny` for a CPU check on the
first 20 problems of GSM8K and MATH with 48 new tokens.
Expected for DeepSeekMath-Base 7B: GSM8K 64.2, MATH 36.2, OCW 15.4, SAT 84.4, MMLU-STEM 56.5, CMATH 71.7,
Gaokao-MathCloze 20.3, Gaokao-MathQA 35.3 (CoT); GSM8K 66.9, MATH 31.4 (program-aided).

Launch (one host with 8 GPUs or a TPU v5p-8; about 1 hour for all eight benchmarks):
  dsmath eval --config=configs/eval/base_few_shot.py --model=path/to/deepseek-math-7b-base --workdir=runs/eval_base
"""

from dsmath_jax.config.args import parse_arg
from dsmath_jax.config.eval import base_eval_config, tiny

COT = ("gsm8k", "math", "ocw", "sat", "mmlu_stem", "cmath", "gaokao_mathcloze", "gaokao_mathqa")


def get_config(arg=None):
    args = parse_arg(arg, {"mode": ("cot", "pot")})
    pot = args.get("mode") == "pot"
    c = base_eval_config(("gsm8k", "math") if pot else COT, "few_shot_pot" if pot else "few_shot_cot")
    c.plan.preset = "deepseekmath_7b"  # what --compile_only assumes when --model cannot be read
    if args["tiny"]:
        c.eval.benchmarks = ["gsm8k", "math"]
        tiny(c)
    return c
