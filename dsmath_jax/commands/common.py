"""Shared command-line plumbing: the experiment config (`--config` and its `--config.a.b=v` overrides, loaded
by `dsmath_jax.config.loader`), the work directory, and `--compile_only` planning.

  dsmath <command> --config=configs/pretrain/table1_corpora.py:tiny --config.train.steps=50 --workdir=runs/x

The config is locked after loading and validated against the command's schema, so an override of a key the
config does not have, a value of the wrong type or out of range fails, naming the file and the key.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from typing import cast

import ml_collections
from absl import flags

_CONFIG_ARG = re.compile(r"^--?config(=|$)")
_OVERRIDE_ARG = re.compile(r"^--?(no)?config\.")


class UsageError(ValueError):
    """Bad command-line flags; the message says which."""


class ConfigFlag(flags.Flag):
    """`--config`: its value is the loaded ConfigDict, `spec` the `path.py[:arg]` it was loaded from."""

    def __init__(self, spec: str, config: ml_collections.ConfigDict):
        super().__init__(flags.ArgumentParser(), flags.ArgumentSerializer(), "config", None,
                         "experiment config: path/to/config.py[:argument]; override fields with --config.a.b=value")
        self.spec = spec
        self.value, self.present = config, 1


def split_config_args(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
    """(the --config spec, the overrides "a.b=v" of --config.a.b=v / --config.a.b v / --config.a.b /
    --noconfig.a.b, the other arguments) of a command line."""
    spec, overrides, rest = None, [], []
    i = 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        given = i < len(argv) and not argv[i].startswith("-")  # a value after a space: `--config path.py`
        if _CONFIG_ARG.match(arg):
            if "=" in arg:
                spec = arg.partition("=")[2]
            elif given:
                spec, i = argv[i], i + 1
        elif _OVERRIDE_ARG.match(arg):
            name, eq, value = arg.lstrip("-").partition("=")
            negated = name.startswith("no")
            key = name.removeprefix("no" if negated else "").removeprefix("config.")
            if negated:
                value = "false"
            elif not eq:
                value, i = (argv[i], i + 1) if given else ("true", i)
            overrides.append(f"{key}={value}")
        else:
            rest.append(arg)
    return spec, overrides, rest


def config_spec(values: flags.FlagValues) -> str:
    """The `--config` spec (`path.py[:arg]`) that `parse_flags` loaded."""
    return cast(ConfigFlag, values["config"]).spec


def parse_flags(argv: list[str], prog: str, *, command: str | None = None, workdir_required: bool = True,
                plannable: bool = False, define_extra: Callable[[flags.FlagValues], None] | None = None
                ) -> flags.FlagValues:
    """Parses `--config` (a config file, `path.py` or `path.py:arg`, plus `--config.a.b=v` overrides),
    `--workdir` and any flags `define_extra` adds, into a fresh FlagValues (so commands can run
    repeatedly in one process, e.g. in tests); `values.config` is the ConfigDict, validated against the
    schema of `command` (by default the last word of `prog`). A `plannable` command also takes
    `--compile_only --topology=... [--num_slices=k] [--plan_out=path] [--noprobes]` (then --workdir is
    optional)."""
    values = flags.FlagValues()
    spec, overrides, rest = split_config_args(list(argv))
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
        values([prog] + rest)
    except flags.Error as e:
        raise UsageError(f"{prog}: {e}") from e
    if not spec:
        raise UsageError(f"{prog}: --config is required (e.g. --config=configs/...py:tiny)")
    # The schemas import JAX (seconds); the commands without a config (quickstart, grade, tokenizer) use this
    # module too, so it is imported here.
    from dsmath_jax.config import ConfigError, load_config
    try:
        config = load_config(spec, overrides, command=command or prog.split()[-1])
    except ConfigError as e:
        raise UsageError(f"{prog}: {e}") from e
    flags.DEFINE_flag(ConfigFlag(spec, config), flag_values=values)
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
        plan = plan_command(command, values.config, topology, config_name=config_spec(values),
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
