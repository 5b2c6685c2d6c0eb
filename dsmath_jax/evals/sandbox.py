"""Sandboxed execution of model-written Python (program-of-thought and tool-integrated runs, PAPER.md §7).

`run_python(code)` runs one program in a fresh interpreter and returns an `ExecutionResult` (captured stdout
and stderr, a verdict, the harness-style error line). The program can use the math stack of the interpreter
running us (`sys.executable`: sympy, numpy, math, fractions, ...), and nothing it does reaches the host.

Process layout::

    host (us) --Popen--> reaper: `python -I -B -c _RUNNER`, own session, not limited, never runs model code
                            |  fork
                            +--> program: namespaces, rlimits, unprivileged user, audit policy, then exec(code)
                                    (and whatever it manages to start, all reaped by the reaper)

Isolation layers, each enough on its own for some attacks and all active together (defense in depth).
`ExecutionResult.isolation` says which ones a run actually got; `isolation_report()` asks once.

1. **rlimits** (always): RLIMIT_CPU (SIGXCPU at `cpu_seconds`, SIGKILL one second later), RLIMIT_AS
   (`memory_bytes`: allocations beyond it raise MemoryError), RLIMIT_NPROC (`max_processes` on top of the
   processes/threads the sandbox user already has; the kernel ignores it for root, hence layer 3),
   RLIMIT_FSIZE (`max_file_bytes`; SIGXFSZ is ignored so an oversized write raises "File too large"),
   RLIMIT_NOFILE and RLIMIT_CORE=0. Wall-clock: the reaper kills the program after `wall_seconds`; should
   the reaper itself hang (nothing the program can cause), the host kills the whole run a few seconds later,
   which can leave the program's zombie to a PID 1 that does not reap.
2. **A reaper and a kill sweep** (always): the program gets its own process group; the reaper is a child
   subreaper (PR_SET_CHILD_SUBREAPER), so anything the program starts is its descendant even after a
   double fork; at the end it SIGKILLs the group, then every process carrying the run's marker in its
   environment (catches `setsid` escapes), and reaps them all, so no zombie is left to a PID 1 that does not
   reap (as in many containers).
3. **Unprivileged user** (`drop_privileges`, when we are root): the program runs as `nobody` with no
   capabilities, so RLIMIT_NPROC applies, files of others are read-only or unreadable to it (/etc/shadow
   included) and it cannot signal host processes. If the Python installation sits under a directory others
   cannot enter (e.g. /root, mode 0700), the mount namespace below covers that directory with an empty
   read-only tmpfs and bind-mounts only the installation back (`isolation["hidden_paths"]`); without a mount
   namespace the program instead keeps one capability, CAP_DAC_READ_SEARCH (read any file; no writing, no
   signals), so that imports work (`isolation["read_capability"]`). Not root: the program keeps our uid
   and, inside its user namespace, drops every capability. PR_SET_NO_NEW_PRIVS is always set.
4. **Namespaces** (`network_namespace`, `readonly_filesystem`; as root, or else in an unprivileged user
   namespace): a fresh network namespace (only a down loopback: no connection to anything, loopback
   included) and a private mount namespace in which every mount is read-only except the scratch directory
   (bind-mounted read-write). Kernel-enforced: no write outside scratch whatever the path or the system
   call, and the program has no capability left to remount (a nested user namespace finds them locked).
5. **Audit policy** (`audit_policy`): a `sys.addaudithook` hook, installed right before the code runs and not
   removable by it, raises PermissionError on: process creation (os.fork/forkpty/exec*/spawn*/posix_spawn/
   system, subprocess.Popen; `_posixsubprocess.fork_exec`, which has no audit event, is replaced and its
   re-import denied), sockets and name resolution, opening for writing / creating / removing / renaming /
   chmod-ing anything outside the scratch directory (also through directory descriptors; `os.mkfifo` /
   `os.mknod` and `_posixshmem.shm_open` are wrapped), links, loading native libraries through ctypes,
   changing rlimits, signalling other processes, and `gc.get_objects`-style introspection. A denied call is
   recorded: the run is reported `forbidden: <category>` even if the program caught the PermissionError.
   Audit hooks are a policy layer, not a security boundary (PEP 578): a determined program can reach the
   hook's state through frames; the boundaries are layers 1-4. Where namespaces are unavailable, the
   policy is what keeps writes out of world-writable directories (/tmp, /dev/shm) and the network closed.

Plus: a fresh scratch directory (the working directory, $HOME and $TMPDIR; deleted afterwards), a scrubbed
environment (PATH, LANG/LC_ALL, HOME, TMPDIR, one-thread BLAS settings, the run marker; no proxies, no
PYTHONPATH; `-I` ignores PYTHON* anyway), stdin given explicitly, no inherited descriptors beyond stdio.

What is not contained: disk usage inside the scratch directory (bounded only by time x RLIMIT_FSIZE per
file), reading world-readable files (all files with the capability fallback above), and side channels.
With `drop_privileges` off as root, the program is root (it could undo the namespaces): tests only.
A deployment that needs more runs this inside a container / gVisor and can add a cgroup.

Output: stdout and stderr are read as they come and only the first and last `max_output_chars // 2` bytes of
each are kept, joined by a marker "\n...[N bytes truncated]...\n" (`ExecutionResult.truncated`), so a
program printing gigabytes costs no host memory. The prompt-level truncation of the DeepSeek-Math harness
(first 50 + "..." + last 50 characters of outputs longer than 100) is applied by `tool_loop.format_output_block`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pwd
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

__all__ = ["SandboxLimits", "ExecutionResult", "run_python", "isolation_report"]


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run, and switches for the isolation layers (see the module docstring).

    The switches exist so that tests can show each layer working alone; leave them on otherwise.
    """

    cpu_seconds: float = 5.0  # RLIMIT_CPU (rounded up to whole seconds); SIGKILL one second later
    wall_seconds: float = 10.0  # the harness's per-program timeout
    memory_bytes: int = 1 << 30  # RLIMIT_AS (address space, so it counts reservations too)
    max_processes: int = 16  # processes + threads the program may add (RLIMIT_NPROC on top of the user's count)
    max_file_bytes: int = 16 << 20  # RLIMIT_FSIZE: largest file the program may write
    max_open_files: int = 256  # RLIMIT_NOFILE
    max_output_chars: int = 100_000  # per stream: first and last half kept, the middle replaced by a marker
    drop_privileges: bool = True  # when root: run the program as `nobody`
    network_namespace: bool = True  # a fresh network namespace (no interfaces up)
    readonly_filesystem: bool = True  # a private mount namespace, everything read-only but the scratch dir
    audit_policy: bool = True  # the audit-hook policy layer

    def __post_init__(self):
        for name in ("cpu_seconds", "wall_seconds", "memory_bytes", "max_processes", "max_file_bytes",
                     "max_open_files", "max_output_chars"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, got {getattr(self, name)!r}")


@dataclasses.dataclass
class ExecutionResult:
    """What one sandboxed run did.

    `error` is None when `ok`, else one of: "timeout" (wall clock or CPU), "memory", "forbidden: <category>"
    (process, network, filesystem, native code, signals, resource limits, introspection), "exception: <line>"
    (the last traceback line, e.g. "exception: ZeroDivisionError: division by zero"), "killed: <SIGNAL>",
    "exit status <n>" or "sandbox failure: <why>". `error_line` is what the DeepSeek-Math harness shows the
    model for a failed run: the traceback's last line, or "Timeout Error".
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
    answer: str | None = None  # program-of-thought runs: the program's answer (see tool_loop)


# --------------------------------------------------------------------------------------------------------
# The runner: executed by `python -I -B -c`, reads its configuration and the program from stdin.
# The first process is the reaper; its child isolates itself and executes the program.
# --------------------------------------------------------------------------------------------------------
_RUNNER = r'''
import json, os, signal, sys, time


def read_exact(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            raise EOFError("sandbox header truncated")
        buf += chunk
    return bytes(buf)


def report(cfg, kind, info):
    info["kind"] = kind
    data = ("\n" + cfg["key"] + json.dumps(info) + "\n").encode("utf-8", "replace")
    try:
        os.write(2, data)
    except OSError:
        pass


def marked_processes(marker):
    """Pids (other than ours) whose environment carries the run marker."""
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open("/proc/%s/environ" % name, "rb") as f:
                env = f.read()
        except OSError:
            continue
        if marker in env.split(b"\0"):
            found.append(int(name))
    return found


def own_children():
    pids = set()
    try:
        for tid in os.listdir("/proc/self/task"):
            with open("/proc/self/task/%s/children" % tid) as f:
                pids.update(int(p) for p in f.read().split())
    except OSError:
        pass
    return pids


def supervise(cfg, pid, reaper):
    """The reaper: wait for the program (wall clock), then kill and reap everything it started."""
    deadline = time.monotonic() + cfg["wall_seconds"]
    state = {"status": None, "usage": None}

    def reap_all():  # True while children remain
        while True:
            try:
                wpid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if wpid == 0:
                return True
            if wpid == pid:
                state["status"], state["usage"] = status, usage

    timed_out = False
    while True:
        reap_all()
        if state["status"] is not None:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        signal.sigtimedwait({signal.SIGCHLD}, min(remaining, 1.0))
    marker = cfg["marker"].encode()
    killed, leftover = 0, 0
    for attempt in range(200):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        targets = set(marked_processes(marker)) | own_children()
        for target in targets:
            try:
                os.kill(target, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        if not reap_all() and not targets:
            break
        signal.sigtimedwait({signal.SIGCHLD}, 0.01)
    else:
        leftover = len(own_children() | set(marked_processes(marker)))
    status, usage = state["status"], state["usage"]
    info = {"timed_out": timed_out, "reaper": reaper, "killed": killed, "leftover": leftover,
            "exit": None if status is None else os.waitstatus_to_exitcode(status),
            "cpu_s": None if usage is None else usage.ru_utime + usage.ru_stime}
    report(cfg, "reaper", info)
    os._exit(0)


# ---------------------------------------------------------------- the program side

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
# statvfs f_flag bit -> mount flag to keep when remounting (locked flags must be kept in a user namespace)
# nosuid, nodev, noexec, noatime, nodiratime, relatime
KEEP_FLAGS = {2: 2, 4: 4, 8: 8, 1024: 1024, 2048: 2048, 4096: 1 << 21}


def unescape_mount_path(field):
    out, i = bytearray(), 0
    while i < len(field):
        if field[i:i + 1] == b"\\" and field[i + 1:i + 4].isdigit():
            out.append(int(field[i + 1:i + 4], 8))
            i += 4
        else:
            out += field[i:i + 1]
            i += 1
    return bytes(out)


def closed_ancestor(path):
    """The first directory on the way to `path` (itself included) that others may not traverse, or None."""
    import stat
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & stat.S_IXOTH:
            return current
    return None


def expose(mount, roots, scratch, layers):
    """Lets an unprivileged user import from `roots` (the Python installation) without any capability:
    over each ancestor others cannot traverse (e.g. /root, mode 0700) goes an empty tmpfs (mode 0755),
    and the roots below it are bind-mounted back in place; the rest of that directory stays hidden."""
    chosen = []
    for root in sorted({os.path.realpath(r) for r in roots}):
        if any(root == c or root.startswith(c + "/") for c in chosen):
            continue
        chosen.append(root)
    hidden = {}
    for root in chosen:
        ancestor = closed_ancestor(root)
        if ancestor is not None:
            if ancestor == root:
                return False
            hidden.setdefault(ancestor, []).append(root)
    for ancestor, below in hidden.items():
        if scratch == ancestor or scratch.startswith(ancestor + "/"):
            return False
        fds = [os.open(r, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for r in below]
        if mount(b"tmpfs", os.fsencode(ancestor), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=64k") != 0:
            return False
        for root, fd in zip(below, fds):
            current = ancestor
            for part in root[len(ancestor):].split("/"):
                if part:
                    current = os.path.join(current, part)
                    if not os.path.isdir(current):
                        os.mkdir(current)
                        os.chmod(current, 0o755)
            ok = mount(b"/proc/self/fd/%d" % fd, os.fsencode(root), None, MS_BIND | MS_REC, None) == 0
            os.close(fd)
            if not ok:
                return False
    layers["hidden_paths"] = sorted(hidden)
    return True


def mount_namespace(libc, ctypes, scratch, roots, readonly, layers):
    """A private mount namespace: the import roots exposed (when dropping privileges), then, if `readonly`,
    the scratch dir bind-mounted read-write and every other mount read-only. Returns (exposed, readonly)."""
    mount = libc.mount
    mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        return False, False
    if mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False, False
    exposed = bool(roots) and expose(mount, roots, scratch, layers)
    if not readonly:
        return exposed, False
    target = os.fsencode(scratch)
    if mount(target, target, None, MS_BIND, None) != 0:
        return exposed, False
    os.chdir(scratch)  # the old working directory is on a mount about to become read-only
    with open("/proc/self/mountinfo", "rb") as f:
        points = [unescape_mount_path(line.split()[4]) for line in f.read().splitlines() if line.strip()]
    ok = True
    for point in points:
        if point == target:
            continue
        try:
            flags = os.statvfs(point).f_flag
        except OSError:
            continue  # hidden under another mount: not reachable anyway
        if flags & 1:  # already read-only
            continue
        keep = 0
        for bit, mount_flag in KEEP_FLAGS.items():
            if flags & bit:
                keep |= mount_flag
        if mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep, None) != 0:
            ok = False
    return exposed, ok


def user_tasks(uid):
    """Processes + threads whose real uid is `uid` (what RLIMIT_NPROC counts)."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/status" % name, "rb") as f:
                text = f.read()
        except OSError:
            continue
        real_uid = threads = None
        for line in text.splitlines():
            if line.startswith(b"Uid:"):
                real_uid = int(line.split()[1])
            elif line.startswith(b"Threads:"):
                threads = int(line.split()[1])
        if real_uid == uid:
            total += threads or 1
    return total


