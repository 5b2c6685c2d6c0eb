"""The evaluation harness: benchmark registry, protocol prompts, end-to-end runs and `dsmath eval`."""

import json
import pathlib

import numpy as np
import pytest
from flax import nnx

from dsmath_jax import cli
from dsmath_jax.data.tokenizers import train_sentencepiece
from dsmath_jax.evals.benchmarks import BENCHMARKS, few_shot_text, load_benchmark
from dsmath_jax.evals.prompts import build_prompt
from dsmath_jax.evals.runner import EvalSpec, run_eval
from dsmath_jax.generate import Sampler
from dsmath_jax.model import CausalLM, get_params, get_preset
from dsmath_jax.train.checkpoint import Checkpointer

COUNTS = {"gsm8k": 1319, "math": 5000, "math500": 500, "cmath": 1098, "mgsm_zh": 250, "gaokao_mathcloze": 118,
          "gaokao_mathqa": 351, "sat": 32, "ocw": 272, "mmlu_stem": 3018}


def test_every_benchmark_loads_with_its_gold(shared_data):
    data = shared_data / "benchmarks"
    assert set(BENCHMARKS) == set(COUNTS)
    for name, count in COUNTS.items():
        problems = load_benchmark(name, data)
        assert len(problems) == count, name
        assert all(p.gold for p in problems), name
    assert load_benchmark("gsm8k", data)[0].gold == "18"
    assert load_benchmark("math500", data)[0].gold == "\\left( 3, \\frac{\\pi}{2} \\right)"
    mmlu = load_benchmark("mmlu_stem", data)[0]
    assert mmlu.gold == "B" and mmlu.options == ["0", "4", "2", "6"] and mmlu.subject == "abstract_algebra"
    sat = load_benchmark("sat", data)[0]
    assert sat.options[0] == "$f(-6)=0$" and len(sat.options) == 4 and "(B) $f(6)=-6$" in sat.question
    math = load_benchmark("math", data, limit=3)
    assert len(math) == 3 and math[0].subject == "Algebra" and math[0].level == "Level 3"


def test_missing_or_malformed_benchmark_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="gsm8k/test.jsonl"):
        load_benchmark("gsm8k", tmp_path)
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "x #### 3"}\n{"question": "q2"}\n')
    with pytest.raises(ValueError, match=r"test.jsonl:2: cannot read a gsm8k problem: .*missing field 'answer'"):
        load_benchmark("gsm8k", tmp_path)
    with pytest.raises(KeyError, match="did you mean 'gsm8k'"):
        load_benchmark("gsm8", tmp_path)


def test_prompts_follow_the_protocol(shared_data):
    gsm = load_benchmark("gsm8k", shared_data / "benchmarks", limit=1)[0]
    prompt, stops = build_prompt(BENCHMARKS["gsm8k"], gsm, "few_shot_cot")
    exemplars = (shared_data / "few_shot" / "cot_gsm_8_shot.txt").read_text()
    assert prompt == exemplars + f"\n\n\nQ: {gsm.question}\nA:" and stops == ("\nQ:",)
    assert few_shot_text("cot_gsm_8_shot.txt") == exemplars  # shipped as package data, unchanged
    prompt, _ = build_prompt(BENCHMARKS["math"], load_benchmark("math", shared_data / "benchmarks", limit=1)[0],
                             "zero_shot_cot")
    assert prompt.startswith("User: How many vertical asymptotes")
    assert prompt.endswith("\nPlease reason step by step, and put your final answer within \\boxed{}.\n\nAssistant:")
    cm = load_benchmark("cmath", shared_data / "benchmarks", limit=1)[0]
    assert "\\boxed{}中。" in build_prompt(BENCHMARKS["cmath"], cm, "tool")[0]
    with pytest.raises(ValueError, match="no few_shot_cot exemplars"):
        build_prompt(BENCHMARKS["mgsm_zh"], cm, "few_shot_cot")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, shared_data):
    rows = [json.loads(line) for line in (shared_data / "benchmarks" / "gsm8k" / "train.jsonl").open()][:1500]
    tok = train_sentencepiece([f"{r['question']}\n{r['answer']}" for r in rows], tmp_path_factory.mktemp("t") / "spm",
                              vocab_size=512)
    model = CausalLM(get_preset("tiny", vocab_size=512, max_seq_len=4096), rngs=nnx.Rngs(0))
    return model, tok


