r"""Compile-only plans of every full-scale config of the paper map, on the TPU slice its docstring names.

  python experiments/benchmarks/plan_all.py                       # every config (about an hour on 2 cores)
  python experiments/benchmarks/plan_all.py --only rl/grpo_outcome.py rl/paradigm.py:ppo  # a file, a variant
  python experiments/benchmarks/plan_all.py --readme             # only rewrite the README column from the JSON

Each config runs `dsmath <command> --config=configs/<file>[:arg] --compile_only --topology=<slice>` in a
process of its own (libtpu's compile-only devices; nothing is allocated or run) and its plan.json is kept
under `--plans` (default experiments/results/plans/); a config whose plan.json exists is not planned again
unless `--force`, so the script resumes. Then it writes

  experiments/results/plans.json   one summary row per config (fits, peak GiB per chip, headroom, predicted
                                   step time and MFU, FLOPs per step), and
  experiments/results/plans.md     the same as a markdown table,

and rewrites the "planned per chip, step" column of the README's paper map from the JSON (a test checks
that the README and the JSON agree). The slice comes from the config's docstring ("TPU v5p-128"); a
config whose docstring names none is planned on `--default_topology`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import time

from dsmath_jax.config.loader import command_of, config_module

REPO = pathlib.Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "results"
README_COLUMN = "planned per chip, step (compile-only)"

# The full-scale variants of the paper map (config file under configs/, argument). Variants that differ only
# in their data (table1's corpora, the arXiv corpora, code-then-math's stages, grpo_outcome's gsm8k/math) have
# the shapes and flags of the one listed; tests/test_full_scale_flags.py checks that.
CONFIGS = (
    ("pretrain/table1_corpora.py", "deepseekmath_corpus"),
    ("pretrain/code_then_math.py", "one_stage"),
    ("pretrain/arxiv_only.py", "arxiv_redpajama"),
    ("pretrain/deepseekmath_base_7b.py", None),
    ("sft/deepseekmath_instruct.py", None),
    ("rm/orm.py", None),
    ("rm/prm_math_shepherd.py", None),
    ("rl/grpo_outcome.py", None),
    ("rl/grpo_process.py", None),
    ("rl/iterative_grpo.py", None),
    *[("rl/paradigm.py", arm) for arm in ("sft", "rft", "online_rft", "dpo", "ppo", "grpo_outcome", "grpo_process")],
    ("eval/base_few_shot.py", None),
    ("eval/base_few_shot.py", "pot"),
    ("eval/instruct_zero_shot.py", None),
    ("eval/instruct_zero_shot.py", "tool"),
    ("eval/maj_pass_sweep.py", None),
)


def topology_of(path: str, default: str) -> str:
    """The TPU slice a config's docstring names ("TPU v5p-128", "a TPU v5p-8"), else `default`."""
    module = config_module(path, REPO / "configs")
    m = re.search(r"TPU (v\d+[a-z]*-\d+)", module.__doc__ or "")
    return m.group(1) if m else default


def key(path: str, arg: str | None) -> str:
    return path.removesuffix(".py").replace("/", "__") + (f"__{arg}" if arg else "")


def plan_one(path: str, arg: str | None, topology: str, out: pathlib.Path, probes: bool) -> dict:
    command = command_of(path)
    spec = f"configs/{path}" + (f":{arg}" if arg else "")
    argv = [sys.executable, "-m", "dsmath_jax.cli", command, f"--config={spec}", "--compile_only",
            f"--topology={topology}", f"--plan_out={out}"]
    if not probes:
        argv.append("--noprobes")
    env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env)
    seconds = time.perf_counter() - t0
    print(f"{spec} on {topology}: exit {proc.returncode} in {seconds:.0f} s", file=sys.stderr, flush=True)
    if proc.returncode not in (0, 3):  # 3: planned, does not fit
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return {"error": tail, "exit": proc.returncode}
    return json.loads(out.read_text())


def summary_row(path: str, arg: str | None, topology: str, plan: dict) -> dict:
    row = {"config": f"configs/{path}" + (f":{arg}" if arg else ""), "topology": topology}
    if "error" in plan:
        return dict(row, error=plan["error"])
    row.update(chips=plan["chips"], fits=plan["fits"], peak_gib=round(plan["peak_gib_per_chip"], 2),
               peak_at=plan["peak_at"], hbm_gib=round(plan["hbm_gib_per_chip"], 2),
               headroom=round(plan["headroom"], 3), mesh=plan["mesh"],
               step_seconds=plan["predicted_step_seconds"], mfu=plan["predicted_mfu"],
               xla_flops_per_step=plan["xla_flops_per_step"], model_flops_per_step=plan["model_flops_per_step"],
               step=plan["step"], compile_seconds=round(plan["compile_seconds"], 1))
    return row


def cell(row: dict) -> str:
    """The README cell of one plan: peak GiB / HBM per chip and the predicted step time."""
    if "error" in row:
        return "plan failed"
    fit = "" if row["fits"] and row["headroom"] >= 0.05 else (" **does not fit**" if not row["fits"]
                                                               else " (under 5% headroom)")
    step = row.get("step_seconds")
    mfu = row.get("mfu")
    timing = f", {_seconds(step)}/step" if step else ""
    if mfu and row["config"].startswith(("configs/pretrain", "configs/sft")):
        timing += f", MFU {100 * mfu:.0f}%"
    return f"{row['topology']}: {row['peak_gib']:.1f} of {row['hbm_gib']:.1f} GiB{fit}{timing}"


