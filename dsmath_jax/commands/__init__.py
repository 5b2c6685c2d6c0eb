"""One module per `dsmath` command (see `dsmath_jax.cli.COMMANDS`); each keeps only argument handling.

Imports: a command module imports the library it runs (JAX, Flax, Orbax, Beam, the grader's workers) inside
its main function, not at module top, so that `dsmath --help`, `dsmath <command> --help` and a usage error
answer at once without loading them; every other module imports at its top.
"""
