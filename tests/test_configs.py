"""Every config under configs/: each argument combination it accepts builds a valid config of its kind (no
key the schema lacks, a model that `ModelConfig` accepts, data specs that the data/task validators accept, a
schedule, a mesh), its docstring names the paper result, a launch command and the hardware, every `dsmath`
command line in the docstrings and the README parses as the CLI parses it and is complete enough to start;
and every `tiny` variant runs to completion through the real entry points on the 8-device CPU mesh.

Which tiny variants run where (a variant is `file:arg`; the runs here are capped to a few steps):

  pretrain/table1_corpora.py:tiny          test_train.py::test_tiny_pretraining_lowers_the_loss (120 steps),
                                           ::test_resume_after_preemption_and_after_a_hard_kill_is_exact (CLI);
                                           test_quickstart.py (its pretrain stage)
  pretrain/table1_corpora.py:<corpus>,tiny the same config as :tiny for every corpus (asserted below)
  pretrain/deepseekmath_base_7b.py:tiny    here: test_tiny_training_variants_run
  pretrain/code_then_math.py:one_stage,tiny  here: test_tiny_training_variants_run
  pretrain/code_then_math.py:two_stage_code,tiny -> two_stage_math,tiny  here: test_tiny_two_stage_training_chains
  pretrain/arxiv_only.py:mathpile,tiny     here (arxiv_redpajama,tiny is the same config, asserted below)
  sft/deepseekmath_instruct.py:tiny        test_train.py::test_tiny_sft_lowers_the_loss
  sft/arithmetic.py:tiny                   conftest.py::arithmetic_sft_run (the policy of every RL/RM run)
  sft/arithmetic.py:small                  not a tiny variant (a GPU or a longer CPU run); it loads, below
  sft/arithmetic.py:tiny,answer_mix        test_quickstart.py (its sft stage)
  rl/grpo_outcome.py:tiny                  test_rl_loop.py::test_grpo_raises_held_out_greedy_accuracy (as it
                                           is), ::test_resume_mid_iteration_is_bitwise; test_quickstart.py
  rl/grpo_outcome.py:<data>,tiny           the same config as :tiny (asserted below)
  rl/grpo_outcome.py:tiny,answer_mix       test_quickstart.py (its grpo stage; :tiny on the answer_mix task)
  rl/grpo_process.py:tiny                  here: test_tiny_rl_variants_run (<data>,tiny: the same config)
  rl/iterative_grpo.py:tiny                test_rl_loop.py::test_iterative_grpo_with_a_prm_resumes_bitwise
  rl/iterative_grpo.py:outcome,tiny        here: test_tiny_iterative_grpo_with_an_orm_runs
  rl/paradigm.py:<arm>,tiny                test_rl_loop.py::test_paradigm_arms_run (rft, online_rft, dpo,
                                           grpo_process, sft), ::test_ppo_arm_runs (ppo);
                                           grpo_outcome,tiny here: test_tiny_rl_variants_run (-m slow)
  rm/orm.py:tiny                           test_reward_models.py::test_dsmath_rm_outcome_model; here (the ORM
                                           of test_tiny_iterative_grpo_with_an_orm_runs)
  rm/prm_math_shepherd.py:tiny             test_reward_models.py::test_dsmath_rm_end_to_end_and_rerun,
                                           test_rl_loop.py::tiny_prm; here (against soft)
  rm/prm_math_shepherd.py:soft,tiny        here: test_tiny_prm_soft_labels_agree_with_hard_labels
  eval/base_few_shot.py:tiny               test_evals.py::test_eval_command_on_a_run_directory
  eval/base_few_shot.py:pot,tiny           here: test_tiny_eval_variants_run (-m slow)
  eval/instruct_zero_shot.py:tiny, :tool,tiny  here: test_tiny_eval_variants_run (:tool,tiny with -m slow)
  eval/maj_pass_sweep.py:tiny              here: test_tiny_eval_variants_run
  mining/deepseekmath_corpus.py:tiny       test_mining.py::test_mining_loop_discovers_the_math_domain_and_an_
                                           annotated_path (`dsmath mine` and run_mining on the synthetic crawl,
                                           given as input.patterns), test_notebooks.py::mining_process
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import math
import os
import pathlib
import re
import shlex
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from conftest import REPO

CONFIGS = REPO / "configs"
CONFIG_FILES = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.py"))
# configs/<dir>/ -> the schema its files follow, and the `dsmath` command that runs them.
KIND = {"pretrain": "train", "sft": "train", "rl": "rl", "rm": "rm", "eval": "eval", "mining": "mining"}
COMMAND = {"pretrain": "pretrain", "sft": "sft", "rl": "rl", "rm": "rm", "eval": "eval", "mining": "mine"}
# Sub-trees whose keys legitimately differ from the schema's defaults; each is checked by its own validator.
FREE_FORM = {"model", "optimizer.schedule", "data.problems"}


# ------------------------------------------------------------------------------------------- discovery
@functools.cache
def config_module(path: str):
    name = "config_" + re.sub(r"\W", "_", path.removesuffix(".py"))
    spec = importlib.util.spec_from_file_location(name, CONFIGS / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def argument_choices(path: str) -> dict[str, tuple[str, ...]] | None:
    """The argument groups of a config: the `choices` its get_config gives `parse_arg`, recorded by calling
    get_config once with a recording stand-in; None for a config that does not use parse_arg."""
    module = config_module(path)
    real = getattr(module, "parse_arg", None)
    if real is None:
        return None
    seen = []

    def recording(arg, choices):
        seen.append(choices)
        return real(arg, choices)

    module.parse_arg = recording
    try:
        module.get_config(None)
    except ValueError:  # a config that needs an argument (configs/rl/paradigm.py); the choices are recorded
        pass
    finally:
        module.parse_arg = real
    assert len(seen) == 1, f"configs/{path}: get_config called parse_arg {len(seen)} times"
    return {group: tuple(values) for group, values in seen[0].items()}


def argument_combinations(path: str) -> list[str | None]:
    """Every argument a config could be given: each group absent or one of its values, with and without
    `tiny`. The mining config takes 'full' (the default) or 'tiny' without parse_arg."""
    choices = argument_choices(path)
    if choices is None:
        return [None, "tiny"]
    out = []
    for combo in itertools.product(*[(None, *values) for values in choices.values()]):
        parts = [v for v in combo if v]
        out += [",".join(parts) or None, ",".join(parts + ["tiny"])]
    return out


def _variants() -> tuple[list[tuple[str, str | None]], dict[tuple[str, str | None], str]]:
    """(accepted (file, arg) pairs, {rejected (file, arg): error}); a file that fails to import or to report its
    arguments is one rejected (file, "<load>") entry, so collection never breaks and the test below names it."""
    accepted, rejected = [], {}
    for path in CONFIG_FILES:
        try:
            combinations = argument_combinations(path)
        except Exception as e:  # noqa: BLE001  (reported by test_every_config_file_is_discovered_...)
            rejected[(path, "<load>")] = f"{type(e).__name__}: {e}"
            continue
        for arg in combinations:
            try:
                config_module(path).get_config(arg)
            except Exception as e:  # noqa: BLE001
                rejected[(path, arg)] = f"{type(e).__name__}: {e}"
            else:
                accepted.append((path, arg))
    return accepted, rejected


VARIANTS, REJECTED = _variants()


def is_tiny(arg: str | None) -> bool:
    return "tiny" in (arg or "").split(",")


def kind_of(path: str) -> str:
    return KIND[path.split("/")[0]]


def load(spec: str) -> ml_collections.ConfigDict:
    path, _, arg = spec.partition(":")
    return config_module(path).get_config(arg or None)


def test_every_config_file_is_discovered_with_its_arguments():
    assert {p.split("/")[0] for p in CONFIG_FILES} == set(KIND), CONFIG_FILES
    assert len(CONFIG_FILES) >= 16
    # The combinations a config rejects, and why: a message naming what to pass instead.
    assert {f"{p}:{a}" for p, a in REJECTED} == {"rl/paradigm.py:None", "rl/paradigm.py:tiny",
                                                 "sft/arithmetic.py:small,tiny",
                                                 "sft/arithmetic.py:small,answer_mix,tiny",
                                                 "rl/grpo_outcome.py:answer_mix"}, REJECTED
    for (path, arg), message in REJECTED.items():
        assert message.startswith("ValueError: "), f"configs/{path}:{arg}: {message}"
        if path == "rl/paradigm.py":
            assert all(arm in message for arm in argument_choices(path)["arm"]), message
        elif path == "rl/grpo_outcome.py":
            assert "tiny,answer_mix" in message, message
        else:
            assert "small" in message and "tiny" in message, message
    for path in CONFIG_FILES:
        accepted = [arg for p, arg in VARIANTS if p == path]
        assert any(not is_tiny(a) for a in accepted), f"configs/{path}: no full-scale variant loads"
        assert any(is_tiny(a) for a in accepted), f"configs/{path}: no `tiny` variant"
        for values in (argument_choices(path) or {}).values():
            for value in values:
                assert any(value in (a or "").split(",") for a in accepted), f"configs/{path}: {value} never loads"
        with pytest.raises(ValueError, match="nonsense"):
            config_module(path).get_config("nonsense")


# ------------------------------------------------------------------------------------------- schemas
def _leaves(c, prefix: str = "") -> dict[str, object]:
    """{dotted key: value} of a ConfigDict, stopping at the free-form sub-trees."""
    out = {}
    for key, value in c.items():
        name = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, dict)) and name not in FREE_FORM:
            out.update(_leaves(value, name + "."))
        else:
            out[name] = value
    return out


def base_config(path: str) -> ml_collections.ConfigDict:
    kind = kind_of(path)
    if kind == "train":
        from dsmath_jax.config.train import base_train_config
        return base_train_config()
    if kind == "rl":
        from dsmath_jax.config.rl import base_rl_config
        return base_rl_config()
    if kind == "rm":
        from dsmath_jax.config.rm import base_rm_config
        return base_rm_config()
    if kind == "eval":
        from dsmath_jax.config.eval import base_eval_config
        return base_eval_config(("gsm8k",), "few_shot_cot")
    from dsmath_jax.config.mine import base_mine_config
    return base_mine_config()


@functools.cache
def _arithmetic_problems(spec_json: str) -> int:
    from dsmath_jax.data.tasks import arithmetic_split
    train, test = arithmetic_split(json.loads(spec_json))
    return len(train) + len(test)


def check_problem_spec(spec, where: str) -> None:
    from dsmath_jax.data.tasks import problem_spec
    spec = problem_spec(spec)  # the task loader's own validation: known keys and kind
    if spec["kind"] == "arithmetic":  # generating the problems checks the knobs too (cached: ~3 s each)
        assert _arithmetic_problems(json.dumps(spec, sort_keys=True)) > 0, where


def check_schedule(schedule, total_steps: int) -> None:
    from dsmath_jax.train import schedules
    lr = schedules.from_config(schedule, total_steps)
    values = [float(lr(s)) for s in (0, total_steps // 2, total_steps)]
    assert all(np.isfinite(values)) and max(values) <= float(schedule["peak"]) * (1 + 1e-6), values


def check_mesh(c) -> None:
    from dsmath_jax.parallel import rules_from_config
    from dsmath_jax.parallel.mesh import mesh_shape
    assert math.prod(mesh_shape(c.mesh.shape.to_dict(), 8).values()) == 8
    rules_from_config(c.mesh.get("rules"))


def check_overrides(model_section) -> None:
    """RL/RM/eval model sections are compute overrides of a loaded model: ModelConfig fields and values."""
    from dsmath_jax.model import ModelConfig
    overrides = {k: v for k, v in model_section.to_dict().items() if v is not None}
    ModelConfig.from_dict({"preset": "tiny", **overrides})


def check_train(c, tiny: bool, where: str) -> None:
    from dsmath_jax.data.sft_data import SFTSource
    from dsmath_jax.data.sources import source_name
    from dsmath_jax.model import ModelConfig
    model = ModelConfig.from_dict(c.model)
    assert c.data.sources, where
    for spec in c.data.sources:
        source_name(spec)  # the data layer's validation: known keys and kind
        assert spec["weight"] > 0, where
        if spec["kind"] == "tfds":
            assert spec.get("name"), where
        if spec["kind"] == "sft":
            assert spec["sources"], where
            for sub in spec["sources"]:
                parsed = SFTSource.parse(dict(sub))
                if parsed.kind == "arithmetic":
                    check_problem_spec(dict(parsed.arithmetic, kind="arithmetic"), where)
    assert c.data.packing in ("concat", "first_fit") and c.data.overlong in ("truncate", "drop"), where
    assert c.data.seq_len <= model.max_seq_len, where
    if c.tokenizer.train_vocab_size:
        assert c.tokenizer.train_vocab_size <= model.vocab_size, where
    assert c.train.batch_size % c.train.accum_steps == 0, where
    check_schedule(c.optimizer.schedule, c.train.steps)
    if tiny:  # minutes on a CPU: the tiny model, a trained tokenizer, no dataset that must be prepared first
        assert model.num_layers <= 2 and model.d_model <= 64 and c.data.seq_len <= 256, where
        assert c.train.steps * c.train.batch_size <= 1000 * 32, where
        assert c.init.hf_dir is None and c.tokenizer.train_vocab_size, where
        assert all(s["kind"] in ("gsm8k", "math", "sft", "corpus") for s in c.data.sources), where


def check_rl(c, tiny: bool, where: str) -> None:
    from dsmath_jax.config.rl import METHODS, REWARDS
    from dsmath_jax.rl.loop import RLRun
    assert c.method in METHODS and c.reward.kind in REWARDS, where
    check_problem_spec(c.data.problems.to_dict() if hasattr(c.data.problems, "to_dict") else c.data.problems, where)
    check_overrides(c.model)
    check_schedule(c.optimizer.schedule, c.train.iterations * c.train.steps_per_iteration)
    # The run's own checks of the combination (method x reward x rm_update x group size), with the paths a
    # launch command passes filled in.
    ready = c.copy_and_resolve_references()
    ready.init.run_dir = ready.init.run_dir or "policy"
    ready.reward.rm_dir = ready.reward.rm_dir or "reward_model"
    RLRun(ready, "unused").require_paths()
    if tiny:  # minutes on a CPU: the arithmetic task, small groups, tens of steps
        assert c.data.problems["kind"] == "arithmetic" and c.rollout.group_size <= 16, where
        assert c.train.iterations * c.train.steps_per_iteration <= 100 and c.rollout.max_new_tokens <= 128, where


def check_rm(c, tiny: bool, where: str) -> None:
    from dsmath_jax.rl.math_shepherd import MODES
    from dsmath_jax.rl.reward_model import KINDS
    assert c.kind in KINDS, where
    assert c.labels.mode in (("outcome",) if c.kind == "orm" else MODES), where
    assert c.data.problems, where
    for spec in c.data.problems:
        check_problem_spec(spec, where)
    check_overrides(c.model)
    check_schedule(c.optimizer.schedule, c.train.steps)
    if tiny:
        assert c.init.rm_init_dir is None and c.train.steps <= 200 and c.data.limit_per_source <= 100, where
        assert {p["kind"] for p in c.data.problems} == {"arithmetic"}, where


def check_eval(c, tiny: bool, where: str) -> None:
    from dsmath_jax.evals.runner import EvalSpec
    EvalSpec(**c.eval.to_dict())  # the runner's validation: mode, benchmarks, ks <= n
    check_overrides(c.model_overrides)
    assert c.batch_size > 0, where
    if tiny:
        assert c.eval.limit <= 50 and c.eval.max_new_tokens <= 64 and c.model_overrides.dtype == "float32", where
        assert set(c.eval.benchmarks) <= {"gsm8k", "math"}, where  # the ones a CPU check downloads or reads


def check_mining(c, tiny: bool, where: str) -> None:
    from dsmath_jax.mining import driver
    driver.pipeline_options(c.beam)
    assert c.recall.token_budgets and all(b > 0 for b in c.recall.token_budgets), where
    assert 0 < c.domains.threshold < 1 and c.iterations.max >= 1, where
    if tiny:  # unattended on a CPU: a synthetic crawl, fractions of it, no hand annotation
        assert c.recall.budget_is_fraction and not c.domains.require_annotation, where
        assert c.classifier.bucket <= 100_000 and c.beam.runner == "DirectRunner", where


CHECKS = {"train": check_train, "rl": check_rl, "rm": check_rm, "eval": check_eval, "mining": check_mining}


def check_config(path: str, c, tiny: bool, where: str) -> None:
    assert isinstance(c, ml_collections.ConfigDict), where
    base, got = _leaves(base_config(path)), _leaves(c)
    unknown, missing = sorted(set(got) - set(base)), sorted(set(base) - set(got))
    assert not unknown and not missing, f"{where}: keys not in the schema {unknown}; schema keys missing {missing}"
    if kind_of(path) != "mining":  # Beam runs the mining pipeline; there is no device mesh
        check_mesh(c)
    CHECKS[kind_of(path)](c, tiny, where)


@pytest.mark.parametrize("path,arg", VARIANTS, ids=[f"{p}:{a}" if a else p for p, a in VARIANTS])
def test_config_variant_is_valid(path, arg):
    check_config(path, config_module(path).get_config(arg), is_tiny(arg), f"configs/{path}:{arg}")


def test_a_typo_in_a_config_fails_the_schema_check():
    c = load("rl/grpo_outcome.py:tiny")
    c.rollout.update(grup_size=8)  # ConfigDict.update adds a key it does not have
    with pytest.raises(AssertionError, match=r"keys not in the schema \['rollout.grup_size'\]"):
        check_config("rl/grpo_outcome.py", c, True, "typo")
    c = load("pretrain/table1_corpora.py:tiny")
    c.model.update(num_layer=3)
    with pytest.raises(ValueError, match="did you mean 'num_layers'"):
        check_config("pretrain/table1_corpora.py", c, True, "typo")


def test_tiny_variants_that_ignore_their_argument_are_the_same_config():
    """These tiny variants differ only in the full-scale data their argument picks, so one run (listed in
    the module docstring) stands for all of them."""
    same = [["pretrain/table1_corpora.py:tiny"] + [f"pretrain/table1_corpora.py:{c},tiny" for c in
                                                   ("mathpile", "openwebmath", "proof_pile_2", "deepseekmath_corpus")],
            ["pretrain/arxiv_only.py:mathpile,tiny", "pretrain/arxiv_only.py:arxiv_redpajama,tiny"],
            ["rl/grpo_outcome.py:tiny", "rl/grpo_outcome.py:gsm8k,tiny", "rl/grpo_outcome.py:math,tiny"],
            ["rl/grpo_process.py:tiny", "rl/grpo_process.py:gsm8k,tiny", "rl/grpo_process.py:math,tiny"],
            ["rl/iterative_grpo.py:tiny", "rl/iterative_grpo.py:process,tiny"],
            ["eval/base_few_shot.py:tiny", "eval/base_few_shot.py:cot,tiny"],
            ["eval/instruct_zero_shot.py:tiny", "eval/instruct_zero_shot.py:cot,tiny"],
            ["sft/arithmetic.py", "sft/arithmetic.py:tiny"]]
    for group in same:
        first = load(group[0]).to_dict()
        for spec in group[1:]:
            assert load(spec).to_dict() == first, spec


# ------------------------------------------------------------------------------------------- docstrings
_LAUNCH = re.compile(r"dsmath (pretrain|sft|rm|rl|eval|mine) (?=--)")


def launch_commands(text: str) -> list[list[str]]:
    """The `dsmath <command> --...` lines of a text (backslash continuations joined), split as a shell
    would, up to a closing backtick, a `;` or a comment."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        for m in _LAUNCH.finditer(line):
            command = re.split(r"`|; ", line[m.start():])[0]
            out.append(shlex.split(command, comments=True))
    return out


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_docstring_names_the_paper_result_the_launch_command_and_the_hardware(path):
    doc = config_module(path).__doc__ or ""
    where = f"configs/{path}"
    assert re.search(r"PAPER\.md|Table \d|Figure \d|§\d|Not a paper result", doc), f"{where}: no paper result"
    own = [c for c in launch_commands(doc) if any(t.startswith(f"--config=configs/{path}") for t in c)]
    assert own, f"{where}: no `dsmath {COMMAND[path.split('/')[0]]} --config=configs/{path}` launch command"
    assert {c[1] for c in own} == {COMMAND[path.split("/")[0]]}, f"{where}: launched with the wrong command"
    assert re.search(r"\b(TPU|GPU|CPU|Dataflow|vCPU)", doc), f"{where}: no hardware"
    assert re.search(r"\b(minutes?|hours?|days?)\b", doc), f"{where}: no expected time"
    assert "tiny" in doc, f"{where}: the tiny variant is not described"


