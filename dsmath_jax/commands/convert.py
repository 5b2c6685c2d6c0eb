"""`dsmath convert`: Hugging Face `LlamaForCausalLM` directories <-> our run directories, with a logit check.

  dsmath convert --from_hf=path/to/deepseek-math-7b-base --to_run=runs/dsm_base_7b
  dsmath convert --from_run=runs/arith_sft [--step=300] --to_hf=export/arith_sft [--dtype=bfloat16]

`--to_run` writes a run directory as `dsmath pretrain/sft` lay one out: `config.json` (its `model` section
describes the architecture), the tokenizer (`tokenizer.model`, or `tokenizer.json` with its
`tokenizer_config.json`/`special_tokens_map.json`) and an Orbax params checkpoint (step 0) under
`checkpoints/`; `load_run`, `dsmath eval --model=`, `dsmath rl/rm --config.init.run_dir=` and
`dsmath sft --config.init.checkpoint=<run>/checkpoints` read it. `--to_hf` writes `config.json`, safetensors
and the run's tokenizer files, which `transformers.LlamaForCausalLM.from_pretrained` and `load_hf` read.

Both directions write to a temporary directory beside the output and rename it into place only when the
logit check passed; an existing non-empty output is replaced only with `--overwrite`. The check (on by
default; `--check=false` skips it) runs the source and the written model on `--check_sequences` fixed token
sequences of `--check_tokens` tokens (float32 compute, highest matmul precision), reports the largest
|logit difference| and how often the greedy next tokens agree, and fails when the difference exceeds
`--atol + --rtol * max|source logit|` (defaults by output dtype: float32 1e-3 + 1e-4, room for two float32
implementations summing in different orders; bfloat16/float16 0 + 0.05, room for the rounding of every
weight). Greedy agreement is reported, not enforced (near-ties may flip within the tolerance).
`--check_with=transformers` also runs the Hugging Face side with `transformers.LlamaForCausalLM` (needs torch
and transformers). The result is written to `convert_check.json` in the output; an output that fails the check
is kept at `<output>.failed-check-<time>` for inspection, never under the requested name.

Models are placed on `--mesh` (FSDP over every device by default; `--mesh=none`: one device). Local paths only.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from absl import flags

from dsmath_jax.commands.common import parse_plain_flags
from dsmath_jax.data.tokenizers import TokenizerMismatchError
from dsmath_jax.model import CheckpointFormatError, ConfigError
from dsmath_jax.parallel import make_mesh
from dsmath_jax.train.convert import DTYPE_CHOICES, ConvertError, hf_to_run, run_to_hf

# dsmath_jax.train.checkpoint is imported where used: importing Orbax configures the root logger, which would
# silence the command's own logging set-up.


# ------------------------------------------------------------------------------------------- command line
def _define_flags(values: flags.FlagValues) -> None:
    d: dict[str, Any] = dict(flag_values=values)
    flags.DEFINE_string("from_hf", None, "a Hugging Face LlamaForCausalLM directory to convert into a run directory",
                        **d)
    flags.DEFINE_string("to_run", None, "the run directory to write (with --from_hf)", **d)
    flags.DEFINE_string("from_run", None, "a run directory (dsmath pretrain/sft) to export", **d)
    flags.DEFINE_string("to_hf", None, "the Hugging Face directory to write (with --from_run)", **d)
    flags.DEFINE_integer("step", None, "checkpoint step of --from_run (default: the latest)", **d)
    flags.DEFINE_enum("dtype", None, list(DTYPE_CHOICES),
                      "storage dtype of the written weights (default: float32 for --to_run, the run's param dtype "
                      "for --to_hf)", **d)
    flags.DEFINE_enum("rope_layout", "half", ["half", "interleaved"],
                      "rotary layout of the q/k rows of --from_hf: half (Hugging Face Llama, DeepSeek) or interleaved "
                      "(Meta's original checkpoints)", **d)
    flags.DEFINE_bool("scan_layers", False, "store the layers of --to_run stacked (for scan_layers=True training)", **d)
    flags.DEFINE_string("tokenizer", None, "tokenizer for --from_hf when the directory has none (tokenizer.json, "
                        "a sentencepiece .model, or their directory)", **d)
    flags.DEFINE_bool("check", True, "run the logit check after writing (--check=false skips it)", **d)
    flags.DEFINE_enum("check_with", "ours", ["ours", "transformers"],
                      "ours: source vs converted in dsmath_jax; transformers: also the Hugging Face side in "
                      "transformers.LlamaForCausalLM", **d)
    flags.DEFINE_integer("check_tokens", 32, "tokens per check sequence", **d)
    flags.DEFINE_integer("check_sequences", 3, "number of check sequences", **d)
    flags.DEFINE_float("atol", None, "absolute logit tolerance of the check (default: 1e-3 for float32 outputs, "
                       "0 for bfloat16/float16)", **d)
    flags.DEFINE_float("rtol", None, "tolerance relative to the largest |source logit| (default: 1e-4 for float32, "
                       "0.05 for bfloat16/float16)", **d)
    flags.DEFINE_bool("overwrite", False, "replace a non-empty output directory", **d)
    flags.DEFINE_string("mesh", "fsdp=-1", "device mesh the models are placed on, e.g. fsdp=-1 or fsdp=2,tensor=4; "
                        "none: the default device only", **d)
    flags.DEFINE_string("log_level", "INFO", "logging level", **d)


def _parse_mesh(text: str) -> dict[str, int] | None:
    """"fsdp=2,tensor=4" -> {"fsdp": 2, "tensor": 4}; "none" -> None (the default device, no mesh)."""
    if text.strip().lower() in ("", "none"):
        return None
    shape = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, size = part.partition("=")
        try:
            shape[name.strip()] = int(size)
        except ValueError:
            raise ConvertError(f"--mesh entry {part!r} must look like fsdp=8") from None
        if not sep:
            raise ConvertError(f"--mesh entry {part!r} must look like fsdp=8")
    return shape


def main(argv: list[str]) -> int:
    prog = "dsmath convert"
    values = parse_plain_flags(argv, prog, _define_flags, doc=__doc__, module=__name__)
    if isinstance(values, int):
        return values

    def usage(message: str) -> int:
        print(f"{prog}: {message}\nusage: dsmath convert --from_hf=DIR --to_run=DIR | --from_run=DIR [--step=N] "
              "--to_hf=DIR  [--dtype=...] [--check=false] [--overwrite]", file=sys.stderr)
        return 2

    v = values
    if bool(v.from_hf) == bool(v.from_run):
        return usage("give exactly one of --from_hf (with --to_run) or --from_run (with --to_hf)")
    if v.from_hf and (not v.to_run or v.to_hf):
        return usage("--from_hf writes a run directory: give --to_run=DIR (and no --to_hf)")
    if v.from_run and (not v.to_hf or v.to_run):
        return usage("--from_run writes a Hugging Face directory: give --to_hf=DIR (and no --to_run)")
    if v.from_hf and v.step is not None:
        return usage("--step picks a checkpoint of --from_run; a Hugging Face directory has one")
    if v.from_run and (v.rope_layout != "half" or v.scan_layers or v.tokenizer):
        return usage("--rope_layout, --scan_layers and --tokenizer apply to --from_hf only")
    from dsmath_jax.train.checkpoint import CheckpointError

    common = dict(check=v.check, check_with=v.check_with, check_tokens=v.check_tokens,
                  check_sequences=v.check_sequences, atol=v.atol, rtol=v.rtol, overwrite=v.overwrite)

    try:
        shape = _parse_mesh(v.mesh)
        if shape is None:
            mesh = None
        else:
            try:
                mesh = make_mesh(shape)
            except ValueError as e:
                raise ConvertError(f"--mesh={v.mesh}: {e}") from e
        if v.from_hf:
            report = hf_to_run(v.from_hf, v.to_run, dtype=v.dtype or "float32", rope_layout=v.rope_layout,
                               scan_layers=v.scan_layers, tokenizer=v.tokenizer, mesh=mesh, **common)
        else:
            report = run_to_hf(v.from_run, v.to_hf, step=v.step, dtype=v.dtype, mesh=mesh, **common)
    except (ConvertError, CheckpointError, CheckpointFormatError, ConfigError, TokenizerMismatchError,
            FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    summary = {"output": report["output"], "checked": report.get("checked", True)}
    if "comparisons" in report:
        summary["passed"] = report["passed"]
        summary["comparisons"] = [{k: c.get(k) for k in ("name", "max_abs_diff", "greedy_agree", "greedy_total")}
                                  for c in report["comparisons"]]
        summary["tolerance"] = report["tolerance"]
    print(json.dumps(summary, indent=2))
    return 0
