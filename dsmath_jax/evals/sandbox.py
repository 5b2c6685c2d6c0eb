"""Sandboxed execution of model-written Python (program-of-thought and tool-integrated runs, PAPER.md §7).

`run_python(code)` runs one program in a fresh interpreter and returns an `ExecutionResult` (captured stdout
and stderr, a verdict, the harness-style error line). The program can use the math stack of the interpreter
running us (`sys.executable`: sympy, numpy, math, fractions, ...).

What the sandbox promises (with every layer below active; `isolation_report()` says which are):
- the program sees a minimal filesystem (the system directories and the Python installation read-only, its
  own /proc and /dev, a scratch tmpfs of `scratch_bytes`): no benchmark file, home directory, host socket
  path, /sys, /tmp or other run exists for it; it cannot write outside its scratch tmpfs;
- it cannot open a network connection (loopback included), signal or see any process outside its run (host
  processes, concurrent runs), keep a process or a SysV/POSIX IPC object alive after its run, or use more
  than its CPU time, wall-clock time, memory over all its processes together (`total_memory_bytes`: anonymous
  memory, tmpfs files, shared memory and page cache alike), address space per process, processes + threads
  (`max_processes`, for the whole run), file size per file, scratch space and open files;
- the program cannot make namespaces or mounts, trace or read the memory of other processes, create sockets
  (unix sockets by path included), memfd or SysV/POSIX IPC objects, `fallocate` past RLIMIT_FSIZE, use
  io_uring, keyrings, eBPF, perf events or userfaultfd, or load kernel modules: the seccomp filter answers
  each with EPERM (a clean Python error), on x86_64 and aarch64;
- the verdict is the host's: `ok` needs a clean exit status seen by the kernel, a report from the reaper
  over a channel the program never holds, no OOM kill in the run's cgroup and no task left in it; nothing the
  program prints, closes or forges can turn a denied call, an exception or a leftover process into `ok`; a
  missing or malformed report fails the run;
- `run_python` never raises for anything the program does (it returns a failed result instead), and one
  run's scratch directory is removed whatever it contains (1,000s of nested directories, odd modes).

What it does not promise: side channels (timing, caches, the CPU share of concurrent runs: each run has a
CPU-time limit, not a cgroup CPU quota), kernel bugs in the syscalls the filter allows, and secrecy of what
the minimal root shows (/etc and /usr are readable). Without a cgroup (no writable v1 hierarchy, no delegated
v2 group) memory is per process (RLIMIT_AS x RLIMIT_NPROC); without the minimal filesystem (no mount
namespace, or a kernel that refuses pivot_root) world-readable host files are readable and scratch space is
bounded only per file. Not root, every run keeps our uid (RLIMIT_NPROC counts our own processes too); as
root with all UID_SLOTS uids busy, runs share `nobody`. On an architecture other than x86_64 and aarch64
there is no seccomp filter (`seccomp_skipped` says why) and no minimal root. The audit-hook policy is a
courtesy layer (PEP 578: hooks are not a security boundary); every promise above rests on the kernel layers.
With `drop_privileges` off as root, the program is root: tests only.

Process layout (the runner is `dsmath_jax/evals/sandbox_runner.py`, executed as a file with `python -I -B`)::

    host (us) --Popen--> launcher: own session; unshares IPC, UTS, mount and PID namespaces
                            |  fork
                            +--> reaper: PID 1 of the new PID namespace, fresh /proc and /dev/shm; never runs
                                    |     model code; writes the run's report to the host's report channel
                                    |  fork
                                    +--> program: joins the run's cgroup, network + mount namespaces,
                                            pivot into the minimal root, read-only mounts, rlimits, its own
                                            uid, no_new_privs, seccomp, audit policy, then exec(code) (and
                                            whatever it starts: all die with PID 1)

Isolation layers and what each needs from the host (`ExecutionResult.isolation` has one key per layer):

1. `pid_namespace` (root, or unprivileged user namespaces): the reaper is PID 1 of a fresh PID namespace.
   Everything the program starts lives there and dies with it (a fork chain, a setsid escape), `kill(-1)` from
   the program reaches only its own run, and a run that leaves processes running after the program exited
   fails ("leftover: <n> process(es)"; they are killed). `proc_private` (also a mount namespace): a fresh /proc,
   in which host processes and their command lines do not exist. `shm_private`: an empty /dev/shm.
   Without it: a child subreaper that sweeps the process group and every process carrying the run's marker
   in its environment (weaker: it can be raced, and `kill(-1)` reaches other runs of the same uid).
2. `ipc_namespace`, `uts_namespace` (same needs): SysV IPC objects and POSIX message queues are private to
   the run and die with it (SysV objects still there when the run ends fail it: "leftover: <n> IPC
   object(s)"); the host name is "sandbox".
3. `rlimits` (always): RLIMIT_CPU (SIGXCPU at `cpu_seconds`, SIGKILL one second later), RLIMIT_AS
   (`memory_bytes`: allocations beyond it raise MemoryError), RLIMIT_NPROC (`max_processes` on top of what the
   sandbox user already runs on the host; the kernel ignores it for root, hence layer 4), RLIMIT_FSIZE
   (`max_file_bytes`; SIGXFSZ is ignored so an oversized write raises "File too large"), RLIMIT_NOFILE and
   RLIMIT_CORE=0. Wall clock: the reaper kills the run after `wall_seconds`; should the reaper hang, the host
   kills the launcher's session a few seconds later, and the namespace dies with it.
4. `unprivileged` (`drop_privileges`, when we are root): the program runs with no capabilities as a uid (and
   gid) of its run alone, `distinct_uid`: UID_BASE + the first free slot, one no /etc/passwd, /etc/group,
   /etc/subuid or /etc/subgid entry names, no running process has, and no other run holds (in this process,
   or in another one on this host: an abstract unix socket named after the uid is bound while the run
   lasts); its scratch directory is owned by it. So RLIMIT_NPROC is a budget per run (a fork bomb in one run
   cannot starve another), concurrent runs cannot signal or read each other even without a PID namespace,
   files of others are read-only or unreadable to it (/etc/shadow included) and it cannot signal host processes. With
   no slot free it runs as `nobody`. If the Python installation sits under a directory others cannot enter (e.g.
   /root, mode 0700), the mount namespace covers that directory with an empty tmpfs and bind-mounts only the
   installation back (`hidden_paths`); without a mount namespace the program instead keeps one capability,
   CAP_DAC_READ_SEARCH (`read_capability`). Not root: the program keeps our uid and, inside its user namespace,
   drops every capability. PR_SET_NO_NEW_PRIVS is always set (`no_new_privs`).
5. `network_namespace`, `readonly_filesystem`, `scratch_private` (root, or unprivileged user namespaces): a
   fresh network namespace (only a down loopback) and a private mount namespace in which the scratch
   directory's parent (e.g. /tmp: other runs' scratch directories) is covered by an empty tmpfs with only this
   run's scratch bound back, and every mount is read-only except the scratch directory.
5b. `minimal_filesystem`, `scratch_tmpfs` (`SandboxLimits.minimal_filesystem`; a mount namespace, and
   pivot_root on x86_64 or aarch64): the program pivots into a fresh tmpfs root holding bind mounts of /usr,
   /etc, /bin, /sbin, /lib* (symlinks where the host has them) and the Python installation's prefixes and
   import roots, the run's /proc, a /dev with null, zero, full, random and urandom (and fd/std* links), an
   empty /tmp and /dev/shm, and at the scratch directory's own path a tmpfs of `scratch_bytes` (and at most
   16,384 inodes) owned by the run's uid; the old root is detached. Everything but the scratch tmpfs is
   read-only. Writes past the size fail with ENOSPC; the files die with the run's mount namespace (and, being
   tmpfs pages, count against the cgroup's memory). Where the root cannot be built, the layer is off and the
   hiding of layer 5 applies instead (`minimal_filesystem_skipped` says why).
5c. `cgroup_memory`, `cgroup_pids` (`SandboxLimits.cgroup`; `dsmath_jax.evals.sandbox_cgroup`): the host
   makes a group per run (cgroup v2 under our group or `DSMATH_SANDBOX_CGROUP` where memory and pids can be
   delegated, else the v1 memory and pids hierarchies) with `total_memory_bytes` (memory + swap) and
   `max_processes` + 1 tasks; the program joins it before anything else (so all it starts is inside, the
   reaper is not), the kernel's OOM killer ends a run that passes the memory limit, and the host reads the
   group's counters afterwards (`ExecutionResult.accounting`: oom_kills, memory_peak_bytes, pids_refused):
   an OOM kill makes the run "memory", a task still in the group fails it ("leftover") and is killed; then
   the group is removed (`cgroup_skipped` says why a layer is off).
6. `report_channel` (always): the reaper's report travels over a pipe the host opens and passes to the launcher
   only; the program closes it before anything else runs, and the reaper is not dumpable, so its descriptors
   are closed to the program. The program's own records (`ready` with its layers, each `denied` call as it
   happens, the `outcome`) travel to the reaper over a second pipe; they can only make a run fail.
7. `seccomp` (`SandboxLimits.seccomp`; Linux on x86_64 or aarch64, after no_new_privs): a classic BPF filter,
   built with the standard library and installed in the program process right before the code runs (so it
   binds everything the program starts). EPERM for: unshare, setns, mount and the new mount API, umount2,
   pivot_root, chroot, clone() with any CLONE_NEW* flag, ptrace, process_vm_readv/writev, kcmp, pidfd_getfd,
   keyctl/add_key/request_key, bpf, perf_event_open, userfaultfd, memfd_create, memfd_secret, fallocate,
   SysV shm/msg/sem calls, POSIX message queues, socket() (every family), socketpair() but AF_UNIX (it reaches
   nothing outside the process), io_uring, kexec, module loading, reboot, swapon/off, personality, acct,
   syslog, name_to_handle_at/open_by_handle_at, quotactl, setting the clock, vhangup, sethostname and
   setdomainname; ENOSYS for clone3 (its flags are out of a filter's reach; libc falls back to clone); the
   x32 ABI gets EPERM and a syscall of another architecture kills the process. numpy, sympy, threads, fork,
   subprocess and pipes are unaffected (multiprocessing's semaphores need a writable /dev/shm, which the
   read-only mounts already refuse).
8. `audit_hook` (`audit_policy`): a `sys.addaudithook` hook, installed right before the code runs, raises
   PermissionError on: process creation (os.fork/forkpty/exec*/spawn*/posix_spawn/system, subprocess.Popen;
   `_posixsubprocess.fork_exec`, which has no audit event, is replaced and its re-import denied), sockets and
   name resolution, opening for writing / creating / removing / renaming / chmod-ing anything outside the
   scratch directory (also through directory descriptors; `os.mkfifo` / `os.mknod` and
   `_posixshmem.shm_open` are wrapped), links, loading native libraries through ctypes, changing rlimits,
   signalling other processes, and `gc.get_objects`-style introspection. A denied call is recorded on the
   record channel when it happens: the run is reported `forbidden: <category>` even if the program caught the
   PermissionError and then closed every descriptor it has. Where namespaces are unavailable, the policy is
   what keeps writes out of world-writable directories (/tmp, /dev/shm) and the network closed.

`SandboxLimits.require_layers` names layers a run must have: without one, the run fails before the code runs
("sandbox failure: required isolation layers unavailable: ..."), so a deployment can demand a minimum.

Plus: a fresh scratch directory (the working directory, $HOME and $TMPDIR; removed afterwards without
recursion and without touching anything outside it), a scrubbed environment (PATH, LANG/LC_ALL, HOME, TMPDIR,
one-thread BLAS settings, the run marker; no proxies, no PYTHONPATH; `-I` ignores PYTHON* anyway), stdin given
explicitly, no inherited descriptors beyond stdio and the report channel.

Output: stdout and stderr are read as they come and only the first and last `max_output_chars // 2` bytes of
each are kept, joined by a marker "\\n...[N bytes truncated]...\\n" (`ExecutionResult.truncated`), so a
program printing gigabytes costs no host memory. They are the program's alone: no verdict travels in them.
The prompt-level truncation of the DeepSeek-Math harness (first 50 + "..." + last 50 characters of outputs
longer than 100) is applied by `tool_loop.format_output_block`.
"""

