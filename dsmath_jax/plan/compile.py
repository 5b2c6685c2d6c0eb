"""Compiling one executable ahead of time and reading what the compiler says about it.

`compile_executable(fn, args)` lowers a jitted function on abstract arguments (`jax.ShapeDtypeStruct`s with
shardings on a mesh of compile-only devices) and compiles it. Three readings per chip:

* memory: the TPU compiler's own memory-usage report (written by `xla_dump_to`; its "Total bytes" is what
  the program needs in HBM: arguments, outputs and temporaries as buffer assignment packs them). XLA's
  `memory_analysis()` sums buffers without their overlap and overstates the temporaries (121 GiB reported
  for a 7B step that the compiler placed in 82.5 GiB); it is kept alongside. A program that does not fit
  fails to compile with RESOURCE_EXHAUSTED; its report (written before the failure) names the buffers.
* cost: `cost_analysis()` FLOPs, bytes accessed and XLA's own time estimate. Loop bodies (scanned layers,
  gradient accumulation, decode loops) are counted once: plans derive per-step figures from probes
  without loops (`dsmath_jax.plan.core`).
* communication: bytes produced per chip by the collectives of the optimised HLO (all-reduce, all-gather,
  reduce-scatter, all-to-all, collective-permute; the TPU compiler writes FSDP weight gathers as
  all-reduces of zero-padded buffers).
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import re
import tempfile
import time
from typing import Any

log = logging.getLogger(__name__)

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2,
                "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_UNITS = {"B": 1, "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30, "TiB": 2 ** 40}
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


@dataclasses.dataclass
class Buffer:
    """One slot of the compiler's memory report: its size and the values (shapes) that share it."""

    bytes: int
    shapes: str


@dataclasses.dataclass
class CompiledInfo:
    """What compiling one executable for one topology told us, per chip."""

    fits: bool
    total_bytes: int  # the program's HBM per chip (compiler report), or what it would need when it does not fit
    argument_bytes: int = 0  # memory_analysis()
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    flops: float | None = None  # cost_analysis(): loop bodies once
    bytes_accessed: float | None = None
    xla_seconds: float | None = None  # the TPU compiler's estimate ("optimal_seconds")
    collective_bytes: int = 0
    top_buffers: list[Buffer] = dataclasses.field(default_factory=list)
    compile_seconds: float = 0.0
    error: str | None = None
    loops: int = 0  # while loops left in the optimised program (their bodies count once in the cost analysis)
    source: str = "report"  # where total_bytes came from: "report", "error" or "memory_analysis"

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["top_buffers"] = [dataclasses.asdict(b) for b in self.top_buffers]
        return out


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B)\s*", text)
    if not m:
        raise ValueError(f"cannot read a size from {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def read_memory_report(path: str, top: int = 8) -> tuple[int, list[Buffer]]:
    """(Total bytes, the largest buffers) of an XLA `*memory-usage-report.txt`."""
    total, buffers = None, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if total is None:
                m = re.match(r"\s*Total bytes:\s*(\d+)", line)
                if m:
                    total = int(m.group(1))
                continue
            parts = [p.strip() for p in line.split(";")]
            if len(parts) >= 5 and re.match(r"[\d.]+[KMGT]?i?B\(", parts[0]):
                buffers.append(Buffer(_size(parts[1]), parts[4]))
                if len(buffers) >= top:
                    break
            elif buffers and not line.strip():
                break  # the first (default) memory space only
    if total is None:
        raise ValueError(f"{path}: no 'Total bytes' line")
    return total, buffers


def _shape_bytes(shape: str) -> float:
    total = 0.0
    for dtype, dims in re.findall(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]", shape):
        if dtype not in _DTYPE_BYTES:
            continue
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _DTYPE_BYTES[dtype]
    return total


def collective_bytes(hlo_text: str) -> int:
    """Bytes produced per chip by the collective operations of an optimised HLO module (async pairs count
    once, at their `-done`; loop bodies count once, like the cost analysis)."""
    total = 0.0
    pattern = re.compile(r"=\s*(.+?)\s+(" + "|".join(_COLLECTIVES) + r")(-start|-done)?\(")
    for m in pattern.finditer(hlo_text):
        shape, _, phase = m.groups()
        if phase == "-start":
            continue
        total += _shape_bytes(shape)
    return int(total)


def _oom_bytes(message: str) -> int | None:
    m = re.search(r"\(([\d.]+)([KMGT])\) exceeds available HBM", message)
    if m:
        return int(float(m.group(1)) * {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}[m.group(2)])
    return None


def compile_executable(fn: Any, args: tuple, *, dump: bool = True, cost: bool = True,
                       options: dict[str, str] | None = None) -> CompiledInfo:
    """Lowers `fn` (a `jax.jit` function) on `args` and compiles it; see the module docstring.

    With `dump` the compiler writes its memory report to a temporary directory (TPU); without, or where
    no report is written (CPU), the total is memory_analysis()'s arguments + outputs - aliased + temp.
    A compile that runs out of memory returns `fits=False` with the compiler's figure and top buffers.
    """
    import jax  # noqa: F401 - (imported for its side effect of registering backends before lowering)

    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    with tempfile.TemporaryDirectory(prefix="dsmath_plan_") as tmp:
        options = dict(options or {}, **({"xla_dump_to": tmp} if dump else {}))
        try:
            compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
        except Exception as e:  # the compiler's errors are JaxRuntimeError/XlaRuntimeError
            message = str(e)
            if "RESOURCE_EXHAUSTED" not in message:
                raise
            total = _oom_bytes(message)
            top: list[Buffer] = []
            reports = glob.glob(os.path.join(tmp, "*memory-usage-report.txt"))
            if reports:
                report_total, top = read_memory_report(max(reports, key=os.path.getsize))
                total = total or report_total
            return CompiledInfo(fits=False, total_bytes=int(total or 0), top_buffers=top,
                                compile_seconds=time.perf_counter() - t0, error=message.strip().splitlines()[0],
                                source="error")
        seconds = time.perf_counter() - t0
        reports = glob.glob(os.path.join(tmp, "*memory-usage-report.txt"))
        report = read_memory_report(max(reports, key=os.path.getsize)) if reports else None
    m = compiled.memory_analysis()
    info = CompiledInfo(fits=True, total_bytes=0, compile_seconds=seconds)
    if m is not None:
        info.argument_bytes, info.output_bytes = int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
        info.alias_bytes, info.temp_bytes = int(m.alias_size_in_bytes), int(m.temp_size_in_bytes)
    if report is not None:
        info.total_bytes, info.top_buffers = report
    else:
        info.total_bytes = info.argument_bytes + info.output_bytes - info.alias_bytes + info.temp_bytes
        info.source = "memory_analysis"
    if cost:
        analysis = compiled.cost_analysis()
        if isinstance(analysis, (list, tuple)):
            analysis = analysis[0] if analysis else {}
        analysis = analysis or {}
        info.flops = float(analysis["flops"]) if "flops" in analysis else None
        info.bytes_accessed = float(analysis["bytes accessed"]) if "bytes accessed" in analysis else None
        info.xla_seconds = float(analysis["optimal_seconds"]) if "optimal_seconds" in analysis else None
        try:
            text = compiled.as_text()
            info.collective_bytes = collective_bytes(text)
            info.loops = len(re.findall(r"\swhile\(", text))
        except Exception as e:  # noqa: BLE001 - the text is a convenience; the plan goes on without it
            log.debug("no HLO text for collective bytes: %s", e)
    return info


__all__ = ["Buffer", "CompiledInfo", "compile_executable", "read_memory_report", "collective_bytes"]