def _ready_to_launch(path: str, c, where: str) -> None:
    """What a full-scale launch command must pass for its run to start, beyond a valid config."""
    kind = kind_of(path)
    if kind == "train":
        if not (c.tokenizer.path or c.init.hf_dir or c.tokenizer.train_vocab_size):
            pytest.fail(f"{where}: no tokenizer (--config.tokenizer.path, --config.init.hf_dir or "
                        "tokenizer.train_vocab_size)")
        if any(s["kind"] == "tfds" for s in c.data.sources) and not c.data.data_dir:
            pytest.fail(f"{where}: TFDS sources but no --config.data.data_dir")
    elif kind == "rl":
        from dsmath_jax.rl.loop import RLRun
        RLRun(c, "unused").require_paths()  # init.run_dir, and reward.rm_dir for a reward model
    elif kind == "rm" and not c.init.run_dir:
        pytest.fail(f"{where}: no --config.init.run_dir (the policy that generates)")


DOCUMENTS = [f"configs/{p}" for p in CONFIG_FILES] + ["README.md", "configs/README.md"]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_launch_commands_parse_and_can_start(document):
    """Every `dsmath <command> --config=configs/...` line, parsed with the CLI's own flag parsing (unknown
    override keys and bad arguments are errors), gives a valid config; a config file's own full-scale launch
    commands also pass what the run needs to start (cross-references like "then `dsmath rl --config=...
    --config.reward.rm_dir=...`" and the README's examples are only parsed)."""
    from dsmath_jax.commands.common import parse_flags
    text = config_module(document.removeprefix("configs/")).__doc__ if document.endswith(".py") else \
        (REPO / document).read_text()
    for command in launch_commands(text):
        spec = next((t.removeprefix("--config=") for t in command if t.startswith("--config=")), "")
        if not spec.startswith("configs/") or "$" in spec:  # a placeholder ("--config=...") or a shell loop
            continue
        where = f"{document}: {' '.join(command)}"
        path, _, arg = spec.removeprefix("configs/").partition(":")
        assert path in CONFIG_FILES, where
        assert command[1] == COMMAND[path.split("/")[0]], where
        argv = [f"--config={CONFIGS / path}" + (f":{arg}" if arg else "")]
        argv += [t for t in command if t.startswith("--config.")]
        c = parse_flags(argv, f"dsmath {command[1]}", workdir_required=False).config
        check_config(path, c, is_tiny(arg), where)
        if document == f"configs/{path}" and not is_tiny(arg):
            _ready_to_launch(path, c, where)


