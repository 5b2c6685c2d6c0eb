"""Shared command-line plumbing: ml-collections config files with overrides, and the work directory.

  dsmath <command> --config=configs/pretrain/table1_corpora.py:tiny --config.train.steps=50 --workdir=runs/x

Configs are locked after loading, so an override of a key the config does not have fails, naming it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from absl import flags
from ml_collections import config_flags


class UsageError(ValueError):
    """Bad command-line flags; the message says which."""


def parse_flags(argv: list[str], prog: str, *, workdir_required: bool = True, plannable: bool = False,
                define_extra: Callable[[flags.FlagValues], None] | None = None) -> flags.FlagValues:
    """Parses `--config` (a config file, `path.py` or `path.py:arg`, plus `--config.a.b=v` overrides),
    `--workdir` and any flags `define_extra` adds, into a fresh FlagValues (so commands can run
    repeatedly in one process, e.g. in tests). A `plannable` command also takes `--compile_only
    --topology=... [--num_slices=k] [--plan_out=path] [--noprobes]` (then --workdir is optional)."""
    values = flags.FlagValues()
    argv = [prog] + list(argv)
    # `sys_argv`: config_flags reads the `--config.*` overrides from the argv it is given, not sys.argv.
    config_flags.DEFINE_config_file("config", None, "experiment config: path/to/config.py[:argument]",
                                    flag_values=values, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "run directory (local path or gs://): checkpoints, metrics, results",
                        flag_values=values)
    flags.DEFINE_string("log_level", "INFO", "logging level", flag_values=values)
    if plannable:
        flags.DEFINE_boolean("compile_only", False, "plan instead of run: build the run with abstract shapes, "
                             "compile every executable for --topology and report per-chip memory, FLOPs and a "
                             "predicted step time (plan.json)", flag_values=values)
        flags.DEFINE_string("topology", None, "TPU topology to plan for: v5p-128, v5p:4x4x4, v4-32, v5e-16, "
                            "v6e-64, ...", flag_values=values)
        flags.DEFINE_integer("num_slices", 1, "slices of --topology joined over the data-centre network",
                             flag_values=values)
        flags.DEFINE_string("plan_out", None, "where to write plan.json (default: <workdir>/plan.json, or "
                            "./plan.json without --workdir)", flag_values=values)
        flags.DEFINE_boolean("probes", True, "also compile 1- and 2-layer probes for per-step FLOPs and the "
                             "roofline time (--noprobes: memory only, faster)", flag_values=values)
    if define_extra is not None:
        define_extra(values)
    try:
        values(argv)
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
        raise UsageError(f"{prog}: {e}") from e
    if values.config is None:
        raise UsageError(f"{prog}: --config is required (e.g. --config=configs/...py:tiny)")
    error = getattr(values.config, "_error", None)  # config_flags defers a failed load to first use
    if type(values.config).__name__ == "_ErrorConfig" and error is not None:
        flag: Any = values["config"]  # ml_collections' config flag; absl's stubs type it as a plain Flag
        raise UsageError(f"{prog}: cannot load --config={flag.config_filename}: {error}")
    compile_only = plannable and values.compile_only
    if compile_only and not values.topology:
        raise UsageError(f"{prog}: --compile_only needs --topology (e.g. --topology=v5p-128)")
    if workdir_required and not values.workdir and not compile_only:
        raise UsageError(f"{prog}: --workdir is required")
    setup_logging(values.log_level)
    return values


def setup_logging(level: str) -> None:
    """Logs to stderr at `level`; absl (through which Orbax and Grain log every file operation) at WARNING
    unless `level` is DEBUG."""
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if level.upper() != "DEBUG":
        logging.getLogger("absl").setLevel(logging.WARNING)


def parse_plain_flags(argv: list[str], prog: str, define: Callable[[flags.FlagValues], None], *, doc: str,
                      module: str) -> flags.FlagValues | int:
    """Flags of a command without --config (`define` adds them, `--log_level` included): the parsed
    FlagValues with logging set up, or an exit status: 0 after printing `doc` and the flags of `module`
    for --help, 2 after printing a bad flag's error."""
    values = flags.FlagValues()
    define(values)
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv):
        print(doc)
        print(values.module_help(module))
        return 0
    try:
        values([prog] + list(argv))
    except flags.Error as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    setup_logging(values.log_level)
    return values


def run_command(main: Callable[[flags.FlagValues], int | None], argv: list[str], prog: str, **kwargs) -> int:
    """Parses flags and runs `main(flags)`, or with `--compile_only` the command's plan; a UsageError prints
    its message and returns 2."""
    try:
        values = parse_flags(argv, prog, **kwargs)
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return 2
    if kwargs.get("plannable") and values.compile_only:
        return plan_main(values, prog)
    return int(main(values) or 0)


def plan_main(values: flags.FlagValues, prog: str) -> int:
    """`--compile_only`: prints the plan, writes plan.json; exit 0 if it fits, 3 if it does not, 2 on a bad
    topology or a config that cannot be planned."""
    import os

    from dsmath_jax.plan.commands import plan_command
    from dsmath_jax.plan.topology import TopologyError, parse_topology

    command = prog.split()[-1]
    try:
        topology = parse_topology(values.topology, values.num_slices)
        model = values["model"].value if "model" in values else None
        config_flag: Any = values["config"]  # ml_collections' config flag; absl's stubs type it as a plain Flag
        plan = plan_command(command, values.config, topology, config_name=config_flag.config_filename,
                            model_path=model, probes=values.probes, raise_if_not_fit=False)
    except (TopologyError, ValueError) as e:
        print(f"{prog} --compile_only: {e}", file=sys.stderr)
        return 2
    out = values.plan_out or os.path.join(values.workdir or ".", "plan.json")
    plan.write(out)
    print(plan.table())
    print(f"\nwrote {out}")
    if not plan.fits:
        from dsmath_jax.plan.core import not_fit_message
        print("\n" + not_fit_message(plan, plan.dims), file=sys.stderr)
        return 3
    return 0
