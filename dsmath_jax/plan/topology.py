"""Accelerator topologies to plan for, by name, and their abstract devices.

Names are the ones Cloud TPU uses for slices and the ones the TPU compiler uses for shapes:

  v5p-128            a v5p slice of 128 TensorCores = 64 chips (v5p and v4 count 2 cores per chip)
  v5p:4x4x4          the same slice by its chip grid
  v4-32, v4:2x2x4    v4 (megacore chips)
  v5e-16, v5litepod-16, v5e:4x4     v5e (one core per chip, 2-D grids)
  v6e-64, v6e:8x8    Trillium

`--num_slices=k` plans k such slices joined over the data-centre network (multi-slice): the mesh's `data`
axis then spans the slices. The devices come from libtpu's compile-only topology
(`jax.experimental.topologies.get_topology_desc`): programs lower and compile with the real TPU compiler,
nothing runs and no TPU is needed. Chip figures (HBM as the compiler reports it, dense bf16 peak, HBM and
inter-chip bandwidth per chip) are the vendor's data sheets; they feed the roofline estimate of a plan.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip figures. hbm_bytes: what the TPU compiler lets a program use (its "available HBM")."""

    name: str
    hbm_bytes: int
    peak_bf16_flops: float
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float  # bytes/s leaving one chip over all its inter-chip links
    cores_per_chip: int  # TensorCores a slice name counts per chip
    dims: int  # 3 (v4, v5p: 3-D torus) or 2 (v5e, v6e)


CHIPS = {
    # Cloud TPU data sheets: v5p 459 TFLOP/s bf16, 2,765 GB/s HBM, 4,800 Gbps ICI; v4 275 TFLOP/s, 1,228 GB/s,
    # 2,400 Gbps; v5e 197 TFLOP/s, 819 GB/s, 1,600 Gbps; v6e 918 TFLOP/s, 1,640 GB/s, 3,584 Gbps.
    "v5p": Chip("v5p", int(95.74 * GIB), 459e12, 2765e9, 600e9, 2, 3),
    "v4": Chip("v4", int(30.75 * GIB), 275e12, 1228e9, 300e9, 2, 3),
    "v5e": Chip("v5e", int(15.75 * GIB), 197e12, 819e9, 200e9, 1, 2),
    "v6e": Chip("v6e", int(31.25 * GIB), 918e12, 1640e9, 448e9, 1, 2),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}

# Chip grids of the standard slice shapes (Cloud TPU docs): chips -> grid.
_GRIDS_3D = {1: (1, 1, 1), 2: (1, 2, 1), 4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
             128: (4, 4, 8), 192: (4, 4, 12), 256: (4, 8, 8), 384: (4, 8, 12), 512: (8, 8, 8), 768: (8, 8, 12),
             1024: (8, 8, 16), 1536: (8, 12, 16), 2048: (8, 16, 16), 3072: (12, 16, 16), 4096: (16, 16, 16),
             6144: (16, 16, 24), 8192: (16, 16, 32)}
_GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}


class TopologyError(ValueError):
    """A topology name that cannot be planned for; the message says what is accepted."""


