r"""SFT on the small arithmetic task (dsmath_jax.data.arithmetic): the starting policy of the CPU RL runs.

Not a paper result: the paper's RL starts from DeepSeekMath-Instruct 7B (configs/sft/deepseekmath_instruct.py).
This config gives the RL configs' `:tiny` variants (configs/rl/*.py) and `dsmath quickstart` a policy that
answers the task's word problems step by step, `User: {question}\n\nAssistant: {steps}\nThe final answer is
$\boxed{N}$.`, often but not always right, so that RL has something to improve.

  dsmath sft --config=configs/sft/arithmetic.py:tiny --workdir=runs/arith_sft

Variants: `tiny` (the default here; the tiny model, a 512-piece tokenizer trained on the task, 450 steps,
about 2.5 minutes on 2 CPU cores; held-out greedy accuracy about 76%) and `small` (a 4-layer d256 model, for a
GPU or a longer CPU run). Either size takes `answer_mix` (`dsmath quickstart`'s sft stage is `tiny,answer_mix`):
the task's difficulty level 1 (one distractor sentence in each question) with half of the SFT rows given as their
final answer alone (`The final answer is $\boxed{N}$.`, format `answer`), like SFT sets that mix worked
solutions with bare answers. Its policy works some problems out and answers others at once; answering at once is
more often wrong, and outcome-reward RL learns that from the reward alone: in the quickstart (seeds 0-3) this
policy answers 50-55% of the held-out problems greedily, and 40 GRPO steps raise that by 6 to 15 points (README,
"What RL does in the quickstart").
"""

from dsmath_jax.config.args import parse_arg
from dsmath_jax.config.train import arithmetic_sft_config


def get_config(arg=None):
    args = parse_arg(arg, {"size": ("small",), "data": ("answer_mix",)})
    if args["tiny"] and args.get("size") == "small":
        raise ValueError("configs/sft/arithmetic.py: `small` and `tiny` are two sizes (tiny is the default): pick one")
    return arithmetic_sft_config("small" if args.get("size") == "small" else "tiny",
                                 answer_mix=args.get("data") == "answer_mix")
