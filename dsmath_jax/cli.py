"""The `dsmath` command line: `dsmath <command> [flags]`.

Each command lives in its own module and is imported only when it runs, so `dsmath --help` is instant.
Commands that run experiments take ml-collections configs (`--config=configs/...py:variant`,
overridable as `--config.section.key=value`).
"""

from __future__ import annotations

import importlib
import sys

from dsmath_jax import __version__

# name -> ("module:function", one-line help). The function takes argv (without the command name).
COMMANDS: dict[str, tuple[str, str]] = {
    "mine": ("dsmath_jax.commands.mine:main",
             "mine a math corpus from web crawls (Apache Beam): recall, domains, dedup, decontamination"),
    "pretrain": ("dsmath_jax.commands.train:pretrain_main", "pre-train (or continue pre-training) a model"),
    "sft": ("dsmath_jax.commands.train:sft_main", "supervised fine-tuning on chat-formatted examples"),
    "rm": ("dsmath_jax.commands.rm:main", "label policy samples and train an outcome or process reward model"),
    "rl": ("dsmath_jax.commands.rl:main",
           "RL on math questions: GRPO (outcome/process), PPO, DPO, RFT, online RFT; iterative RL with RM updates"),
    "eval": ("dsmath_jax.commands.eval:main",
             "evaluate a run or a Hugging Face model on the benchmarks (few-shot, zero-shot, PoT, tool-integrated)"),
    "grade": ("dsmath_jax.commands.grade:main", "re-grade saved completions (rows with benchmark, completion, gold)"),
    "info": ("dsmath_jax.commands.info:main",
             "describe a model (preset or Hugging Face dir): parameters, FLOPs, memory, sharding on a mesh"),
    "tokenizer": ("dsmath_jax.commands.tokenizer:main",
                  "train a sentencepiece tokenizer from text/JSONL files, or inspect one"),
    "convert": ("dsmath_jax.commands.convert:main",
                "convert Hugging Face checkpoints to run directories and back, with a logit check"),
    "quickstart": ("dsmath_jax.commands.quickstart:main",
                   "the whole pipeline at tiny scale on a CPU: mine, pretrain, SFT, GRPO, then a report"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: dsmath <command> [flags]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `dsmath <command> --help` for the flags of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib
        hint = difflib.get_close_matches(name, COMMANDS, n=1)
        print(f"dsmath: unknown command {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""),
              file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 2
    module, function = COMMANDS[name][0].split(":")
    result = getattr(importlib.import_module(module), function)(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