def test_end_to_end_eval_writes_results(tiny_lm, shared_data, tmp_path):
    model, tok = tiny_lm
    sampler = Sampler(model, tok, batch_size=20, chunk_size=16)
    spec = EvalSpec(benchmarks=["gsm8k", "math"], mode="few_shot_cot", max_new_tokens=16, limit=20)
    summary = run_eval(sampler, spec, str(tmp_path), data_dir=str(shared_data / "benchmarks"))
    assert [r["benchmark"] for r in summary["results"]] == ["gsm8k", "math"]
    for name in ("gsm8k", "math"):
        rows = [json.loads(line) for line in (tmp_path / f"{name}.few_shot_cot.jsonl").open()]
        assert len(rows) == 20
        assert {"prompt", "completion", "extracted", "gold", "correct"} <= set(rows[0])
        result = next(r for r in summary["results"] if r["benchmark"] == name)
        assert result["accuracy"] == sum(r["correct"] for r in rows) / 20
    assert "| gsm8k | few_shot_cot | deepseek | 20 |" in (tmp_path / "summary.md").read_text()
    math_breakdown = summary["results"][1]["breakdown"]
    assert sum(v[1] for v in math_breakdown["level"].values()) == 20


def test_sampled_eval_reports_pass_and_maj_at_k(tiny_lm, shared_data, tmp_path):
    model, tok = tiny_lm
    sampler = Sampler(model, tok, batch_size=16, chunk_size=8)
    spec = EvalSpec(benchmarks=["gsm8k"], mode="zero_shot_cot", n=4, temperature=1.0, max_new_tokens=8, limit=4,
                    ks=(1, 4))
    summary = run_eval(sampler, spec, str(tmp_path), data_dir=str(shared_data / "benchmarks"))
    rows = [json.loads(line) for line in (tmp_path / "gsm8k.zero_shot_cot.jsonl").open()]
    assert len(rows) == 16 and sorted({r["sample"] for r in rows}) == [0, 1, 2, 3]
    result = summary["results"][0]
    per_problem = {}
    for r in rows:
        per_problem.setdefault(r["id"], []).append(r["correct"])
    # pass@4 with n = 4 is the share of problems with any correct sample (independent of the estimator).
    assert result["pass@4"] == np.mean([any(v) for v in per_problem.values()])
    assert result["pass@1"] == pytest.approx(np.mean([np.mean(v) for v in per_problem.values()]))
    # maj@4 against majority_vote over each problem's four extracted answers.
    from dsmath_jax.evals.grader import Grader
    from dsmath_jax.evals.metrics import majority_vote
    with Grader(max_workers=1) as grader:
        maj = []
        for pid in per_problem:
            samples = [r for r in rows if r["id"] == pid]
            winner, _ = majority_vote([r["extracted"] for r in samples],
                                      lambda a, b: grader.same_answer(a, b, "number"))
            maj.append(next((r["correct"] for r in samples if r["extracted"] == winner), False))
    assert result["maj@4"] == np.mean(maj)


def test_eval_command_on_a_run_directory(tiny_lm, shared_data, tmp_path):
    """`dsmath eval` loads what a training run writes (config.json, tokenizer.model, checkpoints/)."""
    model, tok = tiny_lm
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": model.config.to_dict()}))
    (run / "tokenizer.model").write_bytes(open(tok.path, "rb").read())
    with Checkpointer(run / "checkpoints") as ckpt:
        ckpt.save(7, {"params": get_params(model)})
        ckpt.wait()
    out = tmp_path / "eval"
    config = pathlib.Path(__file__).resolve().parents[1] / "configs" / "eval" / "base_few_shot.py"
    code = cli.main(["eval", f"--config={config}:tiny", f"--model={run}", f"--workdir={out}",
                     f"--config.benchmarks_dir={shared_data / 'benchmarks'}", "--config.eval.limit=4",
                     "--config.eval.max_new_tokens=8"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["problems"] for r in summary["results"]] == [4, 4] and summary["model"] == str(run)


@pytest.mark.parametrize("mode", ["few_shot_pot", "tool"])
def test_program_modes_run_end_to_end(tiny_lm, shared_data, tmp_path, mode):
    """PoT programs and tool-integrated rounds go through the sandbox; whatever a random model writes is
    recorded (its program error, the rounds it used) and graded."""
    model, tok = tiny_lm
    sampler = Sampler(model, tok, batch_size=4, chunk_size=8)
    spec = EvalSpec(benchmarks=["gsm8k"], mode=mode, max_new_tokens=8, limit=2)
    summary = run_eval(sampler, spec, str(tmp_path), data_dir=str(shared_data / "benchmarks"))
    rows = [json.loads(line) for line in (tmp_path / f"gsm8k.{mode}.jsonl").open()]
    assert len(rows) == 2 and summary["results"][0]["problems"] == 2
    if mode == "few_shot_pot":
        assert all("program_error" in r and "program_output" in r for r in rows)
        assert all(r["program_error"] for r in rows if not r["program_output"])
    else:
        assert all(r["rounds"] in (0, 1, 2) for r in rows)
    assert summary["results"][0]["accuracy"] == np.mean([r["correct"] for r in rows])
