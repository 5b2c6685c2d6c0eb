"""Writes the notebooks of this directory (outputs cleared) from the cells below: edit here, then run

    python notebooks/make_notebooks.py

tests/test_notebooks.py checks that the stored notebooks are what this script writes, and executes them on
real tiny runs. The reading and plotting logic lives in dsmath_jax/analysis/ (unit-tested); the cells only
name inputs, call it, print tables and save figures.
"""

from __future__ import annotations

import pathlib
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent

SHOW = '''
def show(fig, name):
    """Saves `fig` as PLOTS_DIR/name.png and displays it."""
    print("saved", A.save_figure(fig, PLOTS_DIR, name))
    display(fig)
'''.strip()


def _setup(paths: list[str], load: list[str], imports: tuple[str, ...] = ()) -> str:
    """The cell after the parameters: imports (`imports` after the analysis package's), environment overrides
    of the paths, the figure helper, then the loading lines."""
    head = ["%matplotlib inline", "import os", "", "from IPython.display import display", "",
            "from dsmath_jax import analysis as A", *imports, "",
            "# Environment variables override the parameters (CI points the notebook at its own runs).",
            'RUN_DIR = A.resolve_dir(os.environ.get("DSMATH_RUN_DIR") or RUN_DIR)']
    plots = ['PLOTS_DIR = os.environ.get("DSMATH_PLOTS_DIR") or PLOTS_DIR or os.path.join(RUN_DIR, "plots")',
             "", "", SHOW, "", ""]
    return "\n".join(head + paths + plots + load)


