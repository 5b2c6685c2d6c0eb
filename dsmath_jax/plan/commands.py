"""Compile-only plans of the commands: `dsmath pretrain|sft|rm|rl|eval --compile_only --topology=v5p-128`.

Each planner builds the command's run the way the command does (the same config, optimizer, loss
functions, step factories and sampler) but on an abstract model (`nnx.eval_shape`: no parameter is ever
allocated, so a 70B config plans on a laptop) and hands its executables to `dsmath_jax.plan.core`:

  pretrain / sft  the train step (with its gradient accumulation) and the held-out eval step;
  rl              the rollout's sampler (`rollout.batching`), the reward model's scoring forward (ORM / PRM),
                  the reference forward, the policy's train step with the method's loss, PPO's value forward
                  and critic step, and the reward model's train step (iterative RL);
  rm              the policy's sampler (`sampling.batching`; solutions and Math-Shepherd continuations), the
                  reward model's train step and scoring forward;
  eval            the sampler (`batching`).

A sampler is planned as the command builds it: the continuous-batching engine (prefill of `prefill_rows`
prompts, insert into slots, decode loop and decode step over every slot of a fixed length) or the static
sampler (prefill, decode loop and decode step of a batch); see `_sampler_executables`. `only` plans just
the executables of the names given.

Model architectures come from the config (`model.preset` and its fields); where the config points at a
Hugging Face or run directory that is readable here, its config.json is used instead (a missing one is
not an error: planning needs shapes, not weights).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Collection
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath
from flax import nnx

from dsmath_jax.generate.engine import Engine, make_sampler
from dsmath_jax.generate.sampler import Sampler, SamplingParams
from dsmath_jax.model import CausalLM, ModelConfig, ScalarHeadModel, get_params
from dsmath_jax.model.attention import mesh_platform, resolve_implementation, splash_block_size
from dsmath_jax.model.config import COMPUTE_FIELDS
from dsmath_jax.parallel import make_mesh, rules_from_config
from dsmath_jax.parallel.mesh import batch_sharding, param_shardings
from dsmath_jax.plan.core import Build, Executable, Plan, device_bytes, make_plan, shaped
from dsmath_jax.plan.topology import Topology
from dsmath_jax.rl.loop import RLRun
from dsmath_jax.rl.reward_model import RewardModel
from dsmath_jax.train.checkpoint import Checkpointer
from dsmath_jax.train.loop import optimizer_from_config
from dsmath_jax.train.rundir import read_json
from dsmath_jax.train.step import adamw, make_train_step

log = logging.getLogger(__name__)


def _d(cfg) -> dict:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})


def _readable_json(path: str | None, name: str = "config.json") -> dict | None:
    """The JSON file `name` in directory `path` (local or gs://) when it can be read here, else None."""
    if not path:
        return None
    try:
        p = epath.Path(path) / name
        return read_json(p) if p.exists() else None
    except Exception as e:  # noqa: BLE001 - an unreachable bucket: plan from the config instead
        log.info("cannot read %s/%s (%s): planning with the config's model", path, name, e)
        return None


def _with_compute(cfg: ModelConfig, compute: dict[str, Any]) -> ModelConfig:
    return cfg.replace(**{k: v for k, v in compute.items() if k in COMPUTE_FIELDS and v is not None})


def model_from_hf_or_config(hf_dir: str | None, model: dict[str, Any]) -> ModelConfig:
    """A training run's model: the Hugging Face directory's architecture (if readable) with the config's
    compute settings, else the config's model section."""
    hf = _readable_json(hf_dir)
    if hf is not None:
        return _with_compute(ModelConfig.from_hf_config(hf), model)
    return ModelConfig.from_dict({k: v for k, v in model.items() if v is not None})


def model_from_run_or_preset(run_dir: str | None, model: dict[str, Any], what: str) -> ModelConfig:
    """The architecture of a run directory (its config.json's model, or the Hugging Face config.json), with
    the config's compute overrides; when the run directory is not readable here, `model.preset` (+ fields)."""
    run = _readable_json(run_dir)
    if run is not None:
        if "model" in run and isinstance(run["model"], dict):
            init_hf = (run.get("init") or {}).get("hf_dir")
            base = model_from_hf_or_config(init_hf, run["model"])
        else:
            base = ModelConfig.from_hf_config(run)
        return _with_compute(base, model)
    arch = {k: v for k, v in model.items() if v is not None and k not in COMPUTE_FIELDS}
    if not arch.get("preset") and "vocab_size" not in arch:
        raise ValueError(f"planning {what}: {run_dir!r} cannot be read here, so the config must name the "
                         "architecture: set --config.model.preset (e.g. deepseekmath_7b)")
    return _with_compute(ModelConfig.from_dict(arch), model)


def _mesh(config, topology: Topology):
    mesh_cfg = _d(config.mesh)
    return make_mesh(mesh_cfg.get("shape"), devices=topology.devices()), rules_from_config(mesh_cfg.get("rules"))


def _variant(cfg: ModelConfig, layers: int | None) -> ModelConfig:
    """The configured model, or a probe of `layers` unrolled layers."""
    return cfg if layers is None else cfg.replace(num_layers=layers, scan_layers=False)


def _abstract_lm(cfg: ModelConfig):
    return nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))


