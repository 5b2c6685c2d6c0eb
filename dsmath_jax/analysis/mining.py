"""A `dsmath mine` work directory: per-iteration stats, domains, URL paths, scores, dedup, decontamination."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dsmath_jax.analysis.figures import new_figure, note
from dsmath_jax.analysis.files import (
    RunDirError,
    iter_jsonl_shards,
    read_csv,
    read_json,
    read_json_if_exists,
    require_file,
    resolve_dir,
)

MINING_WHAT = "a `dsmath mine` work directory"
# The values that mark a math path in the annotation CSV (dsmath_jax.mining.domains.TRUE_VALUES; kept here
# so reading a run needs no Apache Beam; a test checks the two agree).
ANNOTATION_TRUE = frozenset({"1", "y", "yes", "true", "math", "x"})


def load_mining_run(workdir: str) -> dict[str, Any]:
    """A mining work directory: {path, status, prepare (stage 0 stats), iterations (reports, by k), final}.
    Works on a finished run (stats.json), one waiting for an annotation and one still running."""
    workdir = resolve_dir(workdir)
    pages_stats = require_file(workdir, os.path.join("pages", "stats.json"), MINING_WHAT + " (stage 0 done)")
    stats = read_json_if_exists(os.path.join(workdir, "stats.json")) or {}
    reports = []
    k = 1
    while os.path.exists(os.path.join(workdir, f"iter_{k}", "stats.json")):
        reports.append(read_json(os.path.join(workdir, f"iter_{k}", "stats.json")))
        k += 1
    return {"path": workdir, "status": stats.get("status", "running"), "prepare": read_json(pages_stats),
            "iterations": reports, "final": stats.get("final"), "annotate": stats.get("annotate")}


def mining_iteration_table(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per iteration: classifier data, scored / collected / corpus / new pages and tokens,
    decontaminated pages, math-related domains."""
    rows = []
    for r in run["iterations"]:
        rows.append({
            "iteration": r["iteration"], "positives": r["classifier"]["positives"],
            "negatives": r["classifier"]["negatives"], "seed_additions": r["classifier"]["seed_additions"],
            "scored_pages": r["scored"]["pages"], "scored_tokens": r["scored"]["tokens"],
            "collected_pages": r["collected"]["pages"], "collected_tokens": r["collected"]["tokens"],
            "decontaminated_pages": r["decontaminated"]["pages"],
            "corpus_pages": r["corpus"]["pages"], "corpus_tokens": r["corpus"]["tokens"],
            "new_pages": r["new"]["pages"], "new_tokens": r["new"]["tokens"], "new_fraction": r["new"]["fraction"],
            "kept_pages": r["previous"]["pages_kept"], "dropped_pages": r["previous"]["pages_dropped"],
            "math_domains": r["math_domains"],
        })
    return rows


def _iteration_dir(run: Mapping[str, Any], iteration: int) -> str:
    path = os.path.join(run["path"], f"iter_{iteration}")
    if not os.path.isdir(path):
        raise RunDirError(f"{run['path']}: iteration {iteration} has not run (no iter_{iteration}/)")
    return path


def _int(v: Any) -> int:
    return int(float(v)) if v not in (None, "") else 0


def domain_rows(run: Mapping[str, Any], iteration: int) -> list[dict[str, Any]]:
    """Domains of an iteration, most collected pages first: the report's top domains joined with the
    math-related ones of domains.csv; {domain, pages, collected, collected_fraction, tokens_collected,
    math_related}."""
    report = run["iterations"][iteration - 1]
    rows = {d["domain"]: {**d, "math_related": False} for d in report.get("top_domains", [])}
    csv_path = os.path.join(_iteration_dir(run, iteration), "domains.csv")
    for d in (read_csv(csv_path) if os.path.exists(csv_path) else []):
        pages, collected = _int(d["pages"]), _int(d["collected"])
        rows[d["domain"]] = {"domain": d["domain"], "pages": pages, "collected": collected,
                             "collected_fraction": collected / pages if pages else 0.0,
                             "tokens_collected": _int(d["tokens_collected"]), "math_related": True}
    return sorted(rows.values(), key=lambda d: (-d["collected"], -d["pages"], d["domain"]))


def path_rows(run: Mapping[str, Any], iteration: int) -> list[dict[str, Any]]:
    """The URL paths of the math-related domains of an iteration, from paths_annotated.csv when it was
    annotated (is_math True / False) else paths.csv (is_math None); numbers as numbers."""
    directory = _iteration_dir(run, iteration)
    annotated = os.path.join(directory, "paths_annotated.csv")
    path = annotated if os.path.exists(annotated) else os.path.join(directory, "paths.csv")
    if not os.path.exists(path):
        return []
    rows = []
    for r in read_csv(path):
        mark = (r.get("is_math") or "").strip().lower()
        rows.append({"domain": r["domain"], "path": r["path"], "pages": _int(r["pages"]),
                     "collected": _int(r["collected"]), "collected_fraction": float(r["collected_fraction"] or 0),
                     "is_math": (mark in ANNOTATION_TRUE) if path == annotated else None,
                     "sample_titles": r.get("sample_titles", "")})
    return rows


