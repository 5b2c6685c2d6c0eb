r"""Iterative GRPO (PAPER.md §4 Algorithm 1; Figure 6): two iterations of GRPO with process supervision;
at the start of each iteration the reference model becomes the current policy, and after each iteration the
reward model continues training on the new policy's samples with a replay of 10% historical data (the
history starts as the reward model's own training data, the labels of its `dsmath rm` run).

Full scale: the 7B instruct policy and a Math-Shepherd PRM trained from DeepSeekMath-Base 7B at lr 2e-5
(`dsmath rm --config=configs/rm/prm_math_shepherd.py`); per iteration the settings of
configs/rl/grpo_outcome.py. The new samples get the PRM's own kind of labels, Math-Shepherd's (hard
estimation from N = 8 continuations of every step prefix by the sampling policy, temperature 0.7); labelling
costs N continuations per step of a sample, so each RL step labels 16 of its 1,024 samples (one for each
of its questions; 72K labelled solutions per iteration). Figure 6 shows the first iteration helping most.

Launch (TPU v5p-128; about 2 days for two iterations of 4,500 steps, each predicted at 20.1 s by the
compile-only plan):
  dsmath rl --config=configs/rl/iterative_grpo.py --workdir=gs://BUCKET/runs/iterative_grpo \
    --config.init.run_dir=gs://BUCKET/runs/dsm_instruct_7b --config.reward.rm_dir=gs://BUCKET/runs/prm_7b

`tiny`: the arithmetic task, 2 iterations of 20 steps, with a tiny PRM from
`dsmath rm --config=configs/rm/prm_math_shepherd.py:tiny` (`--config.reward.rm_dir=`) whose continued
training labels 8 samples a step with Math-Shepherd (N = 4, as the tiny PRM's own labels);
`--config.rm_update.prm_labels=step_check` uses the task's exact step checks instead (an oracle).
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
    c.rm_update.update(enabled=True, steps=2000, batch_size=256, history_fraction=0.1, lr=2e-5, replay_rm_data=True,
                       prm_labels="math_shepherd", label_n=8, label_mode="hard", label_temperature=0.7,
                       samples_per_step=16)
    if args["tiny"]:
        tiny_rl_overrides(c, steps=20)
        c.train.iterations = 2
        c.rm_update.update(samples_per_step=8, label_n=4, label_temperature=1.0)
    return c
