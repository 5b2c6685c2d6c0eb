"""Compile-only plans (`dsmath <command> --compile_only --topology=...`): topology names, the compiler's memory
report and collectives read back exactly (hand-made inputs), a plan of the tiny preset for a small TPU
topology with per-chip memory and FLOPs checked against independent counts, and a config that cannot fit
failing with the buffers and knobs named.

The TPU compiles need libtpu (`pip install "jax[tpu]"`, in the `test` extra); without it those tests skip
and say so.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from dsmath_jax.plan.compile import collective_bytes, read_memory_report
from dsmath_jax.plan.core import describe_buffer
from dsmath_jax.plan.topology import GIB, TopologyError, libtpu_available, parse_topology

LIBTPU, WHY = libtpu_available()
needs_libtpu = pytest.mark.skipif(not LIBTPU, reason=f"libtpu cannot make compile-only TPU devices here: {WHY}")


@pytest.fixture
def run_cli():
    """`dsmath <command> <args>` in a process of its own, from the repository root: (exit code, output)."""
    def run(command: str, *args: str) -> tuple[int, str]:
        env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
        out = subprocess.run([sys.executable, "-m", "dsmath_jax.cli", command, *args], capture_output=True,
                             text=True, env=env, timeout=600, cwd=REPO)
        return out.returncode, out.stdout + out.stderr
    return run


# ------------------------------------------------------------------------------------------- topology names
@pytest.mark.parametrize("name,chip,grid", [
    ("v5p-8", "v5p", (2, 2, 1)), ("v5p-128", "v5p", (4, 4, 4)), ("v5p-512", "v5p", (4, 8, 8)),
    ("v5p:4x4x4", "v5p", (4, 4, 4)), ("v4-32", "v4", (2, 2, 4)), ("v4:2x2x1", "v4", (2, 2, 1)),
    ("v5e-16", "v5e", (4, 4)), ("v5litepod-16", "v5e", (4, 4)), ("v5e:1x1", "v5e", (1, 1)),
    ("v6e-64", "v6e", (8, 8)), ("V6E-256", "v6e", (16, 16)),
])
def test_topology_names(name, chip, grid):
    t = parse_topology(name)
    assert (t.chip.name, t.grid, t.num_chips) == (chip, grid, math.prod(grid))
    assert parse_topology(name, num_slices=4).num_chips == 4 * math.prod(grid)


@pytest.mark.parametrize("name,match", [("v5p-7", "multiple of 2"), ("v5p-24", "no standard"),
                                        ("h100-8", "unknown chip"), ("v5p", "expected a slice name"),
                                        ("v5e:2x2x2", "2 dimensions")])
def test_bad_topology_names_say_what_is_accepted(name, match):
    with pytest.raises(TopologyError, match=match):
        parse_topology(name)


# ------------------------------------------------------------------------------------------- compiler output
REPORT = """Memory Space: default (color=0)
Total bytes: 88331774816 (82.26GiB)
  cumulative_size;       size;       offset; used_by_n_values; shapes_list
  ------------------------------------------------------------
   20.00GiB( 18%);   20.00GiB;  45051789312;                4; 2×bf16[10,32,4096,4096], 2×f32[10,32,4096,4096]
   29.38GiB( 35%);    9.38GiB;  32210927616;                5; 5×bf16[30,10,4096,32,128]
   29.88GiB( 36%);  512.0KiB;      7241728;                1; f32[10,4096,102400]
  The rest 216 values are less than 5% of the total size and not shown.