@dataclasses.dataclass(frozen=True)
class Topology:
    """A slice (or several) of one chip kind: `name` as given, `grid` the chip grid of one slice."""

    name: str
    chip: Chip
    grid: tuple[int, ...]
    num_slices: int = 1

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.grid)

    @property
    def num_chips(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def compiler_name(self) -> str:
        return f"{self.chip.name}:{'x'.join(map(str, self.grid))}"

    def describe(self) -> str:
        slices = f" x {self.num_slices} slices" if self.num_slices > 1 else ""
        return (f"{self.chip.name} {self.compiler_name.split(':')[1]}{slices}: {self.num_chips} chips, "
                f"{self.chip.hbm_bytes / GIB:.2f} GiB HBM each")

    def devices(self):
        """The abstract devices of the topology (libtpu's compile-only devices), in the compiler's order."""
        return _abstract_devices(self)


def parse_topology(name: str, num_slices: int = 1) -> Topology:
    """`v5p-128`, `v5p:4x4x4`, `v4-32`, `v5e-16`, `v5litepod-16`, `v5e:4x4`, `v6e-64`, ... -> Topology."""
    text = name.strip().lower()
    if num_slices < 1:
        raise TopologyError(f"num_slices must be >= 1, got {num_slices}")
    grid_match = re.fullmatch(r"([a-z0-9]+?):(\d+(?:x\d+)+)", text)
    count_match = re.fullmatch(r"([a-z0-9]+?)-(\d+)", text)
    if not grid_match and not count_match:
        raise TopologyError(f"topology {name!r}: expected a slice name like v5p-128, v4-32, v5e-16, v6e-64 or a "
                            "chip grid like v5p:4x4x4, v5e:4x4")
    match = grid_match or count_match
    assert match is not None  # one of them matched (checked above)
    kind = match.group(1)
    kind = ALIASES.get(kind, kind)
    if kind not in CHIPS:
        raise TopologyError(f"topology {name!r}: unknown chip {kind!r}; known: {sorted(CHIPS)} "
                            f"(and {sorted(ALIASES)}); GPUs are not planned here (see the README)")
    chip = CHIPS[kind]
    if grid_match:
        grid = tuple(int(x) for x in grid_match.group(2).split("x"))
        if len(grid) != chip.dims:
            raise TopologyError(f"topology {name!r}: a {chip.name} grid has {chip.dims} dimensions")
    else:
        assert count_match is not None  # grid_match is None here
        cores = int(count_match.group(2))
        if cores % chip.cores_per_chip:
            raise TopologyError(f"topology {name!r}: {chip.name} slices count {chip.cores_per_chip} TensorCores per "
                                f"chip, so the number must be a multiple of {chip.cores_per_chip}")
        chips = cores // chip.cores_per_chip
        grids = _GRIDS_3D if chip.dims == 3 else _GRIDS_2D
        if chips not in grids:
            raise TopologyError(f"topology {name!r}: no standard {chip.name} slice of {chips} chips; give the grid "
                                f"(e.g. {chip.name}:{'x'.join(['4'] * chip.dims)}); standard sizes: "
                                f"{[c * chip.cores_per_chip for c in sorted(grids)]}")
        grid = grids[chips]
    if any(g < 1 for g in grid):
        raise TopologyError(f"topology {name!r}: grid sizes must be >= 1")
    return Topology(name=name, chip=chip, grid=grid, num_slices=num_slices)


def _abstract_devices(topology: Topology):
    # libtpu takes a process-wide lock file; planning from several processes at once (parallel tests) needs
    # this lifted. Setting it is harmless where no real TPU is attached.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies  # loads libtpu on first use: only when planning

    kwargs: dict[str, Any] = {}
    grid = topology.grid
    if topology.chip.name == "v4":
        kwargs["chip_config_name"] = "megacore"
    host = (2, 2, 1) if len(grid) == 3 else (2, 2)
    if any(g % h for g, h in zip(grid, host)):  # single chips and 1x2 slices: one host holds them all
        kwargs["chips_per_host_bounds"] = tuple(grid) + (1,) * (3 - len(grid))
    if topology.num_slices > 1:
        kwargs["num_slices"] = topology.num_slices
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.compiler_name, **kwargs)
    except Exception as e:  # libtpu missing or refusing: say what to install
        raise TopologyError(
            f"cannot make the compile-only devices of {topology.compiler_name} ({type(e).__name__}: {e}). "
            "Planning for TPUs needs libtpu: pip install \"jax[tpu]\" (the same version as jax)") from e
    return list(desc.devices)


def libtpu_available() -> tuple[bool, str]:
    """(True, "") if compile-only TPU devices can be made here, else (False, the reason)."""
    try:
        _abstract_devices(parse_topology("v5p:2x2x1"))
    except TopologyError as e:
        return False, str(e)
    return True, ""


__all__ = ["Chip", "CHIPS", "Topology", "TopologyError", "parse_topology", "libtpu_available", "GIB"]
