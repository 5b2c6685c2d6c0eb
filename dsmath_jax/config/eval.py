"""The schema of `dsmath eval` configs: `base_eval_config(benchmarks, mode)` returns a ConfigDict with every
section and typed defaults (configs/eval/*.py start from it), `validate(config)` checks what types cannot.

Sections: eval (what `dsmath_jax.evals.runner.EvalSpec` takes: benchmarks, mode, samples, sampling, protocol),
batch_size, benchmarks_dir, model_overrides (compute settings of the loaded model), mesh, distributed, plan
(what a `--compile_only` plan assumes).
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
from ml_collections.config_dict import placeholder

from dsmath_jax.config.checks import (
    BATCHING,
    ConfigError,
    check_distributed,
    check_keys_and_types,
    check_mesh,
    check_model,
    check_sampling,
    counts,
    one_of,
)
from dsmath_jax.model.config import PRESETS

# Evaluation modes (dsmath_jax.evals.prompts) and grading protocols (dsmath_jax.evals.runner): "deepseek" is
# DeepSeek-Math's harness exactly (the paper's numbers), "strict" our prompts and the strict grader.
MODES = ("few_shot_cot", "few_shot_pot", "zero_shot_cot", "tool")
PROTOCOLS = ("deepseek", "strict")


def base_eval_config(benchmarks: Sequence[str] = ("gsm8k", "math"), mode: str = "zero_shot_cot",
                     **eval_fields) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.eval = ml_collections.ConfigDict(dict(benchmarks=list(benchmarks), mode=mode, n=1, temperature=0.0, top_p=1.0,
                                            max_new_tokens=1024, limit=placeholder(int), ks=[1], seed=0,
                                            max_tool_rounds=2, protocol="deepseek"))
    # protocol "deepseek": prompts, stops, tool loop and grading exactly as DeepSeek-Math's harness (the paper's
    # numbers); "strict": our prompts and the strict grader. Both verdicts are reported either way.
    c.eval.update(eval_fields)
    c.batch_size = 64  # rows sampled at once (prompts x samples): static batches, or the engine's slots
    c.batching = "continuous"  # BATCHING: the continuous-batching engine, or static batches
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


def validate(c: ml_collections.ConfigDict) -> None:
    """What types cannot check in an eval config: keys against `base_eval_config()`, the mode and protocol, the
    sampling, ks within [1, n], the model overrides; a `ConfigError` names the key."""
    check_keys_and_types(c, base_eval_config())
    if not c.eval.benchmarks or not all(isinstance(b, str) for b in c.eval.benchmarks):
        raise ConfigError(f"eval.benchmarks={c.eval.benchmarks!r}: expected a non-empty list of benchmark names")
    one_of(c, "eval.mode", MODES)
    one_of(c, "eval.protocol", PROTOCOLS)
    one_of(c, "batching", BATCHING)
    counts(c, "eval", positive=("n", "max_new_tokens", "limit"), non_negative=("max_tool_rounds",))
    check_sampling(c, "eval")
    bad = [k for k in c.eval.ks if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= c.eval.n]
    if bad or not c.eval.ks:
        raise ConfigError(f"eval.ks={list(c.eval.ks)!r}: each k of pass@k / maj@k must lie in [1, eval.n={c.eval.n}]")
    if c.batch_size < 1:
        raise ConfigError(f"batch_size={c.batch_size}: must be >= 1")
    check_model(c, "model_overrides", architecture=False)
    one_of(c, "plan.preset", (None, *PRESETS))
    counts(c, "plan", positive=("prompt_tokens",))
    check_mesh(c)
    check_distributed(c)
