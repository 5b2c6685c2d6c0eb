"""Wall-clock cost of one sandboxed run, per isolation setting, measured side by side.

Arms (each runs the same programs; rounds alternate the arms in a rotating order after one warm-up round):
- `before`: the sandbox as it was before the hardening issue (audit-hook policy, rlimits, privilege drop,
  network + mount namespaces), loaded from git history (`--before_rev`, default the last revision of
  `evals/sandbox.py` before that issue's work) into a throwaway module; skipped when git or the revision
  is not there;
- `courtesy`: today's runner with every kernel layer off (rlimits and the audit policy only);
- `namespaces`: today's runner with PID/IPC/UTS/network/mount namespaces, read-only mounts, per-run uid and
  seccomp, but neither the minimal filesystem nor the cgroup (the state after step 2 of the issue);
- `all`: every layer (adds the pivot into the minimal root with a scratch tmpfs, and the run's cgroup).

Programs: `pass` (the fixed cost of a run) and `import numpy, sympy` (a PoT-style program).

    python experiments/benchmarks/sandbox_overhead.py --rounds 15 --output overhead.json
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

from dsmath_jax.evals.sandbox import SandboxLimits, isolation_report, run_python

try:
    from common import report  # run as a script from this folder
except ImportError:  # run as a module from the repository root
    from experiments.benchmarks.common import report

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BEFORE_REV = "301ecaa"  # the sandbox the red-team issue was filed against

_BASE = SandboxLimits(cpu_seconds=10, wall_seconds=30)
ARMS = {
    "courtesy": dataclasses.replace(_BASE, pid_namespace=False, ipc_namespace=False, network_namespace=False,
                                    readonly_filesystem=False, seccomp=False, minimal_filesystem=False,
                                    cgroup=False, drop_privileges=False),
    "namespaces": dataclasses.replace(_BASE, minimal_filesystem=False, cgroup=False),
    "all": _BASE,
}
PROGRAMS = {"pass": "pass", "import_numpy_sympy": "import numpy, sympy\nprint(sympy.Integer(2) ** 10)"}


def load_before(rev: str):
    """The old `evals/sandbox.py` from git history as a module (it was self-contained), or None."""
    try:
        source = subprocess.run(["git", "-C", REPO, "show", f"{rev}:dsmath_jax/evals/sandbox.py"], check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="sandbox-before-"), "sandbox_before.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("sandbox_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--before_rev", default=BEFORE_REV)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    runners = {name: (lambda code, limits=limits: run_python(code, limits=limits)) for name, limits in ARMS.items()}
    before = load_before(args.before_rev)
    if before is not None:
        old_limits = before.SandboxLimits(cpu_seconds=10, wall_seconds=30)
        runners = {"before": lambda code: before.run_python(code, limits=old_limits), **runners}
    names = list(runners)
    times = {name: {program: [] for program in PROGRAMS} for name in names}
    for round_index in range(args.rounds + 1):  # round 0 warms up (page cache, imports) and is dropped
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for program, code in PROGRAMS.items():
            for name in order:
                start = time.perf_counter()
                result = runners[name](code)
                elapsed = time.perf_counter() - start
                if not result.ok:
                    raise SystemExit(f"{name} / {program} failed: {result.error}\n{result.stderr[-1000:]}")
                if round_index:
                    times[name][program].append(elapsed * 1000)
    out = {"rounds": args.rounds, "before_rev": args.before_rev if before is not None else None,
           "layers_all": {k: v for k, v in isolation_report(_BASE).items() if isinstance(v, bool) and v},
           "cpus": os.cpu_count(), "python": sys.version.split()[0], "ms": {}}
    for name in names:
        for program in PROGRAMS:
            values = sorted(times[name][program])
            out["ms"].setdefault(name, {})[program] = {
                "median": round(statistics.median(values), 1),
                "p10": round(values[len(values) // 10], 1), "p90": round(values[(9 * len(values)) // 10], 1)}
    report(out, args.output)


if __name__ == "__main__":
    main()