def test_the_readme_names_every_config():
    readme = (REPO / "README.md").read_text()
    assert [p for p in CONFIG_FILES if f"configs/{p}" not in readme] == []


# ------------------------------------------------------------------------------------------- tiny runs
def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """A JAX persistent compilation cache shared by this module's runs (the tiny variants compile the same
    steps), set through the environment of their processes so the test process's JAX is untouched."""
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture
def run_cli(compilation_cache):
    """`dsmath <command> --config=configs/<spec> --workdir=... --config.k=v ...`, as a user runs it (a
    process of its own on the 8-device CPU mesh); returns the run's summary.json."""
    def run(command: str, spec: str, workdir, *overrides: str) -> dict:
        path, _, arg = spec.partition(":")
        config = f"--config={CONFIGS / path}" + (f":{arg}" if arg else "")
        argv = [sys.executable, "-m", "dsmath_jax.cli", command, config, f"--workdir={workdir}", *overrides]
        # XLA_FLAGS (8 CPU devices) comes from conftest.py through os.environ
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(compilation_cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
        assert out.returncode == 0, f"{' '.join(argv[2:])}\n{out.stderr[-4000:]}"
        return json.loads((pathlib.Path(workdir) / "summary.json").read_text())
    return run


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """One TFDS directory for this module's training runs, so GSM8K and MATH are prepared once."""
    return tmp_path_factory.mktemp("tfds")


def _train_overrides(shared_data, tfds_dir, steps: int = 3) -> list[str]:
    return [f"--config.data.benchmarks_dir={shared_data / 'benchmarks'}", f"--config.data.data_dir={tfds_dir}",
            f"--config.train.steps={steps}", "--config.train.log_every=1", f"--config.train.eval_every={steps}",
            "--config.train.eval_batches=1", f"--config.train.checkpoint_every={steps}",
            "--config.train.tensorboard=False", "--config.train.async_checkpoint=False"]


def _losses(workdir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(pathlib.Path(workdir) / "metrics.jsonl") if "loss" in r}


@pytest.mark.parametrize("spec", ["pretrain/deepseekmath_base_7b.py:tiny", "pretrain/code_then_math.py:one_stage,tiny",
                                  "pretrain/arxiv_only.py:mathpile,tiny"])
def test_tiny_training_variants_run(spec, shared_data, tfds_dir, run_cli, tmp_path):
    summary = run_cli("pretrain", spec, tmp_path, *_train_overrides(shared_data, tfds_dir))
    assert summary["status"] == "completed" and summary["step"] == 3
    losses = _losses(tmp_path)
    assert sorted(losses) == [1, 2, 3] and all(np.isfinite(list(losses.values())))
    assert abs(losses[1] - math.log(512)) < 0.7, losses  # a fresh model over the 512-piece tokenizer
    evals = [r["eval_loss"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "eval_loss" in r]
    assert len(evals) == 1 and np.isfinite(evals[0])
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["3"]


@pytest.mark.slow  # CI time: each stage's config runs in CI through test_tiny_training_variants_run
def test_tiny_two_stage_training_chains(shared_data, tfds_dir, run_cli, tmp_path):
    """§5.1's two-stage arm: stage 2 (`two_stage_math`) starts from stage 1's (`two_stage_code`) checkpoint
    and tokenizer, as the docstring's launch commands say: its first loss is the trained model's, well below
    a fresh model's ln(512) = 6.24 (as the other runs' first losses are)."""
    stage1 = run_cli("pretrain", "pretrain/code_then_math.py:two_stage_code,tiny", tmp_path / "code",
                     *_train_overrides(shared_data, tfds_dir, steps=40))
    assert stage1["status"] == "completed" and stage1["loss"] < math.log(512) - 0.5, stage1
    stage2 = run_cli("pretrain", "pretrain/code_then_math.py:two_stage_math,tiny", tmp_path / "math",
                     *_train_overrides(shared_data, tfds_dir),
                     f"--config.init.checkpoint={tmp_path / 'code' / 'checkpoints'}",
                     f"--config.tokenizer.path={tmp_path / 'code' / 'tokenizer.model'}")
    assert stage2["status"] == "completed" and stage2["step"] == 3
    assert not (tmp_path / "math" / "tokenizer.model").exists()  # stage 1's tokenizer, not a new one
    assert _losses(tmp_path / "math")[1] < math.log(512) - 0.5, _losses(tmp_path / "math")


RL_CAPS = ["--config.train.steps_per_iteration=2", "--config.train.checkpoint_every=2", "--config.train.log_every=1",
           "--config.eval.every=0", "--config.eval.at_start=False", "--config.rollout.questions_per_step=4",
           "--config.rollout.max_new_tokens=48", "--config.rollout.sampler_batch_size=32",
           "--config.train.tensorboard=False", "--config.train.async_checkpoint=False"]


# CI time: paradigm.py:grpo_outcome,tiny is rl/grpo_outcome.py:tiny's GRPO (which CI runs in test_rl_loop.py and
# the quickstart) at the paradigm's settings; it runs with -m slow.
@pytest.mark.parametrize("spec", ["rl/grpo_process.py:tiny",
                                  pytest.param("rl/paradigm.py:grpo_outcome,tiny", marks=pytest.mark.slow)])
def test_tiny_rl_variants_run(spec, arithmetic_sft_run, run_cli, tmp_path):
    summary = run_cli("rl", spec, tmp_path, f"--config.init.run_dir={arithmetic_sft_run}", *RL_CAPS)
    assert summary["status"] == "completed" and summary["step"] == 2
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "reward_mean" in r]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) and r["kl"] >= 0 for r in rows)
    # rule and step rewards are 0/1 per answer or step
    assert all(0 <= r["reward_mean"] <= 1 and 0 <= r["accuracy"] <= 1 for r in rows)
    if "grpo_process" in spec:
        assert all(0 <= r["step_reward_mean"] <= 1 and r["steps_per_response"] >= 1 for r in rows)


