"""Every full-scale config under configs/ (the variants without `tiny`) runs with all of its flags kept.

The `tiny` variants reset what a full-scale config sets (bf16 compute over fp32 master weights, remat
policies, scanned layers, gradient accumulation, G 64 groups, sampler and reward settings, evaluation
protocols, ...), so the code paths those flags select are not run by the tiny runs of tests/test_configs.py.
Here each full-scale config is loaded as the CLI loads it and `shrink` replaces only its dimensions (layers,
width, vocabulary, rows, lengths, steps, number of problems) and the data that exist only at scale (TFDS
corpora by name, the DeepSeek tokenizer and Hugging Face models, the 7B policy and reward models) with local
stand-ins; every other value stays as the config sets it, which `test_shrinking_keeps_every_flag` checks on
an explicit list of flag keys. Then one step of every executable its command uses runs on the 8-device CPU
mesh through the function the CLI calls (`train`, `rm.run`, `run_rl`, `dsmath eval`), and the test asserts
that the run completed, that its metrics are finite and that the flags were in effect (the model config
recorded in the run's checkpoint, or the model `dsmath eval` loaded).

Configs that differ only in their data (e.g. the four corpora of Table 1) are represented by one run:
`test_a_family_differs_only_in_data` asserts that their shrunk configs are identical apart from the data
keys. FAMILIES lists which run stands for which configs.

Stand-ins: GSM8K / MATH from the shared benchmark files; for each TFDS corpus a small TFDS dataset of the same
name (so the configs' sources stay as they are); a 512-piece sentencepiece tokenizer trained by the run where
the config expects DeepSeek's; for `init.hf_dir` and `dsmath eval --model=` a tiny random Hugging Face model
(7B-like: MHA) written by `save_hf` with a byte-level BPE tokenizer.json; for the RL / RM policy the tiny
arithmetic SFT run of conftest.py, stored with stacked layers as a full-scale SFT run (scan_layers=True)
stores it, and its Hugging Face export as the reward models' `init.rm_init_dir`; the reward models the RL
configs score with are the shrunk runs of configs/rm/.

The runs go in four groups (GROUPS), each run by one process of its own, one after the other, with a
persistent compilation cache shared by the groups, and each on one xdist worker; the tests then read what the
runs wrote. About 8 minutes of CPU time in all (the tiny arithmetic SFT policy aside, which other tests share).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import pathlib
import shutil

import ml_collections
import numpy as np
import pytest
from conftest import REPO, load_config

# ------------------------------------------------------------------------------------------- what runs
# run name -> (command, the configs it stands for (first: the one that runs), keys in which they may differ).
# A config is "file:argument" under configs/ (argument None: the file's default).
FAMILIES: dict[str, tuple[str, list[str], tuple[str, ...]]] = {
    # The 1.3B corpus ablations (Table 1, §5.1): deepseek_1_3b_ablation with one corpus or another.
    # one_stage runs: its mixture of two corpora covers the single-corpus variants' code path.
    "pretrain_1_3b": ("pretrain", ["pretrain/code_then_math.py:one_stage"]
                      + [f"pretrain/table1_corpora.py:{c}" for c in (None, "mathpile", "openwebmath", "proof_pile_2",
                                                                      "deepseekmath_corpus")]
                      + [f"pretrain/code_then_math.py:{c}" for c in (None, "two_stage_code", "two_stage_math")]
                      + [f"pretrain/arxiv_only.py:{c}" for c in (None, "mathpile", "arxiv_redpajama")],
                      ("data.sources",)),
    "pretrain_7b": ("pretrain", ["pretrain/deepseekmath_base_7b.py:None"], ()),
    "sft_instruct_7b": ("sft", ["sft/deepseekmath_instruct.py:None"], ()),
    "sft_arithmetic_small": ("sft", ["sft/arithmetic.py:small", "sft/arithmetic.py:small,answer_mix"],
                             ("data.sources",)),
    "rm_orm": ("rm", ["rm/orm.py:None"], ()),
    "rm_prm_hard": ("rm", ["rm/prm_math_shepherd.py:None", "rm/prm_math_shepherd.py:hard"], ()),
    "rm_prm_soft": ("rm", ["rm/prm_math_shepherd.py:soft"], ()),
    "rl_grpo_outcome": ("rl", [f"rl/grpo_outcome.py:{d}" for d in (None, "gsm8k", "math")], ("data.problems",)),
    "rl_grpo_process": ("rl", [f"rl/grpo_process.py:{d}" for d in (None, "gsm8k", "math")], ("data.problems",)),
    "rl_iterative_prm": ("rl", ["rl/iterative_grpo.py:None", "rl/iterative_grpo.py:process"], ()),
    "rl_iterative_orm": ("rl", ["rl/iterative_grpo.py:outcome"], ()),
    **{f"rl_paradigm_{arm}": ("rl", [f"rl/paradigm.py:{arm}"], ())
       for arm in ("sft", "rft", "online_rft", "dpo", "ppo", "grpo_outcome", "grpo_process")},
    "eval_base_cot": ("eval", ["eval/base_few_shot.py:None", "eval/base_few_shot.py:cot"], ()),
    "eval_base_pot": ("eval", ["eval/base_few_shot.py:pot"], ()),
    "eval_instruct_cot": ("eval", ["eval/instruct_zero_shot.py:None", "eval/instruct_zero_shot.py:cot"], ()),
    "eval_instruct_tool": ("eval", ["eval/instruct_zero_shot.py:tool"], ()),
    "eval_maj_pass": ("eval", ["eval/maj_pass_sweep.py:None"], ()),
}
KIND = {"pretrain": "train", "sft": "train", "rm": "rm", "rl": "rl", "eval": "eval"}
ALL_SPECS = [spec for _, specs, _ in FAMILIES.values() for spec in specs]

# The flags each kind of config keeps when shrunk ("a.b": the value at that dotted key; whole sections compare
# as a whole). `init.hf_dir` / `init.rm_init_dir` are compared as set / unset (the stand-in is another path).
COMMON_FLAGS = ("seed", "model.dtype", "model.param_dtype", "model.remat_policy", "model.scan_layers",
                "model.attention_impl", "mesh.shape", "mesh.rules", "distributed")
FLAGS = {
    "train": COMMON_FLAGS + (
        "data.sources", "data.packing", "data.overlong", "data.seed", "data.epochs", "data.max_drop_fraction",
        "init.checkpoint", "init.step", "tokenizer.path", "optimizer.schedule.name", "optimizer.schedule.peak",
        "optimizer.schedule.warmup_steps", "optimizer.b1", "optimizer.b2", "optimizer.weight_decay",
        "optimizer.clip_norm", "train.accum_steps", "train.keep_checkpoints", "train.max_nonfinite_in_a_row",
        "train.async_checkpoint", "train.tensorboard"),
    "rl": COMMON_FLAGS + (
        "method", "init.step", "data.problems.kind", "data.template", "data.seed", "rollout.temperature",
        "rollout.top_p", "rollout.top_k", "rollout.stop_strings", "rollout.dynamic_sampling",
        "rollout.max_sampling_rounds", "rollout.tensor_parallel", "rollout.batching", "rollout.old_logprobs",
        "rollout.tis_cap", "reward.kind", "reward.rule_weight",
        "reward.format_weight", "reward.rm_weight", "reward.overlong_buffer", "reward.overlong_weight", "loss",
        "optimizer", "train.iterations", "train.mu", "train.accum_steps", "train.keep_checkpoints",
        "train.async_checkpoint", "train.reference_on_host", "train.max_nonfinite_in_a_row", "train.tensorboard",
        "train.seq_len", "train.length_buckets", "train.stop_after_steps", "rm_update.enabled",
        "rm_update.history_fraction", "rm_update.capacity", "rm_update.lr", "rm_update.samples_per_step",
        "rm_update.replay_rm_data", "rm_update.prm_labels", "rm_update.label_mode", "rm_update.label_temperature",
        "ppo",
        "eval.samples", "eval.temperature", "eval.at_start", "eval.max_new_tokens"),
    "rm": COMMON_FLAGS + (
        "kind", "init.step", "data.problems", "data.split", "data.template", "data.validation_fraction",
        "sampling.temperature", "sampling.top_p", "sampling.seed", "sampling.batching", "labels.mode",
        "labels.temperature", "labels.seed", "grader.timeout", "optimizer", "train.accum_steps", "train.seed",
        "train.keep_checkpoints", "train.async_checkpoint", "train.tensorboard"),
    "eval": ("model_overrides", "batching", "mesh.shape", "mesh.rules", "distributed", "eval.benchmarks", "eval.mode",
             "eval.n", "eval.temperature", "eval.top_p", "eval.ks", "eval.seed", "eval.max_tool_rounds"),
}
PATH_FLAGS = {"train": ("init.hf_dir",), "rm": ("init.rm_init_dir",), "rl": (), "eval": ()}

# Shrunk dimensions.
TINY_MODEL = dict(num_layers=2, d_model=64, num_heads=8, mlp_dim=160, vocab_size=512)
SEQ = 128  # pre-training / SFT rows
LOGITS_CHUNK = 32  # < every shrunk sequence: the chunked LM-head path runs with several chunks
MAX_NEW = 16  # new tokens of every rollout, sample and evaluation
PROMPT_TOKENS = 256  # RL prompts (GSM8K questions are ~110-340 tokens under the arithmetic policy's tokenizer)
PROBLEMS = 64  # RL problems read (of each split); those with prompts over PROMPT_TOKENS are left out
RM_SEQ = 256  # RM rows: prompt + completion (the policy's context; longer rows are cut and counted)
DEVICES = 8
# TFDS corpora of the full-scale pre-training configs, by name (each replaced by a small corpus of that name).
CORPORA = ("mathpile", "openwebmath", "proof_pile_2", "deepseekmath_corpus", "github_code", "arxiv_redpajama",
           "algebraic_stack", "arxiv", "common_crawl_en_zh")


# ------------------------------------------------------------------------------------------- shrinking
class Local:
    """Where the local stand-ins are. Without real paths (the config checks) they are placeholders."""

    def __init__(self, root: str = "LOCAL", **paths: str):
        self.benchmarks = paths.get("benchmarks", f"{root}/benchmarks")
        self.data_dir = paths.get("data_dir", f"{root}/tfds")
        self.hf_dir = paths.get("hf_dir", f"{root}/hf")  # a tiny Hugging Face model with a tokenizer.json
        self.rm_init_dir = paths.get("rm_init_dir", f"{root}/rm_init")  # the same, with the policy's tokenizer
        self.policy = paths.get("policy", f"{root}/policy")  # the tiny arithmetic SFT run, layers stacked
        self.orm = paths.get("orm", f"{root}/orm")
        self.prm = paths.get("prm", f"{root}/prm")


def _get(c, dotted: str):
    for part in dotted.split("."):
        if isinstance(c, (ml_collections.ConfigDict, dict)):
            c = c.get(part)
        else:
            return None
    return c.to_dict() if isinstance(c, ml_collections.ConfigDict) else c


def _batch_devices(c: ml_collections.ConfigDict) -> int:
    """How many ways the config's mesh splits a batch on the 8 devices (data x fsdp; tensor-parallel devices
    share rows)."""
    from dsmath_jax.parallel.mesh import mesh_shape
    shape = mesh_shape(_get(c, "mesh.shape"), DEVICES)
    return shape["data"] * shape["fsdp"]


def _rows(accum: int, at_least: int = DEVICES, batch_devices: int = DEVICES) -> int:
    """The smallest multiple of (batch devices x accum micro-batches) that is >= at_least: every micro-batch
    shards over the mesh's batch axes."""
    unit = batch_devices * accum
    return max(1, -(-at_least // unit)) * unit


def _tiny_model(model: ml_collections.ConfigDict, max_seq_len: int) -> None:
    """The model section's architecture made tiny; its compute settings untouched. The preset's ratio of query
    to key/value heads is kept (MHA stays MHA)."""
    from dsmath_jax.model import ModelConfig
    full = ModelConfig.from_dict(model)
    ratio = full.num_heads // full.num_kv_heads
    heads = TINY_MODEL["num_heads"]
    model.update(preset="tiny", **TINY_MODEL, num_kv_heads=max(1, heads // ratio), max_seq_len=max_seq_len)


def shrink(config: ml_collections.ConfigDict, kind: str, local: Local | None = None) -> ml_collections.ConfigDict:
    """A copy of a full-scale `config` of `kind` ("train", "rl", "rm", "eval") with tiny dimensions and local
    stand-ins for the data that exist only at scale; every flag kept."""
    local = local or Local()
    c = ml_collections.ConfigDict(config.to_dict())  # unlocked, no shared references
    if kind == "train":
        if c.init.hf_dir:  # the architecture is the Hugging Face model's: a tiny one stands in
            c.init.hf_dir = local.hf_dir
        else:
            _tiny_model(c.model, SEQ)
        c.model.logits_chunk = LOGITS_CHUNK
        if not c.tokenizer.path and not c.init.hf_dir:  # DeepSeek's tokenizer at scale (--config.tokenizer.path)
            c.tokenizer.train_vocab_size = TINY_MODEL["vocab_size"]
        c.tokenizer.train_docs = min(int(c.tokenizer.train_docs), 1000)
        c.data.update(seq_len=SEQ, data_dir=local.data_dir, benchmarks_dir=local.benchmarks)
        if not c.data.eval_split:
            c.data.eval_split = "validation"
        accum = int(c.train.accum_steps)
        c.train.update(steps=2, batch_size=_rows(accum), log_every=1, eval_every=2, eval_batches=1,
                       checkpoint_every=2)
    elif kind == "rl":
        c.init.run_dir = local.policy
        c.model.preset = None  # the architecture is the loaded policy's (the tiny arithmetic SFT run)
        c.model.logits_chunk = LOGITS_CHUNK
        c.data.update(data_dir=local.data_dir, benchmarks_dir=local.benchmarks, max_prompt_tokens=PROMPT_TOKENS,
                      problems=dict(_get(c, "data.problems"), limit=PROBLEMS))
        accum = int(c.train.accum_steps)
        rows = _rows(accum, at_least=16, batch_devices=_batch_devices(c))
        questions = 2
        # The sampler's batch keeps its full-scale ratio to the rows (1024 / 256): several generate calls per
        # rollout; decoding runs in 2 jitted chunks.
        ratio = max(1, (int(config.rollout.questions_per_step) * int(config.rollout.group_size))
                    // int(config.rollout.sampler_batch_size))
        c.rollout.update(questions_per_step=questions, group_size=rows // questions, max_new_tokens=MAX_NEW,
                         sampler_batch_size=max(DEVICES, rows // ratio), chunk_size=MAX_NEW // 2)
        steps = 1
        c.train.update(steps_per_iteration=steps, checkpoint_every=steps, log_every=1)
        c.eval.update(every=steps * int(c.train.iterations), n_problems=2)
        if c.eval.batch_size:
            c.eval.batch_size = rows
        c.rm_update.update(steps=1, batch_size=DEVICES)
        if c.reward.kind == "orm":
            c.reward.rm_dir = local.orm
        elif c.reward.kind == "prm":
            c.reward.rm_dir = local.prm
    elif kind == "rm":
        c.init.run_dir = local.policy
        c.model.preset = None  # the architecture is the loaded policy's
        c.model.logits_chunk = LOGITS_CHUNK
        if c.init.rm_init_dir:
            c.init.rm_init_dir = local.rm_init_dir
        c.data.update(limit_per_source=2, data_dir=local.data_dir, benchmarks_dir=local.benchmarks, seq_len=RM_SEQ,
                      max_steps=8)
        c.sampling.update(samples_per_problem=2, max_new_tokens=MAX_NEW, batch_size=DEVICES)
        c.labels.update(n=2, max_new_tokens=8)
        c.grader.workers = min(int(c.grader.workers), 2)
        accum = int(c.train.accum_steps)
        c.train.update(steps=1, batch_size=_rows(accum), log_every=1, eval_every=1, eval_batch_size=DEVICES,
                       checkpoint_every=1)
    elif kind == "eval":
        c.benchmarks_dir = local.benchmarks
        c.eval.update(limit=1, max_new_tokens=MAX_NEW)
        c.batch_size = _rows(1, at_least=int(c.eval.n))
    else:
        raise ValueError(kind)
    return c


def spec_kind(spec: str) -> str:
    return KIND[spec.split("/")[0]]


def load_full(spec: str) -> ml_collections.ConfigDict:
    path, _, arg = spec.partition(":")
    return load_config(f"configs/{path}" + ("" if arg == "None" else f":{arg}"))


# ------------------------------------------------------------------------------------------- config checks
def test_every_full_scale_variant_is_represented():
    """FAMILIES names every full-scale variant of every config file that a `dsmath` command here runs."""
    from test_configs import VARIANTS, is_tiny
    full = {f"{p}:{a}" for p, a in VARIANTS if not is_tiny(a) and not p.startswith("mining/")}
    # The file's default size is its tiny one (asserted by test_configs): without `small` a variant is tiny.
    full -= {"sft/arithmetic.py:None", "sft/arithmetic.py:answer_mix"}
    assert sorted(full - set(ALL_SPECS)) == [] and sorted(set(ALL_SPECS) - full) == []
    assert len(ALL_SPECS) == len(set(ALL_SPECS))


def _flatten(c, prefix=""):
    out = {}
    for key, value in (c.items() if isinstance(c, (dict, ml_collections.ConfigDict)) else ()):
        name = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, dict)) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    return out


def changed_flags(full: ml_collections.ConfigDict, small: ml_collections.ConfigDict, kind: str) -> dict:
    """{flag: (full value, shrunk value)} of the flags of FLAGS / PATH_FLAGS that differ."""
    out = {k: (_get(full, k), _get(small, k)) for k in FLAGS[kind] if _get(full, k) != _get(small, k)}
    out.update({k: (_get(full, k), _get(small, k)) for k in PATH_FLAGS[kind]
                if bool(_get(full, k)) != bool(_get(small, k))})
    return out


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_shrinking_keeps_every_flag(spec):
    from dsmath_jax.model import ModelConfig
    kind = spec_kind(spec)
    full = load_full(spec)
    small = shrink(full, kind)
    assert not changed_flags(full, small, kind), f"{spec}: shrink changed flags {changed_flags(full, small, kind)}"
    # What is not a flag did shrink: the model, the rows, the steps.
    if kind == "train":
        model = ModelConfig.from_dict(small.model)
        if not small.init.hf_dir:
            assert model.num_layers <= 2 and model.d_model <= 64 and model.vocab_size <= 512, spec
            full_model = ModelConfig.from_dict(full.model)
            assert (model.num_heads // model.num_kv_heads) == (full_model.num_heads // full_model.num_kv_heads)
        assert 0 < small.model.logits_chunk < small.data.seq_len <= 128, spec
        assert small.train.batch_size % (DEVICES * small.train.accum_steps) == 0 and small.train.steps <= 2
        assert small.data.eval_split and small.train.eval_every and small.train.steps % small.train.eval_every == 0
    elif kind == "rl":
        rows = small.rollout.questions_per_step * small.rollout.group_size
        assert rows % (_batch_devices(small) * small.train.accum_steps) == 0 and rows <= 128, spec
        assert small.rollout.max_new_tokens <= MAX_NEW and 0 < small.model.logits_chunk < small.data.max_prompt_tokens
        assert small.train.iterations * small.train.steps_per_iteration <= 2 and small.eval.every
        assert small.model.preset is None and small.eval.n_problems <= 2
        if small.rm_update.enabled:  # the reward model continues training after every iteration, within the run
            assert small.train.steps_per_iteration == 1 and small.train.iterations == 2
    elif kind == "rm":
        assert small.train.steps == 1 and small.train.batch_size % (DEVICES * small.train.accum_steps) == 0
        assert small.sampling.max_new_tokens <= MAX_NEW and small.model.preset is None
    else:
        assert small.eval.limit == 1 and small.batch_size % DEVICES == 0 and small.eval.max_new_tokens <= MAX_NEW


@pytest.mark.parametrize("spec,key,value", [("pretrain/deepseekmath_base_7b.py:None", "model.scan_layers", False),
                                            ("pretrain/table1_corpora.py:None", "model.remat_policy", "none"),
                                            ("rl/paradigm.py:dpo", "train.accum_steps", 1),
                                            ("rl/grpo_outcome.py:None", "loss.beta", 0.0),
                                            ("rm/prm_math_shepherd.py:soft", "labels.mode", "hard"),
                                            ("rm/orm.py:None", "init.rm_init_dir", None),
                                            ("eval/maj_pass_sweep.py:None", "eval.n", 1)])
def test_a_shrink_that_changes_a_flag_is_caught(spec, key, value):
    """The flag check itself: a shrunk config whose flag was changed (here by hand) fails it."""
    kind = spec_kind(spec)
    full = load_full(spec)
    small = shrink(full, kind)
    *path, leaf = key.split(".")
    section = small
    for part in path:
        section = section[part]
    section[leaf] = value
    changed = changed_flags(full, small, kind)
    assert any(key == k or key.startswith(k + ".") for k in changed), changed


@pytest.mark.parametrize("family", [f for f, (_, specs, _) in FAMILIES.items() if len(specs) > 1])
def test_a_family_differs_only_in_data(family):
    """The configs one run stands for: shrunk, they are identical apart from the family's data keys."""
    _, specs, data_keys = FAMILIES[family]
    kind = spec_kind(specs[0])

    def comparable(spec):
        flat = _flatten(shrink(load_full(spec), kind))
        return {k: v for k, v in flat.items() if not any(k == d or k.startswith(d + ".") for d in data_keys)}

    first = comparable(specs[0])
    for spec in specs[1:]:
        other = comparable(spec)
        diff = {k: (first.get(k), other.get(k)) for k in set(first) | set(other) if first.get(k) != other.get(k)}
        assert not diff, f"{spec} differs from {specs[0]} beyond {data_keys}: {diff}"


# ------------------------------------------------------------------------------------------- runs
# The runs go in groups, each one process (the persistent compilation cache of the session shared by all:
# executables that two runs share, e.g. the sampler of every RL run from the same policy, compile once),
# each group on one xdist worker. Within a group the order matters: the reward models come before the RL
# runs that score with them.
GROUPS = {
    "train": ["pretrain_1_3b", "pretrain_7b", "sft_instruct_7b", "sft_arithmetic_small"],
    # The paradigm's arms share the 1.3B flags (remat dots_no_batch, 4 micro-batches): one sampler, one
    # reference forward; the full-scale GRPO runs share the 7B flags (save_qkv, 16 micro-batches) and the
    # reward models. paradigm_grpo_process scores with the PRM, so it runs in the second group.
    "paradigm": ["rl_paradigm_grpo_outcome", "rl_paradigm_sft", "rl_paradigm_rft", "rl_paradigm_online_rft",
                 "rl_paradigm_dpo", "rl_paradigm_ppo"],
    "grpo_rm": ["rl_grpo_outcome", "rm_orm", "rm_prm_hard", "rm_prm_soft", "rl_grpo_process", "rl_iterative_prm",
                "rl_iterative_orm", "rl_paradigm_grpo_process"],
    "eval": ["eval_base_cot", "eval_base_pot", "eval_instruct_cot", "eval_instruct_tool", "eval_maj_pass"],
}
GROUP_OF = {name: group for group, names in GROUPS.items() for name in names}
# The reward models an RL run scores with (their runs come first in its group).
NEEDS = {"rl_grpo_process": ("rm_prm_hard",), "rl_paradigm_grpo_process": ("rm_prm_hard",),
         "rl_iterative_prm": ("rm_prm_hard",), "rl_iterative_orm": ("rm_orm",)}
# Library bugs a run exposes: run name -> the bug (the test is an expected failure until it is fixed).
KNOWN_BUGS: dict[str, str] = {}
# Runs CI leaves to `-m slow` (CI time): each is a variant of a run CI keeps in its group, with the same flags
# (the ORM beside the hard-label PRM, soft labels, GRPO+PS and iterative GRPO beside GRPO with the 7B flags and the
# PRM's run, the paradigm's RFT arms beside its SFT / GRPO / DPO / PPO arms, two more eval configs beside base
# CoT / PoT and tool); their tiny variants run in tests/test_configs.py, and iterative GRPO with a PRM resumes
# bitwise in tests/test_rl_loop.py.
SLOW_RUNS = frozenset({"rm_orm", "rm_prm_soft", "rl_grpo_process", "rl_iterative_orm", "rl_iterative_prm",
                       "rl_paradigm_grpo_process", "rl_paradigm_rft", "rl_paradigm_online_rft", "eval_instruct_cot",
                       "eval_maj_pass",
                       # CI time: GRPO's outcome path runs in CI at the 7B flags (rl_grpo_outcome); of the
                       # paradigm group, the PPO arm (policy, critic and reference at the 1.3B flags) runs in CI.
                       "rl_paradigm_grpo_outcome", "rl_paradigm_sft", "rl_paradigm_dpo",
                       # the 7B pre-training and SFT flags run in CI (pretrain_7b, sft_instruct_7b), and the eval
                       # group's PoT and tool runs exercise the evaluation's flags and sampler
                       "pretrain_1_3b", "eval_base_cot"})


def _session_root(tmp_path_factory) -> pathlib.Path:
    """The directory the session's xdist workers share (as conftest.py's arithmetic_sft_run finds it)."""
    basetemp = tmp_path_factory.getbasetemp()
    return basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp


def _build_once(root: pathlib.Path, name: str, build) -> pathlib.Path:
    """`root/name`, made by build(path) once per session (a file lock: the first worker builds, the others
    wait and reuse it)."""
    path = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (path / ".complete").exists():
                shutil.rmtree(path, ignore_errors=True)
                path.mkdir(parents=True)
                build(path)
                (path / ".complete").write_text("")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def _benchmark_texts(benchmarks: pathlib.Path, limit: int = 400) -> list[str]:
    texts = []
    for name in ("gsm8k", "math"):
        with open(benchmarks / name / "train.jsonl", encoding="utf-8") as f:
            for line, _ in zip(f, range(limit)):
                row = json.loads(line)
                texts.append(f"{row.get('question') or row.get('problem')}\n{row.get('answer') or ''}\n"
                             f"{row.get('solution') or ''}")
    return texts


def _write_tokenizer_json(directory: pathlib.Path, texts: list[str], vocab_size: int) -> None:
    """A byte-level BPE tokenizer.json (DeepSeek's kind) of `vocab_size` ids with <s> and </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))


def _build_local_data(path: pathlib.Path, shared_data: pathlib.Path) -> None:
    """TFDS copies of GSM8K and MATH, small corpora named like the TFDS corpora of the pre-training configs,
    and a tiny Hugging Face model (the architecture of the 7B: MHA) with a BPE tokenizer.json: what
    `init.hf_dir` names in the 7B configs and what `dsmath eval --model=` evaluates."""
    from flax import nnx

    from dsmath_jax.data.benchmarks_tfds import prepare_benchmark
    from dsmath_jax.data.corpus import build_text_corpus
    from dsmath_jax.model import CausalLM, get_preset, save_hf
    benchmarks = shared_data / "benchmarks"
    tfds_dir = path / "tfds"
    for name in ("gsm8k", "math"):
        prepare_benchmark(name, tfds_dir, local_dir=benchmarks)
    texts = _benchmark_texts(benchmarks)
    code = [p.read_text(encoding="utf-8") for p in sorted((REPO / "dsmath_jax").rglob("*.py"))[:200]]
    for i, name in enumerate(CORPORA):
        docs = code if name == "github_code" else texts[i::3]
        file = path / f"{name}.jsonl"
        file.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs if t.strip()), encoding="utf-8")
        build_text_corpus(name, [str(file)], data_dir=tfds_dir, validation_fraction=0.1)
    hf = path / "hf"
    hf.mkdir()
    few_shot = [p.read_text(encoding="utf-8") for p in sorted((shared_data / "few_shot").glob("*.txt"))]
    chinese = []
    for name in ("cmath", "mgsm_zh"):
        with open(benchmarks / name / "test.jsonl", encoding="utf-8") as f:
            chinese += [line for line, _ in zip(f, range(200))]
    _write_tokenizer_json(hf, texts + few_shot + chinese, TINY_MODEL["vocab_size"])
    from dsmath_jax.data.tokenizers import load_tokenizer
    tok = load_tokenizer(hf)
    cfg = get_preset("tiny", **TINY_MODEL, num_kv_heads=TINY_MODEL["num_heads"], max_seq_len=4096,
                     bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    save_hf(CausalLM(cfg, rngs=nnx.Rngs(0)), hf / "model")
    for item in (hf / "model").iterdir():  # one directory: weights, config.json and the tokenizer
        item.rename(hf / item.name)
    (hf / "model").rmdir()


def _build_policy(path: pathlib.Path, sft_run: str) -> None:
    """The tiny arithmetic SFT policy as the full-scale RL and RM configs find theirs: a run directory with
    its layers stacked (the 7B SFT run trains with scan_layers=True; `dsmath convert --scan_layers` writes
    the same), and a Hugging Face export of it with the same tokenizer (DeepSeekMath-Base 7B, which the
    reward models start from, shares the Instruct model's tokenizer)."""
    from dsmath_jax.model import save_hf
    from dsmath_jax.train.convert import hf_to_run
    from dsmath_jax.train.restore import load_run
    model, _ = load_run(sft_run)
    save_hf(model, path / "rm_init")
    shutil.copyfile(os.path.join(sft_run, "tokenizer.model"), path / "rm_init" / "tokenizer.model")
    hf_to_run(str(path / "rm_init"), str(path / "policy"), scan_layers=True, check=False)


def _local(root: pathlib.Path, shared_data: pathlib.Path, out: pathlib.Path) -> Local:
    return Local(benchmarks=str(shared_data / "benchmarks"), data_dir=str(root / "fsf_local" / "tfds"),
                 hf_dir=str(root / "fsf_local" / "hf"), rm_init_dir=str(root / "fsf_policy" / "rm_init"),
                 policy=str(root / "fsf_policy" / "policy"), orm=str(out / "rm_orm"), prm=str(out / "rm_prm_hard"))


def _eval_argv(name: str, config: ml_collections.ConfigDict, local: Local, workdir: str) -> list[str]:
    """`dsmath eval` as a user runs it: the config file and, as --config overrides, what shrink changed."""
    spec = FAMILIES[name][1][0]
    path, _, arg = spec.partition(":")
    full, small = _flatten(load_full(spec)), _flatten(config)
    overrides = []
    for key in sorted(small):
        if small[key] != full.get(key):
            assert isinstance(small[key], (int, str, float)), (key, small[key])
            overrides.append(f"--config.{key}={small[key]}")
    return ["eval", f"--config={REPO / 'configs' / path}" + ("" if arg == "None" else f":{arg}"),
            f"--model={local.hf_dir}", f"--workdir={workdir}", *overrides]


def run_group(names: list[str], local: Local, out: str) -> None:
    """Runs the named configs, shrunk, one after the other in this process; writes `<out>/<name>/status.json`
    ({ok, seconds, error, loaded_models}) for each. Runs in a process of its own (see `_group_results`)."""
    import logging
    import time
    import traceback
    logging.basicConfig(level=logging.WARNING)
    for name in names:
        command, specs, _ = FAMILIES[name]
        kind = KIND[command]
        workdir = os.path.join(out, name)
        status: dict = {"ok": False, "loaded_models": []}
        start = time.perf_counter()
        try:
            config = shrink(load_full(specs[0]), kind, local)
            if kind == "train":
                from dsmath_jax.train.loop import train
                train(config, workdir, task=command)
            elif kind == "rm":
                from dsmath_jax.commands import rm
                rm.run(config, workdir)
            elif kind == "rl":
                from dsmath_jax.rl.loop import run_rl
                run_rl(config, workdir)
            else:
                from dsmath_jax import cli
                from dsmath_jax.train import restore
                real = restore.load_run

                def spy(*args, real=real, loaded=status["loaded_models"], **kwargs):
                    model, tokenizer = real(*args, **kwargs)  # the model `dsmath eval` loads, as it computes
                    loaded.append(model.config.to_dict())
                    return model, tokenizer

                restore.load_run = spy
                try:
                    code = cli.main(_eval_argv(name, config, local, workdir))
                finally:
                    restore.load_run = real
                if code != 0:
                    raise RuntimeError(f"dsmath eval exited with {code}")
            status["ok"] = True
        except Exception as e:  # noqa: BLE001 - reported by the run's test
            status["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        status["seconds"] = round(time.perf_counter() - start, 1)
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "status.json"), "w", encoding="utf-8") as f:
            json.dump(status, f)


_RESULTS: dict[str, tuple[pathlib.Path, str | None]] = {}  # group -> (its runs' directory, a crash)


def _group_results(group: str, request) -> tuple[pathlib.Path, Local]:
    """Runs a group once per worker (its tests share an xdist group), in a process of its own with the
    session's persistent compilation cache; returns (the runs' directory, the stand-ins)."""
    import subprocess
    import sys
    shared_data = request.getfixturevalue("shared_data")
    factory = request.getfixturevalue("tmp_path_factory")
    root = _session_root(factory)
    _build_once(root, "fsf_local", lambda path: _build_local_data(path, shared_data))
    if group in ("paradigm", "grpo_rm"):
        sft_run = request.getfixturevalue("arithmetic_sft_run")
        _build_once(root, "fsf_policy", lambda path: _build_policy(path, sft_run))
    if group not in _RESULTS:
        # The group's runs that this session selected (e.g. with -k), and the reward models those score with.
        selected = set()
        for item in request.session.items:
            if any(mark.name == "skip" for mark in item.iter_markers()):
                continue  # e.g. a slow run without -m slow
            if item.originalname == "test_full_scale_config_runs":
                selected.add(item.callspec.params["name"])
            elif item.originalname == "test_the_rl_policy_loads_for_evaluation":
                selected.add("rl_grpo_outcome")
        for name in list(selected):
            selected |= set(NEEDS.get(name, ()))
        names = [name for name in GROUPS[group] if name in selected]
        out = factory.mktemp(f"full_scale_{group}")
        local = _local(root, shared_data, out)
        cache = root / "fsf_jax_cache"
        cache.mkdir(exist_ok=True)
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # XLA_FLAGS (8 devices): from conftest.py
        code = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); import test_full_scale_flags as t; "
                f"t.run_group({names!r}, t.Local(**{vars(local)!r}), {str(out)!r})")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                              timeout=1800, check=False)
        _RESULTS[group] = out, None if done.returncode == 0 else done.stderr[-4000:]
    out, crash = _RESULTS[group]
    assert crash is None, f"the process running the {group} group crashed:\n{crash}"
    return out, _local(root, shared_data, out)


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _checkpoint_meta(workdir: pathlib.Path) -> dict:
    from dsmath_jax.train.checkpoint import Checkpointer
    with Checkpointer(workdir / "checkpoints", read_only=True, async_save=False) as ckpt:
        return dict(ckpt.metadata(), items=ckpt.item_names())


def _assert_compute_flags(model: dict, config: ml_collections.ConfigDict, section: str, where: str) -> None:
    """The model a run used computed as the config says (the flags it sets; None: as saved)."""
    for field in ("dtype", "param_dtype", "remat_policy", "scan_layers", "attention_impl", "logits_chunk"):
        want = _get(config, f"{section}.{field}")
        if want is not None:
            assert model[field] == want, f"{where}: the run's model has {field}={model[field]!r}, config {want!r}"


def _check_train(name, config, workdir):
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == config.train.steps, summary
    rows = read_jsonl(workdir / "metrics.jsonl")
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(losses) == list(range(1, config.train.steps + 1)) and _finite(*losses.values()), losses
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(evals) == 1 and _finite(*evals), rows  # the held-out eval step ran
    # Every model here starts from random weights (the Hugging Face stand-in too): the first loss is that of
    # a uniform guess over the 512 ids, computed under the config's dtype, remat, scan and chunked LM head.
    assert abs(losses[1] - math.log(TINY_MODEL["vocab_size"])) < 0.5, losses
    meta = _checkpoint_meta(workdir)
    model = meta["model"]
    _assert_compute_flags(model, config, "model", name)
    assert model["num_layers"] <= 2 and model["d_model"] <= 64 and model["vocab_size"] <= 512, model
    return model


def _check_rm(name, config, workdir):
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 1 and summary["kind"] == config.kind, summary
    assert _finite(summary["train"]["loss"]), summary
    labels = summary["labels"]
    problems = len(config.data.problems) * config.data.limit_per_source
    assert labels["problems"] == problems and labels["completions"] == problems * config.sampling.samples_per_problem
    if config.kind == "prm":  # Math-Shepherd: continuations were sampled from step prefixes
        assert labels["prefixes"] > 0 and 0 <= labels["mean_step_label"] <= 1, labels
        from dsmath_jax.commands.rm import load_labels
        examples, _, _ = load_labels(str(workdir / "labels.npz"))
        values = np.concatenate([ex["step_labels"][:-1] for ex in examples])
        allowed = {0.0, 1.0} if config.labels.mode == "hard" else {k / config.labels.n for k in
                                                                   range(config.labels.n + 1)}
        assert set(np.unique(values).tolist()) <= allowed, (config.labels.mode, np.unique(values))
    assert summary["validation_examples"] > 0 and _finite(summary["eval"]["eval_loss"]), summary  # RM eval ran
    meta = _checkpoint_meta(workdir)
    _assert_compute_flags(meta["model"], config, "model", name)
    return meta


def _check_rl(name, config, workdir):
    summary = json.loads((workdir / "summary.json").read_text())
    total = config.train.iterations * config.train.steps_per_iteration
    assert summary["status"] == "completed" and summary["step"] == total and summary["skipped_steps"] == 0, summary
    rows = read_jsonl(workdir / "metrics.jsonl")
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, total + 1)), rows
    for r in steps:
        assert r["finite"] == 1 and _finite(r["loss"], r["grad_norm"]), r
        if config.method != "sft":  # a rollout: sampled, scored
            assert _finite(r["reward_mean"], r["accuracy"], r["response_length"]) and r["response_length"] > 0, r
            assert r["sampled_rows"] == config.rollout.questions_per_step * config.rollout.group_size, r
    # The held-out evaluation, before training and at the end.
    evals = {e["step"]: e for e in summary["eval_history"]}
    assert sorted(evals) == [0, total] and all(0 <= e["eval_accuracy"] <= 1 for e in evals.values()), evals
    meta = _checkpoint_meta(workdir)
    _assert_compute_flags(meta["model"], config, "model", name)
    assert meta["method"] == config.method
    return steps, meta


def _check_eval(name, config, workdir, status):
    summary = json.loads((workdir / "summary.json").read_text())
    spec = config.eval
    assert [r["benchmark"] for r in summary["results"]] == list(spec.benchmarks), summary["results"]
    for result in summary["results"]:
        assert result["problems"] == spec.limit and result["n"] == spec.n and result["mode"] == spec.mode, result
        rows = read_jsonl(workdir / f"{result['benchmark']}.{spec.mode}.jsonl")
        assert len(rows) == spec.limit * spec.n and all({"completion", "extracted", "gold"} <= set(r) for r in rows)
        for k in spec.ks:
            assert 0 <= result[f"pass@{k}"] <= 1 and 0 <= result[f"maj@{k}"] <= 1, result
        if spec.mode == "few_shot_pot":  # the programs ran in the sandbox
            assert all("program_output" in r and "program_error" in r for r in rows), rows[0]
        if spec.mode == "tool":  # the tool loop ran (a random model rarely writes a program to execute)
            assert all(0 <= r["rounds"] <= spec.max_tool_rounds for r in rows), rows[0]
    [model] = status["loaded_models"]
    _assert_compute_flags(model, config, "model_overrides", name)
    return summary


def _run_params():
    out = []
    for group, names in GROUPS.items():
        for name in names:
            marks = [pytest.mark.xdist_group(f"full_scale_{group}")]
            if name in KNOWN_BUGS:
                marks.append(pytest.mark.xfail(reason=KNOWN_BUGS[name], strict=True))
            if name in SLOW_RUNS:
                marks.append(pytest.mark.slow)
            out.append(pytest.param(name, marks=marks, id=name))
    return out


def test_groups_run_every_family():
    assert sorted(GROUP_OF) == sorted(FAMILIES)
    assert SLOW_RUNS <= set(GROUP_OF)
    for name, needs in NEEDS.items():  # a reward model runs before the RL runs that load it, in their group
        assert all(GROUPS[GROUP_OF[name]].index(n) < GROUPS[GROUP_OF[name]].index(name) for n in needs)
    for name in FAMILIES:
        if name.startswith("rl_"):
            kind = shrink(load_full(FAMILIES[name][1][0]), "rl").reward.kind
            assert (kind in ("orm", "prm")) == (name in NEEDS), name


@pytest.mark.parametrize("name", _run_params())
def test_full_scale_config_runs(name, request, record_property):
    """One step of every executable of the family's command, with the full-scale config's flags."""
    out, local = _group_results(GROUP_OF[name], request)
    workdir = out / name
    status = json.loads((workdir / "status.json").read_text())
    record_property("run_seconds", status["seconds"])  # the run's own time (its group's process runs them all)
    assert status["ok"], f"{name} failed after {status['seconds']}s:\n{status.get('error')}"
    command, specs, _ = FAMILIES[name]
    kind = KIND[command]
    full = load_full(specs[0])
    config = shrink(full, kind, local)
    # What the run recorded as its config (config.json; `dsmath eval`: the spec in summary.json) has the flags.
    as_json = lambda value: json.loads(json.dumps(value))  # noqa: E731 - tuples are lists there
    if kind == "eval":
        spec = json.loads((workdir / "summary.json").read_text())["spec"]
        written = {k: spec[k.removeprefix("eval.")] for k in FLAGS[kind] if k.startswith("eval.")}
    else:
        recorded = json.loads((workdir / "config.json").read_text())
        written = {k: _get(recorded, k) for k in FLAGS[kind]}
    changed = {k: (_get(full, k), v) for k, v in written.items() if as_json(_get(full, k)) != v}
    assert not changed, f"{name}: the run recorded other flags than the config's: {changed}"
    if kind == "train":
        _check_train(name, config, workdir)
    elif kind == "rm":
        _check_rm(name, config, workdir)
    elif kind == "rl":
        steps, meta = _check_rl(name, config, workdir)
        if config.method == "ppo":  # the critic's values and its update
            assert all(_finite(r["critic_loss"], r["value_mean"]) for r in steps), steps
            assert {"critic_params", "critic_opt_state"} <= set(meta["items"])
        if config.method == "dpo":  # the implicit reward's margin between the chosen and the rejected sample
            assert all(_finite(r["reward_margin"]) for r in steps), steps
        if config.method in ("dpo", "ppo") or (config.method == "grpo" and config.loss.beta):  # the reference
            assert "ref_params" in meta["items"], meta["items"]
        if config.method == "grpo" and config.loss.beta:
            assert all(_finite(r["kl"]) and r["kl"] >= 0 for r in steps), steps
        if config.method in ("grpo", "ppo"):
            # The first update is on-policy: the training forward (chunked log-probs, remat, scanned layers) gives
            # the sampler's log-probs (its bf16 copy, the KV cache), and the policy is its reference.
            assert abs(steps[0]["ratio_mean"] - 1) < 0.02 and steps[0]["kl"] < 1e-3, steps[0]
        if config.reward.kind == "orm":  # the ORM scored the samples
            assert all(_finite(r["reward_orm_mean"]) for r in steps), steps
        if config.reward.kind in ("prm", "step_rule"):  # step rewards at the ends of the steps
            assert all(_finite(r["step_reward_mean"]) and r["steps_per_response"] >= 1 for r in steps), steps
        if config.rm_update.enabled:  # the reward model continued training after each iteration
            rm_rows = [r for r in read_jsonl(workdir / "metrics.jsonl") if "rm_loss" in r]
            assert len(rm_rows) == config.train.iterations and all(_finite(r["rm_loss"]) for r in rm_rows)
            assert {"rm_params", "rm_opt_state", "replay"} <= set(meta["items"])
    else:
        _check_eval(name, config, workdir, status)


def test_a_run_saved_with_unscanned_layers_loads_with_scan_layers(arithmetic_sft_run):
    """What every full-scale RL/RM config does with its policy (`model.scan_layers=True` over a run):
    the compute settings a run may change when it loads a checkpoint (COMPUTE_FIELDS) include scan_layers."""
    from dsmath_jax.train.restore import load_run
    model, _ = load_run(arithmetic_sft_run, scan_layers=True)
    flat, _ = load_run(arithmetic_sft_run)
    assert model.config.scan_layers and not flat.config.scan_layers
    tokens = np.arange(1, 41, dtype=np.int32).reshape(2, 20)
    np.testing.assert_allclose(np.asarray(model(tokens)), np.asarray(flat(tokens)), atol=2e-5, rtol=1e-5)


@pytest.mark.xdist_group("full_scale_grpo_rm")
def test_the_rl_policy_loads_for_evaluation(request):
    """DeepSeekMath-RL is evaluated like the Instruct model (Table 5): `dsmath eval --model=<the RL run>`
    loads the run's policy with `load_run`, as it loads a training run's."""
    from dsmath_jax.train.restore import load_run
    out, _ = _group_results("grpo_rm", request)
    model, _ = load_run(str(out / "rl_grpo_outcome"))
    meta = _checkpoint_meta(out / "rl_grpo_outcome")
    assert model.config.to_dict() == meta["model"]