def _notebook(cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    for i, cell in enumerate(nb.cells):  # stable ids, so regenerating changes nothing
        cell["id"] = f"cell-{i:02d}"
    return nb


def _parameters(source: str):
    return new_code_cell(source.strip(), metadata={"tags": ["parameters"]})


def corpus_mining() -> nbformat.NotebookNode:
    return _notebook([
        new_markdown_cell("""# Corpus mining (paper §2.1)

What one `dsmath mine` work directory holds, iteration by iteration: pages and tokens collected, the
math-related domains the domain step discovered (share of a domain's pages collected) and their annotated
URL paths, the fastText classifier's score distributions with the recall cut, and the pages that
deduplication and decontamination removed. Figures are saved as PNG files in `PLOTS_DIR`.

Run it on `dsmath mine --config=configs/mining/deepseekmath_corpus.py:tiny --workdir=runs/quickstart/mine`
(or the `mine/` folder of a `dsmath quickstart` run), or point it elsewhere with `DSMATH_MINING_DIR`."""),
        _parameters('''
# Parameters: the run directories this notebook reads (environment variables override them, next cell).
RUN_DIR = "runs/quickstart"  # a `dsmath quickstart` run directory ($DSMATH_RUN_DIR)
MINING_DIR = ""  # a `dsmath mine` work directory; "" = RUN_DIR/mine ($DSMATH_MINING_DIR)
PLOTS_DIR = ""  # where the PNG figures go; "" = RUN_DIR/plots ($DSMATH_PLOTS_DIR)
DOMAIN_THRESHOLD = 0.10  # config domains.threshold: math-related above this share of pages collected
SCORE_ALL_PAGES = True  # score the stage-0 pages with each iteration's classifier (needs the beam extra)
MAX_SCORED_PAGES = 20_000  # at most this many pages per iteration for the score histograms
'''),
        new_code_cell(_setup(
            ['MINING_DIR = A.resolve_dir(os.environ.get("DSMATH_MINING_DIR") or MINING_DIR '
             'or os.path.join(RUN_DIR, "mine"))'],
            ["run = A.load_mining_run(MINING_DIR)",
             'print(f"{MINING_DIR}: status {run[\'status\']}, {len(run[\'iterations\'])} iteration(s) finished")'],
        )),
        new_markdown_cell("## Stage 0: reading and deduplication\nEvery page that was skipped or removed, by reason "
                          "(URL duplicates and MinHash near-duplicates among them)."),
        new_code_cell('counts = A.dedup_counts(run)\n'
                      'print(A.format_table([{"counter": k, "value": v} for k, v in counts.items()]))\n'
                      'print(f"\\nstage 0 kept {counts[\'pages_kept\']} of {counts[\'pages_read\']} pages read, '
                      '{run[\'prepare\'][\'tokens\']} tokens")'),
        new_markdown_cell("## Pages and tokens per iteration\n`collected`: above the recall cut; `corpus`: after "
                          "decontamination; `new`: not in the previous iteration's corpus (the stop criterion is "
                          "`new_fraction`)."),
        new_code_cell('table = A.mining_iteration_table(run)\n'
                      'print(A.format_table(table, ["iteration", "positives", "negatives", "seed_additions", '
                      '"collected_pages", "collected_tokens", "corpus_pages", "corpus_tokens", "new_pages", '
                      '"new_fraction", "math_domains"]))\n'
                      'show(A.mining_iterations_figure(table), "mining_iterations")'),
        new_markdown_cell("## Discovered math domains\nShare of each domain's pages collected; domains above "
                          "`DOMAIN_THRESHOLD` are math-related and their URL paths go to annotation."),
        new_code_cell('for k in range(1, len(run["iterations"]) + 1):\n'
                      '    rows = [r for r in A.domain_rows(run, k) if r["collected"]]\n'
                      '    print(f"iteration {k}:")\n'
                      '    print(A.format_table(rows, ["domain", "pages", "collected", "collected_fraction", '
                      '"tokens_collected", "math_related"]), end="\\n\\n")\n'
                      'show(A.domains_figure(run, DOMAIN_THRESHOLD), "mining_domains")'),
        new_markdown_cell("## Annotated URL paths\nThe paths of the math-related domains, and how they were "
                          "annotated (`paths_annotated.csv`; blank: not annotated yet). Uncollected pages under "
                          "math paths join the next iteration's seed."),
        new_code_cell('for k in range(1, len(run["iterations"]) + 1):\n'
                      '    print(f"iteration {k}:")\n'
                      '    print(A.format_table(A.path_rows(run, k), ["domain", "path", "pages", "collected", '
                      '"collected_fraction", "is_math"]), end="\\n\\n")\n'
                      'show(A.paths_figure(run), "mining_paths")\n'
                      'if run["status"] == "awaiting_annotation":\n'
                      '    print(f"the run waits for an annotation: fill in {run[\'annotate\']}")'),
        new_markdown_cell("## Classifier scores\nP(math) of the fastText classifier of each iteration, over the "
                          "stage-0 pages (grey) and the corpus (blue), with the recall cut."),
        new_code_cell('all_scores = {}\n'
                      'for k in range(1, len(run["iterations"]) + 1):\n'
                      '    scores = A.classifier_scores(run, k, MAX_SCORED_PAGES) if SCORE_ALL_PAGES else None\n'
                      '    if scores is None and SCORE_ALL_PAGES:\n'
                      '        print(f"note: iteration {k}: corpus scores only (no classifier.bin, or the beam '
                      'extra is not installed)")\n'
                      '    all_scores[k] = scores\n'
                      'show(A.score_histograms_figure(run, all_scores), "mining_scores")'),
        new_markdown_cell("## Deduplication and decontamination\nStage-0 counters, and the collected pages removed "
                          "for containing benchmark text (10-grams; short benchmark texts matched whole)."),
        new_code_cell('decon = A.decontamination_counts(run)\n'
                      'print(A.format_table([{"iteration": k, **v, "total": sum(v.values())} '
                      'for k, v in decon.items()]))\n'
                      'show(A.dedup_figure(run), "mining_dedup_decontamination")'),
    ])


def training_curves() -> nbformat.NotebookNode:
    return _notebook([
        new_markdown_cell("""# Training curves

Loss and held-out loss, learning rate, throughput and MFU of one or more `dsmath pretrain` / `dsmath sft` run
directories (their `metrics.jsonl`, `config.json`, `summary.json`), against steps and against tokens
(step x batch size x sequence length). MFU is logged only on devices with a known peak (GPUs, TPUs).
Figures are saved as PNG files in `PLOTS_DIR`."""),
        _parameters('''
# Parameters: the run directories this notebook reads (environment variables override them, next cell).
RUN_DIR = "runs/quickstart"  # a `dsmath quickstart` run directory ($DSMATH_RUN_DIR)
TRAIN_DIRS = []  # training run directories; [] = RUN_DIR/pretrain and RUN_DIR/sft ($DSMATH_TRAIN_DIRS, comma-separated)
PLOTS_DIR = ""  # where the PNG figures go; "" = RUN_DIR/plots ($DSMATH_PLOTS_DIR)
'''),
        new_code_cell(_setup(
            ['if os.environ.get("DSMATH_TRAIN_DIRS"):',
             '    TRAIN_DIRS = [d.strip() for d in os.environ["DSMATH_TRAIN_DIRS"].split(",") if d.strip()]',
             "if not TRAIN_DIRS:  # the quickstart layout: the runs of it that exist",
             '    defaults = [os.path.join(RUN_DIR, name) for name in ("pretrain", "sft")]',
             "    TRAIN_DIRS = [d for d in defaults if os.path.isdir(d)] or defaults",
             "    for d in defaults:",
             "        if d not in TRAIN_DIRS:",
             '            print(f"note: no run directory {d}")'],
            ["runs = [A.load_training_run(d) for d in TRAIN_DIRS]",
             'print("runs:", ", ".join(r["path"] for r in runs))'],
        )),
        new_markdown_cell("## Summary\nTokens/s and MFU are medians over the logged windows after the first "
                          "(which includes compilation)."),
        new_code_cell('print(A.format_table([A.training_summary(r) for r in runs]))\n'
                      'for r in runs:\n'
                      '    if "eval_loss" not in A.training_curves(r):\n'
                      '        print(f"note: {r[\'name\']} has no held-out loss (train.eval_every = 0 or no '
                      'eval split)")\n'
                      '    if r["tokens_per_step"] is None:\n'
                      '        print(f"note: {r[\'name\']} has no config.json with train.batch_size and '
                      'data.seq_len: no tokens axis")'),
        new_markdown_cell("## Against steps"),
        new_code_cell('show(A.training_figure(runs, x="step"), "training_curves_step")'),
        new_markdown_cell("## Against tokens"),
        new_code_cell('show(A.training_figure(runs, x="tokens"), "training_curves_tokens")'),
    ])


def rl_analysis() -> nbformat.NotebookNode:
    return _notebook([
        new_markdown_cell("""# RL analysis (paper §4.2, §5.2)

One `dsmath rl` run: reward, KL, response length, entropy and group statistics over steps, held-out accuracy
over steps, and maj@k vs pass@k before and after RL (the paper's Figure 7: RL improves maj@k, not pass@k).
With the results JSON of `experiments/rl_paradigm_tiny.py` (or `experiments/rl_findings.py`), the paradigm
comparison (Figure 5: accuracy per method over steps, mean and spread over seeds); `rl_findings.ipynb` adds the
statistics over seeds and Figures 6 and 7. Figures are saved as PNG files in `PLOTS_DIR`."""),
        _parameters('''
# Parameters: the run directories this notebook reads (environment variables override them, next cell).
RUN_DIR = "runs/quickstart"  # a `dsmath quickstart` run directory ($DSMATH_RUN_DIR)
RL_DIR = ""  # a `dsmath rl` run directory; "" = RUN_DIR/grpo ($DSMATH_RL_DIR)
PARADIGM_JSON = ""  # optional results of experiments/rl_paradigm_tiny.py; "" = RUN_DIR/paradigm/results.json ($DSMATH_PARADIGM_JSON)
PLOTS_DIR = ""  # where the PNG figures go; "" = RUN_DIR/plots ($DSMATH_PLOTS_DIR)
'''),
        new_code_cell(_setup(
            ['RL_DIR = A.resolve_dir(os.environ.get("DSMATH_RL_DIR") or RL_DIR or os.path.join(RUN_DIR, "grpo"))',
             'PARADIGM_JSON = A.resolve_dir(os.environ.get("DSMATH_PARADIGM_JSON") or PARADIGM_JSON',
             '                              or os.path.join(RUN_DIR, "paradigm", "results.json"))'],
            ["run = A.load_rl_run(RL_DIR)",
             "history = A.eval_history(run)",
             'print(A.format_table([A.rl_summary(run)]))'],
        )),
        new_markdown_cell("## Training metrics over steps\nReward (mean, +-std band) and rule accuracy of the "
                          "sampled groups, KL to the reference, response length, entropy, the share of groups "
                          "whose rewards are all equal (no learning signal), clip fraction, throughput."),
        new_code_cell('show(A.rl_training_figure(run), "rl_training")'),
        new_markdown_cell("## Held-out accuracy over steps"),
        new_code_cell('if history:\n'
                      '    print(A.format_table(history))\n'
                      'else:\n'
                      '    print("note: this run has no held-out evaluation (eval.every = 0 or eval.n_problems = 0)")\n'
                      'show(A.eval_accuracy_figure(history), "rl_eval_accuracy")'),
        new_markdown_cell("## maj@k vs pass@k before and after RL (Figure 7)"),
        new_code_cell('before_after = A.maj_pass_before_after(history)\n'
                      'if before_after is None:\n'
                      '    print("note: no maj@k / pass@k before and after (the run needs eval.samples > 0 and two '
                      'evaluations)")\n'
                      'else:\n'
                      '    k, (s0, s1) = before_after["k"], before_after["steps"]\n'
                      '    for name in ("greedy", "maj", "pass", "sample"):\n'
                      '        b, a = before_after[name]\n'
                      '        label = f"{name}@{k}" if name in ("maj", "pass") else name\n'
                      '        if b is not None and a is not None:\n'
                      '            print(f"{label:>8}  step {s0}: {b:.3f} -> step {s1}: {a:.3f} ({a - b:+.3f})")\n'
                      'show(A.maj_pass_figure({run["name"]: before_after}), "rl_maj_pass")'),
        new_markdown_cell("## Greedy accuracy before vs after, problem by problem\nThe first and last evaluations "
                          "compared on the same held-out problems (`evals/step_<step>.jsonl`): problems gained and "
                          "lost, the change's exact 95% interval given those, and an exact McNemar p-value. The "
                          "interval is the test set's sampling noise only; another training seed moves the change "
                          "too."),
        new_code_cell('if len(history) < 2:\n'
                      '    print("note: fewer than two held-out evaluations to compare")\n'
                      'else:\n'
                      '    s0, s1 = int(history[0]["step"]), int(history[-1]["step"])\n'
                      '    try:\n'
                      '        pc = A.paired_change(A.load_eval_rows(RL_DIR, s0), A.load_eval_rows(RL_DIR, s1))\n'
                      '    except A.RunDirError as e:\n'
                      '        print(f"note: no per-problem evaluations ({e})")\n'
                      '    else:\n'
                      '        n, gained, lost, p = pc["problems"], pc["gained"], pc["lost"], pc["p_value"]\n'
                      '        print(f"step {s0} -> {s1} on {n} problems: greedy {pc[\'before\']:.3f} -> "\n'
                      '              f"{pc[\'after\']:.3f}, {gained} gained, {lost} lost; "\n'
                      '              f"change {pc[\'difference\']:+.3f}, "\n'
                      '              f"95% interval [{pc[\'low\']:+.3f}, {pc[\'high\']:+.3f}], McNemar p = {p:.3g}")'),
        new_markdown_cell("## The unified paradigm (Figure 5)\nHeld-out accuracy of each method over RL steps, "
                          "mean over seeds with a +-std band, and each method's maj@k / pass@k gains."),
        new_code_cell('if os.path.isfile(PARADIGM_JSON):\n'
                      '    paradigm = A.load_paradigm_results(PARADIGM_JSON)\n'
                      '    print(A.format_table(A.paradigm_table(paradigm)))\n'
                      '    show(A.paradigm_figure(A.paradigm_curves(paradigm)), "rl_paradigm")\n'
                      '    show(A.maj_pass_figure(A.paradigm_maj_pass(paradigm)), "rl_paradigm_maj_pass")\n'
                      'else:\n'
                      '    print(f"note: no paradigm results at {PARADIGM_JSON}: run experiments/rl_paradigm_tiny.py '
                      '--out DIR and set PARADIGM_JSON (or $DSMATH_PARADIGM_JSON) to DIR/results.json")'),
    ])


def rl_findings() -> nbformat.NotebookNode:
    return _notebook([
        new_markdown_cell("""# RL findings over seeds (paper Figures 5, 6 and 7)

The results JSON of `experiments/rl_findings.py` (by default the recorded experiment,
`experiments/results/rl_findings_level1.json`: 5 seeds on difficulty level 1): for each seed one SFT policy and,
from it, every RL arm (RFT, online RFT, DPO, PPO, GRPO with outcome supervision, GRPO with process supervision by
a trained PRM or by the task's exact step checker, iterative GRPO). Per arm and metric the mean over seeds with a
Student-t interval; for each ordering the paper claims the per-seed paired differences, their mean and interval,
an exact sign-flip permutation p-value and a verdict ("holds" only when the interval excludes 0 in the claimed
direction). Figures: held-out greedy accuracy over RL steps (Figure 5), iterative GRPO per iteration (Figure 6),
maj@k and pass@k against k before and after RL (Figure 7), all with error bars. Figures are saved as PNG files in
`PLOTS_DIR`."""),
        _parameters('''
# Parameters: the results this notebook reads (environment variables override them, next cell).
RUN_DIR = "runs/quickstart"  # a `dsmath quickstart` run directory ($DSMATH_RUN_DIR)
FINDINGS_JSON = "experiments/results/rl_findings_level1.json"  # rl_findings.py results ($DSMATH_FINDINGS_JSON)
PLOTS_DIR = ""  # where the PNG figures go; "" = RUN_DIR/plots ($DSMATH_PLOTS_DIR)
LEVEL = 0.95  # confidence level of the intervals
FIGURE7_ARMS = []  # arms drawn in Figure 7 besides SFT; [] = every arm with maj@k / pass@k
'''),
        new_code_cell(_setup(
            ['FINDINGS_JSON = A.resolve_dir(os.environ.get("DSMATH_FINDINGS_JSON") or FINDINGS_JSON)'],
            ["results = P.load_paradigm_results(FINDINGS_JSON)",
             'runs, seeds = results["runs"], results.get("seeds")',
             'print(f"{FINDINGS_JSON}: {len(runs)} runs, arms {P.paradigm_arms(results)}, seeds {seeds}, "',
             '      f"k up to {P.max_k(results)}")',
             'failed = [f"{r[\'arm\']} seed {r[\'seed\']}" for r in runs',
             '          if r.get("status") not in (None, "completed")]',
             "if failed:",
             '    print("note: runs that did not complete:", ", ".join(failed))',
             'if results.get("wall_s") is not None:',
             '    hours = results["wall_s"] / 3600, results.get("elapsed_s", 0) / 3600',
             '    print(f"compute {hours[0]:.2f} h, elapsed {hours[1]:.2f} h")'],
            imports=("from dsmath_jax.analysis import paradigm as P  # the statistics of experiments/rl_findings.py",),
        )),
        new_markdown_cell("## Per arm: mean over seeds and its interval\nThe final value of each metric and its "
                          "gain over the seed's SFT policy (`low`/`high`: the t-interval at `LEVEL`; empty with one "
                          "seed)."),
        new_code_cell('print(A.format_table(P.paradigm_summary(results, LEVEL)))'),
        new_markdown_cell("## The paper's orderings\nPer claim: the mean over seeds of the paired difference a - b, "
                          "its interval, the sign-flip p-value and the verdict."),
        new_code_cell('findings = P.paradigm_findings(results, level=LEVEL)\n'
                      'if findings:\n'
                      '    print(A.format_table(P.findings_table_rows(findings)))\n'
                      'else:\n'
                      '    print("note: no claim has both of its arms in the results")'),
        new_markdown_cell("## Figure 5: the methods over RL steps"),
        new_code_cell('show(P.findings_figure5(results, LEVEL), "findings_figure5")'),
        new_markdown_cell("## Figure 6: iterative GRPO\nIteration 0 is the SFT policy."),
        new_code_cell('show(P.findings_figure6(results, LEVEL), "findings_figure6")'),
        new_markdown_cell("## Figure 7: maj@k and pass@k against k\nFrom one set of samples per problem at the "
                          "evaluation temperature; RL should raise maj@k and leave pass@k."),
        new_code_cell('arms = (["sft"] + list(FIGURE7_ARMS)) if FIGURE7_ARMS else None\n'
                      'show(P.findings_figure7(results, arms, LEVEL), "findings_figure7")'),
    ])


NOTEBOOKS = {"corpus_mining.ipynb": corpus_mining, "training_curves.ipynb": training_curves,
             "rl_analysis.ipynb": rl_analysis, "rl_findings.ipynb": rl_findings}


def render(build) -> str:
    """The notebook's file contents (validated)."""
    nb = build()
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    out = pathlib.Path((argv or sys.argv[1:] or [str(HERE)])[0])
    for name, build in NOTEBOOKS.items():
        (out / name).write_text(render(build), encoding="utf-8")
        print("wrote", out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
