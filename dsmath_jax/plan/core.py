"""Compile-only plans: every executable of a run, compiled for a topology, and what one step costs per chip.

A command's planner (`dsmath_jax.plan.commands`) describes one step of its run as `Executable`s: the jitted
function the run calls, its abstract arguments, how many times a step calls it and which resident state
(e.g. the frozen reference, the train state) stays in HBM while it runs without being one of its
arguments. `make_plan` compiles each for the topology and reads, per chip:

* memory: the compiler's figure for the program (arguments, outputs, temporaries) plus that other resident
  state = the peak while it runs; the step's peak is the largest; it fits when the compiler accepted every
  program and the peak is within the chip's HBM.
* FLOPs: XLA's cost analysis counts a loop body once, so each executable is also built as a *probe* with
  1 and 2 unrolled layers, one micro-batch and every remaining scan unrolled; the per-step count is
  probe(1) + (L - 1) * (probe(2) - probe(1)) times the probe units (micro-batches, decoded tokens) a call
  is made of. Bytes accessed and collective bytes are extrapolated the same way.
* Pallas kernels (splash attention) are custom calls whose insides XLA does not count: their FLOPs are
  added analytically (`Executable.kernel_flops`).
* time: an estimate, not a measurement. Each call takes XLA's own cost-model time of the compiled program
  (the TPU compiler's "optimal_seconds": per operation, the larger of its compute and memory time at
  peak; never less than the roofline, all FLOPs at peak or all bytes at HBM bandwidth) plus the Pallas
  kernels' FLOPs at peak, or its collective bytes over the chip's ICI bandwidth if that is larger
  (communication overlapped with compute). MFU is the model FLOPs (6N + attention per
  token) over that time. The plain roofline bounds (all FLOPs at peak; all bytes at HBM bandwidth) are
  reported beside it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Callable, Collection
from typing import Any

import jax
import numpy as np

from dsmath_jax.model.loops import unrolled_scans
from dsmath_jax.plan.compile import CompiledInfo, compile_executable
from dsmath_jax.plan.topology import GIB, Topology
from dsmath_jax.train.rundir import write_atomic

log = logging.getLogger(__name__)

HEADROOM = 0.05  # a full-scale config must plan with at least this fraction of HBM free


@dataclasses.dataclass
class Executable:
    """One jitted function a step of the run calls.

    calls: calls per step (for the time; 0 for a program whose time is counted through another, e.g. the
      decode loop, whose tokens are counted by `decode_step`).
    resident: names of resident state (`Build.resident`) that is in HBM while it runs but not among its args.
    units: how many probe units one call is made of (micro-batches of a train step, ...).
    model_flops: the model FLOPs of one call (6N + attention per trained token; 2N + attention per token of
      a forward), for MFU.
    """

    name: str
    fn: Any
    args: tuple
    calls: float = 1.0
    resident: tuple[str, ...] = ()
    units: float = 1.0
    model_flops: float = 0.0
    kernel_flops: float = 0.0  # per call and chip: FLOPs inside Pallas kernels, which XLA does not count
    cost_only: bool = False  # a unit the run repeats inside another program (a decode step): costs, no memory
    note: str = ""


@dataclasses.dataclass
class Build:
    """What a command's planner builds for one model configuration."""

    executables: list[Executable]
    resident: dict[str, int] = dataclasses.field(default_factory=dict)  # name -> bytes per chip
    knobs: dict[str, str] = dataclasses.field(default_factory=dict)  # config key -> what changing it does
    step: str = "one step"  # what a step is, in words
    tokens_per_step: int = 0


@dataclasses.dataclass
class ExecutablePlan:
    name: str
    calls: float
    units: float
    compiled: CompiledInfo
    resident_bytes: int  # other resident state alive meanwhile
    peak_bytes: int
    flops: float | None = None  # per call and chip, from probes
    bytes_accessed: float | None = None
    collective_bytes: float | None = None
    xla_seconds: float | None = None
    model_flops: float = 0.0
    kernel_flops: float = 0.0
    seconds: float | None = None  # the estimate, per call (module docstring)
    compute_bound_seconds: float | None = None  # every FLOP at peak
    memory_bound_seconds: float | None = None  # every byte at HBM bandwidth
    cost_only: bool = False
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["compiled"] = self.compiled.to_json()
        return out


