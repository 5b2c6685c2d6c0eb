r"""`dsmath grade`: re-grade saved completions with the current answer checker.

  dsmath grade --input rows.jsonl --output verdicts.jsonl [--timeout 5] [--workers 4] [--protocol strict]

`--protocol strict` (the default) is the strict grader RL rewards use; `--protocol deepseek` is
DeepSeek-Math's harness, exactly (`dsmath_jax.evals.deepseek`): each row then also needs ``mode``
(few_shot_cot, few_shot_pot, zero_shot_cot or tool) and ``record`` (the benchmark file's JSON record, from
which the harness takes its gold; ``gold`` is not needed), and ``completion`` is what the harness's extraction
reads (a PoT program's output; a tool-integrated transcript).

With the strict protocol each input line is a JSON object with

* ``benchmark``: gsm8k, math, math500, cmath, mgsm_zh, gaokao_mathcloze, gaokao_mathqa, sat, ocw or mmlu_stem
  (it picks the answer kind, ``dsmath_jax.evals.answers.BENCHMARK_KINDS``);
* ``completion``: the model's text;
* ``gold``: the gold answer as the benchmark gives it; a full reference solution is reduced to its answer
  (a GSM8K solution ending ``#### N`` to ``N``, a MATH solution to its last ``\boxed{}``);
* ``options`` (optional): the option texts of a multiple-choice question, so an answer given as the text of
  an option counts as its letter.

Every input row is written back, in order, with ``gold_answer`` (the gold compared against), ``extracted``,
``correct`` and ``error`` (None, or why the row could not be graded: a malformed line, a missing field, an
unknown benchmark, a check that timed out or crashed). A line that is not a JSON object is written as
``{"line": N, "raw": ..., "correct": false, "error": ...}``. Blank lines are skipped. The output appears
only when complete (written to a temporary file, then renamed). Exit status: 0, or 1 when some rows had
input errors (they are still written), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from typing import Any

from dsmath_jax.evals import deepseek
from dsmath_jax.evals.answers import BENCHMARK_KINDS, benchmark_kind, reference_answer

REQUIRED = ("benchmark", "completion", "gold")
DEEPSEEK_REQUIRED = ("benchmark", "mode", "completion", "record")


def read_rows(path: str) -> list[tuple[int, dict[str, Any] | None, str]]:
    """(line number, the row or None when the line is not a JSON object, the raw text) for each non-blank line."""
    out = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError:
                row = None
            out.append((lineno, row if isinstance(row, dict) else None, text))
    return out


def check_row(row: dict[str, Any]) -> tuple[str, str, str, Any]:
    """(kind, completion, gold answer, options) of a row; ValueError naming the problem."""
    missing = [k for k in REQUIRED if row.get(k) is None]
    if missing:
        raise ValueError(f"missing field {missing[0]!r}" + (f" (and {missing[1:]})" if len(missing) > 1 else ""))
    try:
        kind = benchmark_kind(row["benchmark"])
    except KeyError:
        known = ", ".join(sorted(BENCHMARK_KINDS))
        raise ValueError(f"unknown benchmark {row['benchmark']!r} (known: {known})") from None
    if not isinstance(row["completion"], str):
        raise ValueError(f"field 'completion' must be a string, got {type(row['completion']).__name__}")
    if not isinstance(row["gold"], (str, int, float)) or isinstance(row["gold"], bool):
        raise ValueError(f"field 'gold' must be a string or a number, got {type(row['gold']).__name__}")
    options = row.get("options")
    if options is not None and not (isinstance(options, str) or
                                    (isinstance(options, list) and all(isinstance(o, str) for o in options))):
        raise ValueError("field 'options' must be a list of strings or one string")
    try:
        gold = reference_answer(str(row["gold"]), kind)
    except ValueError as e:
        raise ValueError(f"field 'gold': {e}") from e
    return kind, row["completion"], gold, options


def check_deepseek_row(row: dict[str, Any]) -> tuple[str, str, dict[str, Any], str]:
    """(benchmark, mode, the harness's item, completion) of a row for `--protocol deepseek`; ValueError naming
    the problem."""
    missing = [k for k in DEEPSEEK_REQUIRED if row.get(k) is None]
    if missing:
        raise ValueError(f"missing field {missing[0]!r}" + (f" (and {missing[1:]})" if len(missing) > 1 else "")
                         + " (the deepseek protocol needs benchmark, mode, completion and the benchmark record)")
    if not isinstance(row["completion"], str) or not isinstance(row["record"], dict):
        raise ValueError("field 'completion' must be a string and 'record' a JSON object")
    try:
        deepseek.check_protocol(row["benchmark"], row["mode"])
        item = deepseek.process(row["benchmark"], row["record"], int(row.get("index", 0) or 0))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from e
    return row["benchmark"], row["mode"], item, row["completion"]


def write_jsonl_atomic(path: str, rows: list[dict[str, Any]]) -> None:
    """Writes rows to a temporary file beside `path`, then renames it over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def summarize(rows: list[dict[str, Any]], input_errors: list[tuple[int, str]]) -> dict[str, Any]:
    per: collections.defaultdict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for row in rows:
        if "benchmark" in row and "line" not in row:
            cell = per[str(row["benchmark"])]
            cell[0] += bool(row.get("correct"))
            cell[1] += 1
    check_errors = [r["error"] for r in rows if r.get("error") and not r.get("_input_error")]
    return {
        "rows": len(rows),
        "correct": sum(bool(r.get("correct")) for r in rows),
        "benchmarks": {b: {"correct": c, "rows": t, "accuracy": c / t if t else 0.0}
                       for b, (c, t) in sorted(per.items())},
        "input_errors": len(input_errors),
        "input_error_lines": [line for line, _ in input_errors],
        "check_errors": len(check_errors),
        "timeouts": sum(e.startswith("timeout") for e in check_errors),
        "crashes": sum(e.startswith("worker crashed") for e in check_errors),
    }


def print_summary(summary: dict[str, Any], input_errors: list[tuple[int, str]], src: str, dst: str) -> None:
    print(f"graded {summary['rows']} rows from {src} -> {dst}: {summary['correct']} correct")
    if summary["benchmarks"]:
        width = max(9, *(len(b) for b in summary["benchmarks"]))
        print(f"  {'benchmark':<{width}}  {'rows':>6}  {'correct':>7}  accuracy")
        for name, s in summary["benchmarks"].items():
            print(f"  {name:<{width}}  {s['rows']:>6}  {s['correct']:>7}  {s['accuracy']:.4f}")
    print(f"input errors: {summary['input_errors']}")
    for line, message in input_errors[:20]:
        print(f"  line {line}: {message}")
    if len(input_errors) > 20:
        print(f"  ... and {len(input_errors) - 20} more (see the `error` field of the output rows)")
    print(f"check errors: {summary['check_errors']} (timeouts {summary['timeouts']}, crashes {summary['crashes']})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dsmath grade", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="JSONL rows with benchmark, completion, gold[, options]")
    parser.add_argument("--output", required=True, help="JSONL verdicts (written atomically)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per check (default 5)")
    parser.add_argument("--workers", type=int, default=None, help="checker processes (default min(4, CPUs))")
    parser.add_argument("--protocol", choices=("strict", "deepseek"), default="strict",
                        help="strict (default: the RL rewards' grader) or deepseek (DeepSeek-Math's harness)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.timeout <= 0 or (args.workers is not None and args.workers < 1):
        print("dsmath grade: --timeout must be positive and --workers at least 1", file=sys.stderr)
        return 2
    try:
        lines = read_rows(args.input)
    except OSError as e:
        print(f"dsmath grade: cannot read {args.input}: {e}", file=sys.stderr)
        return 2

    from dsmath_jax.evals.grader import Grader  # the checker stack loads only when there is work

    out: list[dict[str, Any]] = []
    input_errors: list[tuple[int, str]] = []
    items, where = [], []
    for lineno, row, raw in lines:
        if row is None:
            message = f"line {lineno}: not a JSON object"
            input_errors.append((lineno, message))
            out.append({"line": lineno, "raw": raw, "gold_answer": None, "extracted": None, "correct": False,
                        "error": message, "_input_error": True})
            continue
        try:
            if args.protocol == "deepseek":
                benchmark, mode, item, completion = check_deepseek_row(row)
                gold = deepseek.gold(benchmark, item)
                task: tuple[Any, ...] = (benchmark, mode, item, completion)
            else:
                kind, completion, gold, options = check_row(row)
                task = (completion, gold, kind, options, row["benchmark"] == "ocw")
        except ValueError as e:
            message = f"line {lineno}: {e}"
            input_errors.append((lineno, message))
            out.append({**row, "gold_answer": None, "extracted": None, "correct": False, "error": message,
                        "_input_error": True})
            continue
        where.append(len(out))
        items.append(task)
        out.append({**row, "gold_answer": gold})
    with Grader(args.workers, timeout=args.timeout) as grader:
        if args.protocol == "deepseek":
            verdicts = grader.grade_deepseek(items, progress=not args.quiet, desc="grading (deepseek)")
        else:
            verdicts = grader.grade(items, progress=not args.quiet, desc="grading")
    for i, verdict in zip(where, verdicts):
        out[i].update(extracted=verdict.extracted, correct=verdict.correct, error=verdict.error)
    summary = summarize(out, input_errors)
    for row in out:
        row.pop("_input_error", None)
    write_jsonl_atomic(args.output, out)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary, input_errors, args.input, args.output)
    return 1 if input_errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
