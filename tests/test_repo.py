"""The repository's promises: the README's test command is what CI runs; the CLI dispatches; inputs with
errors name the file and line."""

import json
import pathlib
import re
import subprocess
import sys

import pytest

from dsmath_jax import cli
from dsmath_jax.data.text_files import DataFormatError, iter_texts

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    commands = [b.strip() for b in blocks if "pytest" in b]
    assert len(commands) == 1, commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[0] in ci.splitlines()


def test_cli_lists_commands_and_rejects_unknown_ones(capsys):
    assert cli.main([]) == 0
    assert "tokenizer" in capsys.readouterr().out
    assert cli.main(["infx"]) == 2
    assert "did you mean 'info'" in capsys.readouterr().err


def test_info_reports_the_7b_model(capsys):
    assert cli.main(["info", "--preset", "deepseekmath_7b", "--devices", "256", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert 6.85e9 < info["parameters"] < 6.95e9
    assert info["mesh"] == {"data": 1, "fsdp": 256, "tensor": 1}
    # FSDP over 256 devices: every matrix is split 256 ways along `embed`; the 61 norms are replicated.
    norms = (2 * 30 + 1) * 4096
    assert info["params_bytes_per_device"] == (info["parameters"] - norms) * 4 // 256 + norms * 4


def test_tokenizer_command_trains_and_encodes(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": f"Problem {i}: compute {i} + {i * 7} = {i * 8}.\nAnswer: {i * 8}"})
             for i in range(300)]
    corpus.write_text("\n".join(lines))
    assert cli.main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "320",
                     "--output", str(tmp_path / "spm")]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["vocab_size"] == 320 and trained["bos_id"] == 2
    assert cli.main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "spm.model"), "compute 12"]) == 0
    encoded = json.loads(capsys.readouterr().out)
    assert "".join(encoded["pieces"]).replace("\u2581", " ").strip() == "compute 12"


def test_bad_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": 3}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:3: field 'text' must be a string"):
        list(iter_texts([path]))
    path.write_text('{"text": "ok"}\n{"text": "unterminated}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: not valid JSON"):
        list(iter_texts([path]))
    path.write_text('{"body": "x"}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:1: missing field 'text'"):
        list(iter_texts([path]))


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "dsmath_jax.cli", "--help"], capture_output=True, text=True,
                         check=True)
    assert "usage: dsmath" in out.stdout