@dataclasses.dataclass
class Plan:
    command: str
    config: str
    topology: Topology
    mesh: dict[str, int]
    model: dict[str, Any]
    step: str
    executables: list[ExecutablePlan]
    resident: dict[str, int]
    knobs: dict[str, str]
    tokens_per_step: int = 0
    compile_seconds: float = 0.0
    dims: dict[str, int] = dataclasses.field(default_factory=dict)  # seq, vocab, layers, cache: to name buffers

    @property
    def hbm_bytes(self) -> int:
        return self.topology.chip.hbm_bytes

    @property
    def peak(self) -> ExecutablePlan:
        return max((e for e in self.executables if not e.cost_only), key=lambda e: e.peak_bytes)

    @property
    def fits(self) -> bool:
        return (all(e.compiled.fits for e in self.executables if not e.cost_only)
                and self.peak.peak_bytes <= self.hbm_bytes)

    @property
    def headroom(self) -> float:
        return 1.0 - self.peak.peak_bytes / self.hbm_bytes

    @property
    def step_seconds(self) -> float | None:
        parts = [e.seconds * e.calls if e.seconds is not None else None for e in self.executables if e.calls]
        if any(p is None for p in parts):
            return None
        return float(sum(p for p in parts if p is not None))

    @property
    def flops_per_step(self) -> float | None:
        """XLA's FLOPs of one step over all chips (its counts are per chip: one SPMD program per device)."""
        parts = [e.flops * e.calls if e.flops is not None else None for e in self.executables if e.calls]
        if any(p is None for p in parts):
            return None
        return float(sum(p for p in parts if p is not None)) * self.topology.num_chips

    @property
    def model_flops_per_step(self) -> float:
        return float(sum(e.model_flops * e.calls for e in self.executables))

    @property
    def mfu(self) -> float | None:
        seconds = self.step_seconds
        if not seconds:
            return None
        return self.model_flops_per_step / (seconds * self.topology.chip.peak_bf16_flops * self.topology.num_chips)

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command, "config": self.config, "topology": self.topology.name,
            "compiler_topology": self.topology.compiler_name, "num_slices": self.topology.num_slices,
            "chips": self.topology.num_chips, "chip": self.topology.chip.name,
            "hbm_gib_per_chip": self.hbm_bytes / GIB, "mesh": self.mesh, "model": self.model, "step": self.step,
            "fits": self.fits, "peak_gib_per_chip": self.peak.peak_bytes / GIB, "peak_at": self.peak.name,
            "headroom": self.headroom, "resident_gib": {k: v / GIB for k, v in self.resident.items()},
            "xla_flops_per_step": self.flops_per_step, "model_flops_per_step": self.model_flops_per_step,
            "predicted_step_seconds": self.step_seconds, "predicted_mfu": self.mfu,
            "tokens_per_step": self.tokens_per_step,
            "time_model": "estimate, not a measurement: per call, XLA's cost-model time of the compiled program "
                          "(per operation, compute or memory at peak; at least the roofline) + Pallas kernel FLOPs at "
                          "peak, or the collective bytes over ICI bandwidth if larger",
            "executables": [e.to_json() for e in self.executables], "knobs": self.knobs,
            "compile_seconds": self.compile_seconds,
        }

    def write(self, path: str) -> None:
        write_atomic(path, json.dumps(self.to_json(), indent=2))

    def table(self) -> str:
        t = self.topology
        lines = [f"plan: dsmath {self.command} {self.config}",
                 f"  topology {t.name} ({t.describe()}); mesh {self.mesh}",
                 f"  model {_model_line(self.model)}",
                 f"  one step = {self.step}", ""]
        head = (f"  {'executable':<22}{'calls':>8}{'program':>11}{'+resident':>11}{'peak':>9}{'fits':>6}"
                f"{'TFLOP/call':>12}{'model TF':>10}{'s/call':>10}")
        lines += [head, "  " + "-" * (len(head) - 2)]
        for e in self.executables:
            fits = "yes" if e.compiled.fits and e.peak_bytes <= self.hbm_bytes else "NO"
            if e.cost_only:
                tf = f"{e.flops * t.num_chips / 1e12:.2f}" if e.flops is not None else "-"
                sec = f"{e.seconds:.4f}" if e.seconds is not None else "-"
                lines.append(f"  {e.name:<22}{e.calls:>8g}{'(repeated inside another program: costs only)':>47}"
                             f"{tf:>12}{e.model_flops / 1e12:>10.2f}{sec:>10}")
                continue
            tf = f"{e.flops * t.num_chips / 1e12:.2f}" if e.flops is not None else "-"
            mf = f"{e.model_flops / 1e12:.2f}" if e.model_flops else "-"
            sec = f"{e.seconds:.4f}" if e.seconds is not None else "-"
            lines.append(f"  {e.name:<22}{e.calls:>8g}{e.compiled.total_bytes / GIB:>10.2f}G"
                         f"{e.resident_bytes / GIB:>10.2f}G{e.peak_bytes / GIB:>8.2f}G"
                         f"{fits:>6}{tf:>12}{mf:>10}{sec:>10}")
        lines.append("")
        peak = self.peak
        lines.append(f"  peak {peak.peak_bytes / GIB:.2f} GiB of {self.hbm_bytes / GIB:.2f} GiB per chip "
                     f"(at {peak.name}); "
                     f"headroom {100 * self.headroom:.1f}%: {'fits' if self.fits else 'DOES NOT FIT'}")
        if self.step_seconds is not None:
            mfu = f", predicted MFU {100 * self.mfu:.1f}%" if self.mfu else ""
            lines.append(f"  predicted {self.step_seconds:.3f} s per step{mfu} (an estimate from XLA's cost model "
                         "and the kernels' FLOPs at peak, not a measurement)")
        if self.flops_per_step:
            lines.append(f"  FLOPs per step: XLA + kernels {self.flops_per_step:.4g} (with rematerialisation), model "
                         f"{self.model_flops_per_step:.4g} (6N + attention)")
        return "\n".join(lines)