RM_CAPS = ["--config.data.limit_per_source=6", "--config.sampling.samples_per_problem=2",
           "--config.sampling.max_new_tokens=40", "--config.sampling.batch_size=16", "--config.train.steps=1",
           "--config.train.batch_size=8", "--config.train.eval_every=0", "--config.train.checkpoint_every=1",
           "--config.train.tensorboard=False", "--config.train.async_checkpoint=False", "--config.data.seq_len=128"]


@pytest.mark.slow
def test_tiny_iterative_grpo_with_an_orm_runs(arithmetic_sft_run, run_cli, tmp_path):
    """`iterative_grpo.py:outcome,tiny`: the ORM of `rm/orm.py:tiny` scores the samples and continues
    training (with replay) after each of the 2 iterations (of one step each here). In CI,
    tests/test_full_scale_flags.py runs `iterative_grpo.py:outcome` with its full-scale flags the same way."""
    orm = run_cli("rm", "rm/orm.py:tiny", tmp_path / "orm", f"--config.init.run_dir={arithmetic_sft_run}", *RM_CAPS)
    assert orm["status"] == "completed" and orm["kind"] == "orm"
    summary = run_cli("rl", "rl/iterative_grpo.py:outcome,tiny", tmp_path / "rl",
                      f"--config.init.run_dir={arithmetic_sft_run}", f"--config.reward.rm_dir={tmp_path / 'orm'}",
                      "--config.rm_update.steps=2", "--config.rm_update.batch_size=8",
                      *[a for a in RL_CAPS if not a.startswith(("--config.train.steps_per", "--config.train.checkp"))],
                      "--config.train.steps_per_iteration=1", "--config.train.checkpoint_every=1")
    assert summary["status"] == "completed" and summary["step"] == 2
    rows = read_jsonl(tmp_path / "rl" / "metrics.jsonl")
    assert len([r for r in rows if "rm_loss" in r]) == 2  # one reward-model update per iteration
    assert all(np.isfinite(r["rm_loss"]) for r in rows if "rm_loss" in r)


