"""`dsmath pretrain` and `dsmath sft`: run (or resume) a training run from a config.

  dsmath pretrain --config=configs/pretrain/table1_corpora.py:tiny --workdir=runs/pretrain_tiny
  dsmath sft --config=configs/sft/deepseekmath_instruct.py:tiny --workdir=runs/sft_tiny

Running the same command again resumes from the latest checkpoint in the workdir.
"""

from __future__ import annotations

import json

from dsmath_jax.commands.common import run_command


def _run(task: str):
    def main(flags) -> int:
        from dsmath_jax.train.loop import train
        summary = train(flags.config, flags.workdir, task=task)
        print(json.dumps(summary))
        return 0
    return main


def pretrain_main(argv: list[str]) -> int:
    return run_command(_run("pretrain"), argv, "dsmath pretrain", plannable=True)


def sft_main(argv: list[str]) -> int:
    return run_command(_run("sft"), argv, "dsmath sft", plannable=True)
