r"""The unified paradigm (PAPER.md §5.2, Table 10, Figure 5): SFT, RFT, online RFT, DPO, PPO and GRPO with
outcome or process supervision, from the same 1.3B instruct policy on the same questions.

Each method is a row of Table 10 (data source, reward, gradient coefficient): RFT fine-tunes on the SFT
model's correct samples (offline), online RFT on the current policy's, DPO on (correct, wrong) pairs of
the SFT model's samples, PPO with a critic and GAE (KL in the reward), GRPO with the group baseline (KL in
the loss). Figure 5's findings: online RFT > RFT, GRPO > online RFT, process > outcome supervision.

PPO's value model starts from the reward model, as in the paper's PPO (after Ouyang et al. 2022):
`ppo.critic_init="auto"` does so whenever the run has one, i.e. with the reward model of Table 10's PPO row,
`--config.reward.kind=orm --config.reward.rm_dir=gs://BUCKET/runs/orm_1_3b` (same tokenizer as the policy);
with the rule reward (the arms' default, as grpo_outcome's, so the arms compare) it starts from the policy's
trunk with a fresh head (`ppo.critic_init="policy"`).

The argument picks the method: sft | rft | online_rft | dpo | ppo | grpo_outcome | grpo_process, plus
`tiny` for the arithmetic task on CPU (the policy from configs/sft/arithmetic.py:tiny).

Launch one arm (TPU v5p-32; at 1.3B about 10 hours for an arm that samples, 1,200 steps predicted at 31 s
each by the compile-only plan, and 1 hour for the SFT arm):
  dsmath rl --config=configs/rl/paradigm.py:online_rft --workdir=gs://BUCKET/runs/paradigm/online_rft \
    --config.init.run_dir=gs://BUCKET/runs/instruct_1_3b
and compare the arms' `eval_accuracy` curves (notebooks/rl_analysis.ipynb; experiments/rl_paradigm_tiny.py
runs every arm at tiny scale over several seeds).
"""

from dsmath_jax.config.args import parse_arg
from dsmath_jax.config.rl import base_rl_config, paper_grpo, tiny_rl_overrides

ARMS = ("sft", "rft", "online_rft", "dpo", "ppo", "grpo_outcome", "grpo_process")


def get_config(arg=None):
    args = parse_arg(arg, {"arm": ARMS})
    if "arm" not in args:
        raise ValueError(f"configs/rl/paradigm.py needs a method argument, one of {ARMS} (e.g. :grpo_outcome,tiny)")
    arm = args["arm"]
    c = paper_grpo(base_rl_config())
    c.model.update(preset="deepseek_1_3b", dtype="bfloat16", remat_policy="dots_no_batch", scan_layers=True)
    c.train.update(steps_per_iteration=1200, accum_steps=4)
    c.mesh.update(shape=dict(data=1, fsdp=-1, tensor=1), rules=None)  # the 1.3B model: FSDP over the 16 chips
    c.method = {"grpo_outcome": "grpo", "grpo_process": "grpo"}.get(arm, arm)
    if arm == "grpo_process":
        c.reward.kind = "prm"
        c.reward.rule_weight = 0.0
    if arm in ("rft", "online_rft", "sft"):
        c.optimizer.schedule = dict(name="constant", peak=1e-6, warmup_steps=0)
    if arm == "ppo":
        c.ppo.update(kl_coef=0.04, critic_lr=1e-6, critic_init="auto")  # the reward model when there is one
    if args["tiny"]:
        tiny_rl_overrides(c)
        if arm == "grpo_process":
            c.reward.kind = "step_rule"
            c.reward.rule_weight = 1.0
        if arm == "dpo":
            c.optimizer.schedule = dict(name="constant", peak=5e-5, warmup_steps=0)
    return c