from __future__ import annotations

import dataclasses
import errno
import grp
import json
import logging
import math
import os
import pwd
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from dsmath_jax.evals.sandbox_cgroup import RunCgroup, create_run_cgroup

__all__ = ["RUNNER_PATH", "ExecutionResult", "SandboxLimits", "isolation_report", "run_python"]

log = logging.getLogger(__name__)

RUNNER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_runner.py")


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run, and switches for the isolation layers (see the module docstring).

    The switches exist so that tests can show each layer working alone; leave them on otherwise.
    `require_layers`: names of `ExecutionResult.isolation` keys that must be true, or the run fails at setup.
    """

    cpu_seconds: float = 5.0  # RLIMIT_CPU (rounded up to whole seconds); SIGKILL one second later
    wall_seconds: float = 10.0  # the harness's per-program timeout
    memory_bytes: int = 1 << 30  # RLIMIT_AS (address space, so it counts reservations too)
    max_processes: int = 16  # processes + threads the program may add (RLIMIT_NPROC on top of the user's count)
    max_file_bytes: int = 16 << 20  # RLIMIT_FSIZE: largest file the program may write
    max_open_files: int = 256  # RLIMIT_NOFILE
    max_output_chars: int = 100_000  # per stream: first and last half kept, the middle replaced by a marker
    drop_privileges: bool = True  # when root: run the program as a uid of its own (see layer 4)
    network_namespace: bool = True  # a fresh network namespace (no interfaces up)
    readonly_filesystem: bool = True  # a private mount namespace, everything read-only but the scratch dir
    audit_policy: bool = True  # the audit-hook policy layer
    pid_namespace: bool = True  # the reaper as PID 1 of a fresh PID namespace, with a fresh /proc
    ipc_namespace: bool = True  # fresh IPC and UTS namespaces
    seccomp: bool = True  # the seccomp filter (syscalls generated code never needs fail with EPERM)
    minimal_filesystem: bool = True  # pivot into a root holding only the system, Python and a scratch tmpfs
    cgroup: bool = True  # a cgroup per run: `total_memory_bytes` and `max_processes` over the whole run
    total_memory_bytes: int = 1 << 30  # the run's cgroup memory limit: all processes, tmpfs and shared memory
    scratch_bytes: int = 64 << 20  # size of the scratch tmpfs (with the minimal filesystem)
    require_layers: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("cpu_seconds", "wall_seconds", "memory_bytes", "max_processes", "max_file_bytes",
                     "max_open_files", "max_output_chars", "total_memory_bytes", "scratch_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, got {getattr(self, name)!r}")
        required = self.require_layers
        if isinstance(required, str) or not all(isinstance(name, str) for name in required):
            raise ValueError(f"SandboxLimits.require_layers must be a sequence of layer names, got {required!r}")
        object.__setattr__(self, "require_layers", tuple(required))


@dataclasses.dataclass
class ExecutionResult:
    """What one sandboxed run did.

    `error` is None when `ok`, else one of: "timeout" (wall clock or CPU), "memory", "forbidden: <category>"
    (process, network, filesystem, native code, signals, resource limits, introspection; "sandbox channel":
    the program wrote garbage to the sandbox's record channel), "exception: <line>" (the last traceback line,
    e.g. "exception: ZeroDivisionError: division by zero"), "killed: <SIGNAL>", "exit status <n>",
    "leftover: <n> process(es)" (still running when the program ended; killed), "leftover: <n> IPC object(s)"
    (SysV objects the program did not remove; they die with its IPC namespace) or "sandbox failure: <why>"
    (including "sandbox report missing"). `error_line` is what the DeepSeek-Math harness shows the model for a
    failed run: the traceback's last line, or "Timeout Error".
    """

    stdout: str
    stderr: str
    ok: bool
    error: str | None
    returncode: int | None  # the program's exit code; negative: killed by that signal; None: never ran
    duration_s: float  # wall-clock, host side
    error_line: str = ""
    cpu_s: float | None = None
    truncated: bool = False  # some output was dropped (see SandboxLimits.max_output_chars)
    violations: list[str] = dataclasses.field(default_factory=list)  # audit-policy denials, "category: detail"
    isolation: dict[str, Any] = dataclasses.field(default_factory=dict)  # layers this run actually got
    accounting: dict[str, int] = dataclasses.field(default_factory=dict)  # the cgroup's: oom_kills, peak, ...
    answer: str | None = None  # program-of-thought runs: the program's answer (see tool_loop)


_HOST_GRACE_S = 5.0  # the host kills the launcher this long after the program's wall-clock limit
_ENV_MARKER = "DSMATH_SANDBOX_RUN"
_REPORT_MAX = 4 << 20  # bytes of the reaper's report the host reads (it is far smaller)


UID_BASE = 100_000  # runs get uids (and gids) UID_BASE + slot, one per concurrent run, when we are root
UID_SLOTS = 4096
_uid_lock = threading.Lock()
_uids_held: set[int] = set()
_excluded_cache: list[tuple[int, int]] | None = None


def _nobody_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _excluded_ranges() -> list[tuple[int, int]]:
    """[start, end) id ranges delegated to users for their own containers (/etc/subuid, /etc/subgid)."""
    global _excluded_cache
    if _excluded_cache is None:
        ranges = []
        for path in ("/etc/subuid", "/etc/subgid"):
            try:
                with open(path) as f:
                    for line in f:
                        fields = line.strip().split(":")
                        if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                            ranges.append((int(fields[1]), int(fields[1]) + int(fields[2])))
            except OSError:
                continue
        _excluded_cache = ranges
    return _excluded_cache


def _ids_in_use() -> set[int]:
    """Every uid and gid (real, effective, saved, filesystem) of a process visible in our /proc."""
    found: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                for line in f:
                    if line.startswith((b"Uid:", b"Gid:")):
                        found.update(int(v) for v in line.split()[1:])
                    elif line.startswith(b"Groups:"):
                        break
        except (OSError, ValueError):
            continue
    return found


def _id_unused(value: int) -> bool:
    if any(start <= value < end for start, end in _excluded_ranges()):
        return False
    try:
        pwd.getpwuid(value)
        return False
    except KeyError:
        pass
    try:
        grp.getgrgid(value)
        return False
    except KeyError:
        return True


class _RunIds:
    """The uid and gid one run drops to (None: keep ours), and the hold on them (released after the run)."""

    def __init__(self, uid: int | None = None, gid: int | None = None, lock: socket.socket | None = None):
        self.uid, self.gid, self.lock = uid, gid, lock

    @property
    def distinct(self) -> bool:
        return self.lock is not None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.close()
            with _uid_lock:
                _uids_held.discard(self.uid)
            self.lock = None


def _acquire_ids(drop: bool) -> _RunIds:
    """Not root, or `drop` off: keep our uid. Root: a uid (and the same gid) no one else has: UID_BASE + the
    first free slot that is in no /etc/passwd, /etc/group, /etc/subuid or /etc/subgid entry, belongs to no
    running process, and is held by no other run of ours: in this process (a set), or in another process
    on this host (an abstract unix socket named after it, bound while the run lasts: the kernel releases it
    when its holder dies). With no slot free: `nobody`."""
    if not drop or os.geteuid() != 0:
        return _RunIds()
    in_use = None
    with _uid_lock:
        for slot in range(UID_SLOTS):
            uid = UID_BASE + slot
            if uid in _uids_held or not _id_unused(uid):
                continue
            if in_use is None:
                in_use = _ids_in_use()
            if uid in in_use:
                continue
            lock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            try:
                lock.bind(b"\0dsmath-sandbox-uid-%d" % uid)
            except OSError:
                lock.close()
                continue
            _uids_held.add(uid)
            return _RunIds(uid, uid, lock)
    log.warning("no free sandbox uid in [%d, %d): running as nobody", UID_BASE, UID_BASE + UID_SLOTS)
    return _RunIds(*_nobody_ids())


class _Capture:
    """Keeps the first and last `cap // 2` bytes of a stream, counts the rest."""

    def __init__(self, cap: int):
        self.half = max(1, cap // 2)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * self.half:  # trim in amortised O(1)
                del self.tail[:len(self.tail) - self.half]

    def text(self) -> tuple[str, bool]:
        tail = self.tail[-self.half:] if len(self.tail) > self.half else self.tail
        dropped = self.total - len(self.head) - len(tail)
        if dropped <= 0:
            return (bytes(self.head) + bytes(tail)).decode("utf-8", "replace"), False
        return (bytes(self.head).decode("utf-8", "replace") + f"\n...[{dropped} bytes truncated]...\n"
                + bytes(tail).decode("utf-8", "replace")), True


class _Report:
    """The reaper's report: one JSON line on the report channel (complete once its newline arrived)."""

    def __init__(self):
        self.data = bytearray()
        self.overflow = False

    def add(self, data: bytes) -> None:
        if len(self.data) + len(data) > _REPORT_MAX:
            self.overflow = True
        else:
            self.data += data

    @property
    def complete(self) -> bool:
        return self.overflow or b"\n" in self.data

    def parse(self) -> dict | None:
        """The report, or None when it is missing, cut short or malformed."""
        if self.overflow or not self.data.endswith(b"\n") or self.data.count(b"\n") != 1:
            return None
        try:
            report = json.loads(self.data)
        except ValueError:
            return None
        if not isinstance(report, dict) or report.get("kind") != "report":
            return None
        program = report.get("program")
        if not isinstance(program, dict) or not isinstance(report.get("layers"), dict):
            return None
        return report


