"""The schema of evaluation configs (`configs/eval/*.py` start from `base_eval_config()`)."""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder


def base_eval_config(benchmarks, mode: str, **eval_fields) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.eval = ml_collections.ConfigDict(dict(benchmarks=list(benchmarks), mode=mode, n=1, temperature=0.0, top_p=1.0,
                                            max_new_tokens=1024, limit=placeholder(int), ks=[1], seed=0,
                                            max_tool_rounds=2, protocol="deepseek"))
    # protocol "deepseek": prompts, stops, tool loop and grading exactly as DeepSeek-Math's harness (the paper's
    # numbers); "strict": our prompts and the strict grader. Both verdicts are reported either way.
    c.eval.update(eval_fields)
    c.batch_size = 64  # rows sampled at once (prompts x samples)
    c.benchmarks_dir = placeholder(str)  # local copies; None downloads the public files
    c.model_overrides = ml_collections.ConfigDict(dict(dtype="bfloat16"))
    c.mesh = ml_collections.ConfigDict(dict(shape=dict(data=1, fsdp=-1, tensor=1), rules=placeholder(tuple)))
    c.distributed = ml_collections.ConfigDict(dict(enabled="auto", timeout_s=300))
    # What a `--compile_only` plan assumes: the longest prompt (few-shot exemplars + question) and, where the
    # model directory cannot be read, its architecture.
    few_shot = mode.startswith("few_shot")
    c.plan = ml_collections.ConfigDict(dict(prompt_tokens=2048 if few_shot else 512, preset=placeholder(str)))
    return c


def tiny(c: ml_collections.ConfigDict, *, limit: int = 20, max_new_tokens: int = 48) -> ml_collections.ConfigDict:
    """A CPU-sized version: the first `limit` problems, short generations, float32."""
    c.eval.limit = limit
    c.eval.max_new_tokens = max_new_tokens
    c.batch_size = 16  # a multiple of the 8 test devices, so rows shard instead of replicating
    c.model_overrides = ml_collections.ConfigDict(dict(dtype="float32"))
    c.plan.update(preset="tiny", prompt_tokens=256)
    return c
