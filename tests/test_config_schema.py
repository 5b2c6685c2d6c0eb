"""The config package (dsmath_jax/config): every experiment file loads and validates through the one loader
against its command's schema; bad keys, types, choices and ranges are ConfigErrors naming the key and the
file; `--config.a.b=v` overrides parse as ml_collections' config_flags parses them; the commands, the
quickstart and the sweeps load through the same loader (their errors carry the loader's message)."""

from __future__ import annotations

import importlib.util
import inspect
import pathlib
import re
import shutil
import sys

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags
from ml_collections.config_dict import placeholder

from dsmath_jax import quickstart as Q
from dsmath_jax.commands.common import UsageError, config_spec, parse_flags
from dsmath_jax.config import SCHEMAS, ConfigError, load_config
from dsmath_jax.config import eval as eval_schema
from dsmath_jax.config import rl as rl_schema
from dsmath_jax.config import rm as rm_schema
from dsmath_jax.config import train as train_schema
from dsmath_jax.config.loader import FOLDER_COMMANDS, apply_overrides, command_of, config_module

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# Every experiment file with the arguments its docstring and the tests use (the default where it has one).
ARGUMENTS = {
    "pretrain/table1_corpora.py": [None, "tiny", "mathpile", "openwebmath", "proof_pile_2", "deepseekmath_corpus",
                                   "openwebmath,tiny", "deepseekmath_corpus,tiny"],
    "pretrain/arxiv_only.py": [None, "tiny", "mathpile", "arxiv_redpajama", "mathpile,tiny"],
    "pretrain/code_then_math.py": [None, "tiny", "two_stage_code", "two_stage_math", "one_stage",
                                   "two_stage_math,tiny", "one_stage,tiny"],
    "pretrain/deepseekmath_base_7b.py": [None, "tiny"],
    "sft/arithmetic.py": [None, "tiny", "small", "tiny,answer_mix"],
    "sft/deepseekmath_instruct.py": [None, "tiny"],
    "rl/grpo_outcome.py": [None, "tiny", "gsm8k", "math", "math,tiny", "tiny,answer_mix"],
    "rl/grpo_process.py": [None, "tiny", "math", "math,tiny"],
    "rl/iterative_grpo.py": [None, "tiny", "process", "outcome", "outcome,tiny"],
    "rl/paradigm.py": [f"{arm}{tiny}" for arm in ("sft", "rft", "online_rft", "dpo", "ppo", "grpo_outcome",
                                                 "grpo_process") for tiny in ("", ",tiny")],
    "rm/orm.py": [None, "tiny"],
    "rm/prm_math_shepherd.py": [None, "tiny", "soft", "soft,tiny"],
    "eval/base_few_shot.py": [None, "tiny", "cot", "pot", "pot,tiny"],
    "eval/instruct_zero_shot.py": [None, "tiny", "tool", "tool,tiny"],
    "eval/maj_pass_sweep.py": [None, "tiny"],
    "mining/deepseekmath_corpus.py": [None, "tiny"],
}
VARIANTS = [(path, arg) for path, args in ARGUMENTS.items() for arg in args]
GRPO_TINY = str(CONFIGS / "rl/grpo_outcome.py") + ":tiny"


