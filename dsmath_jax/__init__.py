"""dsmath_jax: DeepSeekMath (arXiv 2402.03300) reproduced end to end in JAX/Flax NNX."""

__version__ = "0.1.0"