@pytest.mark.slow  # CI time (~80 s): hard Math-Shepherd labels run in CI (rm_prm_hard, the iterative tests)
def test_tiny_prm_soft_labels_agree_with_hard_labels(arithmetic_sft_run, run_cli, tmp_path):
    """`prm_math_shepherd.py:soft,tiny` and `:tiny` on the same samples and continuations (same seeds): a
    soft label is the fraction of n = 2 continuations that reach the answer, so it lies in {0, 1/2, 1},
    and the hard label is exactly (soft > 0); the last step carries the solution's own verdict."""
    from dsmath_jax.commands.rm import load_labels
    labels = {}
    for mode, spec in (("soft", "rm/prm_math_shepherd.py:soft,tiny"), ("hard", "rm/prm_math_shepherd.py:tiny")):
        summary = run_cli("rm", spec, tmp_path / mode, f"--config.init.run_dir={arithmetic_sft_run}", *RM_CAPS,
                          "--config.labels.n=2", "--config.labels.max_new_tokens=24")
        assert summary["status"] == "completed" and summary["kind"] == "prm" and summary["step"] == 1
        labels[mode], _, _ = load_labels(str(tmp_path / mode / "labels.npz"))
    assert len(labels["soft"]) == len(labels["hard"]) == 12  # 6 problems x 2 samples
    for soft, hard in zip(labels["soft"], labels["hard"]):
        np.testing.assert_array_equal(soft["tokens"], hard["tokens"])
        assert set(np.unique(soft["step_labels"][:-1])) <= {0.0, 0.5, 1.0}
        np.testing.assert_array_equal(hard["step_labels"][:-1], (soft["step_labels"][:-1] > 0).astype(np.float32))
        assert soft["step_labels"][-1] == hard["step_labels"][-1] == soft["label"]


