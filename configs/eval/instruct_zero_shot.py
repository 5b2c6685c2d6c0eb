r"""Instruct and RL models, zero-shot (Table 5 of the paper, PAPER.md §6): greedy, chat format, 1024 tokens.

Argument: `cot` (default; suffix "Please reason step by step, and put your final answer within \boxed{}.") or
`tool` (tool-integrated: the model writes python, we run it in the sandbox and append its output; at most 2
rounds), on GSM8K, MATH, MGSM-zh and CMATH; add `,tiny` for the first 20 GSM8K and MATH problems, 48 tokens.
Expected: DeepSeekMath-Instruct 7B CoT 82.9 / 46.8 / 73.2 / 84.6, tool 83.7 / 57.4 / 72.0 / 84.3;
DeepSeekMath-RL 7B CoT 88.2 / 51.7 / 79.6 / 88.8, tool 86.7 / 58.8 / 78.4 / 87.6.

Launch (8 GPUs or TPU v5p-8; about 40 minutes for CoT, longer with tools):
  dsmath eval --config=configs/eval/instruct_zero_shot.py:tool --model=path/to/deepseek-math-7b-rl \
    --workdir=runs/eval_rl_tool
"""

from dsmath_jax.config.args import parse_arg
from dsmath_jax.config.eval import base_eval_config, tiny


def get_config(arg=None):
    args = parse_arg(arg, {"mode": ("cot", "tool")})
    mode = "tool" if args.get("mode") == "tool" else "zero_shot_cot"
    c = base_eval_config(("gsm8k", "math", "mgsm_zh", "cmath"), mode)
    c.plan.preset = "deepseekmath_7b"  # what --compile_only assumes when --model cannot be read
    if args["tiny"]:
        c.eval.benchmarks = ["gsm8k", "math"]
        tiny(c)
    return c