Memory Space: alternate (color=1)
Total bytes: 65536 (64.0KiB)
"""


def test_memory_report_is_read_back(tmp_path):
    path = tmp_path / "m.memory-usage-report.txt"
    path.write_text(REPORT)
    total, buffers = read_memory_report(str(path))
    assert total == 88331774816
    assert [b.bytes for b in buffers] == [20 * GIB, int(9.38 * GIB), 512 * 1024]
    assert buffers[1].shapes == "5×bf16[30,10,4096,32,128]"


def test_buffers_are_named_by_their_shapes():
    dims = {"seq": 4096, "vocab": 102400, "layers": 30}
    assert describe_buffer("2×f32[10,32,4096,4096]", dims).startswith("attention scores")
    assert describe_buffer("f32[10,4096,102400]", dims).startswith("logits")
    assert describe_buffer("5×bf16[30,10,4096,32,128]", dims).startswith("per-layer activations")


def test_collective_bytes_of_an_hlo_text():
    hlo = """
  %all-reduce.1 = bf16[1,4096,32,128]{3,1,2,0} all-reduce(%fusion.461), channel_id=1
  %ag-start = (f32[16,8]{1,0}, f32[64,8]{1,0}) all-gather-start(%p), dimensions={0}
  %ag-done = f32[64,8]{1,0} all-gather-done(%ag-start)
  %t = (bf16[4096,11008]{1,0}, s32[10]{0}) all-reduce(%a, %b), channel_id=2
  %x = f32[128]{0} add(%y, %z)
  %rs = f32[2,1024]{1,0} reduce-scatter(%w), dimensions={1}
