"""The `deepseek` grading protocol: DeepSeek-Math's public evaluation harness reproduced exactly.

Prompts, stop strings, gold answers, answer extraction and equivalence as deepseek-ai/DeepSeek-Math's
`evaluation/` (commit b8b0f8c) makes them, to reproduce the paper's tables (PAPER.md §7); the `strict`
protocol (dsmath_jax/evals/answers.py, grader.py) is the one RL rewards use.

    item = process("math", record)                          # records.py: the harness's process_fn
    prompt, stops = build_prompt("math", item, "few_shot_cot")  # prompts.py
    prediction = extract("math", "few_shot_cot", item, completion)  # grading.py
    correct = is_correct("math", item, prediction)

`PROTOCOL` lists the (benchmark, mode) pairs the harness defines; the others raise ValueError.
"""

from dsmath_jax.evals.deepseek.grading import (
    MODES,
    PROTOCOL,
    check_protocol,
    extract,
    gold,
    is_correct,
    pal_program,
    program_output,
)
from dsmath_jax.evals.deepseek.prompts import build_prompt
from dsmath_jax.evals.deepseek.records import CONFIGS, process

__all__ = [
    "CONFIGS",
    "MODES",
    "PROTOCOL",
    "build_prompt",
    "check_protocol",
    "extract",
    "gold",
    "is_correct",
    "pal_program",
    "process",
    "program_output",
]