@pytest.fixture(scope="module")
def tiny_eval_run(tmp_path_factory, shared_data):
    """A run directory as `dsmath eval --model=` reads it: a fresh tiny model with a long enough context for
    the few-shot prompts and a tokenizer trained on GSM8K."""
    from flax import nnx

    from dsmath_jax.data.tokenizers import train_sentencepiece
    from dsmath_jax.model import CausalLM, get_params, get_preset
    from dsmath_jax.train.checkpoint import Checkpointer
    run = tmp_path_factory.mktemp("eval_run")
    rows = read_jsonl(shared_data / "benchmarks" / "gsm8k" / "train.jsonl")[:1500]
    tok = train_sentencepiece([f"{r['question']}\n{r['answer']}" for r in rows], run / "tokenizer", vocab_size=512)
    model = CausalLM(get_preset("tiny", vocab_size=512, max_seq_len=4096), rngs=nnx.Rngs(0))
    (run / "config.json").write_text(json.dumps({"model": model.config.to_dict()}))
    (run / "tokenizer.model").write_bytes(open(tok.path, "rb").read())
    with Checkpointer(run / "checkpoints") as ckpt:
        ckpt.save(1, {"params": get_params(model)})
        ckpt.wait()
    return run


# CI time: the PoT and tool modes' prompts, program execution and grading run in CI against DeepSeek's harness
# (test_deepseek_protocol.py, test_deepseek_tool.py); their tiny configs run end to end with -m slow.
@pytest.mark.parametrize("spec,mode", [pytest.param("eval/base_few_shot.py:pot,tiny", "few_shot_pot",
                                                    marks=pytest.mark.slow),
                                       ("eval/instruct_zero_shot.py:tiny", "zero_shot_cot"),
                                       pytest.param("eval/instruct_zero_shot.py:tool,tiny", "tool",
                                                    marks=pytest.mark.slow),
                                       ("eval/maj_pass_sweep.py:tiny", "zero_shot_cot")])
