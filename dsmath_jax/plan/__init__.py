"""Compile-only plans: a run's programs compiled for a TPU topology, with per-chip memory, FLOPs and a
predicted step time (`dsmath <command> --compile_only --topology=...`)."""

from dsmath_jax.plan.core import Build, Executable, Plan, PlanError, make_plan
from dsmath_jax.plan.topology import Topology, TopologyError, parse_topology

__all__ = ["Build", "Executable", "Plan", "PlanError", "make_plan", "Topology", "TopologyError", "parse_topology"]
