"""Multi-host start-up and global batches assembled from per-host data."""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

log = logging.getLogger(__name__)

# Environment variables that mean "this process is one of several": TPU pod slices (GKE / multislice),
# SLURM, Open MPI, or an explicit coordinator.
_MULTI_HOST_ENV = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
                   "TPU_PROCESS_ADDRESSES", "MEGASCALE_NUM_SLICES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
_METADATA_TIMEOUT_S = 2.0


def _tpu_metadata(key: str, timeout_s: float = _METADATA_TIMEOUT_S) -> str | None:
    """An attribute of this VM from the GCE metadata server (what jax.distributed's Cloud TPU detection
    reads); None when the server does not answer within `timeout_s` or has no such attribute."""
    host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
    request = urllib.request.Request(f"http://{host}/computeMetadata/v1/instance/attributes/{key}",
                                     headers={"Metadata-Flavor": "Google"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http_proxy
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return response.read().decode("utf-8") if response.status == 200 else None
    except (OSError, ValueError) as e:  # URLError, HTTPError (404), timeouts, unresolvable host
        log.debug("GCE metadata %r unavailable: %s", key, e)
        return None


def _on_cloud_tpu_vm() -> bool:
    """Whether JAX found TPU chips and libtpu on this machine (set when jax's backend module loads)."""
    try:
        from jax._src import cloud_tpu_init
    except ImportError:  # pragma: no cover - a JAX without it
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def _cloud_tpu_hosts() -> int:
    """Hosts of this Cloud TPU slice times slices, from the metadata server as jax.distributed's
    `GceTpuCluster` reads them (`worker-network-endpoints`, `tpu-env`'s MEGASCALE_NUM_SLICES); 1 off a
    Cloud TPU VM, when TPU_SKIP_MDS_QUERY is set, or when the server does not answer."""
    if not _on_cloud_tpu_vm() or os.environ.get("TPU_SKIP_MDS_QUERY") is not None:
        return 1
    endpoints = _tpu_metadata("worker-network-endpoints") or ""
    hosts = max(1, len([w for w in endpoints.split(",") if w.strip()]))
    slices = 1
    for line in (_tpu_metadata("tpu-env") or "").splitlines():  # lines like MEGASCALE_NUM_SLICES: '2'
        key, _, value = line.partition(":")
        value = value.strip().strip("'\"")
        if key.strip() == "MEGASCALE_NUM_SLICES" and value.isdigit():
            slices = max(1, int(value))
    return hosts * slices


def _looks_multi_host() -> bool:
    for name in _MULTI_HOST_ENV:
        value = os.environ.get(name, "")
        if not value:
            continue
        if name in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
            if len([h for h in value.split(",") if h.strip()]) > 1:
                return True
        elif name in ("MEGASCALE_NUM_SLICES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
            if value.isdigit() and int(value) > 1:
                return True
        else:
            return True
    # A Cloud TPU VM of a pod slice (e.g. v4-32, started with `gcloud ... tpu-vm ssh --worker=all`) sets none of
    # these: its hosts are in the metadata server, where `jax.distributed.initialize()` finds them too.
    hosts = _cloud_tpu_hosts()
    if hosts > 1:
        log.info("Cloud TPU VM with %d hosts (from the metadata server)", hosts)
        return True
    return False


def initialize(*, enabled: bool | str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               timeout_s: int = 300) -> bool:
    """Starts JAX's multi-host runtime; a no-op on one host.

    enabled: True always initialises, False never, "auto" when arguments or the environment (TPU pod
      slice, SLURM, Open MPI, JAX_COORDINATOR_ADDRESS) or, on a Cloud TPU VM, the metadata server show
      several processes.
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
    values: dict[str, Any] = {}
    if cfg is not None:
        values = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)  # an ml-collections ConfigDict or a dict
    allowed = {"enabled", "coordinator_address", "num_processes", "process_id", "timeout_s"}
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in the distributed config; allowed: {sorted(allowed)}")
    return initialize(**values)


def global_batch(local: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles this host's slice of a batch into global arrays sharded with `sharding`.

    Every host passes its own rows ([local_batch, ...]); the global batch has
    local_batch * process_count rows, ordered by process index.
    """
    return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for name, value in local.items()}
