"""Multi-host start-up and global batches assembled from per-host data."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

log = logging.getLogger(__name__)

# Environment variables that mean "this process is one of several": TPU pod slices, SLURM, Open MPI,
# or an explicit coordinator.
_MULTI_HOST_ENV = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
                   "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _looks_multi_host() -> bool:
    for name in _MULTI_HOST_ENV:
        value = os.environ.get(name, "")
        if not value:
            continue
        if name == "TPU_WORKER_HOSTNAMES":
            if len([h for h in value.split(",") if h.strip()]) > 1:
                return True
        elif name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
            if value.isdigit() and int(value) > 1:
                return True
        else:
            return True
    return False


def initialize(*, enabled: bool | str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               timeout_s: int = 300) -> bool:
    """Starts JAX's multi-host runtime; a no-op on one host.

    enabled: True always initialises, False never, "auto" when arguments or the environment (TPU pod
      slice, SLURM, Open MPI, JAX_COORDINATOR_ADDRESS) show several processes.
    timeout_s: how long to wait for every host to join before failing.
    Returns True when the distributed runtime is (now) initialised.
    """
    if enabled not in (True, False, "auto"):
        raise ValueError(f"distributed.enabled must be True, False or 'auto', got {enabled!r}")
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    if enabled is False or (enabled == "auto" and not explicit and not _looks_multi_host()):
        log.info("single host: jax.distributed not initialised")
        return False
    if jax.distributed.is_initialized():
        return True
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=int(timeout_s))
    log.info("jax.distributed initialised: process %d of %d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def initialize_from_config(cfg: Mapping[str, Any] | None) -> bool:
    """`initialize(**cfg)` for a config's `distributed` block (missing keys take the defaults)."""
    cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else (cfg or {}))
    allowed = {"enabled", "coordinator_address", "num_processes", "process_id", "timeout_s"}
    unknown = set(cfg) - allowed
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in the distributed config; allowed: {sorted(allowed)}")
    return initialize(**cfg)


def global_batch(local: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles this host's slice of a batch into global arrays sharded with `sharding`.

    Every host passes its own rows ([local_batch, ...]); the global batch has
    local_batch * process_count rows, ordered by process index.
    """
    return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for name, value in local.items()}
