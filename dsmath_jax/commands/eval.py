"""`dsmath eval`: evaluate a model with the DeepSeekMath protocol.

  dsmath eval --config=configs/eval/base_few_shot.py --model=runs/base_tiny --workdir=runs/base_tiny/eval
  dsmath eval --config=configs/eval/instruct_zero_shot.py:tool --model=path/to/deepseek-math-7b-rl --workdir=out

`--model` is a training run directory (its latest checkpoint; `--step` picks another) or a Hugging Face
model directory. Results: `<workdir>/<benchmark>.<mode>.jsonl`, `summary.json`, `summary.md`.
"""

from __future__ import annotations

import json

from absl import flags

from dsmath_jax.commands.common import run_command


def _flags(values: flags.FlagValues) -> None:
    flags.DEFINE_string("model", None, "run directory or Hugging Face model directory", flag_values=values)
    flags.DEFINE_string("checkpoint", None, "alias of --model", flag_values=values)
    flags.DEFINE_integer("step", None, "checkpoint step of a run (default: latest)", flag_values=values)


def _main(values) -> int:
    from dsmath_jax.evals.runner import EvalSpec, run_eval
    from dsmath_jax.generate import make_sampler
    from dsmath_jax.parallel import initialize_from_config, make_mesh, rules_from_config
    from dsmath_jax.train.restore import load_run

    cfg = values.config
    path = values.model or values.checkpoint
    if not path:
        print("dsmath eval: --model (a run directory or a Hugging Face directory) is required")
        return 2
    initialize_from_config(cfg.get("distributed"))
    mesh = make_mesh(cfg.mesh.shape.to_dict())
    rules = rules_from_config(cfg.mesh.get("rules"))
    model, tokenizer = load_run(path, mesh=mesh, rules=rules, step=values.step, **cfg.model_overrides.to_dict())
    sampler = make_sampler(cfg.batching, model, tokenizer, rows=cfg.batch_size, mesh=mesh, rules=rules)
    del model  # the sampler holds its own copy of the weights, in the compute dtype and its decode layout
    spec = EvalSpec(**cfg.eval.to_dict())
    summary = run_eval(sampler, spec, values.workdir, data_dir=cfg.get("benchmarks_dir"), extra={"model": path})
    print(json.dumps([{k: v for k, v in r.items() if k != "breakdown"} for r in summary["results"]], indent=2))
    return 0


def main(argv: list[str]) -> int:
    return run_command(_main, argv, "dsmath eval", define_extra=_flags, plannable=True)
