"""A control group per sandboxed run: one memory and one task budget over everything the program starts.

RLIMIT_AS and RLIMIT_NPROC are per process (a program that forks multiplies them) and do not see shared
memory, memfd or tmpfs pages. A memory cgroup charges all of them (anonymous memory, page cache, tmpfs and
shared memory pages) to the run, and its OOM killer ends the run when the total passes the limit; a pids
cgroup caps processes + threads of the whole run. The host creates the group, the program process joins it
before it drops its privileges (`cgroup.procs`), and after the run the host reads the group's accounting
(OOM kills, peak memory, refused forks), kills anything still in it and removes it.

Where it works: cgroup v2 when our cgroup (or the one `DSMATH_SANDBOX_CGROUP` names) can give its children
the `memory` and `pids` controllers (its `cgroup.subtree_control` has them, or we may enable them there:
a systemd unit with `Delegate=yes` whose processes sit in a leaf, a container with a private cgroup
namespace); else cgroup v1 `memory` and `pids` hierarchies whose directories we may write (root in most
containers). Without either, `RunCgroup.why` says why and the run goes on without these layers (callers can
demand them: `SandboxLimits.require_layers=("cgroup_memory", "cgroup_pids")`).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import secrets
import signal
import threading
import time
from typing import Any

__all__ = ["CGROUP_ENV", "RunCgroup", "create_run_cgroup", "parse_mountinfo", "parse_proc_cgroup"]

CGROUP_ENV = "DSMATH_SANDBOX_CGROUP"  # a cgroup v2 directory whose children the sandbox may create
_PREFIX = "dsmath-sandbox-"
_REMOVE_WAIT_S = 2.0  # a dying run's tasks leave its group within this
_swept: set[str] = set()
_sweep_lock = threading.Lock()


def _unescape(field: str) -> str:
    """Undoes mountinfo's octal escapes (space, tab, newline, backslash)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def parse_mountinfo(text: str) -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, type, super options) of every cgroup / cgroup2 mount in /proc/self/mountinfo."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        out.append((_unescape(fields[3]), _unescape(fields[4]), tail[0], set(tail[2].split(","))))
    return out


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """{controller (or "" for the v2 hierarchy): path} from /proc/self/cgroup."""
    out = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[""] = path
        for name in controllers.split(","):
            if name:
                out[name] = path
    return out


def _directory(mount_root: str, mount_point: str, path: str) -> str | None:
    """Where the cgroup `path` of a hierarchy appears under a mount of it (None: outside the mount)."""
    root = mount_root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None
    return os.path.normpath(os.path.join(mount_point, path[len(root):].lstrip("/")))


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            pass
    return out


@dataclasses.dataclass
class RunCgroup:
    """The run's groups: {"memory": dir, "pids": dir} (one dir for both under v2). `why`: what is missing."""

    version: int | None = None
    dirs: dict[str, str] = dataclasses.field(default_factory=dict)
    why: str | None = None

    def procs_files(self) -> list[str]:
        """The files the program writes "0" to, to join (each hierarchy once)."""
        return sorted({os.path.join(d, "cgroup.procs") for d in self.dirs.values()})

    def layers(self) -> dict[str, Any]:
        """What the host set up (the program confirms it joined: `cgroup_joined`)."""
        out: dict[str, Any] = {"cgroup_memory": "memory" in self.dirs, "cgroup_pids": "pids" in self.dirs}
        if self.version is not None:
            out["cgroup_version"] = self.version
        if self.why:
            out["cgroup_skipped"] = self.why
        return out

    def _tasks(self) -> set[int]:
        pids: set[int] = set()
        for path in self.procs_files():
            try:
                pids.update(int(p) for p in _read(path).split())
            except (OSError, ValueError):
                pass
        return pids

    def accounting(self) -> dict[str, int]:
        """OOM kills, peak memory (bytes) and forks refused by the task limit, as far as the kernel says."""
        out: dict[str, int] = {}
        memory, pids = self.dirs.get("memory"), self.dirs.get("pids")
        try:
            if memory and self.version == 2:
                out["oom_kills"] = _keyed(_read(os.path.join(memory, "memory.events"))).get("oom_kill", 0)
                if os.path.exists(os.path.join(memory, "memory.peak")):
                    out["memory_peak_bytes"] = int(_read(os.path.join(memory, "memory.peak")))
            elif memory:
                control = _keyed(_read(os.path.join(memory, "memory.oom_control")))
                out["oom_kills"] = control.get("oom_kill", 0)
                out["memory_peak_bytes"] = int(_read(os.path.join(memory, "memory.max_usage_in_bytes")))
                if "oom_kill" not in control:  # kernels before 4.13: hitting the limit is what we can see
                    out["oom_kills"] = int(_read(os.path.join(memory, "memory.failcnt"))) and 1
            if pids:
                out["pids_refused"] = _keyed(_read(os.path.join(pids, "pids.events"))).get("max", 0)
        except (OSError, ValueError):
            pass
        return out

    def finish(self) -> tuple[dict[str, int], int]:
        """After the run: (accounting, number of tasks still in the group). Kills those and removes the
        groups. Never raises."""
        try:
            accounting = self.accounting()
            left = self._tasks()
            deadline = time.monotonic() + _REMOVE_WAIT_S
            while True:
                tasks = self._tasks()
                if not tasks:
                    break
                kill_file = os.path.join(self.dirs.get("memory", ""), "cgroup.kill")
                if self.version == 2 and os.path.exists(kill_file):
                    try:
                        _write(kill_file, "1")
                    except OSError:
                        pass
                for pid in tasks:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            for directory in sorted(set(self.dirs.values())):
                _remove(directory, deadline)
            return accounting, len(left)
        except Exception:  # noqa: BLE001 - the caller's result must not depend on a cleanup hiccup
            return {}, 0