def _model_line(model: dict[str, Any]) -> str:
    keys = ("name", "parameters", "num_layers", "d_model", "dtype", "remat_policy", "scan_layers", "attention",
            "logits_chunk")
    return ", ".join(f"{k} {model[k]}" for k in keys if k in model)


class PlanError(RuntimeError):
    """A run that does not fit its topology; the message names the biggest buffers and the knobs."""

    def __init__(self, message: str, plan: Plan):
        super().__init__(message)
        self.plan = plan


def describe_buffer(shapes: str, dims: dict[str, int]) -> str:
    """What a buffer of the compiler's report probably is, from its shapes and the run's dimensions."""
    shape_dims = [[int(d) for d in filter(None, g.split(","))] for g in re.findall(r"\[([\d,]*)\]", shapes)]
    seq, vocab, layers = dims.get("seq"), dims.get("vocab"), dims.get("layers")
    kinds = []
    for ds in shape_dims:
        if vocab and vocab in ds and len(ds) >= 3:
            kinds.append("logits over the vocabulary")
        elif seq and ds.count(seq) >= 2:
            kinds.append("attention scores (seq x seq)")
        elif layers and ds and ds[0] == layers and seq and seq in ds:
            kinds.append("per-layer activations kept for the backward pass")
        elif vocab and vocab in ds:
            kinds.append("embedding / LM head")
        elif dims.get("cache") and dims["cache"] in ds and layers and ds and ds[0] == layers:
            kinds.append("KV cache")
    return kinds[0] if kinds else "activations / temporaries"


def not_fit_message(plan: Plan, dims: dict[str, int]) -> str:
    bad = [e for e in plan.executables if not e.cost_only and (not e.compiled.fits or e.peak_bytes > plan.hbm_bytes)]
    t = plan.topology
    lines = [f"dsmath {plan.command} {plan.config} does not fit {t.name} ({t.chip.hbm_bytes / GIB:.2f} GiB HBM per "
             f"chip, {t.num_chips} chips, mesh {plan.mesh}):"]
    for e in bad:
        lines.append(f"  {e.name}: needs {e.peak_bytes / GIB:.2f} GiB per chip (program "
                     f"{e.compiled.total_bytes / GIB:.2f} GiB + resident {e.resident_bytes / GIB:.2f} GiB)")
        for b in e.compiled.top_buffers[:5]:
            lines.append(f"    {b.bytes / GIB:7.2f} GiB  {describe_buffer(b.shapes, dims)}: {b.shapes[:120]}")
    lines.append("  knobs that lower the peak:")
    lines += [f"    --config.{k}: {v}" for k, v in plan.knobs.items()]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- planning
# The TPU compiler turns an FSDP matmul into a "windowed einsum" (a loop that passes weight shards around the
# ring while multiplying): a loop the cost analysis would count once. Probes are compiled without it.
PROBE_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": "false",
                 "xla_tpu_enable_windowed_einsum_for_reduce_scatter": "false"}


def _probe_costs(build: Callable[[int, bool], Build],
                 only: Collection[str] | None = None) -> dict[str, tuple[CompiledInfo, ...]]:
    """name -> (cost at 1 layer, cost at 2 layers) of every executable (or those named in `only`), built as
    probes (no loops)."""
    out: dict[str, list[CompiledInfo]] = {}
    for layers in (1, 2):
        with unrolled_scans():
            probe = build(layers, True)
            for exe in probe.executables:
                if only is not None and exe.name not in only:
                    continue
                info = compile_executable(exe.fn, exe.args, dump=False, options=PROBE_OPTIONS)
                if info.loops:
                    log.warning("probe %s (%d layer(s)) still has %d loop(s): its FLOPs may be undercounted",
                                exe.name, layers, info.loops)
                out.setdefault(exe.name, []).append(info)
    return {k: tuple(v) for k, v in out.items() if len(v) == 2}


