r"""GRPO with process supervision (PAPER.md §4.1 "process supervision", §5.2 Figure 5's GRPO+PS).

A process reward model scores the end of every reasoning step (steps are newline-delimited); the step
rewards of a group are normalised jointly and a token's advantage is the sum of the normalised rewards of
the steps ending at or after it. The PRM comes from `dsmath rm --config=configs/rm/prm_math_shepherd.py`
(Math-Shepherd labels); pass its run directory as `--config.reward.rm_dir=`. Other settings as
configs/rl/grpo_outcome.py (G 64, 16 questions, lr 1e-6, beta 0.04).

Launch (TPU v5p-128; the PRM's scores add about 8% to a step of configs/rl/grpo_outcome.py: about 2 days for
one epoch of 144K questions, 9,000 steps predicted at 19.8 s each by the compile-only plan):
  dsmath rl --config=configs/rl/grpo_process.py --workdir=gs://BUCKET/runs/grpo_process \
    --config.init.run_dir=gs://BUCKET/runs/dsm_instruct_7b --config.reward.rm_dir=gs://BUCKET/runs/prm_7b

`tiny`: the arithmetic task with the task's exact step checker as the process reward (`step_rule`, an
oracle PRM: 1 for a step whose result is right, the answer line scored by the rule reward); pass
`--config.reward.kind=prm --config.reward.rm_dir=...` to use a trained tiny PRM instead.
"""

from dsmath_jax.config.args import parse_arg
from dsmath_jax.config.rl import base_rl_config, paper_grpo, tiny_rl_overrides


def get_config(arg=None):
    args = parse_arg(arg, {"data": ("gsm8k", "math")})
    c = paper_grpo(base_rl_config())
    c.reward.kind = "prm"
    c.reward.rule_weight = 0.0
    if args.get("data") == "math":
        c.data.problems = dict(kind="math")
        c.eval.n_problems = 5000
    if args["tiny"]:
        tiny_rl_overrides(c)
        c.reward.kind = "step_rule"
        c.reward.rule_weight = 1.0
    return c
