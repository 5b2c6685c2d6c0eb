"""TFDS datasets (ArrayRecord) read back through tfds.data_source and Grain, without TensorFlow.

Real TFDS writes into tmp_path; GSM8K and MATH come from the real files in shared_data/benchmarks.
"""

import collections
import importlib.util
import json
import sys

import grain
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from dsmath_jax.data import benchmarks_tfds
from dsmath_jax.data.benchmarks_tfds import prepare_benchmark
from dsmath_jax.data.corpus import REPORT_FILE, DatasetReport, build_text_corpus
from dsmath_jax.data.datasets import data_source, decode_example
from dsmath_jax.data.math_text import gsm8k_final_answer, last_boxed, strip_calculator_annotations
from dsmath_jax.data.sft_data import build_sft_dataset, check_response_format
from dsmath_jax.data.text_files import DataFormatError


def read_split(name, split, data_dir):
    src = data_source(name, split, data_dir=data_dir)
    return [decode_example(src[i]) for i in range(len(src))]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row))
            f.write("\n")
    return path


def raw_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------
# math_text


@pytest.mark.parametrize("text, expected", [
    (r"so $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"first $\boxed{1}$, then $\boxed{2}$", "2"),
    (r"$\fbox{3}$", "3"),
    (r"$\boxed{1}$ or $\fbox{7}$", "7"),
    (r"so the answer is $\boxed 5$.", "5"),
    (r"\boxed {7}", "7"),
    (r"\boxed{\{1,2\}}", r"\{1,2\}"),
    (r"\boxed{(1, \sqrt{2}]}", r"(1, \sqrt{2}]"),
    (r"\boxed{}", ""),
    ("no box at all", None),
    (r"cut off: \boxed{\frac{1}{2", None),
    (r"\boxedx{3}", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_gsm8k_final_answer_and_annotations():
    assert gsm8k_final_answer("He pays 1,000+234=<<1000+234=1234>>1,234.\n#### 1,234") == "1234"
    assert gsm8k_final_answer("x\n#### -3.5 ") == "-3.5"
    with pytest.raises(ValueError, match="####"):
        gsm8k_final_answer("no final line")
    assert strip_calculator_annotations("48/2 = <<48/2=24>>24 clips") == "48/2 = 24 clips"


# ---------------------------------------------------------------------------------------------
# Text corpus


def corpus_inputs(tmp_path):
    """60 JSONL documents (url on even lines) and 40 Parquet documents (with ids)."""
    jsonl_docs = [f"JSONL document {i}: $x^{i} + 1$ é" for i in range(60)]
    rows = [{"text": t, "url": f"https://example.org/{i}"} if i % 2 == 0 else {"text": t}
            for i, t in enumerate(jsonl_docs)]
    jsonl = write_jsonl(tmp_path / "docs.jsonl", rows)
    parquet_docs = [f"Parquet document {i}\n\\int_0^1 x\\,dx" for i in range(40)]
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": parquet_docs, "id": [f"pq-{i}" for i in range(40)]}), parquet)
    return jsonl, parquet, jsonl_docs, parquet_docs


def test_text_corpus_jsonl_and_parquet_round_trip(tmp_path):
    jsonl, parquet, jsonl_docs, parquet_docs = corpus_inputs(tmp_path)
    data_dir = tmp_path / "tfds"
    report = build_text_corpus("toy_corpus", [jsonl, parquet], data_dir=data_dir, validation_fraction=0.25)

    train = read_split("toy_corpus", "train", data_dir)
    val = read_split("toy_corpus", "validation", data_dir)
    texts = [ex["text"] for ex in train + val]
    assert collections.Counter(texts) == collections.Counter(jsonl_docs + parquet_docs)
    assert {ex["text"] for ex in train}.isdisjoint({ex["text"] for ex in val})
    assert 5 <= len(val) <= 45  # 25% of 100 documents, by hash

    sources = {ex["text"]: ex["source"] for ex in train + val}
    assert sources[jsonl_docs[4]] == "https://example.org/4"
    assert sources[jsonl_docs[3]] == "docs.jsonl:4"  # no url/id: file name and line
    assert sources[parquet_docs[7]] == "pq-7"

    assert report.built
    assert report.splits == {"train": len(train), "validation": len(val)}
    assert (report.records_read, report.bad_records, report.bad_locations) == (100, 0, [])
    stored = DatasetReport.from_json((data_dir / "toy_corpus" / "1.0.0" / REPORT_FILE).read_text())
    assert stored.splits == report.splits and stored.recipe == report.recipe

    # Deterministic: the same inputs under another name split the same way.
    build_text_corpus("toy_corpus_again", [jsonl, parquet], data_dir=data_dir, validation_fraction=0.25)
    assert ({ex["text"] for ex in read_split("toy_corpus_again", "validation", data_dir)}
            == {ex["text"] for ex in val})


def test_text_corpus_validation_files_and_min_chars(tmp_path):
    train_file = write_jsonl(tmp_path / "a.jsonl",
                             [{"text": "long enough"}, {"text": "tiny"}, {"text": "also long"}])
    val_file = write_jsonl(tmp_path / "b.jsonl", [{"text": "held-out doc"}])
    data_dir = tmp_path / "tfds"
    report = build_text_corpus("toy_val", [train_file], validation_files=[val_file], data_dir=data_dir,
                               min_chars=5)
    assert report.splits == {"train": 2, "validation": 1}
    assert report.skipped == {"shorter than min_chars=5": 1} and report.bad_records == 0
    assert sorted(ex["text"] for ex in read_split("toy_val", "train", data_dir)) == ["also long", "long enough"]
    assert [ex["text"] for ex in read_split("toy_val", "validation", data_dir)] == ["held-out doc"]


def thousand_lines_two_bad(tmp_path):
    lines = [json.dumps({"text": f"document number {i}"}) for i in range(1000)]
    lines[16] = '{"text": "unterminated'  # line 17: invalid JSON
    lines[502] = json.dumps({"text": 5})  # line 503: not a string
    return write_jsonl(tmp_path / "web.jsonl", lines)


def test_text_corpus_counts_bad_lines_below_threshold(tmp_path):
    path = thousand_lines_two_bad(tmp_path)
    report = build_text_corpus("web", [path], data_dir=tmp_path / "tfds", max_bad_fraction=0.01)
    assert report.splits == {"train": 998}
    assert (report.records_read, report.bad_records) == (1000, 2)
    assert len(report.bad_locations) == 2
    assert report.bad_locations[0].startswith(f"{path}:17: not valid JSON")
    assert report.bad_locations[1] == f"{path}:503: field 'text' must be a string, got int"
    assert len(read_split("web", "train", tmp_path / "tfds")) == 998


def test_text_corpus_fails_above_threshold_and_leaves_nothing(tmp_path):
    path = thousand_lines_two_bad(tmp_path)
    data_dir = tmp_path / "tfds"
    with pytest.raises(DataFormatError) as info:
        build_text_corpus("web", [path], data_dir=data_dir, max_bad_fraction=0.001)
    message = str(info.value)
    assert f"first at {path}:17:" in message
    assert "2 of 1000" in message and "0.2000%" in message and "max_bad_fraction=0.001" in message
    # No dataset (finished or half-written) was left behind.
    assert not (data_dir / "web").exists()
    with pytest.raises(FileNotFoundError, match="no TFDS dataset 'web'"):
        data_source("web", "train", data_dir=data_dir)


def test_text_corpus_without_documents_fails_clearly(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n")
    expected = r"toy_empty: produced no documents: files \[.*empty\.jsonl.*blank\.jsonl"
    with pytest.raises(DataFormatError, match=expected):
        build_text_corpus("toy_empty", [empty, blank], data_dir=tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        build_text_corpus("toy_missing", [tmp_path / "missing.jsonl"], data_dir=tmp_path / "tfds")


def test_text_corpus_rerun_reuses_and_overwrite_rebuilds(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": f"doc {i}"} for i in range(10)])
    data_dir = tmp_path / "tfds"
    first = build_text_corpus("toy_rerun", [path], data_dir=data_dir)
    version_dir = data_dir / "toy_rerun" / "1.0.0"
    shard = next(version_dir.glob("*.array_record*"))
    mtime = shard.stat().st_mtime_ns

    again = build_text_corpus("toy_rerun", [path], data_dir=data_dir)
    assert first.built and not again.built
    assert again.splits == {"train": 10} and shard.stat().st_mtime_ns == mtime

    # Changed inputs are not silently ignored...
    write_jsonl(path, [{"text": f"doc {i}"} for i in range(12)])
    with pytest.raises(ValueError, match="different inputs"):
        build_text_corpus("toy_rerun", [path], data_dir=data_dir)
    # ...and a failed overwrite keeps the previous dataset.
    write_jsonl(path, ["not json"] * 12)
    with pytest.raises(DataFormatError):
        build_text_corpus("toy_rerun", [path], data_dir=data_dir, overwrite=True)
    assert len(read_split("toy_rerun", "train", data_dir)) == 10
    write_jsonl(path, [{"text": f"doc {i}"} for i in range(12)])
    rebuilt = build_text_corpus("toy_rerun", [path], data_dir=data_dir, overwrite=True)
    assert rebuilt.built and rebuilt.splits == {"train": 12}
    texts = sorted(ex["text"] for ex in read_split("toy_rerun", "train", data_dir))
    assert texts == sorted(f"doc {i}" for i in range(12))
    assert sorted(p.name for p in (data_dir / "toy_rerun").iterdir()) == ["1.0.0"]


# ---------------------------------------------------------------------------------------------
# GSM8K and MATH


@pytest.fixture(scope="module")
def bench_dir(shared_data, tmp_path_factory):
    """GSM8K and MATH prepared once from the local benchmark copies."""
    data_dir = tmp_path_factory.mktemp("bench_tfds")
    for name in ("gsm8k", "math"):
        prepare_benchmark(name, data_dir, local_dir=shared_data / "benchmarks")
    return data_dir


def test_gsm8k(bench_dir, shared_data):
    train = read_split("dsmath_gsm8k", "train", bench_dir)
    test = read_split("dsmath_gsm8k", "test", bench_dir)
    assert (len(train), len(test)) == (7473, 1319)
    # Hand-checked against the first rows of the source files.
    assert [ex["answer"] for ex in test[:4]] == ["18", "3", "70000", "540"]
    assert test[0]["question"].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert test[0]["solution"] == (
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
        "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer\u2019s market.\n#### 18")
    assert [ex["answer"] for ex in train[:3]] == ["72", "10", "5"]
    for split, rows in (("train", train), ("test", test)):
        raw = raw_jsonl(shared_data / "benchmarks" / "gsm8k" / f"{split}.jsonl")
        assert [ex["question"] for ex in rows] == [r["question"] for r in raw]
        for ex, r in zip(rows, raw):
            assert ex["answer"] == r["answer"].split("####")[1].strip().replace(",", "")
            float(ex["answer"])


def test_math(bench_dir, shared_data):
    train = read_split("dsmath_math", "train", bench_dir)
    test = read_split("dsmath_math", "test", bench_dir)
    assert (len(train), len(test)) == (7500, 5000)
    assert [ex["answer"] for ex in test[:3]] == ["2", "10", r"\dfrac{9}{7}"]
    assert (test[0]["id"], test[0]["level"], test[0]["subject"]) == ("0", "Level 3", "Algebra")
    for ex in test:
        assert ex["answer"] and ex["answer"] == last_boxed(ex["solution"])
    assert (train[1]["answer"], train[1]["solution"]) == (r"180\text{ miles}", "")
    assert ((train[0]["id"], train[0]["level"], train[0]["subject"])
            == ("test/prealgebra/947.json", "Level 2", "Prealgebra"))
    raw_train = raw_jsonl(shared_data / "benchmarks" / "math" / "train.jsonl")
    assert [ex["answer"] for ex in train] == [r["answer"] for r in raw_train]


def test_benchmarks_download_path(tmp_path, monkeypatch):
    """Without a local directory the builders download; the MATH tarball layout is parsed."""
    gsm = tmp_path / "gsm"
    gsm.mkdir()
    for split in ("train", "test"):
        write_jsonl(gsm / f"{split}.jsonl",
                    [{"question": f"{split} q", "answer": "1+1=<<1+1=2>>2\n#### 2,000"}])
    extracted = tmp_path / "extracted"
    for split in ("train", "test"):
        for number in (10, 2):
            d = extracted / "MATH" / split / "algebra"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{number}.json").write_text(json.dumps({
                "problem": f"P{number}", "level": "Level 1", "type": "Algebra",
                "solution": f"So $x=\\boxed{{{number}}}$."}))
    calls = []

    def fake_download(self, urls):  # noqa: ARG001 - replaces a method
        calls.append(urls)
        return {split: gsm / f"{split}.jsonl" for split in urls}

    def fake_download_and_extract(self, url):  # noqa: ARG001 - replaces a method
        calls.append(url)
        return extracted

    monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", fake_download_and_extract)
    data_dir = tmp_path / "tfds"
    prepare_benchmark("gsm8k", data_dir)
    prepare_benchmark("dsmath_math", data_dir)
    assert calls == [benchmarks_tfds.GSM8K_URLS, benchmarks_tfds.MATH_URL]
    assert read_split("dsmath_gsm8k", "test", data_dir) == [
        {"question": "test q", "solution": "1+1=<<1+1=2>>2\n#### 2,000", "answer": "2000"}]
    math_train = read_split("dsmath_math", "train", data_dir)
    assert [(ex["id"], ex["answer"], ex["subject"]) for ex in math_train] == [
        ("train/algebra/2.json", "2", "Algebra"), ("train/algebra/10.json", "10", "Algebra")]


# ---------------------------------------------------------------------------------------------
# SFT

TOOL_RESPONSE = ("We add the two months.\n```python\nprint(48 + 48 // 2)\n```\n```output\n72\n```\n"
                 "The final answer is $\\boxed{72}$.")


def sft_rows():
    """(row, valid?) for a JSONL SFT file; line numbers are positions + 1."""
    return [
        ({"question": "What is 2+3?", "response": "2+3=5.\nThe final answer is $\\boxed{5}$."}, True),
        ({"messages": [{"role": "user", "content": "What is 6*7?"},
                       {"role": "assistant", "content": "6*7=42. The final answer is $\\boxed{42}$."}]}, True),
        ({"question": "Compute 2^10.", "response": "```python\nprint(2**10)\n```", "format": "pot"}, True),
        ({"question": "Compute 3^4.", "response": "3^4 = 81", "format": "pot"}, False),  # line 4
        ({"question": "April and May?", "response": TOOL_RESPONSE, "format": "tool"}, True),
        ({"question": "Sum?", "response": "```python\nprint(1+1)\n```\nSo 2.", "format": "tool"},
         False),  # line 6: python block without an output block
        ('{"question": "broken', False),  # line 7
        ({"messages": [{"role": "user", "content": "hi"}]}, False),  # line 8
    ]


def test_sft_formats_are_validated():
    assert check_response_format("tool", TOOL_RESPONSE) is None
    assert check_response_format("pot", "```python\nprint(1)\n```") is None
    assert "```python" in check_response_format("pot", "print(1)")
    assert "```output" in check_response_format("tool", "```python\nprint(1)\n```")
    assert "not one of" in check_response_format("poem", "x")
    assert check_response_format("answer", "The final answer is $\\boxed{7}$.") is None
    assert "one line" in check_response_format("answer", "He buys 2 more: 5 + 2 = 7.\nThe final answer is 7.")


def test_sft_from_jsonl_gsm8k_and_math(bench_dir, shared_data, tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [row for row, _ in sft_rows()])
    benchmarks = str(shared_data / "benchmarks")
    report = build_sft_dataset(
        "toy_sft",
        [{"kind": "jsonl", "files": [path]}, {"kind": "gsm8k", "local_dir": benchmarks},
         {"kind": "math", "local_dir": benchmarks}],
        data_dir=bench_dir, max_bad_fraction=0.01)

    assert report.bad_records == 4
    assert [loc.split(": ")[0] for loc in report.bad_locations] == [f"{path}:{n}" for n in (4, 6, 7, 8)]
    assert "needs a ```python block" in report.bad_locations[0]
    assert "```output" in report.bad_locations[1]
    assert report.skipped == {"math train: no reference solution": 7500}
    assert report.counts["format"] == {"cot": 7473 + 2, "pot": 1, "tool": 1}
    assert report.counts["source"] == {"jsonl": 4, "gsm8k": 7473}
    assert report.splits == {"train": 7477}

    examples = read_split("toy_sft", "train", bench_dir)
    by_source = {ex["source"]: ex for ex in examples}
    assert by_source["sft.jsonl:2"] == {"question": "What is 6*7?", "format": "cot", "source": "sft.jsonl:2",
                                        "response": "6*7=42. The final answer is $\\boxed{42}$."}
    assert by_source["sft.jsonl:5"]["format"] == "tool"
    assert by_source["gsm8k/train/0"]["response"] == (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "The final answer is $\\boxed{72}$.")
    raw = raw_jsonl(shared_data / "benchmarks" / "gsm8k" / "train.jsonl")
    gsm = [by_source[f"gsm8k/train/{i}"] for i in range(len(raw))]
    for ex, r in zip(gsm, raw):
        final = r["answer"].split("####")[1].strip().replace(",", "")
        assert ex["question"] == r["question"]
        assert ex["response"].endswith(f"The final answer is $\\boxed{{{final}}}$.")
        assert last_boxed(ex["response"]) == final
        assert "<<" not in ex["response"] and ">>" not in ex["response"] and "####" not in ex["response"]


def test_sft_fails_above_bad_threshold_and_without_examples(bench_dir, shared_data, tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [row for row, _ in sft_rows()])
    with pytest.raises(DataFormatError, match=rf"4 of 8 .* first at {path}:4: a 'pot' response"):
        build_sft_dataset("toy_sft_bad", [{"kind": "jsonl", "files": [path]}], data_dir=tmp_path / "tfds")
    with pytest.raises(DataFormatError, match=r"produced no examples.*no reference solution': 7500"):
        build_sft_dataset("toy_sft_none", [{"kind": "math", "local_dir": str(shared_data / "benchmarks")}],
                          data_dir=bench_dir)


def test_sft_math_rows_with_solutions_and_validation_split(tmp_path):
    local = tmp_path / "bench" / "math"
    local.mkdir(parents=True)
    rows = [{"problem": f"Problem {i}", "solution": f"Work... $\\boxed{{{i}}}$.", "level": "Level 1",
             "type": "Algebra", "idx": i} for i in range(40)]
    rows[3]["solution"] = "No box here."
    write_jsonl(local / "train.jsonl", rows)
    write_jsonl(local / "test.jsonl", rows[:1])
    data_dir = tmp_path / "tfds"
    report = build_sft_dataset("toy_sft_math", [{"kind": "math", "local_dir": tmp_path / "bench"}],
                               data_dir=data_dir, validation_fraction=0.3)
    assert report.skipped == {"math train: solution without \\boxed{}": 1}
    train = read_split("toy_sft_math", "train", data_dir)
    val = read_split("toy_sft_math", "validation", data_dir)
    assert report.splits == {"train": len(train), "validation": len(val)} and len(train) + len(val) == 39
    assert val and {ex["question"] for ex in train}.isdisjoint({ex["question"] for ex in val})
    example = next(ex for ex in train + val if ex["question"] == "Problem 7")
    assert example == {"question": "Problem 7", "response": "Work... $\\boxed{7}$.", "format": "cot",
                       "source": "math/7"}


# ---------------------------------------------------------------------------------------------
# Reading through Grain, without TensorFlow


def test_grain_reads_without_tensorflow(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"text": f"grain doc {i}", "id": i} for i in range(5)])
    build_text_corpus("toy_grain", [path], data_dir=tmp_path / "tfds")
    ds = grain.MapDataset.source(data_source("toy_grain", "train", data_dir=tmp_path / "tfds"))
    assert len(ds) == 5
    raw = ds[0]
    assert isinstance(raw["text"], bytes)
    decoded = sorted((ex["text"], ex["source"]) for ex in ds.map(decode_example))
    assert decoded == [(f"grain doc {i}", str(i)) for i in range(5)]
    assert "tensorflow" not in sys.modules
    assert importlib.util.find_spec("tensorflow") is None
