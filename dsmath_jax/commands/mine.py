"""`dsmath mine`: the DeepSeekMath corpus pipeline (paper §2.1) on Apache Beam.

  dsmath mine --config=configs/mining/deepseekmath_corpus.py:tiny --workdir=runs/mine_tiny
  dsmath mine --config=configs/mining/deepseekmath_corpus.py --config.input.patterns="['gs://b/cc/*.warc.gz']" \\
      --config.seed.paths="['gs://b/owm/*.jsonl.gz']" --config.beam.runner=DataflowRunner ... --workdir=gs://b/run

Resumable: run the same command again to continue (e.g. after filling in an annotation CSV).
Prints the final stats as JSON; exit status 0 when done, 3 while waiting for an annotation CSV.
"""

from __future__ import annotations

import json
import logging
import sys

from absl import flags

from dsmath_jax.commands.common import run_command

EXIT_AWAITING_ANNOTATION = 3


def _main(values: flags.FlagValues) -> int:
    from dsmath_jax.mining.driver import AWAITING_ANNOTATION, MiningConfigError, run_mining

    # Beam logs one INFO line per postponed type annotation of every transform function.
    logging.getLogger("apache_beam.typehints.native_type_compatibility").setLevel(logging.WARNING)

    try:
        stats = run_mining(values.config, values.workdir)
    except MiningConfigError as e:
        print(f"dsmath mine: {e}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in stats.items() if k != "iterations"}
    summary["prepare"] = {k: v for k, v in stats["prepare"].items() if k != "counters"}
    summary["iterations"] = [{"iteration": r["iteration"], "corpus": r["corpus"], "new": r["new"],
                              "decontaminated": r["decontaminated"]["pages"], "math_domains": r["math_domains"]}
                             for r in stats["iterations"]]
    print(json.dumps(summary, indent=1))
    if stats["status"] == AWAITING_ANNOTATION:
        print(f"dsmath mine: annotate {stats['annotate']} (column is_math) and save it as {stats['annotated_csv']}, "
              "then run the same command again", file=sys.stderr)
        return EXIT_AWAITING_ANNOTATION
    return 0


def main(argv: list[str]) -> int:
    return run_command(_main, argv, "dsmath mine")
