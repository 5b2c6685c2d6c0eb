"""Prompts and stop strings of the DeepSeek-Math evaluation harness, byte for byte.

`build_prompt(benchmark, item, mode)` gives the text the harness feeds the model for an item of
`records.process` and the stop strings it generates with (deepseek-ai/DeepSeek-Math `evaluation/`, commit
b8b0f8c):

* "few_shot_cot", "few_shot_pot" (base models; run_cot_eval.py / run_pal_eval.py with
  `--prompt_format few_shot`): the config's `few_shot_prompt` class formats the question after its exemplars
  (`few_shot_prompts/*.py`; the exemplar text is the one we ship in dsmath_jax/evals/few_shot, identical to
  theirs) with an empty answer, and the result is right-stripped; the stops are the class's `stop_words()`.
* "zero_shot_cot" (instruct / RL models; run_cot_eval.py with `--prompt_format sft`): the question with the
  chain-of-thought suffix that run_subset_parallel.py's `markup_question` appends, in the chat format
  `User: {question}\\n\\nAssistant:` (the harness prefixes the eos token and then strips it); no stop
  strings.
* "tool" (run_tool_integrated_eval.py): the same chat format with the tool-integrated suffix; generation
  stops at "```output" so that the program can run (the loop itself is tool.py's).

The harness also stops every generation at the tokenizer's eos token; that stop is left out here because
our sampler always ends a sequence at eos.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsmath_jax.evals.benchmarks import few_shot_text
from dsmath_jax.evals.deepseek.grading import check_protocol
from dsmath_jax.evals.deepseek.records import LANGUAGE

# run_subset_parallel.markup_question: appended to the question, after a newline, in the zero-shot modes.
SUFFIX = {
    ("en", "zero_shot_cot"): "Please reason step by step, and put your final answer within \\boxed{}.",
    ("zh", "zero_shot_cot"): "请通过逐步推理来解答问题，并把最终答案放置于\\boxed{}中。",
    ("en", "tool"): "Please integrate natural language reasoning with programs to solve the problem above, "
                    "and put your final answer within \\boxed{}.",
    ("zh", "tool"): "请结合自然语言和Python程序语言来解答问题，并把最终答案放置于\\boxed{}中。",
}
TOOL_STOPS = ("```output",)

_PAL_MATH_INSTRUCTION = ("You are an expert programmer. Solve the above mathematical problem by writing a Python "
                         "program. Express your answer as a numeric type or a SymPy object.")
_MINERVA = ("cot_minerva_math_4_shot.txt", "{shots}\n\nProblem:\n{question}\n\nSolution:\n", ("\nProblem:",))
_PAL_MATH = ("pal_math_4_shot.txt", "{shots}\n\nProblem:\n{question}\n\n" + _PAL_MATH_INSTRUCTION + "\n",
             ("\nProblem:", "Problem:"))

# (benchmark, mode) -> (exemplar file, format, stop words): the harness's few_shot_prompts classes.
FEW_SHOT: dict[tuple[str, str], tuple[str, str, tuple[str, ...]]] = {
    ("gsm8k", "few_shot_cot"): ("cot_gsm_8_shot.txt", "{shots}\n\n\nQ: {question}\nA: ", ("\nQ:",)),  # CoTGSMPrompt
    ("gsm8k", "few_shot_pot"): ("pal_gsm_8_shot.txt", "{shots}\n\n\n\n\n\nQ: {question}\n\n# solution in Python:",
                                ("\nQ:", "Q: ")),  # PALGSMPrompt
    ("math", "few_shot_cot"): _MINERVA,  # MinervaMathPrompt
    ("math500", "few_shot_cot"): _MINERVA,
    ("math", "few_shot_pot"): _PAL_MATH,  # PALMathPrompt
    ("math500", "few_shot_pot"): _PAL_MATH,
    ("cmath", "few_shot_cot"): ("cot_cmath_6_shot.txt", "{shots}\n\n\n问题：{question}\n答案：",
                                ("\n问题：",)),  # CoTCMATHPrompt
    ("gaokao_mathcloze", "few_shot_cot"): ("cot_gaokao_mathcloze_5_shot.txt",
                                           "{shots}\n\n\n问题 6.   {question}\n问题 6的解析:   ", ("\n问题 ",)),
    ("gaokao_mathqa", "few_shot_cot"): ("cot_gaokao_mathqa_5_shot.txt",
                                        "{shots}\n\n\n问题 6.    {question}\n问题 6的解析:   ", ("\n问题 ",)),
    ("sat", "few_shot_cot"): ("cot_math_sat_4_shot.txt", "{shots}\n\nProblem:\n{question}\nSolution:\n",
                              ("\nProblem:",)),  # CoTSATPrompt
    ("ocw", "few_shot_cot"): ("cot_ocwcourses_4_shot.txt", "{shots}\n\nProblem:\n{question}\nSolution:\n",
                              ("\nProblem:",)),  # OCWCoursesPrompt
    ("mmlu_stem", "few_shot_cot"): ("cot_mmlu_stem_4_shot.txt", "{shots}\n\nProblem:\n{question}\nSolution:\n",
                                    ("\nProblem:",)),  # MMLUSTEMPrompt
}


def question_suffix(benchmark: str, mode: str) -> str:
    """The zero-shot instruction appended to the question ("zero_shot_cot" or "tool")."""
    return SUFFIX[LANGUAGE.get(benchmark, "en"), mode]


def _user_turn(item: Mapping[str, Any]) -> str:
    messages = item["messages"]
    if len(messages) != 2 or messages[0]["role"] != "user" or messages[1]["role"] != "assistant":
        raise ValueError(f"item {item.get('id')!r}: expected [user, assistant] messages, got "
                         f"{[m.get('role') for m in messages]}")
    return messages[0]["content"]


def build_prompt(benchmark: str, item: Mapping[str, Any], mode: str) -> tuple[str, tuple[str, ...]]:
    """(prompt, stop strings) the harness generates with for an item of `records.process`.

    Raises ValueError for a mode the harness does not define for the benchmark (`grading.PROTOCOL`).
    The stop strings leave out the tokenizer's eos, which always ends generation in our sampler.
    """
    check_protocol(benchmark, mode)
    question = _user_turn(item)
    if mode in ("zero_shot_cot", "tool"):
        # markup_question, then the chat turn of run_cot_eval.py / run_tool_integrated_eval.py (the assistant
        # turn is empty: the harness clears the reference before inference).
        question = f"{question}\n{question_suffix(benchmark, mode)}"
        prompt = f"User: {question.strip()}\n\nAssistant:"
        return prompt, TOOL_STOPS if mode == "tool" else ()
    exemplars, template, stops = FEW_SHOT[benchmark, mode]
    prompt = template.format(shots=few_shot_text(exemplars), question=question).rstrip()
    return prompt.lstrip(), stops
