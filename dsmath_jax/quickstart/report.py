"""The quickstart's results and report from what the stages left in the run directory: results.json (each
stage's numbers, read from its own summary.json / stats.json / metrics.jsonl), run.json (where and how the run
went: its directory, the seconds and invocations per stage, throughput), plots/*.png (the notebooks' figures)
and report.md.

results.json holds only what the run computed, so the same command on another machine, with another thread
count or hash seed, writes the same file byte for byte (tests/test_quickstart.py checks two runs); what
depends on the machine or the run's history is in run.json."""

from __future__ import annotations

import logging
import os
import re
import shlex
from collections.abc import Mapping
from typing import Any

from dsmath_jax.data.tokenizers import load_tokenizer
from dsmath_jax.quickstart.config import STAGE_CONFIGS, STAGES, Options
from dsmath_jax.quickstart.state import COMPLETED, read_json, read_state, stage_status
from dsmath_jax.train.rundir import write_atomic, write_json

# `analysis` (JAX; its figures need matplotlib) is imported inside the functions that use it, so
# `dsmath quickstart --help` does not import it.

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
RUN_FILE = "run.json"
# Keys of `collect_results` that describe the run rather than its results (-> run.json): top level, per stage.
RUN_KEYS = ("workdir", "total_seconds")
STAGE_RUN_KEYS = ("seconds", "invocations", "tokens_per_s")
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"


# ------------------------------------------------------------------------------------------- results


def _mine_results(path: str) -> dict:
    from dsmath_jax import analysis as A  # heavy: see the note on imports
    run = A.load_mining_run(path)
    table = A.mining_iteration_table(run)
    counts = A.dedup_counts(run)
    keys = ("iteration", "scored_pages", "collected_pages", "decontaminated_pages", "corpus_pages", "corpus_tokens",
            "new_pages", "new_tokens", "new_fraction", "math_domains")
    out = {"stage0": {k: counts.get(k, 0) for k in ("pages_read", "url_duplicates", "near_duplicates", "pages_kept")},
           "iterations": [{k: r[k] for k in keys} for r in table]}
    if run.get("final"):
        tfds_dir = run["final"].get("tfds_dir")
        out["corpus"] = {"iteration": run["final"]["iteration"], "pages": run["final"]["pages"],
                         "tokens": run["final"]["tokens"],  # the TFDS directory, relative to the quickstart's
                         "tfds_dir": os.path.relpath(tfds_dir, os.path.dirname(os.path.abspath(path)))
                         if tfds_dir else None}
    return out


def _training_results(path: str) -> dict:
    from dsmath_jax import analysis as A  # heavy: see the note on imports
    run = A.load_training_run(path)
    s = A.training_summary(run)
    summary = run.get("summary") or {}
    curve = A.training_curves(run).get("loss")
    return {"steps": summary.get("step", s["step"]), "final_loss": summary.get("loss", s["loss"]),
            "first_logged_loss": float(curve["value"][0]) if curve else None,
            "eval_loss_last": s["eval_loss_last"], "tokens_per_s": s["tokens_per_s"], "tokens_seen": s["tokens_seen"]}


