"""`dsmath rl`: run (or resume) an RL run from a config (GRPO, PPO, DPO, RFT, online RFT or SFT on the
RL questions; PAPER.md §4-5).

  dsmath rl --config=configs/rl/grpo_outcome.py:tiny --workdir=runs/grpo_tiny \\
      --config.init.run_dir=runs/arith_sft

Running the same command again resumes from the latest checkpoint in the workdir (mid-iteration included).
"""

from __future__ import annotations

import json

from dsmath_jax.commands.common import run_command


def _main(flags) -> int:
    from dsmath_jax.rl.loop import run_rl
    summary = run_rl(flags.config, flags.workdir)
    print(json.dumps({k: v for k, v in summary.items() if k != "eval_history"}))
    return 0


def main(argv: list[str]) -> int:
    return run_command(_main, argv, "dsmath rl", plannable=True)