def _pump(proc: subprocess.Popen, payload: bytes, deadline: float, out: _Capture, err: _Capture,
          report_fd: int, report: _Report) -> bool:
    """Feeds stdin and drains stdout/stderr (to EOF) and the report channel (to its end) until `deadline`;
    True if the deadline hit."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None  # all three are pipes
    sel = selectors.DefaultSelector()
    view, pos = memoryview(payload), 0
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_WRITE, None)
    readers = 0
    for fd, sink in ((proc.stdout.fileno(), out), (proc.stderr.fileno(), err), (report_fd, report)):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, sink)
        readers += 1

    def close_stdin():
        sel.unregister(stdin_fd)
        proc.stdin.close()

    try:
        while readers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            for key, _ in sel.select(timeout=remaining):
                if key.data is None:  # stdin is writable
                    try:
                        pos += os.write(stdin_fd, view[pos:pos + 65536])
                    except BlockingIOError:
                        continue
                    except OSError:  # the program closed its stdin: the rest is not wanted
                        pos = len(view)
                    if pos >= len(view):
                        close_stdin()
                    continue
                try:
                    data = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if data:
                    key.data.add(data)
                # the report is done at its newline (a process forked by our own host could hold the pipe)
                if not data or (key.data is report and report.complete):
                    sel.unregister(key.fd)
                    readers -= 1
        return False
    finally:
        sel.close()
        if not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass


def _kill_marked(marker: bytes) -> int:
    """Last resort when the reaper did not report: SIGKILL every process carrying the run marker."""
    killed = 0
    for _ in range(50):
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        found.append(int(name))
            except OSError:
                continue
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        time.sleep(0.01)
    return killed


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, dir_fd: int | None) -> int:
    """Opens a directory without following a symlink. Not root, we make it ours to list and empty (the
    program, of our uid then, may have left it mode 0): through descriptors, never a path it could swap."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{handle}", 0o700)
        finally:
            os.close(handle)
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    if os.geteuid() != 0:
        try:
            os.fchmod(fd, 0o700)
        except OSError:
            os.close(fd)
            raise
    return fd