def corpus_scores(run: Mapping[str, Any], iteration: int) -> np.ndarray:
    """[pages] float64 classifier scores of the iteration's corpus (collected and decontaminated pages)."""
    pattern = os.path.join(_iteration_dir(run, iteration), "corpus", "pages-*.jsonl*")
    return np.asarray([float(p["score"]) for p in iter_jsonl_shards(pattern)], np.float64)


def score_threshold(run: Mapping[str, Any], iteration: int) -> float | None:
    """The recall cut's score (pages above it were collected), None when the budget kept every page."""
    rank = (run["iterations"][iteration - 1].get("threshold") or {}).get("rank")
    return float(rank[0]) if rank else None


def classifier_scores(run: Mapping[str, Any], iteration: int, max_pages: int = 20_000) -> np.ndarray | None:
    """[pages] P(math) of the first `max_pages` stage-0 pages under the iteration's fastText classifier
    (iter_k/classifier.bin): the whole distribution that recall cut. None when the mining extra
    (fastText, Beam) is not installed or the classifier file is missing."""
    model_path = os.path.join(_iteration_dir(run, iteration), "classifier.bin")
    if not os.path.exists(model_path):
        return None
    try:
        from dsmath_jax.mining.classifier import load_classifier, math_scores  # optional: fastText (mining extra)
    except ImportError:
        return None
    model = load_classifier(model_path)
    texts: list[str] = []
    scores: list[np.ndarray] = []
    for page in iter_jsonl_shards(os.path.join(run["path"], "pages", "pages-*.jsonl*")):
        if len(texts) + sum(len(s) for s in scores) >= max_pages:
            break
        texts.append(page["text"])
        if len(texts) == 512:
            scores.append(math_scores(model, texts))
            texts = []
    if texts:
        scores.append(math_scores(model, texts))
    return np.concatenate(scores).astype(np.float64) if scores else np.zeros(0)


def dedup_counts(run: Mapping[str, Any]) -> dict[str, int]:
    """Stage 0: pages read, every reason a page was skipped or removed (URL and near duplicates included),
    and the pages kept."""
    counters = dict(run["prepare"].get("counters", {}))
    out = {"pages_read": int(counters.pop("pages_read", 0))}
    for key in ("url_duplicates", "near_duplicates"):
        out[key] = int(run["prepare"].get(key, counters.get(key, 0)))
        counters.pop(key, None)
    for key in ("prepared_pages", "prepared_tokens", "files_read"):
        counters.pop(key, None)
    out.update({k: int(v) for k, v in sorted(counters.items()) if v})
    out["pages_kept"] = int(run["prepare"]["pages"])
    return out


def decontamination_counts(run: Mapping[str, Any]) -> dict[int, dict[str, int]]:
    """{iteration: {benchmark: pages removed}} (plus "segments" in segment mode)."""
    out = {}
    for r in run["iterations"]:
        d = r["decontaminated"]
        row = {b: int(n) for b, n in sorted(d.get("by_benchmark", {}).items())}
        if d.get("segments"):
            row["segments"] = int(d["segments"])
        out[int(r["iteration"])] = row
    return out


def mining_iterations_figure(table: Sequence[Mapping[str, Any]]):
    """Pages and tokens per iteration: scored, collected by recall, corpus (after decontamination), new."""
    fig, axes = new_figure(1, 2, width=5.5)
    if not table:
        for ax in axes:
            note(ax, "no iteration has finished yet")
        return fig
    its = np.asarray([r["iteration"] for r in table])
    kinds = [("scored", "scored"), ("collected", "collected (recall)"), ("corpus", "corpus"), ("new", "new")]
    width = 0.8 / len(kinds)
    for ax, unit in zip(axes, ("pages", "tokens")):
        for j, (kind, label) in enumerate(kinds):
            values = [r[f"{kind}_{unit}"] for r in table]
            ax.bar(its + (j - 1.5) * width, values, width, label=label)
        ax.set_xticks(its, [f"iteration {i}" for i in its])
        ax.set_ylabel(unit)
        ax.set_title(f"{unit} per iteration")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    return fig


def domains_figure(run: Mapping[str, Any], threshold: float = 0.10, top: int = 12):
    """Per iteration, the share of each domain's pages that was collected (top domains by collected pages),
    math-related domains (above `threshold`) highlighted: the domain step of the paper."""
    n = len(run["iterations"])
    fig, axes = new_figure(1, max(n, 1), width=4.6, height=0.35 * top + 1.5)
    if not n:
        note(axes[0], "no iteration has finished yet")
        return fig
    for ax, k in zip(axes, range(1, n + 1)):
        rows = domain_rows(run, k)[:top][::-1]
        fractions = [r["collected_fraction"] for r in rows]
        colors = ["#2ca02c" if r["math_related"] else "0.65" for r in rows]
        ax.barh([r["domain"] for r in rows], fractions, color=colors)
        for y, r in enumerate(rows):
            ax.text(r["collected_fraction"] + 0.01, y, f'{r["collected"]}/{r["pages"]}', va="center", fontsize=7)
        ax.axvline(threshold, color="k", ls="--", lw=1)
        ax.set_xlim(0, 1.15)
        ax.set_xlabel("share of the domain's pages collected")
        ax.set_title(f"iteration {k}: math-related (green) > {threshold:.0%}")
        ax.tick_params(axis="y", labelsize=7)
    return fig