def _extrapolate(a: float | None, b: float | None, layers: int) -> float | None:
    if a is None or b is None:
        return None
    return a + (layers - 1) * (b - a)


def make_plan(*, command: str, config_name: str, topology: Topology, mesh, model: dict[str, Any],
              build: Callable[[int | None, bool], Build], num_layers: int, dims: dict[str, int],
              probes: bool = True, raise_if_not_fit: bool = True, only: Collection[str] | None = None) -> Plan:
    """Compiles `build(None, False)` (the run as configured) for `topology` and, with `probes`, the
    1- and 2-layer probes `build(n, True)`; returns the Plan (raises PlanError naming buffers and knobs
    when it does not fit and `raise_if_not_fit`). `only`: plan just the executables of these names (the
    plan's peak and fit are then theirs)."""
    t0 = time.perf_counter()
    full = build(None, False)
    if only is not None:
        unknown = set(only) - {e.name for e in full.executables}
        if unknown:
            raise ValueError(f"no executable named {sorted(unknown)} in this plan; it has "
                             f"{[e.name for e in full.executables]}")
        full.executables = [e for e in full.executables if e.name in only]
    costs = _probe_costs(build, only) if probes else {}
    chip = topology.chip
    plans = []
    for exe in full.executables:
        if exe.cost_only:  # the run never executes it alone: no memory to plan
            info = CompiledInfo(fits=True, total_bytes=0, source="cost probe only")
            resident = 0
        else:
            log.info("compiling %s for %s", exe.name, topology.name)
            info = compile_executable(exe.fn, exe.args, dump=True, cost=False)
            resident = int(sum(full.resident.get(r, 0) for r in exe.resident))
        ep = ExecutablePlan(name=exe.name, calls=exe.calls, units=exe.units, compiled=info, resident_bytes=resident,
                            peak_bytes=info.total_bytes + resident, model_flops=exe.model_flops, note=exe.note,
                            cost_only=exe.cost_only)
        if exe.name in costs:
            one, two = costs[exe.name]
            scale = exe.units
            ep.flops = _scaled(_extrapolate(one.flops, two.flops, num_layers), scale)
            ep.bytes_accessed = _scaled(_extrapolate(one.bytes_accessed, two.bytes_accessed, num_layers), scale)
            ep.collective_bytes = _scaled(_extrapolate(one.collective_bytes, two.collective_bytes, num_layers), scale)
            ep.xla_seconds = _scaled(_extrapolate(one.xla_seconds, two.xla_seconds, num_layers), scale)
            if ep.flops is not None:
                ep.flops += exe.kernel_flops
                ep.kernel_flops = exe.kernel_flops
                ep.compute_bound_seconds = ep.flops / chip.peak_bf16_flops
                ep.memory_bound_seconds = (ep.bytes_accessed or 0.0) / chip.hbm_bandwidth
                # XLA's per-operation times sum to at least the roofline (all FLOPs at peak, or all bytes at
                # HBM bandwidth); an extrapolation from the probes' cost-model times that falls below it (the
                # model's estimate can drop from 1 to 2 layers) is replaced by the roofline.
                roofline = max(ep.compute_bound_seconds - exe.kernel_flops / chip.peak_bf16_flops,
                               ep.memory_bound_seconds)
                cost_model = max(ep.xla_seconds or 0.0, roofline)
                ep.seconds = max(cost_model + exe.kernel_flops / chip.peak_bf16_flops,
                                 (ep.collective_bytes or 0.0) / chip.ici_bandwidth)
        plans.append(ep)
    plan = Plan(command=command, config=config_name, topology=topology, mesh=dict(mesh.shape), model=model,
                step=full.step, executables=plans, resident=full.resident, knobs=full.knobs,
                tokens_per_step=full.tokens_per_step, compile_seconds=time.perf_counter() - t0, dims=dims)
    if raise_if_not_fit and not plan.fits:
        raise PlanError(not_fit_message(plan, dims), plan)
    return plan


def _scaled(x: float | None, scale: float) -> float | None:
    return None if x is None else float(x) * scale


# ------------------------------------------------------------------------------------------- helpers
def device_bytes(tree: Any) -> int:
    """Bytes one device holds of every array of `tree` (ShapeDtypeStructs or arrays with shardings)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return int(total)


def shaped(shapes: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `shapes` carrying `shardings` (a matching tree, or one sharding for all)."""
    if not isinstance(shardings, (dict, list, tuple)) and not hasattr(shardings, "_fields"):
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shardings), shapes)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


__all__ = ["Executable", "Build", "ExecutablePlan", "Plan", "PlanError", "make_plan", "device_bytes", "shaped",
           "describe_buffer", "HEADROOM"]