def _listing(fd: int) -> list[tuple[str, bool]]:
    with os.scandir(fd) as entries:
        return [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]


def _remove_tree(path: str, time_budget_s: float = 60.0) -> str | None:
    """Removes the scratch directory `path` and everything in it; returns None, or why it could not.

    Never raises (but for KeyboardInterrupt) and never recurses: the tree is flattened instead. Each pass
    empties every directory directly under `path` after moving its subdirectories up beside it, so no
    descriptor or path is ever deeper than two levels, whatever the program built (1,000s of nested
    directories, names up to NAME_MAX, odd modes). Everything is relative to descriptors opened without
    following symlinks: nothing outside `path` is touched, and no mode is changed but inside it.
    """
    try:
        try:
            top = _open_dir(path, None)
        except FileNotFoundError:
            return None
        end = time.monotonic() + time_budget_s
        hoisted, root = 0, os.geteuid() == 0
        try:
            while True:
                entries = _listing(top)
                if not entries:
                    break
                if time.monotonic() > end:
                    return f"still not empty after {time_budget_s:.0f} s"
                for name, is_dir in entries:
                    if not is_dir:
                        try:
                            os.unlink(name, dir_fd=top)
                        except FileNotFoundError:
                            pass
                        continue
                    sub = _open_dir(name, top)
                    try:
                        for inner, inner_is_dir in _listing(sub):
                            if not inner_is_dir:
                                os.unlink(inner, dir_fd=sub)
                                continue
                            if not root:  # moving a directory rewrites its "..": it must be writable to us
                                os.close(_open_dir(inner, sub))
                            while True:  # a free name beside `name`
                                hoisted += 1
                                new = f".dsmath-rm-{hoisted}"
                                try:
                                    os.stat(new, dir_fd=top, follow_symlinks=False)
                                except FileNotFoundError:
                                    break
                            os.rename(inner, new, src_dir_fd=sub, dst_dir_fd=top)
                    finally:
                        os.close(sub)
                    try:
                        os.rmdir(name, dir_fd=top)
                    except OSError as exc:
                        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):  # refilled: the next pass
                            raise
        finally:
            os.close(top)
        os.rmdir(path)
        return None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - any failure is reported as text, not raised
        return f"{type(exc).__name__}: {exc}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _failure(why: str, start: float, **fields: Any) -> ExecutionResult:
    return ExecutionResult(stdout=fields.pop("stdout", ""), stderr=fields.pop("stderr", ""), ok=False,
                           error=f"sandbox failure: {why}", returncode=None, duration_s=time.monotonic() - start,
                           error_line=f"SandboxError: {why}", **fields)


