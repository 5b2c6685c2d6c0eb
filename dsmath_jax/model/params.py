"""Parameters as plain nested dicts: what optimizers, checkpoints and converters work on.

`get_params(model)` is the model's `nnx.Param` values as a nested dict of arrays; `set_params` puts such a
dict back (in place). They live in `dsmath_jax.parallel.mesh` (which must not import the model package)
and are re-exported here.
"""

from dsmath_jax.parallel.mesh import get_params, param_flat_state, set_params

__all__ = ["get_params", "set_params", "param_flat_state"]