def _rl_results(path: str) -> dict:
    from dsmath_jax import analysis as A  # heavy: see the note on imports
    run = A.load_rl_run(path)
    summary = run.get("summary") or {}
    curves = A.rl_curves(run)
    out: dict[str, Any] = {"steps": summary.get("step"), "method": summary.get("method"),
                           "reward": summary.get("reward")}
    if "reward_mean" in curves:
        steps, values = curves["reward_mean"]
        q = max(1, len(values) // 4)
        out["reward_curve"] = {"logged_steps": len(values), "first": float(values[0]), "last": float(values[-1]),
                               "max": float(values.max()), "mean_first_quarter": float(values[:q].mean()),
                               "mean_last_quarter": float(values[-q:].mean())}
    for key in ("accuracy", "kl", "response_length"):
        if key in curves:
            out[f"{key}_first"], out[f"{key}_last"] = float(curves[key][1][0]), float(curves[key][1][-1])
    history = A.eval_history(run)
    k = A.eval_k(history)
    out["k"] = k
    before, after = summary.get("initial_eval"), summary.get("final_eval")
    if before and after:
        names = {"eval_accuracy": "greedy", "eval_sample_accuracy": "sample"}
        if k:
            names.update({f"eval_maj@{k}": f"maj@{k}", f"eval_pass@{k}": f"pass@{k}"})
        out["before"] = {"step": before["step"], **{v: before.get(key) for key, v in names.items()}}
        out["after"] = {"step": after["step"], **{v: after.get(key) for key, v in names.items()}}
        try:  # problem by problem, from the two evaluations' per-problem verdicts
            out["greedy_paired"] = A.paired_change(A.load_eval_rows(path, before["step"]),
                                                   A.load_eval_rows(path, after["step"]))
        except A.RunDirError:
            pass  # a run from before per-problem evaluations were written
    out["eval_history"] = history
    return out


def tokenizer_coverage(workdir: str, max_docs: int = 100) -> dict:
    """How the pre-training tokenizer covers its two sources, on up to `max_docs` documents of each: characters
    per token and the share of byte-fallback tokens (pieces `<0x..>`: text the vocabulary does not cover)."""
    from dsmath_jax import analysis as A  # heavy: see the note on imports
    tok = load_tokenizer(os.path.join(workdir, "pretrain", "tokenizer.model"))
    byte_piece = re.compile(r"<0x[0-9A-F]{2}>")
    is_byte = [bool(byte_piece.fullmatch(tok.id_to_token(i))) for i in range(tok.vocab_size)]
    final = (A.load_mining_run(os.path.join(workdir, "mine")).get("final") or {}).get("corpus")
    sources = {
        "mined_corpus": A.iter_jsonl_shards(os.path.join(final, "pages-*.jsonl*")) if final else iter(()),
        "arithmetic": A.iter_jsonl_shards(os.path.join(workdir, "pretrain", "data", "arithmetic_train.jsonl")),
    }
    out: dict[str, Any] = {"vocab_size": tok.vocab_size}
    for name, records in sources.items():
        chars = tokens = byte_tokens = docs = 0
        for record in records:
            ids = tok.encode(record["text"])
            chars, tokens, docs = chars + len(record["text"]), tokens + len(ids), docs + 1
            byte_tokens += sum(is_byte[i] for i in ids)
            if docs >= max_docs:
                break
        out[name] = {"docs": docs, "chars_per_token": chars / tokens if tokens else None,
                     "byte_fallback_fraction": byte_tokens / tokens if tokens else None}
    return out


def _pretrain_results(path: str) -> dict:
    out = _training_results(path)
    workdir = os.path.dirname(os.path.abspath(path))
    config = read_json(os.path.join(path, "config.json"))
    out["sources"] = [{k: s.get(k) for k in ("kind", "name", "weight")} for s in config["data"]["sources"]]
    out["tokenizer"] = tokenizer_coverage(workdir)
    return out


STAGE_RESULTS = {"mine": _mine_results, "pretrain": _pretrain_results, "sft": _training_results,
                 "grpo": _rl_results}


def collect_results(workdir: str, state: Mapping[str, Any] | None = None) -> dict:
    """results.json's content from the stages' own files and the quickstart state."""
    state = state or read_state(workdir)
    results: dict[str, Any] = {"workdir": os.path.abspath(workdir), "options": state.get("options", {}),
                               "stages": {}}
    for stage in STAGES:
        path = os.path.join(workdir, stage)
        record = dict(state.get("stages", {}).get(stage, {}))
        status = stage_status(workdir, stage)
        if record.get("status") == "failed" and status != COMPLETED:  # raised an error in its last invocation
            status = "failed"
        entry = {"status": status, "dir": stage,
                 "seconds": round(float(record.get("seconds", 0.0)), 1),
                 "invocations": int(record.get("invocations", 0)),
                 "config": STAGE_CONFIGS[stage]}
        if entry["status"] not in ("pending", "started", "failed"):
            try:
                entry.update(STAGE_RESULTS[stage](path))
            except (OSError, KeyError, ValueError) as e:  # a stage's files that cannot be read yet
                entry["error"] = f"{type(e).__name__}: {e}"
        results["stages"][stage] = entry
    results["stopped_at"] = state.get("stopped_at")
    results["total_seconds"] = round(sum(s["seconds"] for s in results["stages"].values()), 1)
    results["completed"] = all(s["status"] == COMPLETED for s in results["stages"].values())
    return results


def make_plots(workdir: str, results: Mapping[str, Any]) -> list[str]:
    """The figures of the finished stages as PNG files in <workdir>/plots (the notebooks' names)."""
    from dsmath_jax import analysis as A  # heavy: see the note on imports
    plots = os.path.join(workdir, PLOTS_DIR)
    stages = results["stages"]
    written = []

    def save(fig, name):
        written.append(os.path.relpath(A.save_figure(fig, plots, name), workdir))

    if stages["mine"]["status"] == COMPLETED:
        run = A.load_mining_run(os.path.join(workdir, "mine"))
        save(A.mining_iterations_figure(A.mining_iteration_table(run)), "mining_iterations")
        save(A.domains_figure(run), "mining_domains")
        save(A.dedup_figure(run), "mining_dedup_decontamination")
    runs = [A.load_training_run(os.path.join(workdir, s), name=s) for s in ("pretrain", "sft")
            if stages[s]["status"] not in ("pending", "started")
            and os.path.isfile(os.path.join(workdir, s, "metrics.jsonl"))]
    if runs:
        save(A.training_figure(runs, x="step"), "training_curves_step")
    if stages["grpo"]["status"] not in ("pending", "started") and \
            os.path.isfile(os.path.join(workdir, "grpo", "metrics.jsonl")):
        run = A.load_rl_run(os.path.join(workdir, "grpo"))
        history = A.eval_history(run)
        save(A.rl_training_figure(run), "rl_training")
        save(A.eval_accuracy_figure(history, title="held-out accuracy during GRPO"), "rl_eval_accuracy")
        save(A.maj_pass_figure({"grpo": A.maj_pass_before_after(history)}), "rl_maj_pass")
    return written


# ------------------------------------------------------------------------------------------- the report


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def command_line(results: Mapping[str, Any]) -> str:
    """The `dsmath quickstart` command that runs (or resumes) this run directory with its options."""
    o = results.get("options") or {}
    default = Options()
    parts = ["dsmath quickstart", f"--workdir={results['workdir']}"]
    if o.get("benchmarks_dir"):
        parts.append(f"--benchmarks_dir={o['benchmarks_dir']}")
    if o.get("stages") and list(o["stages"]) != list(STAGES):
        parts.append(f"--stages={','.join(o['stages'])}")
    for key in ("steps_scale", "eval_samples", "eval_problems", "mining_iterations", "crawl_scale", "configs_dir"):
        if key in o and o[key] != getattr(default, key):
            parts.append(f"--{key}={o[key]}")
    for stage, items in (o.get("overrides") or {}).items():
        parts += [shlex.quote(f"--set={stage}:{k}={v}") for k, v in items.items()]  # parsed by the field's type
    if o.get("plots") is False:
        parts.append("--noplots")
    return " ".join(parts)


def render_report(results: Mapping[str, Any]) -> str:
    """report.md: what ran, the numbers, the before/after table, the figures, how to explore further."""
    st = results["stages"]
    wd = results["workdir"]
    done = ("All stages completed" if results["completed"] else
            "Not every stage has completed (run the same command again to continue)")
    lines = ["# dsmath quickstart", "",
             f"Run directory `{wd}`: the DeepSeekMath pipeline at tiny scale, from mining a corpus to GRPO. "
             f"{done}; {results['total_seconds']:.0f} s of stage time in all.", "",
             f"Command: `{command_line(results)}`", "",
             "| stage | config | status | time (s) | key numbers |", "|---|---|---|---|---|"]

    def key_numbers(name: str, s: Mapping[str, Any]) -> str:
        if s["status"] in ("pending", "started", "failed") or "error" in s:
            return s.get("error", "")
        if name == "mine" and s.get("corpus"):
            return (f"{s['corpus']['pages']} pages, {s['corpus']['tokens']} tokens after "
                    f"{len(s.get('iterations', []))} iterations")
        if name in ("pretrain", "sft"):
            return f"{s.get('steps')} steps, final loss {_fmt(s.get('final_loss'))}"
        if name == "grpo":
            rc = s.get("reward_curve") or {}
            return (f"{s.get('steps')} steps, reward {_fmt(rc.get('first'))} -> {_fmt(rc.get('last'))}; "
                    f"greedy accuracy {_fmt((s.get('before') or {}).get('greedy'))} -> "
                    f"{_fmt((s.get('after') or {}).get('greedy'))}")
        return ""

    for name in STAGES:
        s = st[name]
        lines.append(f"| `{name}/` | `configs/{s['config']}` | {s['status']} | {s['seconds']:.0f} | "
                     f"{key_numbers(name, s)} |")
    plots = set(results.get("plots", []))

    def figure(name: str, caption: str) -> list[str]:
        rel = f"{PLOTS_DIR}/{name}.png"
        return [f"![{caption}]({rel})", ""] if rel in plots else []

    m = st["mine"]
    if m.get("iterations"):
        crawl = ("GSM8K / MATH train problems and prose, decontaminated against GSM8K / MATH test"
                 if (results.get("options") or {}).get("benchmarks_dir") else
                 "math pages made by the arithmetic task's generator, and prose, decontaminated against the "
                 "held-out problems GRPO is evaluated on")
        lines += ["", "## Mining (paper §2.1)", "", f"The synthetic crawl: {crawl}.",
                  f"Stage 0 read {m['stage0']['pages_read']} pages and kept {m['stage0']['pages_kept']} "
                  f"({m['stage0']['url_duplicates']} URL duplicates, {m['stage0']['near_duplicates']} near-duplicates "
                  "removed). Per iteration:", "",
                  "| iteration | scored pages | collected | decontaminated | corpus pages | corpus tokens "
                  "| new pages | new tokens | math domains |", "|---|---|---|---|---|---|---|---|---|"]
        for r in m["iterations"]:
            lines.append("| " + " | ".join(str(r[k]) for k in (
                "iteration", "scored_pages", "collected_pages", "decontaminated_pages", "corpus_pages",
                "corpus_tokens", "new_pages", "new_tokens", "math_domains")) + " |")
        lines += [""] + figure("mining_iterations", "pages and tokens per mining iteration") \
            + figure("mining_domains", "math-related domains") \
            + figure("mining_dedup_decontamination", "dedup and decontamination")
    if any(st[s].get("final_loss") is not None for s in ("pretrain", "sft")):
        lines += ["## Pre-training and SFT", "", "| run | steps | first logged loss | final loss | tokens/s |",
                  "|---|---|---|---|---|"]
        for s in ("pretrain", "sft"):
            if st[s].get("steps") is not None:
                lines.append(f"| `{s}/` | {st[s]['steps']} | {_fmt(st[s].get('first_logged_loss'))} | "
                             f"{_fmt(st[s].get('final_loss'))} | {_fmt(st[s].get('tokens_per_s'), 0)} |")
        tok = st["pretrain"].get("tokenizer")
        if tok:
            cover = "; ".join(f"{name.replace('_', ' ')}: {_fmt(tok[name]['chars_per_token'], 2)} characters per "
                              f"token, {100 * (tok[name]['byte_fallback_fraction'] or 0):.2f}% byte-fallback tokens"
                              for name in ("mined_corpus", "arithmetic") if tok.get(name, {}).get("docs"))
            lines += ["", f"Pre-training mixes the mined corpus and the arithmetic task's text half and half; its "
                          f"{tok['vocab_size']}-piece sentencepiece tokenizer was trained on both ({cover}), and SFT "
                          "and GRPO use it."]
        lines += [""] + figure("training_curves_step", "training curves")
    g = st["grpo"]
    if g.get("before") and g.get("after"):
        k = g.get("k")
        rows = [("greedy accuracy", "greedy")] + ([(f"maj@{k}", f"maj@{k}"), (f"pass@{k}", f"pass@{k}"),
                                                  ("sampled accuracy (T = 0.7)", "sample")] if k else [])
        lines += ["## GRPO: held-out accuracy before and after RL", "",
                  f"Held-out problems of the arithmetic task, greedy decoding and {k or 0} samples per problem "
                  f"(step {g['before']['step']} = the SFT policy, step {g['after']['step']} = after GRPO).", "",
                  "| metric | before | after | change |", "|---|---|---|---|"]
        for label, key in rows:
            b, a = g["before"].get(key), g["after"].get(key)
            change = f"{a - b:+.3f}" if a is not None and b is not None else "-"
            lines.append(f"| {label} | {_fmt(b)} | {_fmt(a)} | {change} |")
        pc = g.get("greedy_paired")
        if pc:
            lines += ["", f"Problem by problem (greedy): {pc['gained']} of the {pc['problems']} held-out problems are "
                          f"right after GRPO and were wrong before, {pc['lost']} the reverse; the change "
                          f"{pc['difference']:+.3f} has an exact {pc['level']:.0%} interval of [{pc['low']:+.3f}, "
                          f"{pc['high']:+.3f}] given the problems that changed, and an exact McNemar p-value of "
                          f"{pc['p_value']:.3g}. That is the test set's sampling noise only: another seed of SFT "
                          "and GRPO moves the change too (the README gives it over seeds)."]
        lengths = {e["step"]: e["eval_length"] for e in g.get("eval_history") or [] if "eval_length" in e}
        if g["before"]["step"] in lengths and g["after"]["step"] in lengths:
            lines += ["", f"The greedy responses are {lengths[g['before']['step']]:.1f} tokens long on average before "
                          f"and {lengths[g['after']['step']]:.1f} after (each one is in "
                          "`grpo/evals/step_<step>.jsonl`)."]
        rc = g.get("reward_curve") or {}
        if rc:
            lines += ["", f"Training reward (the mean over each step's groups of {g.get('reward')} rewards): "
                          f"{_fmt(rc.get('first'))} at the first logged step, {_fmt(rc.get('last'))} at the last; "
                          f"{_fmt(rc.get('mean_first_quarter'))} averaged over the first quarter of the logged steps, "
                          f"{_fmt(rc.get('mean_last_quarter'))} over the last quarter."]
        lines += ["", "In the paper (Figure 7) RL raises maj@k but not pass@k: it makes the model's output "
                      "distribution more robust rather than adding capabilities. A tiny model over a few dozen steps "
                      "is noisy; `experiments/rl_paradigm_tiny.py` repeats this over seeds.", ""]
        lines += figure("rl_training", "GRPO training curves") + figure("rl_eval_accuracy", "held-out accuracy") \
            + figure("rl_maj_pass", "maj@k and pass@k before and after RL")
    lines += ["## Explore further", "",
              "The notebooks read this run directory's layout (`mine/`, `pretrain/`, `sft/`, `grpo/`):", "",
              "```bash", 'pip install -e ".[notebooks]"',
              f"DSMATH_RUN_DIR={wd} jupyter lab notebooks/   # corpus_mining, training_curves, rl_analysis",
              "```", "", "Each stage is an ordinary run directory; continue or vary one with the stage's command:", "",
              "```bash",
              f"dsmath mine --config=configs/mining/deepseekmath_corpus.py:tiny --workdir={wd}/mine_more "
              + ("--config.synthetic.benchmarks_dir=DIR --config.decontamination.benchmarks_dir=DIR "
                 if (results.get("options") or {}).get("benchmarks_dir") else "--config.synthetic.source=arithmetic ")
              + "--config.iterations.max=4",
              f"dsmath sft --config=configs/{STAGE_CONFIGS['sft']} --workdir={wd}/sft_longer "
              f"--config.init.checkpoint={wd}/pretrain/checkpoints "
              f"--config.tokenizer.path={wd}/pretrain/tokenizer.model --config.train.steps=600",
              f"dsmath rl --config=configs/{STAGE_CONFIGS['grpo']} --workdir={wd}/grpo_longer "
              f"--config.init.run_dir={wd}/sft --config.eval.samples=8 --config.train.steps_per_iteration=100",
              f"python experiments/rl_paradigm_tiny.py --out {wd}/paradigm   # Figure 5 (rl_analysis reads it)",
              "```", "", f"Numbers: `{RESULTS_FILE}`; figures: `{PLOTS_DIR}/`; per-stage details: each stage's "
              "`summary.json` (mining: `stats.json`) and `metrics.jsonl`; the run's directory, times and throughput: "
              f"`{RUN_FILE}`.", ""]
    return "\n".join(lines)


def split_results(results: Mapping[str, Any]) -> tuple[dict, dict]:
    """(results.json, run.json) of `collect_results`'s dict: the computed numbers, and the run's directory, time
    and throughput (`RUN_KEYS`, `STAGE_RUN_KEYS`), which differ between machines and invocations."""
    computed = {k: v for k, v in results.items() if k not in RUN_KEYS}
    computed["stages"] = {name: {k: v for k, v in s.items() if k not in STAGE_RUN_KEYS}
                          for name, s in results["stages"].items()}
    run = {k: results[k] for k in RUN_KEYS if k in results}
    run["stages"] = {name: {k: s[k] for k in STAGE_RUN_KEYS if k in s} for name, s in results["stages"].items()}
    return computed, run


def write_outputs(workdir: str, *, plots: bool = True) -> dict:
    """Writes results.json, run.json, the plots and report.md from what the stages left in `workdir`; returns
    `collect_results`'s dict (both files' content together)."""
    results = collect_results(workdir)
    if plots:
        try:
            results["plots"] = make_plots(workdir, results)
        except ImportError as e:  # matplotlib is in the notebooks / test extras
            log.warning("no plots: %s", e)
            results["plots"] = []
    else:
        results["plots"] = []
    computed, run = split_results(results)
    write_json(os.path.join(workdir, RESULTS_FILE), computed)
    write_json(os.path.join(workdir, RUN_FILE), run)
    write_atomic(os.path.join(workdir, REPORT_FILE), render_report(results))
    return results