def run_python(code: str, *, limits: SandboxLimits = SandboxLimits(), stdin: str = "") -> ExecutionResult:
    """Runs `code` in the sandbox (see the module docstring) and returns what happened.

    Never raises for anything the code does, nor for a failure of the host (no descriptors, no disk): the
    result's `error` says what went wrong, so one bad program never loses a batch.
    """
    start = time.monotonic()
    try:
        return _run(code, limits, stdin, start)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        log.exception("sandbox run failed on the host side")
        return _failure(f"{type(exc).__name__}: {exc}", start)


def _run(code: str, limits: SandboxLimits, stdin: str, start: float) -> ExecutionResult:
    ids = _acquire_ids(limits.drop_privileges)
    try:
        return _run_as(code, limits, stdin, start, ids)
    finally:
        ids.release()  # only now: the run's processes are gone and its scratch directory removed


def _run_as(code: str, limits: SandboxLimits, stdin: str, start: float, ids: _RunIds) -> ExecutionResult:
    marker = secrets.token_hex(16)
    scratch = tempfile.mkdtemp(prefix="dsmath-sandbox-")  # mode 0700
    out, err, report = _Capture(limits.max_output_chars), _Capture(limits.max_output_chars), _Report()
    proc = None
    host_timeout = False
    cleanup_error = None
    group = create_run_cgroup(int(limits.total_memory_bytes), int(limits.max_processes) + 1) \
        if limits.cgroup else RunCgroup(why="off")
    accounting: dict[str, int] = {}
    cgroup_left = 0
    try:
        if ids.uid is not None:
            assert ids.gid is not None  # a run's ids are taken together
            try:
                os.chown(scratch, ids.uid, ids.gid)  # the run's uid owns its scratch directory
            except OSError:  # e.g. a filesystem that refuses chown: run without the privilege drop
                ids = _RunIds()
        report_r, report_w = os.pipe()  # close-on-exec: only the launcher gets the write end (pass_fds)
        try:
            cfg = {"marker": f"{_ENV_MARKER}={marker}", "code": code, "report_fd": report_w,
                   "cpu_seconds": limits.cpu_seconds, "wall_seconds": limits.wall_seconds,
                   "memory_bytes": int(limits.memory_bytes), "max_processes": int(limits.max_processes),
                   "max_file_bytes": int(limits.max_file_bytes), "max_open_files": int(limits.max_open_files),
                   "drop_uid": ids.uid, "drop_gid": ids.gid, "distinct_uid": ids.distinct,
                   "network_namespace": limits.network_namespace, "readonly_filesystem": limits.readonly_filesystem,
                   "audit_policy": limits.audit_policy, "pid_namespace": limits.pid_namespace,
                   "ipc_namespace": limits.ipc_namespace, "seccomp": limits.seccomp,
                   "minimal_filesystem": limits.minimal_filesystem, "scratch_bytes": int(limits.scratch_bytes),
                   "cgroup_procs": group.procs_files(), "cgroup_layers": group.layers(),
                   "require_layers": list(limits.require_layers)}
            header = json.dumps(cfg).encode("utf-8", "surrogatepass")
            payload = len(header).to_bytes(8, "big") + header + stdin.encode("utf-8", "replace")
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                   "HOME": scratch, "TMPDIR": scratch, "MPLCONFIGDIR": scratch, "MPLBACKEND": "Agg",
                   "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "NUMEXPR_NUM_THREADS": "1", _ENV_MARKER: marker}
            try:
                proc = subprocess.Popen([sys.executable, "-I", "-B", RUNNER_PATH], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=scratch, env=env,
                                        close_fds=True, pass_fds=(report_w,), start_new_session=True)
            except OSError as exc:
                return _failure(f"{type(exc).__name__}: {exc}", start)
            finally:
                os.close(report_w)
            deadline = start + limits.wall_seconds + _HOST_GRACE_S
            host_timeout = _pump(proc, payload, deadline, out, err, report_r, report)
        finally:
            os.close(report_r)
        try:
            proc.wait(timeout=0 if host_timeout else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            host_timeout = True
    finally:
        if proc is not None:
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                assert stream is not None  # all three are pipes
                try:
                    stream.close()
                except OSError:
                    pass
            if proc.poll() is None:  # the launcher hung (it never should): its session and namespace go with it
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                _kill_marked(f"{_ENV_MARKER}={marker}".encode())
                proc.wait()
        parsed = report.parse()
        if proc is not None and parsed is None:  # no trustworthy report: clean up from here (no PID namespace)
            _kill_marked(f"{_ENV_MARKER}={marker}".encode())
        accounting, cgroup_left = group.finish()  # what the kernel counted; kills whatever is still inside
        cleanup_error = _remove_tree(scratch)
        if cleanup_error is not None:
            log.warning("sandbox scratch directory %s not removed: %s", scratch, cleanup_error)
    stdout, out_truncated = out.text()
    stderr, err_truncated = err.text()
    result = ExecutionResult(stdout=stdout, stderr=stderr, ok=False, error=None, returncode=None,
                             duration_s=time.monotonic() - start, truncated=out_truncated or err_truncated)
    result.accounting = accounting
    _classify(result, parsed, limits, host_timeout, proc.returncode)
    if accounting.get("oom_kills") and result.error != "timeout":  # the kernel's word: the run ran out
        result.ok, result.error = False, "memory"
        result.error_line = "MemoryError: the run exceeded its memory limit"
    if result.ok and cgroup_left:
        what = f"{cgroup_left} process" + ("es" if cgroup_left != 1 else "")
        result.ok, result.error = False, f"leftover: {what}"
        result.error_line = f"SandboxError: the program left {what} running"
    if result.ok and cleanup_error is not None:
        result.ok, result.error = False, f"sandbox failure: scratch cleanup: {cleanup_error}"
        result.error_line = f"SandboxError: scratch cleanup: {cleanup_error}"
    return result


def _classify(result: ExecutionResult, report: dict | None, limits: SandboxLimits, host_timeout: bool,
              runner_returncode: int | None) -> None:
    """The verdict, from the reaper's report (its own facts, and the program's records: those can only fail
    a run). `ok` needs: the report, the program's `ready` record, exit status 0, no denial, no failing outcome,
    no malformed record, no leftover process or IPC object."""
    if report is None:
        if host_timeout:
            result.error, result.error_line = "timeout", "Timeout Error"
        else:
            why = f"sandbox report missing (runner exited with {runner_returncode})"
            result.error, result.error_line = f"sandbox failure: {why}", f"SandboxError: {why}"
        return
    program = report["program"]
    layers = dict(program.get("ready") or program.get("setup_layers") or {})
    layers.update(report["layers"])  # the reaper's own word on its layers
    result.isolation = layers
    result.violations = [str(v) for v in program.get("denied", [])]
    rc = report.get("exit")
    result.returncode = rc if isinstance(rc, int) else None
    result.cpu_s = report.get("cpu_s")
    rc = result.returncode
    outcome = program.get("outcome") or {}
    leftover = int(report.get("leftover") or 0)
    ipc_left = int(report.get("ipc_left") or 0)

    def fail(error: str, line: str) -> None:
        result.error, result.error_line = error, line

    if report.get("timed_out"):
        fail("timeout", "Timeout Error")
    elif program.get("setup") is not None:
        fail(f"sandbox failure: {program['setup']}", str(program["setup"]))
    elif program.get("ready") is None:
        why = f"program setup did not complete (exit {rc})"
        fail(f"sandbox failure: {why}", f"SandboxError: {why}")
    elif rc is not None and rc < 0:
        sig = -rc
        cpu_out = result.cpu_s is not None and result.cpu_s >= math.ceil(limits.cpu_seconds) - 0.05
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_out):
            fail("timeout", "Timeout Error")
        else:
            fail(f"killed: {_signal_name(sig)}", f"Killed by {_signal_name(sig)}")
    elif program.get("denied_count"):
        first = result.violations[0] if result.violations else "unknown: ?"
        category, _, detail = first.partition(": ")
        line = outcome.get("error_line", "") if program.get("failed_outcomes") else ""
        fail(f"forbidden: {category}",
             line or f"PermissionError: sandbox: {category} access is not allowed ({detail})")
    elif program.get("malformed"):
        fail("forbidden: sandbox channel", "PermissionError: sandbox: the record channel is not the program's")
    elif program.get("failed_outcomes"):
        line = outcome.get("error_line", "")
        if (outcome.get("exc_type") or "").endswith("MemoryError"):
            fail("memory", line)
        else:
            fail(f"exception: {line}", line)
    elif rc is None:
        fail("sandbox failure: no exit status", "SandboxError: no exit status")
    elif rc != 0:
        fail(f"exit status {rc}", f"SystemExit: {rc}")
    elif leftover:
        what = f"{leftover} process" + ("es" if leftover != 1 else "")
        fail(f"leftover: {what}", f"SandboxError: the program left {what} running")
    elif ipc_left:
        what = f"{ipc_left} IPC object" + ("s" if ipc_left != 1 else "")
        fail(f"leftover: {what}", f"SandboxError: the program left {what} behind")
    else:
        result.ok = True


_ISOLATION_CACHE: dict[SandboxLimits, dict[str, Any]] = {}


def isolation_report(limits: SandboxLimits = SandboxLimits()) -> dict[str, Any]:
    """Which isolation layers a run gets on this machine (runs `pass` once per `limits`, then cached)."""
    if limits not in _ISOLATION_CACHE:
        result = run_python("pass", limits=limits)
        _ISOLATION_CACHE[limits] = dict(result.isolation, ok=result.ok, error=result.error)
    return dict(_ISOLATION_CACHE[limits])