def test_tiny_eval_variants_run(spec, mode, tiny_eval_run, shared_data, run_cli, tmp_path):
    config = load(spec)
    # 2 problems; their rows rounded up to a multiple of the 8 devices, so the batch shards over them (the
    # tiny batch of 20 does not divide 8 and is computed on every device: minutes for ~2.7K-token PoT prompts)
    rows = -(-2 * config.eval.n // 8) * 8
    summary = run_cli("eval", spec, tmp_path, f"--model={tiny_eval_run}",
                      f"--config.benchmarks_dir={shared_data / 'benchmarks'}", "--config.eval.limit=2",
                      f"--config.batch_size={rows}")
    assert [(r["benchmark"], r["problems"]) for r in summary["results"]] == [("gsm8k", 2), ("math", 2)]
    for result in summary["results"]:
        rows = read_jsonl(tmp_path / f"{result['benchmark']}.{mode}.jsonl")
        assert len(rows) == 2 * config.eval.n and all({"completion", "extracted", "gold"} <= set(r) for r in rows)
        by_problem = {}
        for r in rows:
            by_problem.setdefault(r["id"], []).append(r["correct"])
        if config.eval.n == 1:
            assert result["accuracy"] == np.mean([r["correct"] for r in rows])
        else:  # Figure 7: pass@k never falls as k grows; pass@n is "any of the n samples is right"
            passes = [result[f"pass@{k}"] for k in config.eval.ks]
            assert passes == sorted(passes) and all(f"maj@{k}" in result for k in config.eval.ks)
            assert result[f"pass@{config.eval.n}"] == np.mean([any(v) for v in by_problem.values()])