def paths_figure(run: Mapping[str, Any]):
    """Per iteration, the URL paths of the math-related domains with their collected share, coloured by the
    annotation (math, not math, not annotated)."""
    n = len(run["iterations"])
    per = [path_rows(run, k) for k in range(1, n + 1)]
    tallest = max((len(p) for p in per), default=1)
    fig, axes = new_figure(1, max(n, 1), width=4.8, height=0.35 * max(tallest, 3) + 1.5)
    colors = {True: "#2ca02c", False: "#d62728", None: "0.65"}
    for ax, k, rows in zip(axes, range(1, n + 1), per):
        ax.set_title(f"iteration {k}: URL paths")
        if not rows:
            note(ax, "no math-related domain")
            continue
        rows = rows[::-1]
        ax.barh([f'{r["domain"]}{r["path"]}' for r in rows], [r["collected_fraction"] for r in rows],
                color=[colors[r["is_math"]] for r in rows])
        for y, r in enumerate(rows):
            ax.text(r["collected_fraction"] + 0.01, y, f'{r["collected"]}/{r["pages"]}', va="center", fontsize=7)
        ax.set_xlim(0, 1.2)
        ax.set_xlabel("share of the path's pages collected")
        ax.tick_params(axis="y", labelsize=7)
    if not n:
        note(axes[0], "no iteration has finished yet")
    from matplotlib.patches import Patch  # optional: matplotlib (notebooks extra), as in figures.new_figure
    fig.legend(handles=[Patch(color=colors[True], label="annotated math"),
                        Patch(color=colors[False], label="annotated not math"),
                        Patch(color=colors[None], label="not annotated")], loc="outside lower center", ncol=3,
               fontsize=8)
    return fig


def score_histograms_figure(run: Mapping[str, Any], all_scores: Mapping[int, np.ndarray | None] | None = None,
                            bins: int = 40):
    """Per iteration, the fastText P(math) histogram: of every scored page (when `all_scores[k]` is given,
    from `classifier_scores`) and of the corpus pages, with the recall cut."""
    n = len(run["iterations"])
    fig, axes = new_figure(1, max(n, 1), width=4.4)
    if not n:
        note(axes[0], "no iteration has finished yet")
        return fig
    edges = np.linspace(0.0, 1.0, bins + 1)
    for ax, k in zip(axes, range(1, n + 1)):
        every = (all_scores or {}).get(k)
        if every is not None and len(every):
            ax.hist(np.clip(every, 0, 1), bins=edges, color="0.7", label=f"all pages ({len(every)})")
        corpus = corpus_scores(run, k)
        ax.hist(np.clip(corpus, 0, 1), bins=edges, color="C0", alpha=0.8, label=f"corpus ({len(corpus)})")
        cut = score_threshold(run, k)
        if cut is not None:
            ax.axvline(min(cut, 1.0), color="k", ls="--", lw=1, label=f"recall cut {cut:.3f}")
        ax.set_yscale("log")
        ax.set_xlabel("P(math)")
        ax.set_ylabel("pages")
        ax.set_title(f"iteration {k}")
        ax.legend(fontsize=8)
    return fig


def dedup_figure(run: Mapping[str, Any]):
    """Stage 0's skipped / removed page counts (dedup among them) and each iteration's decontaminated pages
    per benchmark."""
    fig, (ax0, ax1) = new_figure(1, 2, width=5.5)
    counts = dedup_counts(run)
    items = [(k, v) for k, v in counts.items() if k not in ("pages_read", "pages_kept")]
    ax0.barh([k for k, _ in items][::-1], [v for _, v in items][::-1],
             color=["C3" if "duplicate" in k else "C7" for k, _ in items][::-1])
    ax0.set_title(f'stage 0: {counts["pages_read"]} pages read, {counts["pages_kept"]} kept')
    ax0.set_xlabel("pages (or files)")
    ax0.tick_params(axis="y", labelsize=7)
    decon = decontamination_counts(run)
    benchmarks = sorted({b for row in decon.values() for b in row})
    ax1.set_title("decontaminated pages per iteration")
    if not benchmarks:
        note(ax1, "no page was decontaminated (or decontamination was off)")
        return fig
    its = np.asarray(sorted(decon))
    bottom = np.zeros(len(its))
    for b in benchmarks:
        values = np.asarray([decon[i].get(b, 0) for i in its], np.float64)
        ax1.bar(its, values, bottom=bottom, label=b)
        bottom += values
    ax1.set_xticks(its, [f"iteration {i}" for i in its])
    ax1.set_ylabel("pages")
    ax1.legend(fontsize=8)
    return fig
