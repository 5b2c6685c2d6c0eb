r"""Process reward model with Math-Shepherd labels (PAPER.md §4.1 "process supervision", §4.2; the PRM of
§5.2 Figure 5's GRPO+PS and of iterative RL, Figure 6).

A PRM scores every reasoning step: its score at each step's last token is trained (binary cross-entropy on
the logit) against Math-Shepherd's automatic label (Wang et al. 2023, arXiv 2312.08935): from the step's
prefix, N continuations are sampled with the policy and graded; the label is 1 if any reaches the right
answer (`hard`) or the fraction that do (`soft`); the last step is labelled by the solution's own answer.
Steps are the newline-delimited lines of a solution. Solutions are sampled from the SFT model
(DeepSeekMath-Instruct 7B) on the GSM8K and MATH training questions; the reward model is initialised from
DeepSeekMath-Base 7B and trained at lr 2e-5 (PAPER.md §4.2). Not stated in the paper: samples per question,
N, hard or soft, batch size and steps; we follow Math-Shepherd (15 solutions per question, N = 8
completions, hard labels) and train 2,000 steps of 256 solutions, constant lr, no weight decay.

Launch (TPU v5p-128; labelling is the expensive part, about N continuations per step of every solution:
roughly a day; training about 2 hours):
  dsmath rm --config=configs/rm/prm_math_shepherd.py --workdir=gs://BUCKET/runs/prm_7b \
    --config.init.run_dir=gs://BUCKET/runs/dsm_instruct_7b \
    --config.init.rm_init_dir=gs://BUCKET/models/deepseek-math-7b-base --config.data.data_dir=gs://BUCKET/tfds
Then `dsmath rl --config=configs/rl/grpo_process.py --config.reward.rm_dir=gs://BUCKET/runs/prm_7b`.

Variants: `soft` (soft labels). Tiny variant (`:tiny`, CPU, about a minute): the arithmetic task's training
questions, 4 samples each from a tiny SFT policy (`dsmath sft --config=configs/sft/arithmetic.py:tiny`,
passed as `--config.init.run_dir`), N = 4 continuations per step, RM initialised from that policy, 60 steps.
"""

from dsmath_jax.config.args import parse_arg
from dsmath_jax.config.rm import base_rm_config, tiny_rm_overrides
from dsmath_jax.data.tasks import COT_TEMPLATE


def get_config(arg=None):
    args = parse_arg(arg, {"labels": ("hard", "soft")})
    c = base_rm_config()
    c.kind = "prm"
    c.labels.update(mode=args.get("labels", "hard"), n=8, temperature=0.7, max_new_tokens=1024)
    c.init.rm_init_dir = "deepseek-math-7b-base"  # a local or gs:// Hugging Face directory: override it
    c.model.update(preset="deepseekmath_7b", dtype="bfloat16", remat_policy="save_qkv", scan_layers=True)
    c.data.update(problems=[dict(kind="gsm8k"), dict(kind="math")], template=COT_TEMPLATE, max_steps=64)
    c.sampling.update(samples_per_problem=15, temperature=0.7, max_new_tokens=1024)
    if args["tiny"]:
        tiny_rm_overrides(c)
        c.init.rm_init_dir = None
        c.model.update(preset=None, dtype=None, remat_policy=None, scan_layers=None)
        c.data.template = "{question}"
    return c
