"""Device meshes, logical-axis sharding rules, multi-host start-up and global batches."""

from dsmath_jax.parallel.distributed import global_batch, initialize, initialize_from_config
from dsmath_jax.parallel.mesh import (
    DEFAULT_RULES,
    MESH_AXES,
    activation_sharding,
    batch_sharding,
    constrain,
    create_sharded,
    logical_axes,
    logical_to_spec,
    make_mesh,
    mesh_shape,
    param_shardings,
    rules_from_config,
    shard_model,
)

__all__ = [
    "DEFAULT_RULES", "MESH_AXES", "activation_sharding", "batch_sharding", "constrain", "create_sharded",
    "logical_axes", "logical_to_spec", "make_mesh", "mesh_shape", "param_shardings", "rules_from_config",
    "shard_model", "global_batch", "initialize", "initialize_from_config",
]