"""
    want = (4096 * 32 * 128 * 2) + (64 * 8 * 4) + (4096 * 11008 * 2 + 10 * 4) + (2 * 1024 * 4)
    assert collective_bytes(hlo) == want


# ------------------------------------------------------------------------------------------- TPU plans
@needs_libtpu
def test_tiny_pretrain_plan_reports_per_chip_memory_and_flops(run_cli, tmp_path):
    out = tmp_path / "plan.json"
    code, text = run_cli("pretrain", "--config=configs/pretrain/deepseekmath_base_7b.py:tiny", "--compile_only",
                         "--topology=v5p:2x2x1", f"--plan_out={out}")
    assert code == 0, text
    plan = json.loads(out.read_text())
    assert plan["chips"] == 4 and plan["chip"] == "v5p" and plan["fits"]
    assert plan["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    step = next(e for e in plan["executables"] if e["name"] == "train_step")
    # Memory: at least the fp32 params and both AdamW moments of this chip's shard (an independent count).
    from dsmath_jax.model import get_preset
    cfg = get_preset("tiny", vocab_size=512, max_seq_len=128)
    state = 3 * cfg.num_params() * 4 / 4
    assert step["compiled"]["total_bytes"] > state
    assert step["peak_bytes"] < plan["hbm_gib_per_chip"] * GIB
    # FLOPs: XLA's count over all chips against 6N + attention (16 rows x 128 tokens): the same order, and
    # above it (the LM head's logsumexp, softmax, norms, AdamW are not in 6N).
    model = cfg.flops_per_token(128) * 16 * 128
    assert step["model_flops"] == pytest.approx(model)
    assert 0.9 * model < step["flops"] * plan["chips"] < 2.5 * model
    assert plan["predicted_step_seconds"] > 0 and 0 < plan["predicted_mfu"] < 1
    # The time estimate is never below the roofline: every FLOP at the chip's peak, every byte at its bandwidth.
    assert step["seconds"] >= max(step["compute_bound_seconds"], step["memory_bound_seconds"]) * (1 - 1e-9)
    assert "train_step" in text and "fits" in text


@needs_libtpu
def test_a_config_that_cannot_fit_names_its_buffers_and_knobs(run_cli, tmp_path):
    """The tiny model with XLA attention, 64 rows of 4096 tokens on one v5e chip (15.75 GiB): the score
    tensors alone are 64 x 8 heads x 4096^2 x 4 bytes = 32 GiB."""
    code, text = run_cli("pretrain", "--config=configs/pretrain/deepseekmath_base_7b.py:tiny", "--compile_only",
                         "--topology=v5e:1x1", "--noprobes", "--config.model.attention_impl=xla",
                         "--config.data.seq_len=4096", "--config.model.max_seq_len=4096",
                         "--config.train.batch_size=64", f"--plan_out={tmp_path / 'plan.json'}")
    assert code == 3, text
    assert "does not fit v5e:1x1" in text
    assert "attention scores" in text
    for knob in ("--config.train.accum_steps", "--config.model.remat_policy", "--config.model.attention_impl",
                 "--config.mesh.shape"):
        assert knob in text
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert not plan["fits"] and plan["peak_gib_per_chip"] > 15.75


@needs_libtpu
def test_multi_slice_meshes_put_the_data_axis_across_slices():
    from dsmath_jax.parallel import make_mesh
    devices = parse_topology("v5p:2x2x1", num_slices=2).devices()
    mesh = make_mesh({"data": 2, "fsdp": 4}, devices=devices)
    slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert (slices[0] == slices[0].flat[0]).all() and (slices[1] == slices[1].flat[0]).all()
    assert slices[0].flat[0] != slices[1].flat[0]
    with pytest.raises(ValueError, match="multiple of the number of slices"):
        make_mesh({"data": 1, "fsdp": 8}, devices=devices)


def test_compile_only_needs_a_topology(run_cli):
    code, text = run_cli("pretrain", "--config=configs/pretrain/deepseekmath_base_7b.py:tiny", "--compile_only")
    assert code == 2 and "--topology" in text
    code, text = run_cli("pretrain", "--config=configs/pretrain/deepseekmath_base_7b.py:tiny", "--compile_only",
                         "--topology=v9x-8")
    assert code == 2 and "unknown chip" in text



def test_the_readme_plan_column_is_generated_from_the_plans(tmp_path):
    """The paper map's "planned per chip, step" column is what experiments/benchmarks/plan_all.py writes from
    experiments/results/plans.json, not typed by hand: regenerating it changes nothing."""
    import importlib.util
    import shutil
    spec = importlib.util.spec_from_file_location("plan_all", REPO / "experiments" / "benchmarks" / "plan_all.py")
    plan_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plan_all)
    rows = json.loads((REPO / "experiments" / "results" / "plans.json").read_text())
    assert {r["config"].split(":")[0] for r in rows} >= {f"configs/{p}" for p, _ in plan_all.CONFIGS}
    copy = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", copy)
    assert not plan_all.update_readme(rows, copy), "README's plan column differs from plans.json: rerun plan_all.py"
    assert plan_all.markdown(rows) == (REPO / "experiments" / "results" / "plans.md").read_text()


# ------------------------------------------------------------------------------------------- rollout samplers
# The tiny policy on 4 chips (fsdp 2 x tensor 2; the sampler decodes on data 2 x tensor 2): 12 questions x G 8
# = 96 rollouts of up to 64 + 32 tokens, 32 rows decoded at once, two sampling rounds per step.
TINY_RL = ["model.preset=tiny", "mesh.shape.tensor=2", "rollout.tensor_parallel=2", "data.max_prompt_tokens=64",
           "rollout.group_size=8", "rollout.questions_per_step=12", "rollout.sampler_batch_size=32",
           "rollout.max_new_tokens=32", "rollout.dynamic_sampling=true", "rollout.max_sampling_rounds=2",
           "train.accum_steps=4"]
ROLLOUT = ("rollout_prefill", "rollout_insert", "rollout_decode_loop", "rollout_decode_step")


def _tiny_rl_plan(batching: str):
    from dsmath_jax.config import load_config
    from dsmath_jax.plan.commands import plan_rl
    config = load_config(str(REPO / "configs" / "rl" / "grpo_outcome.py") + ":tiny",
                         [*TINY_RL, f"rollout.batching={batching}"], command="rl")
    names = [n for n in ROLLOUT if batching == "continuous" or n != "rollout_insert"]
    plan = plan_rl(config, parse_topology("v5p:2x2x1"), config_name="tiny", probes=False, only=names)
    return {e.name: e for e in plan.executables}, plan


def _forward_flops(tokens: int, context: int) -> float:
    """2N per token + 4 L H d per token and context position, N the tiny preset's non-embedding parameters."""
    from dsmath_jax.model import get_preset
    cfg = get_preset("tiny")
    return tokens * (2.0 * cfg.num_params(include_embedding=False) + 4.0 * 2 * 8 * 8 * context)


