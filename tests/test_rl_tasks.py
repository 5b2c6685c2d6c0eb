"""RL problem sources (dsmath_jax.data.tasks): the jsonl source, read end to end from files on disk."""

import json

import pytest

from dsmath_jax.data.tasks import load_problems


def test_jsonl_source_reads_files_and_globs(tmp_path):
    rows = [{"id": "a", "q": "1+1?", "a": "2", "response": "1+1=2. \\boxed{2}"},
            {"q": "2+3?", "a": 5, "kind": "number"}]
    (tmp_path / "one.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:1]) + "\n\n", encoding="utf-8")
    (tmp_path / "two.jsonl").write_text(json.dumps(rows[1]) + "\n", encoding="utf-8")
    spec = {"kind": "jsonl", "files": [str(tmp_path / "*.jsonl")], "question_field": "q", "answer_field": "a"}
    problems = load_problems(spec, "train")
    assert [(p.id, p.question, p.answer, p.kind, p.response) for p in problems] == [
        ("a", "1+1?", "2", "math", "1+1=2. \\boxed{2}"),
        (f"{tmp_path / 'two.jsonl'}:1", "2+3?", "5", "number", None)]
    assert [p.question for p in load_problems(dict(spec, files=str(tmp_path / "two.jsonl")), "test")] == ["2+3?"]


def test_jsonl_source_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok", "answer": "1"}\n{"question": "no answer"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: cannot read a problem .*KeyError"):
        load_problems({"kind": "jsonl", "files": [str(path)]}, "train")
