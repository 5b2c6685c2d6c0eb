"""Throughput of the corpus mining pipeline against raw fastText predict, on the synthetic test crawl.

  python experiments/benchmarks/mining.py --benchmarks-dir path/to/benchmarks --sizes 1,4

For each crawl size (multiples of the test crawl: ~350 pages at 1) it builds the crawl (not timed),
runs the whole pipeline for one iteration on the DirectRunner with one worker (read WARC/WET/JSONL,
HTML to text, language id, token counts, URL + MinHash dedup, negatives sampling, fastText training,
scoring, recall, decontamination, domain statistics, TFDS output) and reports pages per CPU-second
(one core). The marginal rate between the two sizes removes the fixed costs (pipeline start-up,
the benchmark n-gram index, classifier training). Raw fastText `predict` on the same pages' texts,
with the same classifier, in the same process, is the reference: the ratio is the pipeline's overhead.
A per-stage breakdown (each stage's function called directly on the same data, no Beam) says where
the time goes. Prints JSON; `--output` also writes it.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import pathlib
import tempfile
import time

from dsmath_jax.config import load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _config(crawl_dir: str, benchmarks_dir: str):
    return load_config("configs/mining/deepseekmath_corpus.py:tiny", {
        "input.patterns": (os.path.join(crawl_dir, "crawl", "*"),),
        "seed.paths": (os.path.join(crawl_dir, "seed.jsonl"),), "synthetic.benchmarks_dir": "",
        "decontamination.benchmarks_dir": benchmarks_dir, "iterations.max": 1}, command="mine", root=ROOT)


def _timed(fn, *args, repeat: int = 1):
    best = None
    out = None
    for _ in range(repeat):
        start = time.process_time()
        out = fn(*args)
        elapsed = time.process_time() - start
        best = elapsed if best is None else min(best, elapsed)
    return out, best


def run_size(size: int, benchmarks_dir: str, tmp: str) -> dict:
    from dsmath_jax.mining import files
    from dsmath_jax.mining.driver import run_mining
    from dsmath_jax.mining.synthetic_crawl import build_crawl

    crawl_dir = os.path.join(tmp, f"crawl_{size}")
    build_crawl(benchmarks_dir, crawl_dir, n_questions=60 * size, n_problems=40 * size, n_notes=24 * size,
                n_prose=200 * size, n_near_duplicates=12 * size, n_url_duplicates=10 * size, warc_files=4 * size)
    workdir = os.path.join(tmp, f"work_{size}")
    wall, cpu = time.time(), time.process_time()
    stats = run_mining(_config(crawl_dir, benchmarks_dir), workdir)
    wall, cpu = time.time() - wall, time.process_time() - cpu
    pages_read = stats["prepare"]["counters"]["pages_read"]
    texts = [p["text"] for p in files.iter_jsonl_shards(os.path.join(workdir, "pages", "pages-*.jsonl.gz"))]
    return {"size": size, "pages_read": pages_read, "pages_after_dedup": len(texts), "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2), "pipeline_pages_per_cpu_s": round(pages_read / cpu, 1),
            "crawl_dir": crawl_dir, "workdir": workdir, "texts": texts}


def raw_fasttext(model_path: str, texts: list[str], batch: int = 512) -> dict:
    from dsmath_jax.mining.classifier import classifier_text, load_classifier

    model = load_classifier(model_path)
    lines = [classifier_text(t) for t in texts]

    def predict():
        for i in range(0, len(lines), batch):
            model.predict(lines[i:i + batch], k=2)

    def normalise_and_predict():
        for i in range(0, len(texts), batch):
            model.predict([classifier_text(t) for t in texts[i:i + batch]], k=2)

    _, t_predict = _timed(predict, repeat=3)
    _, t_full = _timed(normalise_and_predict, repeat=3)
    return {"predict_pages_per_cpu_s": round(len(lines) / t_predict, 1),
            "normalise_and_predict_pages_per_cpu_s": round(len(texts) / t_full, 1)}


def stage_breakdown(crawl_dir: str, workdir: str, texts: list[str]) -> dict:
    """CPU seconds per 1,000 pages of each stage's own work, outside Beam."""
    from warcio.archiveiterator import ArchiveIterator

    from dsmath_jax.mining.classifier import load_classifier, math_scores
    from dsmath_jax.mining.crawl_reader import read_crawl_file
    from dsmath_jax.mining.decontamination import NgramIndex, find_contamination
    from dsmath_jax.mining.dedup import MinHasher, shingle_hashes
    from dsmath_jax.mining.html_text import html_to_text
    from dsmath_jax.mining.language import detect_language
    from dsmath_jax.mining.tokens import count_tokens

    warcs = sorted(glob.glob(os.path.join(crawl_dir, "crawl", "part-*.warc.gz")))
    bodies: list[str] = []

    def parse_warc():
        bodies.clear()
        for path in warcs:
            with open(path, "rb") as f:
                for record in ArchiveIterator(f):
                    if record.rec_type == "response":
                        bodies.append(record.content_stream().read().decode("utf-8", "replace"))

    _, t_warc = _timed(parse_warc)
    _, t_html = _timed(lambda: [html_to_text(b) for b in bodies])
    _, t_read = _timed(lambda: [p for path in sorted(glob.glob(os.path.join(crawl_dir, "crawl", "*")))
                                for p in read_crawl_file(path, max_page_bytes=1_000_000, counter=lambda *_: None)])
    _, t_lang = _timed(lambda: [detect_language(t) for t in texts])
    _, t_tok = _timed(lambda: [count_tokens(t) for t in texts])
    hasher = MinHasher(128)
    _, t_minhash = _timed(lambda: [hasher.signature(shingle_hashes(t)) for t in texts])
    index = NgramIndex.load(os.path.join(workdir, "decontamination_index.npz"))
    _, t_decon = _timed(lambda: [find_contamination(t, index) for t in texts])
    model = load_classifier(os.path.join(workdir, "iter_1", "classifier.bin"))
    _, t_score = _timed(lambda: [math_scores(model, texts[i:i + 512]) for i in range(0, len(texts), 512)])
    pages = [{"url": str(i), "text": t, "tokens": 1} for i, t in enumerate(texts)]
    _, t_json = _timed(lambda: [json.loads(json.dumps(p)) for p in pages])
    per_k = lambda t, n: round(1000 * t / max(n, 1), 3)  # noqa: E731
    return {
        "warc_parse": per_k(t_warc, len(bodies)), "html_to_text": per_k(t_html, len(bodies)),
        "read_crawl_file_total": per_k(t_read, len(bodies)), "language_id": per_k(t_lang, len(texts)),
        "token_count": per_k(t_tok, len(texts)), "minhash_signature": per_k(t_minhash, len(texts)),
        "decontamination_match": per_k(t_decon, len(texts)), "fasttext_score": per_k(t_score, len(texts)),
        "json_round_trip": per_k(t_json, len(texts)), "unit": "CPU seconds per 1,000 pages",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = os.environ.get("DSMATH_BENCHMARKS_DIR")
    parser.add_argument("--benchmarks-dir", default=default, help="benchmark files (gsm8k/, math/ train and test)")
    parser.add_argument("--sizes", default="1,4",
                        help="crawl sizes, multiples of the test crawl (two for a marginal rate)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_size(s, args.benchmarks_dir, tmp) for s in sizes]
        big = runs[-1]
        raw = raw_fasttext(os.path.join(big["workdir"], "iter_1", "classifier.bin"), big["texts"])
        breakdown = stage_breakdown(big["crawl_dir"], big["workdir"], big["texts"])
    result = {"runs": [{k: v for k, v in r.items() if k not in ("texts", "crawl_dir", "workdir")} for r in runs],
              "raw_fasttext": raw, "stages": breakdown}
    if len(runs) >= 2:
        d_pages = runs[-1]["pages_read"] - runs[0]["pages_read"]
        d_cpu = runs[-1]["cpu_s"] - runs[0]["cpu_s"]
        marginal = d_pages / d_cpu
        result["marginal_pipeline_pages_per_cpu_s"] = round(marginal, 1)
        result["overhead_vs_raw_predict"] = round(raw["predict_pages_per_cpu_s"] / marginal, 1)
    result["overhead_vs_raw_predict_whole_run"] = round(
        raw["predict_pages_per_cpu_s"] / big["pipeline_pages_per_cpu_s"], 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.output:
        pathlib.Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