def _seconds(s: float) -> str:
    return f"{s:.2f} s" if s < 100 else f"{s / 60:.1f} min"


def markdown(rows: list[dict]) -> str:
    lines = ["| config | slice (chips) | mesh | peak GiB per chip (at) | headroom | predicted step | predicted MFU | "
             "XLA / model TFLOP per step | what a step is |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| `{r['config']}` | {r['topology']} | - | plan failed: {r['error'].splitlines()[-1][:80]} "
                         "| | | | | |")
            continue
        mesh = ", ".join(f"{k} {v}" for k, v in r["mesh"].items() if v > 1) or "1 device"
        step = _seconds(r["step_seconds"]) if r["step_seconds"] else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "-"
        flops = (f"{r['xla_flops_per_step'] / 1e12:,.0f} / {r['model_flops_per_step'] / 1e12:,.0f}"
                 if r["xla_flops_per_step"] else "-")
        fits = "" if r["fits"] else " **does not fit**"
        lines.append(f"| `{r['config']}` | {r['topology']} ({r['chips']}) | {mesh} | {r['peak_gib']:.2f} of "
                     f"{r['hbm_gib']:.2f} ({r['peak_at']}){fits} | {100 * r['headroom']:.1f}% | {step} | {mfu} | "
                     f"{flops} | {r['step']} |")
    return "\n".join(lines) + "\n" + engine_sections()


def engine_sections() -> str:
    """The "Rollout engine" sections of `experiments/tools/engine_slots.py`, one per stored result."""
    spec = importlib.util.spec_from_file_location("engine_slots", REPO / "experiments" / "tools" / "engine_slots.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return "".join("\n" + tool.markdown(json.loads(p.read_text()), str(p.relative_to(REPO)))
                   for p in sorted(RESULTS.glob("engine_slots_*.json")))


def update_readme(rows: list[dict], readme: pathlib.Path) -> bool:
    """Rewrites the README paper map's plan column from `rows` (one cell per row: the configs the row names,
    in the order listed). Returns whether the file changed."""
    text = readme.read_text()
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| paper | config |"))
    cols = [c.strip() for c in lines[header].strip("|").split("|")]
    if README_COLUMN not in cols:
        at = cols.index("hardware, time (full scale)") + 1
        cols.insert(at, README_COLUMN)
        lines[header] = "| " + " | ".join(cols) + " |"
        sep = [c.strip() for c in lines[header + 1].strip("|").split("|")]
        sep.insert(at, "---")
        lines[header + 1] = "|" + "|".join(sep) + "|"
        for i in range(header + 2, len(lines)):
            if not lines[i].startswith("|"):
                break
            cells = _cells(lines[i])
            cells.insert(at, "")
            lines[i] = "| " + " | ".join(cells) + " |"
    at = cols.index(README_COLUMN)
    for i in range(header + 2, len(lines)):
        if not lines[i].startswith("|"):
            break
        cells = _cells(lines[i])
        configs = re.findall(r"`configs/([^`\[:]+\.py)(?:[:\[][^`]*)?`", cells[cols.index("config")])
        mine = [r for r in rows if r["config"].split(":")[0].removeprefix("configs/") in configs]
        cells[at] = "; ".join(dict.fromkeys(cell(r) for r in mine)) if mine else "n/a (not a TPU run)"
        lines[i] = "| " + " | ".join(cells) + " |"
    new = "\n".join(lines) + ("\n" if text.endswith("\n") else "")
    if new != text:
        readme.write_text(new)
    return new != text


def _cells(line: str) -> list[str]:
    """The cells of a markdown table row (pipes inside backticks do not split)."""
    out, cur, code = [], "", False
    for ch in line.strip()[1:-1]:
        if ch == "`":
            code = not code
        if ch == "|" and not code:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None,
                        help="what to plan: a config file (rl/paradigm.py: every variant listed) or file:arg (one)")
    parser.add_argument("--plans", default=str(RESULTS / "plans"), help="where each config's plan.json goes")
    parser.add_argument("--force", action="store_true", help="plan again configs whose plan.json exists")
    parser.add_argument("--noprobes", action="store_true", help="memory only (no FLOPs or step time)")
    parser.add_argument("--default_topology", default="v5p-128")
    parser.add_argument("--readme", action="store_true", help="only rewrite the README column from the JSON")
    args = parser.parse_args()
    plans = pathlib.Path(args.plans)
    plans.mkdir(parents=True, exist_ok=True)
    rows = []
    for path, arg in CONFIGS:
        topology = topology_of(path, args.default_topology)
        out = plans / f"{key(path, arg)}.json"
        selected = args.only is None or path in args.only or f"{path}:{arg}" in args.only
        if not args.readme and selected and (args.force or not out.exists()):
            plan = plan_one(path, arg, topology, out, probes=not args.noprobes)
            if "error" in plan:
                out.with_suffix(".error.txt").write_text(plan["error"])
        if out.exists():
            rows.append(summary_row(path, arg, topology, json.loads(out.read_text())))
        elif out.with_suffix(".error.txt").exists():
            rows.append(summary_row(path, arg, topology, {"error": out.with_suffix(".error.txt").read_text()}))
    (RESULTS / "plans.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / "plans.md").write_text(markdown(rows))
    changed = update_readme(rows, REPO / "README.md")
    print(markdown(rows))
    print(f"wrote {RESULTS / 'plans.json'}, {RESULTS / 'plans.md'}; README {'updated' if changed else 'unchanged'}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