def world_readable(path):
    import stat
    path = os.path.realpath(path)
    if not os.stat(path).st_mode & stat.S_IROTH:
        return False
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def permitted_capabilities():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapPrm:"):
                return int(line.split()[1], 16)
    return 0


def set_capabilities(libc, ctypes, mask):
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    data[0].effective = data[0].permitted = mask
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    with open("/proc/self/status") as f:
        caps = {k: int(v, 16) for k, v in (line.split(":\t") for line in f if line.startswith("Cap"))}
    if caps["CapPrm"] != mask or caps["CapEff"] != mask:
        raise OSError("capabilities not reduced: %r" % caps)


def isolate(cfg, libc, ctypes, scratch, layers):
    import resource
    root = os.geteuid() == 0
    dropping = root and cfg["drop_uid"] is not None
    import_roots = [os.path.dirname(os.__file__)] + [p for p in sys.path if p and os.path.isdir(p)]
    CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
    can_unshare = root
    if not root and (cfg["network_namespace"] or cfg["readonly_filesystem"]):
        can_unshare = libc.unshare(CLONE_NEWUSER) == 0
    layers["network_namespace"] = bool(cfg["network_namespace"] and can_unshare
                                       and libc.unshare(CLONE_NEWNET) == 0)
    readonly = False
    if can_unshare and (cfg["readonly_filesystem"] or dropping):
        _, readonly = mount_namespace(libc, ctypes, scratch, import_roots if dropping else [],
                                      cfg["readonly_filesystem"], layers)
    layers["readonly_filesystem"] = bool(readonly)

    # can `nobody` import the Python installation (world-readable, or exposed by the mount namespace)?
    keep_read = dropping and not all(world_readable(p) for p in import_roots)
    if keep_read and not permitted_capabilities() & (1 << 2):
        # it could not, and the capability that would let it is not ours to keep: stay as we are
        layers["drop_skipped"] = "Python installation unreadable by others and no CAP_DAC_READ_SEARCH"
        dropping = False
    target_uid = cfg["drop_uid"] if dropping else os.getuid()

    def limit(res, soft, hard=None):
        hard = soft if hard is None else hard
        _, current_hard = resource.getrlimit(res)
        if not root and current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
            soft = min(soft, hard)
        resource.setrlimit(res, (soft, hard))

    cpu = max(1, int(-(-cfg["cpu_seconds"] // 1)))
    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_CPU, cpu, cpu + 1)
    limit(resource.RLIMIT_AS, cfg["memory_bytes"])
    limit(resource.RLIMIT_FSIZE, cfg["max_file_bytes"])
    limit(resource.RLIMIT_NOFILE, cfg["max_open_files"])
    limit(resource.RLIMIT_NPROC, user_tasks(target_uid) + cfg["max_processes"])
    layers["rlimits"] = True

    layers["user"] = os.getuid()
    layers["read_capability"] = False
    if dropping:
        if keep_read and libc.prctl(8, 1, 0, 0, 0) != 0:  # PR_SET_KEEPCAPS
            raise OSError(ctypes.get_errno(), "PR_SET_KEEPCAPS failed")
        os.setgroups([])
        os.setgid(cfg["drop_gid"])
        os.setuid(cfg["drop_uid"])
        if keep_read:
            set_capabilities(libc, ctypes, 1 << 2)  # CAP_DAC_READ_SEARCH only
            libc.prctl(8, 0, 0, 0, 0)
        layers["user"] = os.getuid()
        layers["read_capability"] = keep_read
    elif not root and can_unshare:
        # full capabilities inside the new user namespace would let the program undo the mounts: drop them
        set_capabilities(libc, ctypes, 0)
    layers["unprivileged"] = layers["user"] != 0
    layers["no_new_privs"] = libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS


def install_policy(scratch, violations):
    """The audit-hook policy layer (see the module docstring of dsmath_jax.evals.sandbox)."""
    import posix
    import _posixsubprocess
    try:
        import _posixshmem
    except ImportError:
        _posixshmem = None

    from stat import S_ISDIR
    realpath, abspath, fsdecode, stat_path, join = (os.path.realpath, os.path.abspath, os.fsdecode,
                                                    os.stat, os.path.join)
    readlink, getpid, getpgrp = os.readlink, os.getpid, os.getpgrp
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    prefix = scratch.rstrip("/") + "/"
    devices = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr"})

    def deny(category, detail):
        if len(violations) < 20:
            violations.append("%s: %s" % (category, detail))
        raise PermissionError("sandbox: %s access is not allowed (%s)" % (category, detail))

    def inside(path, dir_fd=None):
        if isinstance(path, int):
            return True  # an already open descriptor (opened under this policy)
        try:
            p = fsdecode(path)
            if dir_fd not in (None, -1) and not p.startswith("/"):
                p = join(readlink("/proc/self/fd/%d" % dir_fd), p)
            if abspath(p) in devices:
                return True
            p = realpath(p)
        except Exception:
            return False
        return p == scratch or p.startswith(prefix)

    def on_open(event, args):
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        writing = (isinstance(flags, int) and flags & WRITE) or (
            isinstance(mode, str) and any(c in mode for c in "wax+"))
        if writing:
            if not inside(path):
                deny("filesystem", "open %r for writing" % (path,))
        elif mode is None and not isinstance(path, int) and not inside(path):
            # os.open of a directory outside scratch would give a dir_fd to escape through
            try:
                is_dir = S_ISDIR(stat_path(path).st_mode)
            except FileNotFoundError:
                return
            except Exception:
                is_dir = True  # cannot tell: fail closed
            if is_dir:
                deny("filesystem", "open directory %r" % (path,))

    def paths(path_idx, fd_idx):
        def check(event, args):
            fds = [args[i] if i < len(args) else None for i in fd_idx] or [None]
            for n, i in enumerate(path_idx):
                fd = fds[min(n, len(fds) - 1)]
                if i < len(args) and not inside(args[i], fd):
                    deny("filesystem", "%s %r" % (event, args[i]))
        return check

    def category(name):
        def check(event, args):
            deny(name, event)
        return check

    def on_kill(event, args):
        if args[0] not in (0, getpid()):
            deny("signals", "%s(%r)" % (event, args[0]))

    def on_killpg(event, args):
        if args[0] not in (0, getpgrp()):
            deny("signals", "%s(%r)" % (event, args[0]))

    neutered = {"_posixsubprocess": "process", "_posixshmem": "filesystem", "posix": "process",
                "_ctypes": "native code"}

    def on_import(event, args):
        if args and args[0] in neutered:
            deny(neutered[args[0]], "importing %s afresh" % args[0])

    def on_sqlite(event, args):
        if args and args[0] not in (":memory:", "", b":memory:", b"") and not inside(args[0]):
            deny("filesystem", "sqlite3.connect(%r)" % (args[0],))

    protected = []

    def on_setattr(event, args):
        if args and any(args[0] is obj for obj in protected):
            deny("introspection", "modifying the sandbox policy")

    table = {"open": on_open, "import": on_import, "object.__setattr__": on_setattr,
             "os.kill": on_kill, "os.killpg": on_killpg, "sqlite3.connect": on_sqlite}
    for event in ("os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                  "subprocess.Popen", "os.startfile"):
        table[event] = category("process")
    for event in ("socket.__new__", "socket.bind", "socket.connect", "socket.getaddrinfo", "socket.gethostbyaddr",
                  "socket.gethostbyname", "socket.getnameinfo", "socket.getservbyname", "socket.getservbyport",
                  "socket.sendmsg", "socket.sendto", "socket.sethostname"):
        table[event] = category("network")
    for event in ("ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle"):
        table[event] = category("native code")
    for event in ("os.link", "os.symlink"):
        table[event] = category("filesystem")
    for event in ("resource.setrlimit", "resource.prlimit"):
        table[event] = category("resource limits")
    for event in ("gc.get_objects", "gc.get_referrers", "gc.get_referents"):
        table[event] = category("introspection")
    for event, path_idx, fd_idx in (("os.chmod", (0,), (2,)), ("os.chown", (0,), (3,)), ("os.mkdir", (0,), (2,)),
                                    ("os.remove", (0,), (1,)), ("os.rmdir", (0,), (1,)),
                                    ("os.rename", (0, 1), (2, 3)), ("os.truncate", (0,), ()),
                                    ("os.utime", (0,), (3,)), ("os.setxattr", (0,), ()),
                                    ("os.removexattr", (0,), ()), ("os.chflags", (0,), ()),
                                    ("os.lchflags", (0,), ()), ("shutil.rmtree", (0,), (1,)),
                                    ("shutil.chown", (0,), ())):
        table[event] = paths(path_idx, fd_idx)

    # calls without an audit event: replaced (and their modules may not be imported afresh)
    def refuse_fork_exec(*args, **kwargs):
        deny("process", "_posixsubprocess.fork_exec")

    def refuse_shm_open(*args, **kwargs):
        deny("filesystem", "_posixshmem.shm_open")

    def guarded(name, function):
        def call(path, *args, **kwargs):
            if not inside(path, kwargs.get("dir_fd")):
                deny("filesystem", "%s %r" % (name, path))
            return function(path, *args, **kwargs)
        return call

    _posixsubprocess.fork_exec = refuse_fork_exec
    if _posixshmem is not None:
        _posixshmem.shm_open = refuse_shm_open
    for name in ("mkfifo", "mknod"):
        if hasattr(posix, name):
            wrapper = guarded("os." + name, getattr(posix, name))
            setattr(posix, name, wrapper)
            setattr(os, name, wrapper)
            protected.append(wrapper)
    get = table.get

    def hook(event, args):
        check = get(event)
        if check is not None:
            check(event, args)

    protected.extend([hook, refuse_fork_exec, refuse_shm_open, deny, inside])
    sys.addaudithook(hook)


def run_program(cfg, libc, ctypes):
    os.setpgid(0, 0)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    layers, violations = {}, []
    try:
        import builtins, linecache, resource, traceback  # noqa: F401 - imported while everything is readable
        scratch = os.path.realpath(os.getcwd())
        isolate(cfg, libc, ctypes, scratch, layers)
        sys.dont_write_bytecode = True
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if cfg["audit_policy"]:
            install_policy(scratch, violations)
        layers["audit_hook"] = bool(cfg["audit_policy"])
    except BaseException as exc:
        report(cfg, "program", {"status": "setup", "error_line": "%s: %s" % (type(exc).__name__, exc),
                                "layers": layers, "violations": violations})
        os._exit(70)

    code = cfg["code"]
    linecache.cache["<sandbox>"] = (len(code), None, code.splitlines(True), "<sandbox>")
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    sys.argv = ["<sandbox>"]
    info = {"status": "ok", "error_line": "", "exc_type": None}

    def failed(exc):
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None  # drop our own frame
        try:
            text = "".join(traceback.format_exception(type(exc), exc, tb))
        except BaseException:
            text = "%s: %s\n" % (type(exc).__name__, exc)
        try:
            sys.stderr.flush()
        except BaseException:
            pass
        try:
            os.write(2, text.encode("utf-8", "replace"))
        except OSError:
            pass
        return {"status": "exception", "error_line": text.rstrip("\n").rsplit("\n", 1)[-1],
                "exc_type": type(exc).__name__}

    try:
        exec(compile(code, "<sandbox>", "exec"), namespace)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            info = failed(exc)
    except BaseException as exc:
        if isinstance(exc, MemoryError):
            namespace.clear()
        info = failed(exc)
    for stream in (sys.stdout, sys.__stdout__, sys.stderr, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:
            pass
    info["layers"] = layers
    info["violations"] = list(violations)
    report(cfg, "program", info)
    os._exit(0 if info["status"] == "ok" else 1)


def main():
    cfg = json.loads(read_exact(int.from_bytes(read_exact(8), "big")))
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    reaper = libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    pid = os.fork()
    if pid == 0:
        try:
            run_program(cfg, libc, ctypes)
        finally:
            os._exit(70)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    os.close(0)
    supervise(cfg, pid, reaper)


main()
'''

_HOST_GRACE_S = 5.0  # the host kills the reaper this long after the program's wall-clock limit
_ENV_MARKER = "DSMATH_SANDBOX_RUN"


def _sandbox_ids() -> tuple[int, int] | None:
    """(uid, gid) to drop to when we are root: `nobody`, else 65534."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


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


def _pump(proc: subprocess.Popen, payload: bytes, deadline: float, out: _Capture, err: _Capture) -> bool:
    """Feeds stdin and drains stdout/stderr until both reach EOF or `deadline`; True if the deadline hit."""
    sel = selectors.DefaultSelector()
    view, pos = memoryview(payload), 0
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_WRITE, None)
    readers = 0
    for stream, capture in ((proc.stdout, out), (proc.stderr, err)):
        os.set_blocking(stream.fileno(), False)
        sel.register(stream.fileno(), selectors.EVENT_READ, capture)
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
                else:
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


def _remove_tree(path: str) -> None:
    def fix(func, p, exc_info):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        except OSError:
            pass
        try:
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)


def _split_reports(stderr: str, key: str) -> tuple[str, dict[str, dict]]:
    """Removes the runner's report lines from stderr; returns (stderr, {kind: last report of that kind})."""
    reports: dict[str, dict] = {}
    if key not in stderr:
        return stderr, reports
    pattern = re.compile("\n" + re.escape(key) + "([^\n]*)\n?")
    for match in pattern.finditer(stderr):
        try:
            info = json.loads(match.group(1))
        except ValueError:
            continue
        if isinstance(info, dict):
            reports[str(info.get("kind", ""))] = info
    return pattern.sub("", stderr), reports


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_python(code: str, *, limits: SandboxLimits = SandboxLimits(), stdin: str = "") -> ExecutionResult:
    """Runs `code` in the sandbox (see the module docstring) and returns what happened.

    Never raises for anything the code does; `ExecutionResult.error` says what went wrong.
    """
    start = time.monotonic()
    key = "\x1edsmath-sandbox-" + secrets.token_hex(12) + ":"
    marker = secrets.token_hex(16)
    ids = _sandbox_ids() if limits.drop_privileges else None
    scratch = tempfile.mkdtemp(prefix="dsmath-sandbox-")  # mode 0700
    out, err = _Capture(limits.max_output_chars), _Capture(limits.max_output_chars)
    proc = None
    host_timeout = False
    try:
        if ids is not None:
            try:
                os.chown(scratch, *ids)
            except OSError:  # e.g. a filesystem that refuses chown: run without the privilege drop
                ids = None
        cfg = {"key": key, "marker": f"{_ENV_MARKER}={marker}", "code": code,
               "cpu_seconds": limits.cpu_seconds, "wall_seconds": limits.wall_seconds,
               "memory_bytes": int(limits.memory_bytes), "max_processes": int(limits.max_processes),
               "max_file_bytes": int(limits.max_file_bytes), "max_open_files": int(limits.max_open_files),
               "drop_uid": None if ids is None else ids[0], "drop_gid": None if ids is None else ids[1],
               "network_namespace": limits.network_namespace, "readonly_filesystem": limits.readonly_filesystem,
               "audit_policy": limits.audit_policy}
        header = json.dumps(cfg).encode("utf-8", "surrogatepass")
        payload = len(header).to_bytes(8, "big") + header + stdin.encode("utf-8", "replace")
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "HOME": scratch, "TMPDIR": scratch, "MPLCONFIGDIR": scratch, "MPLBACKEND": "Agg",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "NUMEXPR_NUM_THREADS": "1", _ENV_MARKER: marker}
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", _RUNNER], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=scratch, env=env,
                                    close_fds=True, start_new_session=True)
        except OSError as exc:
            return ExecutionResult("", "", False, f"sandbox failure: {exc}", None, time.monotonic() - start,
                                   error_line=f"{type(exc).__name__}: {exc}")
        deadline = start + limits.wall_seconds + _HOST_GRACE_S
        host_timeout = _pump(proc, payload, deadline, out, err)
        try:
            proc.wait(timeout=0 if host_timeout else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            host_timeout = True
    finally:
        if proc is not None:
            for stream in (proc.stdout, proc.stderr):
                stream.close()
            if proc.poll() is None:  # the reaper hung (it never should): kill everything of this run
                _kill_marked(f"{_ENV_MARKER}={marker}".encode())
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait()
        _remove_tree(scratch)
    stdout, out_truncated = out.text()
    stderr, err_truncated = err.text()
    stderr, reports = _split_reports(stderr, key)
    if "reaper" not in reports:  # the reaper died or hung: clean up from here
        _kill_marked(f"{_ENV_MARKER}={marker}".encode())
    result = ExecutionResult(stdout=stdout, stderr=stderr, ok=False, error=None, returncode=None,
                             duration_s=time.monotonic() - start, truncated=out_truncated or err_truncated)
    _classify(result, reports, limits, host_timeout, proc.returncode)
    return result


def _classify(result: ExecutionResult, reports: dict[str, dict], limits: SandboxLimits, host_timeout: bool,
              runner_returncode: int | None) -> None:
    reaper, program = reports.get("reaper"), reports.get("program")
    if program is not None:
        result.isolation = dict(program.get("layers", {}))
        result.violations = list(program.get("violations", []))
    if reaper is not None:
        result.isolation["reaper"] = bool(reaper.get("reaper"))
        result.returncode = reaper.get("exit")
        result.cpu_s = reaper.get("cpu_s")
    rc = result.returncode
    if reaper is None:
        why = "host timeout" if host_timeout else f"runner exited with {runner_returncode}"
        result.error, result.error_line = ("timeout", "Timeout Error") if host_timeout else (
            f"sandbox failure: {why}", f"SandboxError: {why}")
    elif reaper.get("timed_out"):
        result.error, result.error_line = "timeout", "Timeout Error"
    elif program is not None and program.get("status") == "setup":
        result.error, result.error_line = f"sandbox failure: {program.get('error_line')}", program.get("error_line", "")
    elif rc is not None and rc < 0:
        sig = -rc
        cpu_out = result.cpu_s is not None and result.cpu_s >= math.ceil(limits.cpu_seconds) - 0.05
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_out):
            result.error, result.error_line = "timeout", "Timeout Error"
        else:
            result.error, result.error_line = f"killed: {_signal_name(sig)}", f"Killed by {_signal_name(sig)}"
    elif program is None:  # os._exit() from the program
        if rc == 0:
            result.ok = True
        else:
            result.error, result.error_line = f"exit status {rc}", f"SystemExit: {rc}"
    else:
        line = program.get("error_line", "")
        result.error_line = line
        if result.violations:
            result.error = "forbidden: " + result.violations[0].split(":", 1)[0]
            if not line:
                category, _, detail = result.violations[0].partition(": ")
                result.error_line = f"PermissionError: sandbox: {category} access is not allowed ({detail})"
        elif program.get("status") == "ok":
            result.ok = True
        elif (program.get("exc_type") or "").endswith("MemoryError"):
            result.error = "memory"
        else:
            result.error = f"exception: {line}"


_ISOLATION_CACHE: dict[SandboxLimits, dict[str, Any]] = {}


def isolation_report(limits: SandboxLimits = SandboxLimits()) -> dict[str, Any]:
    """Which isolation layers a run gets on this machine (runs `pass` once per `limits`, then cached)."""
    if limits not in _ISOLATION_CACHE:
        result = run_python("pass", limits=limits)
        _ISOLATION_CACHE[limits] = dict(result.isolation, ok=result.ok, error=result.error)
    return dict(_ISOLATION_CACHE[limits])