def _rows(shape: tuple[int, ...], dtype, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _train_batch(rows: int, seq: int, sharding, keys=("inputs", "targets", "weights", "segment_ids", "positions")):
    dtypes = {"weights": jnp.float32, "old_logp": jnp.float32, "ref_logp": jnp.float32, "advantages": jnp.float32,
              "old_values": jnp.float32, "returns": jnp.float32, "token_rewards": jnp.float32}
    return {k: _rows((rows, seq), dtypes.get(k, jnp.int32), sharding) for k in keys}


def _abstract_state(fns, model) -> Any:
    params = jax.eval_shape(lambda: get_params(model))
    return shaped(jax.eval_shape(fns.init_state, params), fns.state_sharding)


def _forward_flops(cfg: ModelConfig, tokens: float, context: int) -> float:
    """Model FLOPs of a forward pass: 2N per token plus attention (4 L H d per token and context position)."""
    assert cfg.head_dim is not None  # derived in ModelConfig.__post_init__
    return tokens * (2.0 * cfg.num_params(include_embedding=False)
                     + 4.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context)


def attention_kernel_flops(cfg: ModelConfig, mesh, rows: int, seq: int, *, training: bool) -> float:
    """FLOPs per chip inside the splash attention kernel (a Pallas custom call XLA does not count) for
    `rows` rows of `seq` tokens through every layer: 0 where attention does not run the kernel.

    Forward: QK^T and PV, 4 seq^2 heads head_dim per row and layer, over the causal blocks only. Training
    adds the backward kernels (dq: 3 matmuls, dk/dv: 4; 3.5 forwards) and, unless the remat policy keeps the
    kernel's residuals ("none", "save_attention"), a rerun of the forward kernel.
    """
    if resolve_implementation(cfg.attention_impl, mesh_platform(mesh)) != "splash":
        return 0.0
    block, padded = splash_block_size(seq)
    assert cfg.head_dim is not None  # derived in ModelConfig.__post_init__
    blocks = padded // block
    causal = (blocks * (blocks + 1) / 2) / blocks ** 2
    forward = 4.0 * padded ** 2 * cfg.num_heads * cfg.head_dim * causal * cfg.num_layers * rows
    passes = 1.0
    if training:
        passes += 3.5 + (0.0 if cfg.remat_policy in ("none", "save_attention") else 1.0)
    return forward * passes / mesh.devices.size


def _model_json(cfg: ModelConfig, name: str | None = None) -> dict[str, Any]:
    return {"name": name, "parameters": cfg.num_params(), "num_layers": cfg.num_layers, "d_model": cfg.d_model,
            "vocab_size": cfg.vocab_size, "dtype": cfg.dtype, "param_dtype": cfg.param_dtype,
            "remat_policy": cfg.remat_policy, "scan_layers": cfg.scan_layers,
            "attention": cfg.attention_impl or "auto", "logits_chunk": cfg.logits_chunk}


def _bucket(n: int, minimum: int = 16) -> int:
    size = minimum
    while size < n:
        size *= 2
    return size


def _sampler_executables(sampler: Sampler, prompt_tokens: int, sampling: SamplingParams, *, rows: int, prompts: int,
                         rounds: int = 1, prefix: str, resident: tuple, cfg: ModelConfig,
                         probe: bool) -> list[Executable]:
    """The sampler's executables for a step of `rounds` generate calls, each of `rows` samples of `prompts`
    distinct prompts (up to `prompt_tokens` tokens; `sampling.n` samples each).

    Static `Sampler`: prefill, decode loop and decode step of ceil(rows / batch_size) batches per call.
    `Engine` (continuous batching): prefill of `prefill_rows` prompts (one per prompt, shared by its samples),
    insert (the prefilled keys/values copied into slots), decode loop and decode step of every slot; its slots
    hold `max_len` tokens (the engine's, else the prompt bucket + max_new_tokens).
    """
    prompt = _bucket(prompt_tokens)
    new_tokens = sampling.max_new_tokens
    if isinstance(sampler, Engine):
        return _engine_executables(sampler, prompt, sampling, rows=rows, prompts=prompts, rounds=rounds,
                                   prefix=prefix, resident=resident, cfg=cfg, probe=probe)
    exes = []
    batch = sampler.batch_size
    batches = math.ceil(rows / batch) * rounds
    for name, fn, args in sampler.executables(prompt, sampling):
        if name == "prefill":
            exes.append(Executable(f"{prefix}prefill", fn, args, calls=batches, resident=resident,
                                   model_flops=_forward_flops(cfg, batch * prompt, prompt // 2)))
        elif name == "decode":
            if not probe:  # the loop: compiled for its memory; its time is counted per token by decode_step
                exes.append(Executable(f"{prefix}decode_loop", fn, args, calls=0, resident=resident,
                                       note=f"{sampler.chunk_size} tokens per call"))
        else:
            exes.append(Executable(f"{prefix}decode_step", fn, args, calls=batches * new_tokens,
                                   resident=resident, model_flops=_forward_flops(cfg, batch, prompt + new_tokens // 2),
                                   cost_only=True,
                                   note="one token for every row: what the decode loop repeats"))
    return exes


def _engine_executables(engine: Engine, prompt: int, sampling: SamplingParams, *, rows: int, prompts: int,
                        rounds: int, prefix: str, resident: tuple, cfg: ModelConfig,
                        probe: bool) -> list[Executable]:
    """`_sampler_executables` of the continuous-batching engine (prompt: the prompt bucket)."""
    slots, new_tokens = engine.slots, sampling.max_new_tokens
    max_len = engine.max_len or prompt + new_tokens
    prefills = rounds * math.ceil(prompts / engine.prefill_rows)
    # Every row running its full budget: ceil(rows / slots) waves of max_new_tokens steps per generate call.
    steps = rounds * math.ceil(rows / slots) * new_tokens
    exes = []
    for name, fn, args in engine.executables(prompt, sampling, max_len=max_len):
        if name == "prefill":
            exes.append(Executable(f"{prefix}prefill", fn, args, calls=prefills, resident=resident,
                                   model_flops=_forward_flops(cfg, engine.prefill_rows * prompt, prompt // 2),
                                   note=f"{engine.prefill_rows} prompts of {prompt} tokens, once per prompt for its "
                                        f"{sampling.n} sample(s)"))
        elif name == "insert":
            exes.append(Executable(f"{prefix}insert", fn, args, calls=prefills, resident=resident,
                                   note="copies a prefill's keys/values into free slots (no model FLOPs); one call "
                                        "per prefill"))
        elif name == "decode":
            if not probe:  # the loop: compiled for its memory; its time is counted per step by decode_step
                exes.append(Executable(f"{prefix}decode_loop", fn, args, calls=0, resident=resident,
                                       note=f"up to {engine.chunk_size} steps per call of {slots} slots x "
                                            f"{max_len} tokens (KV cache)"))
        else:
            exes.append(Executable(f"{prefix}decode_step", fn, args, calls=steps, resident=resident,
                                   model_flops=_forward_flops(cfg, slots, prompt + new_tokens // 2), cost_only=True,
                                   note=f"one step of every slot: what the decode loop repeats; calls are an upper "
                                        f"bound, every row running its full budget (ceil({rows} rows / {slots} "
                                        f"slots) x {rounds} round(s) x {new_tokens} steps), attention over all "
                                        f"{max_len} entries"))
    return exes


def _dims(cfg: ModelConfig, seq: int, cache: int | None = None) -> dict[str, int]:
    return {"seq": seq, "vocab": cfg.vocab_size, "layers": cfg.num_layers, "cache": cache or 0}


# ------------------------------------------------------------------------------------------- pretrain / sft
def plan_train(config: ml_collections.ConfigDict, topology: Topology, *, command: str, config_name: str,
               probes: bool = True, raise_if_not_fit: bool = True, only: Collection[str] | None = None) -> Plan:
    mesh, rules = _mesh(config, topology)
    init = _d(config.get("init"))
    cfg = model_from_hf_or_config(init.get("hf_dir"), _d(config.model))
    batch, seq = config.train.batch_size, config.data.seq_len
    accum = config.train.accum_steps
    if batch % accum:
        raise ValueError(f"train.batch_size={batch} does not split into train.accum_steps={accum} micro-batches")
    optimizer, schedule = optimizer_from_config(config)
    rows_sharding = batch_sharding(mesh, rules)
    eval_every = config.train.eval_every
    has_eval = bool(config.data.eval_split) and eval_every > 0

    def build(layers: int | None, probe: bool) -> Build:
        model_cfg = _variant(cfg, layers)
        model = _abstract_lm(model_cfg)
        a = 1 if probe else accum
        rows = batch // accum if probe else batch
        fns = make_train_step(model, optimizer, mesh, rules, accum_steps=a, schedule=schedule)
        state = _abstract_state(fns, model)
        data = _train_batch(rows, seq, rows_sharding)
        flops = cfg.flops_per_token(seq) * batch * seq
        exes = [Executable("train_step", fns.train_step, (state, data), calls=1, units=accum,
                           model_flops=flops,
                           kernel_flops=attention_kernel_flops(cfg, mesh, batch, seq, training=True))]
        if has_eval:
            eval_rows = batch // accum if probe else batch
            exes.append(Executable("eval_step", fns.eval_step, (state.params, _train_batch(eval_rows, seq,
                                                                                           rows_sharding)),
                                   calls=config.train.eval_batches / eval_every,
                                   resident=("optimizer_state",), units=accum,
                                   model_flops=_forward_flops(cfg, batch * seq, seq // 2),
                                   kernel_flops=attention_kernel_flops(cfg, mesh, batch, seq, training=False)))
        resident = {"optimizer_state": device_bytes(state.opt_state)}
        return Build(exes, resident, knobs=_train_knobs(accum, batch, mesh, cfg),
                     step=f"{batch} rows x {seq} tokens in {accum} micro-batch(es), one AdamW update",
                     tokens_per_step=batch * seq)

    return make_plan(command=command, config_name=config_name, topology=topology, mesh=mesh,
                     model=_model_json(cfg, _d(config.model).get("preset")), build=build, num_layers=cfg.num_layers,
                     dims=_dims(cfg, seq), probes=probes, raise_if_not_fit=raise_if_not_fit, only=only)


def _train_knobs(accum: int, batch: int, mesh, cfg: ModelConfig, prefix: str = "train") -> dict[str, str]:
    chips = mesh.devices.size
    return {
        f"{prefix}.accum_steps": f"now {accum}: {2 * accum} halves the rows per micro-batch "
                                 f"({batch // accum / chips:g} -> {batch // (2 * accum) / chips:g} per chip) and "
                                 "their activations",
        f"{prefix}.batch_size": f"now {batch} ({batch / chips:g} rows per chip): fewer rows, less activation memory",
        "model.remat_policy": f"now {cfg.remat_policy!r}: 'full' recomputes every block in the backward pass "
                              "(least memory); 'save_qkv' / 'dots_no_batch' keep more",
        "model.attention_impl": f"now {cfg.attention_impl or 'auto'!r}: 'auto' runs splash attention on TPU "
                                "(no seq x seq score buffers)",
        "model.logits_chunk": f"now {cfg.logits_chunk}: positions per block of LM-head logits (smaller: less memory)",
        "mesh.shape": f"now {dict(mesh.shape)}: more `tensor` splits heads/MLP/vocabulary activations; FSDP "
                      "shards the model state over `fsdp`",
    }


# ------------------------------------------------------------------------------------------- rl
def plan_rl(config: ml_collections.ConfigDict, topology: Topology, *, config_name: str, probes: bool = True,
            raise_if_not_fit: bool = True, only: Collection[str] | None = None) -> Plan:
    c = config
    mesh, rules = _mesh(c, topology)
    cfg = model_from_run_or_preset(c.init.get("run_dir"), _d(c.model), "the RL policy")
    run = RLRun(c, workdir="")
    run.mesh, run.rules = mesh, rules
    run.tokenizer = None  # type: ignore[assignment]  # a plan decodes no text
    run.max_new = c.rollout.max_new_tokens
    prompt = c.data.max_prompt_tokens
    seq = c.train.seq_len or -(-(prompt + run.max_new - 1) // 16) * 16
    G, Q, mu, accum = run.G, run.Q, run.mu, c.train.accum_steps
    rows = run.rows
    if rows % accum:
        raise ValueError(f"{rows} rows per step (questions x G) do not split into train.accum_steps={accum}")
    rounds = c.rollout.max_sampling_rounds if c.rollout.dynamic_sampling else 1
    sampler_rows = c.rollout.sampler_batch_size
    batches = math.ceil(rows / sampler_rows) * rounds
    continuous = c.rollout.batching == "continuous"
    # The engine's slots: the longest prompt kept + the longer of the rollout's and the evaluation's budgets
    # (RLRun.build); the static sampler's cache: the prompt bucket + the rollout's budget.
    cache = (prompt + max(run.max_new, c.eval.max_new_tokens or run.max_new) if continuous
             else _bucket(prompt) + run.max_new)
    sampling = SamplingParams(max_new_tokens=run.max_new, temperature=c.rollout.temperature or 1.0, n=G)
    rows_sharding = batch_sharding(mesh, rules)
    rm_cfg = None
    if c.reward.kind in ("orm", "prm"):
        meta = _rm_meta(c.reward.get("rm_dir"))
        rm_cfg = ModelConfig.from_dict(meta["model"]) if meta else cfg
    method, keys = c.method, run.method.batch_keys

    def batch_spec(n: int) -> dict:
        spec = _train_batch(n, seq, rows_sharding, [k for k in keys if k not in ("pair_valid", "correct")])
        for k in ("pair_valid", "correct"):
            if k in keys:
                spec[k] = _rows((n, 1), jnp.float32, rows_sharding)
        return spec

    def build(layers: int | None, probe: bool) -> Build:
        model_cfg = _variant(cfg, layers)
        model = _abstract_lm(model_cfg)
        run.config = c
        if probe:  # one micro-batch, no accumulation loop
            c_probe = c.copy_and_resolve_references()
            c_probe.train.accum_steps = 1
            run.config = c_probe
        run.build(model)
        run.config = c
        n = rows // accum if probe else rows
        state = _abstract_state(run.fns, model)
        ref = shaped(jax.eval_shape(run.frozen, state.params), run.params_sharding)
        resident = {"policy_params": device_bytes(state.params), "policy_optimizer": device_bytes(state.opt_state),
                    "rollout_batch": device_bytes(batch_spec(rows))}
        if run.needs_ref:
            resident["reference"] = device_bytes(ref)
        if run.method.source == "initial":
            resident["initial_policy"] = device_bytes(ref)
        critic_state = None
        if run.critic is not None:
            critic = nnx.eval_shape(lambda: ScalarHeadModel(model_cfg, rngs=nnx.Rngs(0)))
            critic_state = _abstract_state(run.critic.fns, critic)
            resident["critic_params"] = device_bytes(critic_state.params)
            resident["critic_optimizer"] = device_bytes(critic_state.opt_state)
        rm = rm_trainer = None
        if rm_cfg is not None:
            rm = RewardModel.abstract(_variant(rm_cfg.replace(**{k: getattr(model_cfg, k) for k in COMPUTE_FIELDS}),
                                               layers), c.reward.kind, mesh, rules, seq_len=seq)
            resident["reward_model"] = device_bytes(rm.params)
            if c.rm_update.enabled:
                rm_trainer = rm.make_trainer(adamw(c.rm_update.lr, weight_decay=0.0), accum_steps=1)
                resident["reward_model_optimizer"] = device_bytes(shaped(rm_trainer.state.opt_state,
                                                                         rm_trainer.fns.state_sharding.opt_state))
        fwd_kernel = attention_kernel_flops(cfg, mesh, rows, seq, training=False)
        train_kernel = attention_kernel_flops(cfg, mesh, rows, seq, training=True)
        everything = tuple(resident)
        if c.train.reference_on_host and "reference" in resident:  # in HBM only while its forward runs
            everything = tuple(r for r in everything if r != "reference")
        others = lambda *mine: tuple(r for r in everything if r not in mine)  # noqa: E731
        exes: list[Executable] = []
        if run.method.source != "gold":
            exes += _sampler_executables(run.sampler, prompt, sampling, rows=rows, prompts=Q, rounds=rounds,
                                         prefix="rollout_", resident=others("rollout_batch"), cfg=cfg, probe=probe)
        micro = accum  # probe units (micro-batches) per call
        if rm is not None:
            rm_rows = rows // accum if probe else rows
            rm_args = (shaped(rm.params, rm.param_sharding), _rows((rm_rows, seq), jnp.int32, rm.row_sharding),
                       _rows((rm_rows, seq), jnp.int32, rm.row_sharding))
            exes.append(Executable("reward_model_scores", rm._scores, rm_args, calls=rounds,
                                   resident=others("reward_model"), units=micro,
                                   model_flops=_forward_flops(cfg, rows * seq, seq // 2), kernel_flops=fwd_kernel))
        if run.needs_ref:
            exes.append(Executable("reference_forward", run.ref_forward, (ref, batch_spec(n)), calls=1,
                                   resident=others("reference"), units=micro,
                                   model_flops=_forward_flops(cfg, rows * seq, seq // 2), kernel_flops=fwd_kernel))
        if run.critic is not None and critic_state is not None:
            exes.append(Executable("critic_values", run.critic.values, (critic_state.params, batch_spec(n)), calls=1,
                                   resident=others("critic_params"), units=micro,
                                   model_flops=_forward_flops(cfg, rows * seq, seq // 2), kernel_flops=fwd_kernel))
        exes.append(Executable("policy_train_step", run.fns.train_step, (state, batch_spec(n)), calls=mu,
                               resident=others("policy_params", "policy_optimizer"), units=micro,
                               model_flops=cfg.flops_per_token(seq) * rows * seq, kernel_flops=train_kernel))
        if run.critic is not None and critic_state is not None:
            exes.append(Executable("critic_train_step", run.critic.fns.train_step, (critic_state, batch_spec(n)),
                                   calls=mu, resident=others("critic_params", "critic_optimizer"), units=micro,
                                   model_flops=cfg.flops_per_token(seq) * rows * seq, kernel_flops=train_kernel))
        if rm is not None and rm_trainer is not None:
            bs = c.rm_update.batch_size
            rm_state = shaped(rm_trainer.state, rm_trainer.fns.state_sharding)
            rm_batch = {"inputs": _rows((bs, seq), jnp.int32, rm_trainer.fns.batch_sharding),
                        "segment_ids": _rows((bs, seq), jnp.int32, rm_trainer.fns.batch_sharding),
                        "weights": _rows((bs, seq), jnp.float32, rm_trainer.fns.batch_sharding)}
            if c.reward.kind == "orm":
                rm_batch["labels"] = _rows((bs, 1), jnp.float32, rm_trainer.fns.batch_sharding)
            else:
                steps_ = int(rm.max_steps)
                rm_batch["step_ends"] = _rows((bs, steps_), jnp.int32, rm_trainer.fns.batch_sharding)
                rm_batch["step_labels"] = _rows((bs, steps_), jnp.float32, rm_trainer.fns.batch_sharding)
            exes.append(Executable("reward_model_train_step", rm_trainer.fns.train_step, (rm_state, rm_batch),
                                   calls=c.rm_update.steps / run.M,
                                   resident=others("reward_model", "reward_model_optimizer"),
                                   model_flops=cfg.flops_per_token(seq) * bs * seq,
                                   kernel_flops=attention_kernel_flops(cfg, mesh, bs, seq, training=True)))
        knobs = _train_knobs(accum, rows, mesh, cfg)
        knobs.update({
            "rollout.sampler_batch_size": f"now {sampler_rows}: {'slots' if continuous else 'rows'} decoded at once "
                                          "(KV cache and decode activations scale with it)",
            "rollout.tensor_parallel": f"now {c.rollout.get('tensor_parallel') or mesh.shape['tensor']}: the "
                                       "sampler's bf16 weights are split this many ways (the rest replicate)",
            "train.reference_on_host": "keep the frozen reference in host memory between forwards",
        })
        rollout = (f"continuous batching on {sampler_rows} slots of {cache} tokens" if continuous
                   else f"{batches:g} sampler batches of {sampler_rows}")
        step = (f"{Q} questions x G {G} = {rows} rollouts of up to {prompt} + {run.max_new} tokens "
                f"({rollout}), then {mu} update(s) of {accum} micro-batch(es)")
        return Build(exes, resident, knobs=knobs, step=step, tokens_per_step=rows * seq)

    return make_plan(command="rl", config_name=config_name, topology=topology, mesh=mesh,
                     model=dict(_model_json(cfg, _d(c.model).get("preset")), method=method,
                                reward=c.reward.kind), build=build, num_layers=cfg.num_layers,
                     dims=_dims(cfg, seq, cache), probes=probes,
                     raise_if_not_fit=raise_if_not_fit, only=only)


def _rm_meta(rm_dir: str | None) -> dict | None:
    """The metadata of a `dsmath rm` run's latest checkpoint (architecture, kind), when readable here."""
    if not rm_dir:
        return None
    try:
        if not epath.Path(rm_dir, "checkpoints").is_dir():
            return None
        with Checkpointer(os.path.join(rm_dir, "checkpoints"), read_only=True, async_save=False,
                          max_to_keep=None) as ckpt:
            return ckpt.metadata(None)
    except Exception as e:  # noqa: BLE001 - unreachable: plan with the policy's architecture
        log.info("cannot read the reward model in %s (%s): planning it with the policy's architecture", rm_dir, e)
        return None


# ------------------------------------------------------------------------------------------- rm
def plan_rm(config: ml_collections.ConfigDict, topology: Topology, *, config_name: str, probes: bool = True,
            raise_if_not_fit: bool = True, only: Collection[str] | None = None) -> Plan:
    c = config
    mesh, rules = _mesh(c, topology)
    model = _d(c.model)
    policy_cfg = model_from_run_or_preset(c.init.get("run_dir"), model, "the RM's generator policy")
    rm_init = c.init.get("rm_init_dir")
    rm_cfg = model_from_run_or_preset(rm_init, model, "the reward model") if rm_init else policy_cfg
    seq, prompt = c.data.seq_len, c.plan.prompt_tokens
    bs, accum = c.train.batch_size, c.train.accum_steps
    optimizer, schedule = optimizer_from_config(c)
    solutions = SamplingParams(max_new_tokens=c.sampling.max_new_tokens, n=c.sampling.samples_per_problem,
                               temperature=c.sampling.temperature or 1.0)
    # Math-Shepherd: N = labels.n continuations of every step prefix, one prefill per prefix (as `dsmath rm` calls it).
    continuation = SamplingParams(max_new_tokens=c.labels.max_new_tokens, n=c.labels.n,
                                  temperature=c.labels.temperature or 1.0)

    def build(layers: int | None, probe: bool) -> Build:
        pcfg, rcfg = _variant(policy_cfg, layers), _variant(rm_cfg, layers)
        policy = _abstract_lm(pcfg)
        # Slots sized per call (as `dsmath rm` builds them): each use below fixes its own max_len.
        sampler = make_sampler(c.sampling.batching, policy, None, rows=c.sampling.batch_size, mesh=mesh, rules=rules)
        policy_params = shaped(jax.eval_shape(lambda: get_params(policy)), param_shardings(policy, mesh, rules))
        rm = RewardModel.abstract(rcfg, c.kind, mesh, rules, seq_len=seq, max_steps=c.data.max_steps)
        trainer = rm.make_trainer(optimizer, 1 if probe else accum, schedule=schedule)
        state = shaped(trainer.state, trainer.fns.state_sharding)
        resident = {"policy_params": device_bytes(policy_params)}
        bs_sampling = c.sampling.batch_size
        exes = _sampler_executables(sampler, prompt, solutions, rows=bs_sampling,
                                    prompts=-(-bs_sampling // solutions.n), prefix="solutions_",
                                    resident=("policy_params",), cfg=pcfg, probe=probe)
        if c.kind == "prm":
            exes += _sampler_executables(sampler, prompt + c.sampling.max_new_tokens, continuation, rows=bs_sampling,
                                         prompts=-(-bs_sampling // continuation.n), prefix="continuations_",
                                         resident=("policy_params",), cfg=pcfg, probe=probe)
        rows = bs // accum if probe else bs
        sh = trainer.fns.batch_sharding
        data = {"inputs": _rows((rows, seq), jnp.int32, sh), "segment_ids": _rows((rows, seq), jnp.int32, sh),
                "weights": _rows((rows, seq), jnp.float32, sh)}
        if c.kind == "orm":
            data["labels"] = _rows((rows, 1), jnp.float32, sh)
        else:
            data["step_ends"] = _rows((rows, c.data.max_steps), jnp.int32, sh)
            data["step_labels"] = _rows((rows, c.data.max_steps), jnp.float32, sh)
        exes.append(Executable("rm_train_step", trainer.fns.train_step, (state, data), calls=1,
                               units=accum, model_flops=rcfg.flops_per_token(seq) * bs * seq,
                               kernel_flops=attention_kernel_flops(rm_cfg, mesh, bs, seq, training=True)))
        eval_rows = c.train.eval_batch_size
        eval_tokens = _rows((eval_rows, seq), jnp.int32, rm.row_sharding)
        exes.append(Executable("rm_scores", rm._scores, (state.params, eval_tokens,
                                                         _rows((eval_rows, seq), jnp.int32, rm.row_sharding)),
                               calls=0, resident=("rm_optimizer",), note="held-out evaluation"))
        resident["rm_optimizer"] = device_bytes(state.opt_state)
        knobs = _train_knobs(accum, bs, mesh, rcfg)
        what = "slots" if c.sampling.batching == "continuous" else "rows"
        knobs["sampling.batch_size"] = f"now {c.sampling.batch_size}: {what} the policy decodes at once"
        return Build(exes, resident, knobs=knobs,
                     step=f"labelling: batches of {c.sampling.batch_size} samples; training: {bs} rows x {seq} "
                          f"tokens in {accum} micro-batch(es)", tokens_per_step=bs * seq)

    return make_plan(command="rm", config_name=config_name, topology=topology, mesh=mesh,
                     model=dict(_model_json(rm_cfg, model.get("preset")), kind=c.kind), build=build,
                     num_layers=rm_cfg.num_layers, dims=_dims(rm_cfg, seq), probes=probes,
                     raise_if_not_fit=raise_if_not_fit, only=only)


# ------------------------------------------------------------------------------------------- eval
def plan_eval(config: ml_collections.ConfigDict, topology: Topology, *, config_name: str, model_path: str | None,
              probes: bool = True, raise_if_not_fit: bool = True, only: Collection[str] | None = None) -> Plan:
    c = config
    mesh, rules = _mesh(c, topology)
    overrides = _d(c.model_overrides)
    cfg = model_from_run_or_preset(model_path, dict(overrides, preset=c.plan.get("preset")), "the evaluated model")
    prompt = c.plan.prompt_tokens
    sampling = SamplingParams(max_new_tokens=c.eval.max_new_tokens, n=c.eval.n, temperature=c.eval.temperature)
    continuous = c.batching == "continuous"
    cache = _bucket(prompt) + sampling.max_new_tokens  # the engine's slots (and the static sampler's cache)

    def build(layers: int | None, probe: bool) -> Build:
        model_cfg = _variant(cfg, layers)
        model = _abstract_lm(model_cfg)
        sampler = make_sampler(c.batching, model, None, rows=c.batch_size, max_len=cache, mesh=mesh, rules=rules)
        exes = _sampler_executables(sampler, prompt, sampling, rows=c.batch_size,
                                    prompts=-(-c.batch_size // sampling.n), prefix="", resident=(), cfg=model_cfg,
                                    probe=probe)
        what = "slots" if continuous else "rows"
        return Build(exes, {}, knobs={"batch_size": f"now {c.batch_size}: {what} decoded at once",
                                      "mesh.shape": f"now {dict(mesh.shape)}: `tensor` splits the sampler's weights"},
                     step=f"one batch of {c.batch_size} rows: prompts up to {prompt} tokens + "
                          f"{sampling.max_new_tokens} new" + (f" ({c.batch_size} slots of {cache} tokens)"
                                                              if continuous else ""),
                     tokens_per_step=c.batch_size * sampling.max_new_tokens)

    return make_plan(command="eval", config_name=config_name, topology=topology, mesh=mesh,
                     model=_model_json(cfg, c.plan.get("preset")), build=build, num_layers=cfg.num_layers,
                     dims=_dims(cfg, _bucket(prompt), cache), probes=probes,
                     raise_if_not_fit=raise_if_not_fit, only=only)


def plan_command(command: str, config, topology: Topology, *, config_name: str, model_path: str | None = None,
                 probes: bool = True, raise_if_not_fit: bool = True, only: Collection[str] | None = None) -> Plan:
    """The plan of `dsmath <command>` with this config on `topology` (see the module docstring); `only`: just
    the executables of these names."""
    kw: dict[str, Any] = dict(config_name=config_name, probes=probes, raise_if_not_fit=raise_if_not_fit, only=only)
    if command in ("pretrain", "sft"):
        return plan_train(config, topology, command=command, **kw)
    if command == "rl":
        return plan_rl(config, topology, **kw)
    if command == "rm":
        return plan_rm(config, topology, **kw)
    if command == "eval":
        return plan_eval(config, topology, model_path=model_path, **kw)
    raise ValueError(f"no compile-only plan for `dsmath {command}`; plannable: pretrain, sft, rl, rm, eval")


__all__ = ["plan_command", "plan_train", "plan_rl", "plan_rm", "plan_eval", "model_from_run_or_preset",
           "model_from_hf_or_config"]
