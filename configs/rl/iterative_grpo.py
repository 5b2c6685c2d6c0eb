r"""Iterative GRPO (PAPER.md §4.2 Algorithm 1; Figure 6): two iterations of GRPO with process supervision;
after each iteration the reward model continues training on the new policy's samples with a replay of 10%
historical data, and the reference model becomes the current policy.

Full scale: the 7B instruct policy and a Math-Shepherd PRM trained from DeepSeekMath-Base 7B at lr 2e-5
(`dsmath rm --config=configs/rm/prm_math_shepherd.py`); per iteration the settings of
configs/rl/grpo_outcome.py. Figure 6 shows the first iteration helping most.

Launch (TPU v5p-128; about 2 days for two iterations of 4,500 steps, each predicted at 20.1 s by the
compile-only plan):
  dsmath rl --config=configs/rl/iterative_grpo.py --workdir=gs://BUCKET/runs/iterative_grpo \
    --config.init.run_dir=gs://BUCKET/runs/dsm_instruct_7b --config.reward.rm_dir=gs://BUCKET/runs/prm_7b

`tiny`: the arithmetic task, 2 iterations of 20 steps, with a tiny PRM from
`dsmath rm --config=configs/rm/prm_math_shepherd.py:tiny` (`--config.reward.rm_dir=`) whose continued
training uses the task's exact step checks as labels of the new samples.
"""

from dsmath_jax.config.args import parse_arg
from dsmath_jax.config.rl import base_rl_config, paper_grpo, tiny_rl_overrides


def get_config(arg=None):
    args = parse_arg(arg, {"supervision": ("process", "outcome")})
    c = paper_grpo(base_rl_config())
    outcome = args.get("supervision") == "outcome"
    c.reward.kind = "orm" if outcome else "prm"
    c.reward.rule_weight = 0.0
    c.train.update(iterations=2, steps_per_iteration=4500)
    c.rm_update.update(enabled=True, steps=2000, batch_size=256, history_fraction=0.1, lr=2e-5)
    if args["tiny"]:
        tiny_rl_overrides(c, steps=20)
        c.train.iterations = 2
    return c