def _remove(directory: str, deadline: float) -> None:
    while True:
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return
            time.sleep(0.01)


def _sweep_stale(parent: str) -> None:
    """Removes groups left by sandbox hosts that died (their pid is in the name) and that no task uses."""
    with _sweep_lock:
        if parent in _swept:
            return
        _swept.add(parent)
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(_PREFIX):
            continue
        owner = name[len(_PREFIX):].split("-", 1)[0]
        if not owner.isdigit() or int(owner) == os.getpid():
            continue
        try:
            os.kill(int(owner), 0)
            continue  # its host is alive
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            os.rmdir(os.path.join(parent, name))
        except OSError:
            pass


def _v2_parent() -> tuple[str | None, str]:
    """A cgroup v2 directory whose children get memory and pids, or (None, why not)."""
    named = os.environ.get(CGROUP_ENV)
    parent: str | None
    if named:
        parent = named
    else:
        try:
            mounts = [m for m in parse_mountinfo(_read("/proc/self/mountinfo")) if m[2] == "cgroup2"]
            path = parse_proc_cgroup(_read("/proc/self/cgroup")).get("")
        except OSError as exc:
            return None, f"cgroup v2: {exc}"
        if not mounts or path is None:
            return None, "cgroup v2: not mounted"
        parent = None
        for root, point, _, _ in mounts:
            parent = _directory(root, point, path)
            if parent is not None:
                break
        if parent is None:
            return None, "cgroup v2: our cgroup is outside the mounted hierarchy"
    try:
        available = set(_read(os.path.join(parent, "cgroup.controllers")).split())
        enabled = set(_read(os.path.join(parent, "cgroup.subtree_control")).split())
    except OSError as exc:
        return None, f"cgroup v2 at {parent}: {exc}"
    wanted = {"memory", "pids"}
    if not wanted <= available:
        return None, f"cgroup v2 at {parent}: controllers {sorted(wanted - available)} not delegated"
    if not wanted <= enabled:
        try:
            _write(os.path.join(parent, "cgroup.subtree_control"), " ".join(f"+{c}" for c in sorted(wanted)))
        except OSError as exc:  # EBUSY: the group has processes of its own (the no-internal-process rule)
            return None, (f"cgroup v2 at {parent}: cannot enable memory+pids for children ({exc.strerror}); "
                          f"point {CGROUP_ENV} at a delegated group")
    return parent, ""


def _v1_parents() -> tuple[dict[str, str], str]:
    """{controller: our v1 directory} for memory and pids (those that exist)."""
    try:
        mounts = [m for m in parse_mountinfo(_read("/proc/self/mountinfo")) if m[2] == "cgroup"]
        paths = parse_proc_cgroup(_read("/proc/self/cgroup"))
    except OSError as exc:
        return {}, f"cgroup v1: {exc}"
    out: dict[str, str] = {}
    for controller in ("memory", "pids"):
        for root, point, _, options in mounts:
            if controller in options and controller in paths:
                directory = _directory(root, point, paths[controller])
                if directory is not None and os.path.isdir(directory):
                    out[controller] = directory
                    break
    missing = sorted({"memory", "pids"} - set(out))
    return out, f"cgroup v1: no writable {' or '.join(missing)} hierarchy" if missing else ""


def create_run_cgroup(memory_bytes: int, max_tasks: int) -> RunCgroup:
    """Creates the run's group(s) with `memory_bytes` (memory + swap, where swap is accounted) and
    `max_tasks` (processes + threads). Never raises: a missing layer is in `why`."""
    name = f"{_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
    parent, why_v2 = _v2_parent()
    if parent is not None:
        directory = os.path.join(parent, name)
        try:
            _sweep_stale(parent)
            os.mkdir(directory)
        except OSError as exc:
            why_v2 = f"cgroup v2 at {parent}: {exc.strerror}"
        else:
            run = RunCgroup(version=2, dirs={"memory": directory, "pids": directory})
            try:
                _write(os.path.join(directory, "memory.max"), str(memory_bytes))
                if os.path.exists(os.path.join(directory, "memory.swap.max")):
                    _write(os.path.join(directory, "memory.swap.max"), "0")
                _write(os.path.join(directory, "pids.max"), str(max_tasks))
                return run
            except OSError as exc:
                run.finish()
                why_v2 = f"cgroup v2 at {parent}: {exc}"
    parents, why_v1 = _v1_parents()
    run = RunCgroup(version=1)
    problems = [why_v1] if why_v1 else []
    for controller, parent_dir in parents.items():
        directory = os.path.join(parent_dir, name)
        try:
            _sweep_stale(parent_dir)
            os.mkdir(directory)
        except OSError as exc:
            problems.append(f"cgroup v1 {controller}: {exc.strerror}")
            continue
        try:
            if controller == "memory":
                _write(os.path.join(directory, "memory.limit_in_bytes"), str(memory_bytes))
                swap = os.path.join(directory, "memory.memsw.limit_in_bytes")
                if os.path.exists(swap):
                    _write(swap, str(memory_bytes))  # memory + swap: no swapping past the limit
            else:
                _write(os.path.join(directory, "pids.max"), str(max_tasks))
            run.dirs[controller] = directory
        except OSError as exc:
            _remove(directory, time.monotonic())
            problems.append(f"cgroup v1 {controller}: {exc}")
    if not run.dirs:
        run.version = None
    if problems:
        run.why = "; ".join(p for p in (why_v2, *problems) if p)
    return run