@needs_libtpu
def test_the_rl_plan_follows_the_rollout_engine():
    """Continuous batching (the default): one prefill per 8 questions per round (ceil(12 / 8) x 2 = 4), one
    insert per prefill, and at most ceil(96 rows / 32 slots) x 32 tokens x 2 rounds = 192 decode steps of all
    32 slots, each slot 64 + 32 = 96 tokens long."""
    exes, plan = _tiny_rl_plan("continuous")
    assert list(exes) == list(ROLLOUT)
    assert [exes[n].calls for n in ROLLOUT] == [4, 4, 0, 192]
    assert exes["rollout_prefill"].model_flops == pytest.approx(_forward_flops(8 * 64, 32))
    assert exes["rollout_insert"].model_flops == 0
    assert exes["rollout_decode_step"].model_flops == pytest.approx(_forward_flops(32, 64 + 16))
    assert "32 slots of 96 tokens" in plan.step
    # The decode loop's cache, as the compiler placed it on one chip: 16 of the 32 slots (data 2), 2 of the 4 KV
    # heads (tensor 2), 2 layers x 96 positions x head_dim 8, in the policy's compute dtype.
    assert exes["rollout_decode_loop"].compiled.fits
    assert any("f32[2,16,2,96,8]" in b.shapes for b in exes["rollout_decode_loop"].compiled.top_buffers)


@needs_libtpu
def test_static_batching_keeps_the_static_sampler_plan():
    """batching="static": ceil(96 / 32) = 3 batches of 32 rows per round, 2 rounds: 6 prefills of 32 rows and
    6 x 32 = 192 decode steps of 32 rows; no insert."""
    exes, plan = _tiny_rl_plan("static")
    assert list(exes) == ["rollout_prefill", "rollout_decode_loop", "rollout_decode_step"]
    assert [exes[n].calls for n in exes] == [6, 0, 192]
    assert exes["rollout_prefill"].model_flops == pytest.approx(_forward_flops(32 * 64, 32))
    assert exes["rollout_decode_step"].model_flops == pytest.approx(_forward_flops(32, 64 + 16))
    assert "6 sampler batches of 32" in plan.step


@needs_libtpu
def test_the_prm_plan_prefills_each_step_prefix_once_for_its_continuations():
    """Math-Shepherd labelling (`dsmath rm`, kind prm) calls the sampler with n = labels.n continuations per step
    prefix, so the engine prefills each prefix once: sampler calls of 64 rows hold 64 / 4 = 16 prefixes, two
    prefills of 8 (not 64 / 8 = 8 prefills, one per continuation); the solutions likewise (K = 4 per question)."""
    from dsmath_jax.config import load_config
    from dsmath_jax.plan.commands import plan_rm
    config = load_config(str(REPO / "configs" / "rm" / "prm_math_shepherd.py") + ":tiny",
                         ["model.preset=tiny", "mesh.shape.tensor=1"], command="rm")
    assert (config.sampling.batch_size, config.labels.n, config.sampling.samples_per_problem) == (64, 4, 4)
    names = ("solutions_prefill", "continuations_prefill", "continuations_decode_step")
    plan = plan_rm(config, parse_topology("v5p:2x2x1"), config_name="tiny", probes=False, only=names)
    exes = {e.name: e for e in plan.executables}
    assert exes["solutions_prefill"].calls == 2
    assert exes["continuations_prefill"].calls == 2
    assert "once per prompt for its 4 sample(s)" in exes["continuations_prefill"].note
    assert exes["continuations_decode_step"].calls == 48  # ceil(64 rows / 64 slots) x 48 new tokens