def _sweep():
    spec = importlib.util.spec_from_file_location("launch_sweep", REPO / "experiments" / "launch" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["launch_sweep"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_config_file_is_listed_and_has_a_command():
    files = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.py"))
    assert files == sorted(ARGUMENTS)
    assert set(FOLDER_COMMANDS.values()) == set(SCHEMAS)
    for path in files:
        assert command_of(f"configs/{path}") in SCHEMAS, path


@pytest.mark.parametrize("path,arg", VARIANTS, ids=[f"{p}:{a}" if a else p for p, a in VARIANTS])
def test_config_variant_loads_and_validates(path, arg):
    command = command_of(path)
    config = load_config(f"{path}:{arg}" if arg else path, command=command, root=CONFIGS)
    assert isinstance(config, ml_collections.ConfigDict) and config.is_locked
    SCHEMAS[command].validate(config)  # what the loader ran, once more: no state in the check


def test_schemas_have_typed_fields_and_their_bases_validate_their_own_keys():
    assert set(SCHEMAS) == {"pretrain", "sft", "rm", "rl", "eval", "mine"}

    def leaves(c, prefix=""):
        for key, value in c.items():
            if isinstance(value, ml_collections.ConfigDict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", c.get_type(key)
    for command, schema in SCHEMAS.items():
        untyped = [key for key, kind in leaves(schema.base()) if kind is type(None)]
        assert untyped == [], f"{command}: None defaults without placeholder(type): {untyped}"


# ------------------------------------------------------------------------------------------- errors
def _error(spec: str, overrides, command: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(spec, overrides, command=command)
    return str(e.value)


def test_an_unknown_override_key_names_the_key_and_the_file():
    message = _error(GRPO_TINY, ["train.steps_per_iteraton=3"], "rl")
    assert "train.steps_per_iteraton" in message and "grpo_outcome.py:tiny" in message
    assert "did you mean 'train.steps_per_iteration'" in message
    assert "rollout.nope" in _error(GRPO_TINY, {"rollout.nope": 1}, "rl")


@pytest.mark.parametrize("override,expected", [
    ("train.mu=two", r"train\.mu='two': not a valid int"),
    ("train.mu=1.5", r"train\.mu='1\.5': not a valid int"),
    ("loss.beta=high", r"loss\.beta='high': not a valid float"),
    ("train.tensorboard=maybe", r"train\.tensorboard='maybe': not a valid bool"),
])
def test_a_wrongly_typed_override_names_the_key_and_the_file(override, expected):
    message = _error(GRPO_TINY, [override], "rl")
    assert "grpo_outcome.py:tiny" in message
    assert re.search(expected, message), message


def test_a_wrongly_typed_mapping_value_and_a_none_in_a_required_field_are_errors():
    assert "train.mu" in _error(GRPO_TINY, {"train.mu": 1.5}, "rl")
    message = _error(GRPO_TINY, {"train.mu": None}, "rl")
    assert "train.mu=None" in message and "not optional" in message
    assert "train.mu=True" in _error(GRPO_TINY, {"train.mu": True}, "rl")  # a bool is no count


@pytest.mark.parametrize("spec,command,key,value,allowed", [
    ("rl/grpo_outcome.py:tiny", "rl", "method", "reinforce", "grpo"),
    ("rl/grpo_outcome.py:tiny", "rl", "reward.kind", "human", "step_rule"),
    ("rl/grpo_outcome.py:tiny", "rl", "loss.kl_estimator", "k4", "k3"),
    ("rl/grpo_outcome.py:tiny", "rl", "loss.aggregation", "median", "token_mean"),
    ("rl/grpo_outcome.py:tiny", "rl", "optimizer.schedule.name", "linear", "multi_step"),
    ("eval/base_few_shot.py:tiny", "eval", "eval.mode", "five_shot", "few_shot_pot"),
    ("eval/base_few_shot.py:tiny", "eval", "eval.protocol", "lenient", "strict"),
    ("sft/arithmetic.py:tiny", "sft", "data.packing", "greedy", "first_fit"),
    ("rm/prm_math_shepherd.py:tiny", "rm", "labels.mode", "outcome", "soft"),
    ("mining/deepseekmath_corpus.py:tiny", "mine", "synthetic.source", "nope", "arithmetic"),
])
def test_a_bad_choice_names_the_key_the_value_and_what_is_allowed(spec, command, key, value, allowed):
    message = _error(str(CONFIGS / spec), {key: value}, command)
    assert f"{key}={value!r} is not one of" in message and allowed in message, message
    assert spec in message


@pytest.mark.parametrize("spec,command,key,value", [
    ("rl/grpo_outcome.py:tiny", "rl", "rollout.group_size", 0),
    ("rl/grpo_outcome.py:tiny", "rl", "train.steps_per_iteration", 0),
    ("rl/grpo_outcome.py:tiny", "rl", "rollout.top_p", 1.5),
    ("rl/grpo_outcome.py:tiny", "rl", "eval.every", -1),
    ("pretrain/table1_corpora.py:tiny", "pretrain", "train.steps", 0),
    ("pretrain/table1_corpora.py:tiny", "pretrain", "data.max_drop_fraction", 1.5),
    ("rm/orm.py:tiny", "rm", "data.validation_fraction", 1.0),
    ("eval/maj_pass_sweep.py:tiny", "eval", "eval.n", 0),
    ("mining/deepseekmath_corpus.py:tiny", "mine", "iterations.max", 0),
])
def test_an_out_of_range_value_names_the_key(spec, command, key, value):
    message = _error(str(CONFIGS / spec), {key: value}, command)
    assert f"{key}={value!r}: must" in message and spec in message, message


def test_zero_turns_off_what_it_may_and_cross_field_checks_name_both_keys():
    load_config(GRPO_TINY, {"eval.every": 0, "rollout.top_k": 0}, command="rl")
    assert "eval.ks" in _error(str(CONFIGS / "eval/maj_pass_sweep.py:tiny"), {"eval.n": 4}, "eval")  # k = 8 > n
    message = _error(str(CONFIGS / "pretrain/table1_corpora.py:tiny"), {"train.accum_steps": 3}, "pretrain")
    assert "train.batch_size=16" in message and "train.accum_steps=3" in message
    assert "model's max_seq_len" in _error(str(CONFIGS / "pretrain/table1_corpora.py:tiny"),
                                             {"data.seq_len": 4096}, "pretrain")


def _write_config(tmp_path, body: str) -> pathlib.Path:
    path = tmp_path / "rl" / "custom.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('"""A test config."""\n\nfrom dsmath_jax.config.rl import base_rl_config, tiny_rl_overrides\n\n\n'
                    f"def get_config(arg=None):\n    c = tiny_rl_overrides(base_rl_config())\n{body}    return c\n")
    return path


def test_a_key_a_config_file_adds_or_drops_is_an_error_naming_the_key_and_the_file(tmp_path):
    path = _write_config(tmp_path, "    c.rollout.update(grup_size=8)\n")
    message = _error(str(path), (), "rl")
    assert str(path) in message and "rollout.grup_size: not a key of the schema" in message
    assert "did you mean rollout.group_size" in message
    load_config(str(path), ())  # without a command nothing is validated; the config still loads and locks
    path = _write_config(tmp_path, "    del c.ppo['gamma']\n")
    assert "ppo.gamma: missing" in _error(str(path), (), "rl")
    path = _write_config(tmp_path, "    c.loss.beta = None\n    c.train.mu = True\n")  # ml_collections takes both
    assert "loss.beta=None: expected float (the field is not optional)" in _error(str(path), (), "rl")
    path = _write_config(tmp_path, "    c.train.mu = True\n")
    assert "train.mu=True: expected int, got bool" in _error(str(path), (), "rl")
    path = _write_config(tmp_path, "    c.loss.beta = 'high'\n")  # ml_collections refuses it in get_config
    message = _error(str(path), (), "rl")
    assert str(path) in message and "get_config failed: TypeError" in message and "'beta'" in message


def test_files_and_arguments_that_do_not_load_are_errors_naming_them(tmp_path):
    assert "config file" in _error(str(tmp_path / "missing.py"), (), "rl")
    message = _error(str(CONFIGS / "rl/grpo_outcome.py:bogus"), (), "rl")
    assert "grpo_outcome.py:bogus" in message and "unknown config argument 'bogus'" in message
    (tmp_path / "no_get_config.py").write_text("X = 1\n")
    assert "has no get_config()" in _error(str(tmp_path / "no_get_config.py"), (), "rl")
    assert "expected KEY=VALUE" in _error(GRPO_TINY, ["train.mu"], "rl")
    with pytest.raises(ConfigError, match="no config schema for the command 'train'"):
        load_config(GRPO_TINY, command="train")


# ------------------------------------------------------------------------------------------- parsing
def _by_config_flags(config: ml_collections.ConfigDict, key: str, text: str):
    values = flags.FlagValues()
    argv = ["prog", f"--cfg.{key}={text}"]
    config_flags.DEFINE_config_dict("cfg", config, flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    return values.cfg[key]


def _fresh() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(flag=True, count=3, rate=0.5, name="a", items=("x",), maybe=placeholder(int)))


@pytest.mark.parametrize("key,text", [
    ("flag", "true"), ("flag", "false"), ("flag", "1"), ("flag", "0"), ("flag", "True"), ("flag", "f"),
    ("count", "7"), ("count", "-2"), ("count", "0x10"), ("count", "1_000"),
    ("rate", "1e-4"), ("rate", "2"), ("rate", "-0.25"),
    ("name", "abc"), ("name", "a b"), ("name", "12"), ("name", "gs://b/x*.jsonl"),
    ("items", "('a', 'b')"), ("items", "(1, 2.5)"), ("items", "a/*.warc.gz"), ("items", "3"), ("items", "[1, 2]"),
    ("maybe", "4"), ("maybe", "0o17"),
])
def test_override_values_parse_as_config_flags_parses_them(key, text):
    ours = _fresh()
    apply_overrides(ours, [f"{key}={text}"])
    expected = _by_config_flags(_fresh(), key, text)
    assert ours[key] == expected and type(ours[key]) is type(expected), (key, text, ours[key], expected)


def test_none_sets_none_and_the_schema_decides_where_it_may():
    c = _fresh()
    apply_overrides(c, ["maybe=None", "name=None"])
    assert c.maybe is None and c.name is None  # config_flags keeps the string "None" in a str field
    load_config(str(CONFIGS / "sft/deepseekmath_instruct.py"), ["init.hf_dir=None", "tokenizer.train_vocab_size=512"],
                command="sft")
    assert "data.seq_len=None" in _error(str(CONFIGS / "sft/arithmetic.py:tiny"), ["data.seq_len=None"], "sft")


def test_overrides_of_lists_sections_and_bools_on_the_command_line():
    argv = [f"--config={GRPO_TINY}", "--config.rollout.stop_strings=('\\n\\n',)", "--noconfig.train.tensorboard",
            "--config.loss.scale_advantages", "--config.optimizer.schedule={'name': 'cosine', 'peak': 1e-4}",
            "--config.train.mu", "2", "--workdir=w"]
    values = parse_flags(argv, "dsmath rl")
    c = values.config
    assert c.rollout.stop_strings == ("\n\n",) and c.train.tensorboard is False and c.loss.scale_advantages is True
    assert c.optimizer.schedule.to_dict() == {"name": "cosine", "peak": 1e-4} and c.train.mu == 2
    assert config_spec(values) == GRPO_TINY and values.workdir == "w"


def test_a_train_configs_model_takes_architecture_overrides_on_top_of_its_preset():
    """Every `ModelConfig` field is a typed placeholder of a pretrain / SFT config's `model` section: the command
    line (and the quickstart's --set) can change the architecture of a preset, e.g. a tiny model twice as deep."""
    from dsmath_jax.model import ModelConfig
    from dsmath_jax.model.config import get_preset
    arithmetic = str(CONFIGS / "sft/arithmetic.py:tiny")
    argv = [f"--config={arithmetic}", "--config.model.num_layers=4", "--config.model.d_model=128",
            "--config.model.rope_theta=500000", "--workdir=w"]
    c = parse_flags(argv, "dsmath sft").config
    model = ModelConfig.from_dict(c.model)
    assert model == get_preset("tiny").replace(num_layers=4, d_model=128, rope_theta=500000.0, vocab_size=512,
                                               max_seq_len=256)
    assert "model.num_layers='four': not a valid int" in _error(arithmetic, ["model.num_layers=four"], "sft")
    assert "did you mean 'model.num_layers'" in _error(arithmetic, ["model.num_layerz=4"], "sft")
    stage = Q.pretrain_config("w", Q.Options(overrides={"pretrain": {"model.num_layers": "4"}}))
    assert ModelConfig.from_dict(stage.model).num_layers == 4


# ------------------------------------------------------------------------------------------- one loader
def test_the_commands_the_quickstart_and_the_sweep_report_the_loaders_errors(tmp_path):
    bad_type = _error(GRPO_TINY, ["train.steps_per_iteration=x"], "rl")
    loader_says = bad_type.split(": ", 1)[1]  # without the file, which each caller names its own way
    with pytest.raises(UsageError) as usage:
        parse_flags([f"--config={GRPO_TINY}", "--config.train.steps_per_iteration=x", "--workdir=w"], "dsmath rl")
    assert str(usage.value) == f"dsmath rl: {bad_type}"
    with pytest.raises(Q.QuickstartError) as quick:
        Q.run_quickstart(str(tmp_path / "q"), overrides={"grpo": {"train.steps_per_iteration": "x"}})
    assert str(quick.value) == f"the grpo config: {loader_says}"
    sweep = _sweep()
    with pytest.raises(sweep.SweepError) as swept:
        sweep.build("configs/rl/grpo_outcome.py", sweep.Options(root="r", args=["tiny"], policy="p",
                                                                 sets=[("train.steps_per_iteration", "x")]))
    assert str(swept.value).endswith(loader_says) and "grpo_outcome.py:tiny" in str(swept.value)
    with pytest.raises(sweep.SweepError, match=r"train.steps=0: must be >= 1"):
        sweep.build("table1", sweep.Options(root="r", tiny=True, sets=[("train.steps", "0")]))
    # A --configs_dir whose file adds a key: the quickstart says what the loader says, naming the file.
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    sft = configs / "sft" / "arithmetic.py"
    sft.write_text(sft.read_text().replace("    return arithmetic_sft_config(", "    c = arithmetic_sft_config(")
                   + "    c.train.update(warmup=3)\n    return c\n")
    with pytest.raises(Q.QuickstartError,
                       match=r"sft/arithmetic.py:tiny,answer_mix: train.warmup: not a key of the schema"):
        Q.load_config(Q.STAGE_CONFIGS["sft"], configs)


def test_packaged_quickstart_configs_go_through_the_loader():
    c = Q.load_config(Q.STAGE_CONFIGS["grpo"])
    assert c.is_locked
    with pytest.raises(Q.QuickstartError, match=r"the grpo config: rollout.group_size=0: must be >= 1"):
        Q.apply_overrides(c, {"rollout.group_size": "0"}, "grpo")


# ------------------------------------------------------------------------------------------- choices
def test_the_schemas_choices_are_the_implementations():
    from dsmath_jax.evals import prompts, runner
    from dsmath_jax.rl import losses, math_shepherd, reward_model
    from dsmath_jax.train import schedules
    assert tuple(losses.KL_ESTIMATORS) == rl_schema.KL_ESTIMATORS
    assert losses.AGGREGATIONS is rl_schema.AGGREGATIONS and losses.RATIOS is rl_schema.RATIOS
    assert prompts.MODES is runner.MODES is eval_schema.MODES and runner.PROTOCOLS is eval_schema.PROTOCOLS
    assert reward_model.KINDS is rm_schema.KINDS and math_shepherd.MODES is rm_schema.LABEL_MODES["prm"]
    for name, extra in train_schema.SCHEDULES.items():  # each schedule takes exactly its listed keys
        fn = getattr(schedules, name)
        keys = {p for p in inspect.signature(fn).parameters if p not in ("peak", "total_steps")}
        assert keys == {"warmup_steps", *extra}, name
        schedules.from_config({"name": name, "peak": 1e-3, "warmup_steps": 1}, 10)
    with pytest.raises(ValueError, match="multi_step"):
        schedules.from_config({"name": "linear", "peak": 1e-3}, 10)


def test_config_module_reads_an_experiment_files_constants():
    assert config_module("pretrain/table1_corpora.py", CONFIGS).CORPORA[-1] == "deepseekmath_corpus"
