r"""SFT on the small arithmetic task (dsmath_jax.rl.arithmetic): the starting policy of the CPU RL runs.

Not a paper result: the paper's RL starts from DeepSeekMath-Instruct 7B (configs/sft/deepseekmath_instruct.py).
This config gives the RL configs' `:tiny` variants (configs/rl/*.py) and `dsmath quickstart` a policy that
answers the task's word problems step by step, `User: {question}\n\nAssistant: {steps}\nThe final answer is
$\boxed{N}$.`, often but not always right, so that RL has something to improve.

  dsmath sft --config=configs/sft/arithmetic.py:tiny --workdir=runs/arith_sft

Variants: `tiny` (the default here; the tiny model, a 512-piece tokenizer trained on the task, 450 steps,
about 2.5 minutes on 2 CPU cores; held-out greedy accuracy about 76%) and `small` (a 4-layer d256 model, for a GPU or a longer CPU run).
"""

from dsmath_jax.configs import base_train_config, parse_arg, source, tiny_overrides
from dsmath_jax.rl.config import ARITHMETIC_TINY

ARITHMETIC = {k: v for k, v in ARITHMETIC_TINY.items() if k != "kind"}  # the RL configs' data.problems too


def get_config(arg=None):
    args = parse_arg(arg, {"size": ("small",)})
    if args["tiny"] and args.get("size") == "small":
        raise ValueError("configs/sft/arithmetic.py: `small` and `tiny` are two sizes (tiny is the default): pick one")
    c = base_train_config()
    tiny_overrides(c, steps=450, seq_len=128, batch_size=32, lr=3e-3)
    c.data.sources = [source("sft", name="arithmetic_sft", sources=[{"kind": "arithmetic", "arithmetic": ARITHMETIC}],
                             validation_fraction=0.02)]
    c.data.packing = "first_fit"
    c.model.max_seq_len = 256  # RL samples prompt + up to 96 new tokens
    c.data.eval_split = "validation"
    c.tokenizer.train_docs = 4000
    c.optimizer.schedule = dict(name="cosine", peak=3e-3, warmup_steps=20)
    c.optimizer.weight_decay = 0.0
    c.train.update(checkpoint_every=150, eval_every=150, log_every=25)
    if args.get("size") == "small":
        c.model.update(num_layers=4, d_model=256, num_heads=4, num_kv_heads=4, mlp_dim=688)
        c.train.update(steps=2000, batch_size=64)
    return c
