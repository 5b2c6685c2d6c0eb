r"""DeepSeekMath-RL 7B: GRPO with outcome supervision (PAPER.md §4.2; paper Table 5's RL row).

The policy starts from DeepSeekMath-Instruct 7B; the RL data are the chain-of-thought questions of GSM8K
and MATH from the SFT data (about 144K). Per step 16 questions (batch 1024 = 16 x G 64 outputs, max length
1024), lr 1e-6, KL coefficient beta 0.04 with the k3 estimator, one update per exploration stage (mu 1), a
reward model trained on the base model; here the default reward is the rule reward (the answer checked by
the evaluation harness), with `reward.kind="orm"` and `--config.reward.rm_dir=` for a trained outcome
reward model (configs/rm/orm.py). The paper reports GSM8K 88.2% and MATH 51.7% (greedy, zero-shot CoT).

Launch (TPU v5p-128, 64 chips; about 2 days for one epoch of 144K questions: 9,000 steps, each predicted at 18.4 s
by the compile-only plan, a roofline estimate, about half of it decoding with the rollout engine if every output
ran to its 1,024-token budget):
  dsmath rl --config=configs/rl/grpo_outcome.py --workdir=gs://BUCKET/runs/grpo_outcome \
    --config.init.run_dir=gs://BUCKET/runs/dsm_instruct_7b --config.data.benchmarks_dir=gs://BUCKET/benchmarks

Arguments: `gsm8k` or `math` restrict the questions to one benchmark (default: both via a JSONL of the
SFT questions, `--config.data.problems.files=`; without one, GSM8K train). `tiny`: the arithmetic task on
CPU: the policy is `configs/sft/arithmetic.py:tiny`'s run directory (`--config.init.run_dir=`), G 8 for
each of 32 questions per step, lr 1e-4 after a 10-step warm-up, 40 steps, about 3 minutes on 2 cores:
greedy accuracy on 256 held-out problems goes from 76.2% to 78.9% (tests/test_rl_loop.py asserts a gain
of at least 1.5 points). `tiny,answer_mix` (`dsmath quickstart`'s grpo stage): the problems of
ARITHMETIC_ANSWER_MIX (one distractor sentence per question), for the policy of
`configs/sft/arithmetic.py:tiny,answer_mix`, which answers some problems without working them out; in the
quickstart (seeds 0-3) greedy accuracy rises by 6 to 15 points, mean +9.5 (README, "What RL does in the
quickstart").
"""

from dsmath_jax.config.args import parse_arg
from dsmath_jax.config.rl import base_rl_config, paper_grpo, tiny_rl_overrides
from dsmath_jax.data.arithmetic import ARITHMETIC_ANSWER_MIX


def get_config(arg=None):
    args = parse_arg(arg, {"data": ("gsm8k", "math", "answer_mix")})
    if args.get("data") == "answer_mix" and not args["tiny"]:
        raise ValueError("configs/rl/grpo_outcome.py: `answer_mix` is the arithmetic task of a `tiny` run: "
                         "write `tiny,answer_mix`")
    c = paper_grpo(base_rl_config())
    if args.get("data") == "math":
        c.data.problems = dict(kind="math")
        c.eval.n_problems = 5000
    if args["tiny"]:
        tiny_rl_overrides(c, problems=ARITHMETIC_ANSWER_MIX if args.get("data") == "answer_mix" else None)
    return c
