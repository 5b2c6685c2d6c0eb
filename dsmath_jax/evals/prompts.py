"""Prompts of the DeepSeekMath evaluation protocol (PAPER.md §7).

Base models: few-shot chain-of-thought (the benchmark's exemplars, e.g. GSM8K 8-shot `Q:/A:`, MATH 4-shot
Minerva `Problem:/Solution:`) or few-shot program-of-thought (PAL exemplars). Instruct and RL models:
zero-shot chat, `User: {question}\\n{suffix}\\n\\nAssistant:`, with the chain-of-thought or the
tool-integrated suffix (Chinese suffixes for the Chinese benchmarks).
"""

from __future__ import annotations

from dsmath_jax.config.eval import MODES
from dsmath_jax.data.tasks import COT_INSTRUCTION
from dsmath_jax.evals.benchmarks import Benchmark, Problem, few_shot_text

COT_SUFFIX = {
    "en": COT_INSTRUCTION,
    "zh": "请通过逐步推理来解答问题，并把最终答案放置于\\boxed{}中。",
}
TOOL_SUFFIX = {
    "en": "Please integrate natural language reasoning with programs to solve the problem above, and put your "
          "final answer within \\boxed{}.",
    "zh": "请结合自然语言和Python程序语言来解答问题，并把最终答案放置于\\boxed{}中。",
}
# Zero-shot chat completions end at the model's eos; a new turn would also end them.
CHAT_STOPS = ("\nUser:",)


def chat_prompt(question: str, suffix: str) -> str:
    return f"User: {question}\n{suffix}\n\nAssistant:"


def build_prompt(benchmark: Benchmark, problem: Problem, mode: str) -> tuple[str, tuple[str, ...]]:
    """(prompt, stop strings) of a problem in an evaluation mode."""
    if mode == "zero_shot_cot":
        return chat_prompt(problem.question, COT_SUFFIX[benchmark.language]), CHAT_STOPS
    if mode == "tool":
        return chat_prompt(problem.question, TOOL_SUFFIX[benchmark.language]), CHAT_STOPS
    if mode in ("few_shot_cot", "few_shot_pot"):
        shots = benchmark.cot if mode == "few_shot_cot" else benchmark.pot
        if shots is None:
            raise ValueError(f"benchmark {benchmark.name!r} has no {mode} exemplars in the protocol")
        return few_shot_text(shots.exemplars) + shots.template.format(question=problem.question), shots.stop
    raise ValueError(f"unknown evaluation mode {mode!r}; expected one of {MODES}")
