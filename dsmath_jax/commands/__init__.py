"""One module per `dsmath` command (see `dsmath_jax.cli.COMMANDS`)."""
