"""The sandbox's runner: executed as a file, `python -I -B sandbox_runner.py`, by `dsmath_jax.evals.sandbox`.

Standard library only, and nothing of ours: it runs in the interpreter that will run the model's code.
Importing this module has no side effects (tests and linters do); running it as a script starts a run.

Input: stdin carries an 8-byte big-endian length, that many bytes of JSON configuration (see
`sandbox.run_python`), then the program's own stdin. The host passes one more descriptor, the write end of
the *report channel* (`cfg["report_fd"]`); only the reaper ever writes to it, once, at the end of the run.

Process layout::

    launcher (this file, started by the host; root or our uid; never runs model code)
      |  unshare: user (not root), IPC, UTS, mount, PID namespaces -- each where the kernel allows
      +--fork--> reaper = PID 1 of the new PID namespace: mounts a fresh /proc (and /dev/shm), waits
                   |     for the program (wall clock), kills everything left (kill(-1)), reads the
                   |     program's records, writes the one report to the report channel, exits; the
                   |     kernel then kills whatever is still in the namespace
                   +--fork--> program: closes the report channel, isolates itself (joins the run's
                              cgroup, network and mount namespaces, pivot into the minimal root with
                              a scratch tmpfs, read-only mounts, rlimits, the run's uid, no_new_privs,
                              seccomp filter, audit policy), sends its `ready` record, runs the code
    Without a PID namespace the launcher is the reaper itself (a child subreaper with kill sweeps).

The program reports through a second pipe, the *record channel*, to the reaper: one JSON line per record,
`ready` (its isolation layers, before the code runs), `denied` (each audit-policy denial, written when it
happens, so nothing the code does afterwards can take it back), `outcome` (ok or the exception, after the
code). The code can write to that pipe too, so a record there can only ever make a run fail: the host
reads ok from the exit status (kernel) plus the absence of any failing record, never from a record saying
"ok". The report channel is closed in the program before anything else runs, no key exists anywhere, and
the reaper is not dumpable (its /proc/<pid>/fd is closed to the program): the verdict cannot be forged.
"""

import json
import os
import signal
import sys
import time

RECORD_MAX = 16384  # bytes per record line on the record channel (longer: cut, then marked malformed)
RECORDS_MAX = 1 << 20  # bytes read from the record channel in all; more marks the run malformed
DENIALS_RECORDED = 20  # the audit policy writes this many denial records (the rest are only counted)
DETAIL_MAX = 200  # characters of a denial's detail (a path, a call)

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_KEEPCAPS = 1, 4, 8
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
# statvfs f_flag bit -> mount flag to keep when remounting (locked flags must be kept in a user namespace)
# nosuid, nodev, noexec, noatime, nodiratime, relatime
KEEP_FLAGS = {2: 2, 4: 4, 8: 8, 1024: 1024, 2048: 2048, 4096: 1 << 21}
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")  # of the minimal root
DEVICES = ("null", "zero", "full", "random", "urandom")
SCRATCH_INODES = 16384  # files + directories the scratch tmpfs holds


def read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError("sandbox header truncated")
        buf += chunk
    return bytes(buf)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def load_libc():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return libc, ctypes


# ================================================================ launcher: process namespaces

def proc_files(filename):
    """(pid, contents of /proc/<pid>/<filename>) for every process whose file can be read now."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/{filename}", "rb") as f:
                yield int(name), f.read()
        except OSError:
            continue


def user_tasks(uid):
    """Processes + threads whose real uid is `uid` (what RLIMIT_NPROC counts), from the host's /proc."""
    total = 0
    for _, text in proc_files("status"):
        real_uid = threads = None
        for line in text.splitlines():
            if line.startswith(b"Uid:"):
                real_uid = int(line.split()[1])
            elif line.startswith(b"Threads:"):
                threads = int(line.split()[1])
        if real_uid == uid:
            total += threads or 1
    return total


def enter_user_namespace(libc):
    """Not root: a user namespace mapping our uid and gid to themselves, in which we may create the others
    (and create files in a tmpfs mounted there: an unmapped uid could not)."""
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER) != 0:
        return False
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # /proc/self/uid_map is ours to write only while dumpable
    try:
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                           ("/proc/self/gid_map", f"{gid} {gid} 1")):
            with open(path, "w") as f:
                f.write(text)
    except OSError:
        return False
    return True


def unshare_process_namespaces(cfg, libc, layers):
    """IPC + UTS (`cfg["ipc_namespace"]`) and mount + PID (`cfg["pid_namespace"]`) namespaces, each where the
    kernel allows; the PID namespace applies to the children we fork next."""
    for name in ("ipc_namespace", "uts_namespace", "pid_namespace", "proc_private"):
        layers[name] = False
    if not (cfg["ipc_namespace"] or cfg["pid_namespace"]):
        return False
    if os.geteuid() != 0 and not enter_user_namespace(libc):
        return False
    if cfg["ipc_namespace"]:
        layers["ipc_namespace"] = libc.unshare(CLONE_NEWIPC) == 0
        layers["uts_namespace"] = libc.unshare(CLONE_NEWUTS) == 0
    mount_ns = False
    if cfg["pid_namespace"]:
        mount_ns = libc.unshare(CLONE_NEWNS) == 0
        layers["pid_namespace"] = libc.unshare(CLONE_NEWPID) == 0
    return mount_ns


def become_init(libc, layers, mount_ns):
    """PID 1 of the new namespace: dies with the launcher; its own /proc (no host process visible) and
    /dev/shm (no host POSIX shared memory), its own host name."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if mount_ns and libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0:
        layers["proc_private"] = libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                                            None) == 0
        if os.path.isdir("/dev/shm") and libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV,
                                                    b"mode=1777,size=1m") == 0:
            layers["shm_private"] = True
    if layers.get("uts_namespace"):
        libc.sethostname(b"sandbox", 7)


# ================================================================ the reaper

def marked_processes(marker):
    """Pids (other than ours) whose environment carries the run marker (fallback without a PID namespace)."""
    me = os.getpid()
    return [pid for pid, env in proc_files("environ") if pid != me and marker in env.split(b"\0")]


def own_children():
    pids = set()
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
    except OSError:
        pass
    return pids


class Reaped:
    """Collects exit statuses of our children; remembers the program's."""

    def __init__(self, program):
        self.program, self.status, self.usage, self.others = program, None, None, set()

    def reap(self):
        """Reaps what has exited; True while children remain."""
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.program:
                self.status, self.usage = status, usage
            else:
                self.others.add(pid)


def supervise(cfg, program, pid_namespace):
    """Waits for the program (wall clock), then kills and reaps everything it started.

    Returns the reaper's facts: timed_out, exit, cpu_s, leftover (processes still running when the program
    had exited), killed, unkilled (processes the reaper could not kill: only possible without a PID namespace).
    """
    deadline = time.monotonic() + cfg["wall_seconds"]
    reaped = Reaped(program)
    timed_out = False
    while True:
        reaped.reap()
        if reaped.status is not None:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        signal.sigtimedwait({signal.SIGCHLD}, min(remaining, 1.0))
    live = reaped.reap()  # children that had exited before the program did (zombies it left us)...
    reaped.others.clear()  # ...are not leftovers
    killed, unkilled = set(), 0
    if pid_namespace:
        # kill(-1) from PID 1 reaches every process of the namespace and nothing outside it; whatever a
        # fork races past this loop dies when we exit (the kernel kills the namespace with its init)
        end = time.monotonic() + 5.0
        while live and time.monotonic() < end:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            live = reaped.reap()
            if live:
                signal.sigtimedwait({signal.SIGCHLD}, 0.01)
        killed = set(reaped.others)
        unkilled = 0
    else:
        marker = cfg["marker"].encode()
        for _ in range(200):
            try:
                os.killpg(program, signal.SIGKILL)
            except OSError:
                pass
            targets = set(marked_processes(marker)) | own_children()
            for target in targets:
                try:
                    os.kill(target, signal.SIGKILL)
                    killed.add(target)
                except OSError:
                    pass
            live = reaped.reap()
            if not live and not targets:
                break
            signal.sigtimedwait({signal.SIGCHLD}, 0.01)
        else:
            unkilled = len(own_children() | set(marked_processes(marker)))
        killed |= reaped.others
    killed.discard(program)
    status, usage = reaped.status, reaped.usage
    return {"timed_out": timed_out, "exit": None if status is None else os.waitstatus_to_exitcode(status),
            "cpu_s": None if usage is None else usage.ru_utime + usage.ru_stime,
            "leftover": 0 if timed_out else len(killed) + unkilled, "killed": len(killed), "unkilled": unkilled}


def ipc_objects():
    """SysV IPC objects (shared memory, message queues, semaphore sets) in our IPC namespace."""
    count = 0
    for kind in ("shm", "msg", "sem"):
        try:
            with open("/proc/sysvipc/" + kind) as f:
                count += max(0, len(f.read().splitlines()) - 1)  # less the header line
        except OSError:
            pass
    return count


def read_records(fd, wait_s):
    """Everything on the record channel until EOF (all writers gone) or `wait_s`; at most RECORDS_MAX bytes."""
    os.set_blocking(fd, False)
    import select
    data, eof, overflow = bytearray(), False, False
    end = time.monotonic() + wait_s
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            select.select([fd], [], [], remaining)
            continue
        if not chunk:
            eof = True
            break
        if len(data) + len(chunk) > RECORDS_MAX:
            overflow = True
            break
        data += chunk
    return bytes(data), eof, overflow


def parse_records(data, eof, overflow):
    """The program's records as the host needs them. Everything here may have been written by the code."""
    out = {"ready": None, "setup": None, "denied": [], "denied_count": 0, "outcome": None, "failed_outcomes": 0,
           "malformed": int(overflow), "eof": eof}
    lines = data.split(b"\n")
    if lines[-1]:
        out["malformed"] += 1  # a record cut short
    for line in lines[:-1]:
        try:
            record = json.loads(line)
            kind = record["kind"]
        except (ValueError, TypeError, KeyError):
            out["malformed"] += 1
            continue
        if kind == "ready" and out["ready"] is None and isinstance(record.get("layers"), dict):
            out["ready"] = record["layers"]
        elif kind == "setup" and out["setup"] is None and out["ready"] is None:
            out["setup"] = str(record.get("error_line", ""))[:RECORD_MAX]
            if isinstance(record.get("layers"), dict):
                out["setup_layers"] = record["layers"]
        elif kind == "denied":
            out["denied_count"] += 1
            if len(out["denied"]) < DENIALS_RECORDED:
                out["denied"].append(str(record.get("what", ""))[:DETAIL_MAX + 64])
        elif kind == "outcome" and record.get("status") in ("ok", "exception"):
            if record["status"] != "ok":
                out["failed_outcomes"] += 1
                out["outcome"] = {"status": "exception", "error_line": str(record.get("error_line", ""))[:RECORD_MAX],
                                  "exc_type": str(record.get("exc_type", ""))[:200]}
            elif out["outcome"] is None:
                out["outcome"] = {"status": "ok"}
        else:
            out["malformed"] += 1
    return out


def reap_and_report(cfg, libc, layers, report_fd, base_tasks, pid_namespace):
    """Starts the program, supervises it, writes the report. Never returns."""
    records_r, records_w = os.pipe()  # not inherited across exec (O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(report_fd)
            os.close(records_r)
            run_program(cfg, libc, records_w, dict(layers), base_tasks)
        finally:
            os._exit(70)
    os.close(records_w)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    os.close(0)
    info = supervise(cfg, pid, pid_namespace)
    if layers.get("ipc_namespace"):  # the run's own: they die with the namespace, but they fail the run
        info["ipc_left"] = ipc_objects()
    data, eof, overflow = read_records(records_r, 0.2 if pid_namespace else 1.0)
    info["program"] = parse_records(data, eof, overflow)
    info["layers"] = layers
    info["kind"] = "report"
    try:
        write_all(report_fd, (json.dumps(info) + "\n").encode("utf-8", "replace"))
    except OSError:
        pass
    os._exit(0)


# ================================================================ the program side

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


def below(path, ancestor):
    return path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


def hiding_plan(roots, scratch, dropping):
    """{directory to cover with an empty tmpfs: [paths below it to bind back]}.

    Covered: each ancestor of the Python installation others cannot traverse (when dropping privileges, so
    that `nobody` can import without any capability while the rest of, e.g., /root stays hidden), and the
    scratch directory's parent (e.g. /tmp: other runs' scratch directories and whatever else lives there).
    A directory that cannot be covered without hiding an import root is left out (the caller then finds the
    installation unreadable, or the scratch directory not private, and says so in the layers).
    """
    chosen = []
    for root in sorted({os.path.realpath(r) for r in roots}):
        if not any(below(root, c) for c in chosen):
            chosen.append(root)
    covers = set()
    if dropping:
        for root in chosen:
            ancestor = closed_ancestor(root)
            if ancestor is not None and ancestor != root:
                covers.add(ancestor)
    parent = os.path.dirname(scratch)
    if parent != "/":
        # `nobody` must be able to reach its scratch directory by path: a closed ancestor is covered instead
        closed = closed_ancestor(parent) if dropping else None
        covers.add(closed if closed is not None else parent)
    keep = chosen + [scratch]
    plan = {}
    for cover in sorted(covers):
        if any(below(cover, other) and cover != other for other in covers):
            continue  # inside another covered directory
        if any(below(cover, k) for k in keep):  # covering it would hide (part of) what must stay
            continue
        plan[cover] = [k for k in keep if below(k, cover)]
    return plan


def cover_directories(mount, plan):
    """Applies a hiding plan: an empty tmpfs over each directory, the kept paths bind-mounted back in place.
    Returns the directories covered. A tmpfs the kernel refuses leaves that directory as it is; a path that
    cannot be bound back after its directory was covered raises (the run then fails at setup)."""
    covered = []
    for cover, keep in plan.items():
        fds = [os.open(k, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for k in keep]
        try:
            if mount(b"tmpfs", os.fsencode(cover), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=64k") != 0:
                continue
            covered.append(cover)
            for path, fd in zip(keep, fds):
                current = cover
                for part in path[len(cover):].split("/"):
                    if part:
                        current = os.path.join(current, part)
                        if not os.path.isdir(current):
                            os.mkdir(current)
                            os.chmod(current, 0o755)
                if mount(b"/proc/self/fd/%d" % fd, os.fsencode(path), None, MS_BIND | MS_REC, None) != 0:
                    raise OSError(f"cannot bind {path} back over the tmpfs covering {cover}")
        finally:
            for fd in fds:
                os.close(fd)
    return covered


def make_dirs(path):
    """`mkdir -p` with mode 0755 whatever the umask (inside the new root's tmpfs)."""
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        if not os.path.lexists(current):
            os.mkdir(current)
            os.chmod(current, 0o755)


def bind(libc, source, target):
    """Bind-mounts `source` (a directory or a file) at `target`, creating the mount point."""
    if os.path.isdir(source):
        make_dirs(target)
    else:
        make_dirs(os.path.dirname(target))
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    if libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND | MS_REC, None) != 0:
        raise OSError(f"cannot bind {source}")


def root_plan(roots):
    """(directories and files to bind at the same path, top-level symlinks to recreate) for the minimal root:
    the system directories and the Python installation's roots (the latter only where not inside the former)."""
    binds, links = [], []
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            links.append((path, os.readlink(path)))
        elif os.path.exists(path):
            binds.append(path)
    for root in sorted({os.path.realpath(r) for r in roots}):
        if root != "/" and os.path.exists(root) and not any(below(root, b) for b in binds):
            binds.append(root)
    return binds, links


def minimal_root(libc, scratch, roots, cfg, owner, layers):
    """Pivots into a fresh root that holds only: /usr, /etc, /bin, /lib* (read-only), the Python
    installation (read-only), /proc (the run's own when it has a PID namespace), a /dev with null, zero,
    full, random and urandom, and the scratch directory at its own path as a tmpfs of `scratch_bytes`
    owned by the run's uid. Nothing else of the host (home directories, the benchmark files, /tmp, /run and
    its sockets, /sys, /var) exists there. True when done; False (nothing changed) where the kernel or the
    architecture does not allow it; raises once the pivot has started."""
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        layers["minimal_filesystem_skipped"] = f"no pivot_root number for {os.uname().machine}"
        return False
    new = os.fsencode(scratch)  # the staging mount point: the (still empty) scratch directory
    if libc.mount(b"tmpfs", new, b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=1m,nr_inodes=4096") != 0:
        layers["minimal_filesystem_skipped"] = "tmpfs refused"
        return False
    try:
        binds, links = root_plan(roots)
        for path in binds:
            bind(libc, path, scratch + path)
        for path, target in links:
            os.symlink(target, scratch + path)
        bind(libc, "/proc", scratch + "/proc")
        make_dirs(scratch + "/dev")
        if libc.mount(b"tmpfs", os.fsencode(scratch + "/dev"), b"tmpfs", MS_NOSUID | MS_NOEXEC,
                      b"mode=0755,size=64k,nr_inodes=64") != 0:
            raise OSError("tmpfs refused for /dev")
        for name in DEVICES:
            if os.path.exists("/dev/" + name):
                bind(libc, "/dev/" + name, f"{scratch}/dev/{name}")
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, f"{scratch}/dev/{name}")
        make_dirs(scratch + "/dev/shm")
        make_dirs(scratch + "/tmp")
        make_dirs(scratch + scratch)
        options = (f"mode=0700,size={int(cfg['scratch_bytes'])},nr_inodes={SCRATCH_INODES},"
                   f"uid={owner[0]},gid={owner[1]}")
        if libc.mount(b"tmpfs", os.fsencode(scratch + scratch), b"tmpfs", MS_NOSUID | MS_NODEV,
                      options.encode()) != 0:
            raise OSError("tmpfs refused for the scratch directory")
    except OSError as exc:
        libc.umount2(new, MNT_DETACH)
        layers["minimal_filesystem_skipped"] = str(exc)
        return False
    os.chdir(scratch)
    if libc.syscall(number, b".", b".") != 0:  # pivot_root(".", "."): the old root now sits on top of "/"
        import ctypes
        raise OSError(ctypes.get_errno(), "pivot_root failed")
    if libc.umount2(b".", MNT_DETACH) != 0:  # ...and goes, with every host mount below it
        raise OSError("cannot detach the old root")
    os.chdir("/")
    return True


def mount_namespace(libc, scratch, roots, dropping, cfg, owner, layers):
    """A private mount namespace: the minimal root (`cfg["minimal_filesystem"]`, see `minimal_root`) or, where
    it cannot be built, the host's tree with directories hidden (see `hiding_plan`); then, if
    `cfg["readonly_filesystem"]`, every mount read-only except the scratch directory.
    Returns (in a mount namespace, read-only)."""
    mount = libc.mount
    readonly = cfg["readonly_filesystem"]
    layers["minimal_filesystem"] = layers["scratch_tmpfs"] = False
    if libc.unshare(CLONE_NEWNS) != 0:
        return False, False
    if mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False, False
    if cfg.get("minimal_filesystem") and minimal_root(libc, scratch, roots, cfg, owner, layers):
        layers["minimal_filesystem"] = layers["scratch_tmpfs"] = layers["scratch_private"] = True
        layers["hidden_paths"] = []
    else:
        covered = cover_directories(mount, hiding_plan(roots if dropping else [], scratch, dropping))
        scratch_hidden = any(below(scratch, c) for c in covered)
        layers["hidden_paths"] = sorted(covered)
        layers["scratch_private"] = scratch_hidden
        target = os.fsencode(scratch)
        if not scratch_hidden and mount(target, target, None, MS_BIND, None) != 0:
            return True, False
    target = os.fsencode(scratch)
    os.chdir(scratch)  # onto the scratch mount (the old working directory is hidden or about to be read-only)
    if not readonly:
        return True, False
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
    return True, ok


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


def set_capabilities(libc, mask):
    import ctypes

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
        raise OSError(f"capabilities not reduced: {caps!r}")


def join_cgroup(cfg, layers):
    """Moves the program into the run's cgroup(s) the host made (before anything else: all it starts is
    inside too). The host's layers `cgroup_memory` / `cgroup_pids` hold only once joined."""
    host = cfg.get("cgroup_layers") or {}
    layers["cgroup_memory"] = layers["cgroup_pids"] = False
    for key in ("cgroup_version", "cgroup_skipped"):
        if key in host:
            layers[key] = host[key]
    try:
        for path in cfg.get("cgroup_procs") or []:
            with open(path, "w") as f:
                f.write("0")
    except OSError as exc:
        layers["cgroup_skipped"] = f"cannot join the run's cgroup: {exc}"
        return
    layers["cgroup_memory"] = bool(host.get("cgroup_memory"))
    layers["cgroup_pids"] = bool(host.get("cgroup_pids"))


def isolate(cfg, libc, scratch, layers, base_tasks):
    import resource
    root = os.geteuid() == 0
    dropping = root and cfg["drop_uid"] is not None
    join_cgroup(cfg, layers)
    import_roots = [os.path.dirname(os.__file__)] + [p for p in sys.path if p and os.path.exists(p)]
    prefixes = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    can_unshare = root
    if not root and (cfg["network_namespace"] or cfg["readonly_filesystem"]):
        can_unshare = enter_user_namespace(libc)
    layers["network_namespace"] = bool(cfg["network_namespace"] and can_unshare
                                       and libc.unshare(CLONE_NEWNET) == 0)
    readonly = False
    layers.setdefault("scratch_private", False)
    if can_unshare and (cfg["readonly_filesystem"] or dropping or cfg.get("minimal_filesystem")):
        owner = (cfg["drop_uid"], cfg["drop_gid"]) if dropping else (os.getuid(), os.getgid())
        _, readonly = mount_namespace(libc, scratch, import_roots + prefixes, dropping, cfg, owner, layers)
    layers["readonly_filesystem"] = bool(readonly)

    # can `nobody` import the Python installation (world-readable, or exposed by the mount namespace)?
    keep_read = dropping and not all(world_readable(p) for p in import_roots)
    if keep_read and not permitted_capabilities() & (1 << 2):
        # it could not, and the capability that would let it is not ours to keep: stay as we are
        layers["drop_skipped"] = "Python installation unreadable by others and no CAP_DAC_READ_SEARCH"
        dropping = False

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
    limit(resource.RLIMIT_NPROC, base_tasks + cfg["max_processes"])
    layers["rlimits"] = True

    layers["user"] = os.getuid()
    layers["read_capability"] = False
    layers["distinct_uid"] = False
    if dropping:
        if keep_read and libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
            raise OSError("PR_SET_KEEPCAPS failed")
        os.setgroups([])
        os.setgid(cfg["drop_gid"])
        os.setuid(cfg["drop_uid"])
        if keep_read:
            set_capabilities(libc, 1 << 2)  # CAP_DAC_READ_SEARCH only
            libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0)
        layers["user"] = os.getuid()
        layers["distinct_uid"] = bool(cfg.get("distinct_uid"))
        layers["read_capability"] = keep_read
    elif not root and can_unshare:
        # full capabilities inside the new user namespace would let the program undo the mounts: drop them
        set_capabilities(libc, 0)
    layers["unprivileged"] = layers["user"] != 0
    layers["no_new_privs"] = libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0


# ================================================================ the seccomp filter

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
SECCOMP_NR, SECCOMP_ARCH, SECCOMP_ARG0 = 0, 4, 16  # offsets; args[i] low 32 bits at 16 + 8 * i (little endian)
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_JSET_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
EPERM, ENOSYS, AF_UNIX = 1, 38, 1
# namespace flags in clone()'s flags (CLONE_NEWTIME, NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET)
CLONE_NAMESPACE_FLAGS = 0x80 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

# What generated code never needs. Each name: (x86_64, aarch64) syscall numbers.
DENIED_SYSCALLS = {
    # namespaces, mounts, tracing other processes, kernel keyrings, eBPF, perf, userfaultfd
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41),
    "chroot": (161, 51), "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "kcmp": (312, 272),
    "pidfd_getfd": (438, 438), "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    # memory and disk outside the rlimits: memfd, fallocate, SysV shared memory / queues / semaphores, mqueues
    "memfd_create": (319, 279), "memfd_secret": (447, 447), "fallocate": (285, 47),
    "shmget": (29, 194), "shmat": (30, 196), "shmctl": (31, 195), "msgget": (68, 186), "msgsnd": (69, 189),
    "msgrcv": (70, 188), "msgctl": (71, 187), "semget": (64, 190), "semop": (65, 193), "semctl": (66, 191),
    "semtimedop": (220, 192), "mq_open": (240, 180), "mq_unlink": (241, 181), "mq_timedsend": (242, 182),
    "mq_timedreceive": (243, 183), "mq_notify": (244, 184), "mq_getsetattr": (245, 185),
    # sockets: none may be created (socketpair: AF_UNIX only, checked below); io_uring bypasses all of this
    "socket": (41, 198), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    # the machine itself
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106), "reboot": (169, 142), "swapon": (167, 224),
    "swapoff": (168, 225), "personality": (135, 92), "acct": (163, 89), "syslog": (103, 116),
    "name_to_handle_at": (303, 264), "open_by_handle_at": (304, 265), "quotactl": (179, 60),
    "settimeofday": (164, 170), "clock_settime": (227, 112), "adjtimex": (159, 171), "vhangup": (153, 58),
    "sethostname": (170, 161), "setdomainname": (171, 162),
}
# (AUDIT_ARCH_*, index into DENIED_SYSCALLS' pairs, clone, clone3, socketpair, x32 syscall bit or None)
SECCOMP_ARCHES = {"x86_64": (0xC000003E, 0, 56, 435, 53, 0x40000000),
                  "aarch64": (0xC00000B7, 1, 220, 435, 199, None)}


def seccomp_program(machine):
    """The classic BPF program of the filter for `machine` (os.uname().machine), as bytes; None if unknown.

    A syscall of another architecture (e.g. the 32-bit int 0x80 ABI on x86_64) kills the process; x32 calls
    and the denied syscalls fail with EPERM; clone() with a namespace flag fails with EPERM; clone3() fails
    with ENOSYS (its flags live in memory a filter cannot read; libc then falls back to clone()); socketpair()
    of any family but AF_UNIX fails with EPERM; everything else is allowed."""
    import struct
    if machine not in SECCOMP_ARCHES:
        return None
    audit_arch, column, clone, clone3, socketpair, x32_bit = SECCOMP_ARCHES[machine]
    denied = sorted({pair[column] for pair in DENIED_SYSCALLS.values()})
    code = []  # (opcode, true label or None, false label or None, k); labels resolved below

    def jump(op, k, true, false=None):
        code.append((op, true, false, k))

    code.append((BPF_LD_W_ABS, None, None, SECCOMP_ARCH))
    jump(BPF_JEQ_K, audit_arch, None, "kill")
    code.append((BPF_LD_W_ABS, None, None, SECCOMP_NR))
    if x32_bit is not None:
        jump(BPF_JGE_K, x32_bit, "eperm")
    for nr in denied:
        jump(BPF_JEQ_K, nr, "eperm")
    jump(BPF_JEQ_K, clone3, "enosys")
    jump(BPF_JEQ_K, clone, "clone")
    jump(BPF_JEQ_K, socketpair, "socketpair")
    code.append((BPF_RET_K, None, None, SECCOMP_RET_ALLOW))
    labels = {"clone": len(code)}
    code.append((BPF_LD_W_ABS, None, None, SECCOMP_ARG0))  # clone's flags, both arches: the first argument
    jump(BPF_JSET_K, CLONE_NAMESPACE_FLAGS, "eperm", "allow")
    labels["socketpair"] = len(code)
    code.append((BPF_LD_W_ABS, None, None, SECCOMP_ARG0))  # the family
    jump(BPF_JEQ_K, AF_UNIX, "allow", "eperm")
    for name, value in (("eperm", SECCOMP_RET_ERRNO | EPERM), ("enosys", SECCOMP_RET_ERRNO | ENOSYS),
                        ("kill", SECCOMP_RET_KILL_PROCESS), ("allow", SECCOMP_RET_ALLOW)):
        labels[name] = len(code)
        code.append((BPF_RET_K, None, None, value))
    out = bytearray()
    for index, (op, true, false, k) in enumerate(code):
        offsets = [0 if label is None else labels[label] - index - 1 for label in (true, false)]
        if not all(0 <= off <= 255 for off in offsets):
            raise ValueError("seccomp program: jump out of range")
        out += struct.pack("=HBBI", op, offsets[0], offsets[1], k)
    return bytes(out)


def install_seccomp(libc):
    """Installs the filter on this process (inherited by everything it starts); needs no_new_privs first.
    Returns True, or a string saying why not (an unknown architecture, the kernel refused)."""
    import ctypes
    program = seccomp_program(os.uname().machine)
    if program is None:
        return f"no seccomp filter for architecture {os.uname().machine}"
    buf = ctypes.create_string_buffer(program, len(program))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.c_void_p(ctypes.addressof(fprog)), 0, 0) != 0:
        return f"prctl(PR_SET_SECCOMP) failed: {os.strerror(ctypes.get_errno())}"
    return True


def record_writer(fd):
    """A function writing one record to the record channel; if the channel is gone or replaced (the code
    closed it, or put another file at its number), it kills the process: a denial is never lost quietly."""
    dumps, write, fstat, kill, getpid = json.dumps, os.write, os.fstat, os.kill, os.getpid
    st = fstat(fd)
    identity = (st.st_dev, st.st_ino)

    def record(obj):
        try:
            data = (dumps(obj)[:RECORD_MAX - 1] + "\n").encode("utf-8", "replace")
            st = fstat(fd)
            if (st.st_dev, st.st_ino) != identity:
                raise OSError("record channel replaced")
            view = memoryview(data)
            while view:
                view = view[write(fd, view):]
        except BaseException:  # noqa: BLE001 - a report that cannot be written ends the run
            kill(getpid(), signal.SIGKILL)
    return record


def install_policy(scratch, record):
    """The audit-hook policy layer (see the module docstring of dsmath_jax.evals.sandbox)."""
    import _posixsubprocess
    import posix
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
    recorded = [0]

    def deny(category, detail):
        if recorded[0] < DENIALS_RECORDED:
            recorded[0] += 1
            detail = detail if len(detail) <= DETAIL_MAX else detail[:DETAIL_MAX] + "..."
            record({"kind": "denied", "what": f"{category}: {detail}"})
        raise PermissionError(f"sandbox: {category} access is not allowed ({detail})")

    def inside(path, dir_fd=None):
        if isinstance(path, int):
            return True  # an already open descriptor (opened under this policy)
        try:
            p = fsdecode(path)
            if dir_fd not in (None, -1) and not p.startswith("/"):
                p = join(readlink(f"/proc/self/fd/{dir_fd}"), p)
            if abspath(p) in devices:
                return True
            p = realpath(p)
        except Exception:  # noqa: BLE001 - an unresolvable path is outside: fail closed
            return False
        return p == scratch or p.startswith(prefix)

    def on_open(_event, args):
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        writing = (isinstance(flags, int) and flags & WRITE) or (
            isinstance(mode, str) and any(c in mode for c in "wax+"))
        if writing:
            if not inside(path):
                deny("filesystem", f"open {path!r} for writing")
        elif mode is None and not isinstance(path, int) and not inside(path):
            # os.open of a directory outside scratch would give a dir_fd to escape through
            try:
                is_dir = S_ISDIR(stat_path(path).st_mode)
            except FileNotFoundError:
                return
            except Exception:  # noqa: BLE001 - cannot tell: fail closed
                is_dir = True
            if is_dir:
                deny("filesystem", f"open directory {path!r}")

    def paths(path_idx, fd_idx):
        def check(event, args):
            fds = [args[i] if i < len(args) else None for i in fd_idx] or [None]
            for n, i in enumerate(path_idx):
                fd = fds[min(n, len(fds) - 1)]
                if i < len(args) and not inside(args[i], fd):
                    deny("filesystem", f"{event} {args[i]!r}")
        return check

    def category(name):
        def check(event, _args):
            deny(name, event)
        return check

    def on_kill(event, args):
        if args[0] not in (0, getpid()):
            deny("signals", f"{event}({args[0]!r})")

    def on_killpg(event, args):
        if args[0] not in (0, getpgrp()):
            deny("signals", f"{event}({args[0]!r})")

    neutered = {"_posixsubprocess": "process", "_posixshmem": "filesystem", "posix": "process",
                "_ctypes": "native code"}

    def on_import(_event, args):
        if args and args[0] in neutered:
            deny(neutered[args[0]], f"importing {args[0]} afresh")

    def on_sqlite(_event, args):
        if args and args[0] not in (":memory:", "", b":memory:", b"") and not inside(args[0]):
            deny("filesystem", f"sqlite3.connect({args[0]!r})")

    protected = []

    def on_setattr(_event, args):
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
    def refuse_fork_exec(*_args, **_kwargs):
        deny("process", "_posixsubprocess.fork_exec")

    def refuse_shm_open(*_args, **_kwargs):
        deny("filesystem", "_posixshmem.shm_open")

    def guarded(name, function):
        def call(path, *args, **kwargs):
            if not inside(path, kwargs.get("dir_fd")):
                deny("filesystem", f"{name} {path!r}")
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

    protected.extend([hook, refuse_fork_exec, refuse_shm_open, deny, inside, record])
    sys.addaudithook(hook)


def run_program(cfg, libc, records_fd, layers, base_tasks):
    """The program process: isolation, the `ready` record, the code, the `outcome` record. Never returns."""
    os.setpgid(0, 0)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    record = record_writer(records_fd)
    try:
        # imported while everything is readable (before the mounts change and the uid drops)
        import builtins
        import linecache
        import traceback
        scratch = os.path.realpath(os.getcwd())
        isolate(cfg, libc, scratch, layers, base_tasks)
        sys.dont_write_bytecode = True
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        layers["seccomp"] = False
        if cfg.get("seccomp", True):
            installed = install_seccomp(libc) if layers.get("no_new_privs") else "no_new_privs not set"
            layers["seccomp"] = installed is True
            if installed is not True:
                layers["seccomp_skipped"] = installed
        layers["audit_hook"] = bool(cfg["audit_policy"])
        missing = [name for name in cfg["require_layers"] if not layers.get(name)]
        if missing:
            raise OSError(f"required isolation layers unavailable: {', '.join(missing)}")
        if cfg["audit_policy"]:
            install_policy(scratch, record)
    except BaseException as exc:  # noqa: BLE001 - any setup failure is reported, then exit
        record({"kind": "setup", "error_line": f"{type(exc).__name__}: {exc}", "layers": layers})
        os._exit(70)
    record({"kind": "ready", "layers": layers})

    code = cfg.pop("code")
    linecache.cache["<sandbox>"] = (len(code), None, code.splitlines(True), "<sandbox>")
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    sys.argv = ["<sandbox>"]
    outcome = {"kind": "outcome", "status": "ok"}

    def failed(exc):
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None  # drop our own frame
        try:
            text = "".join(traceback.format_exception(type(exc), exc, tb))
        except BaseException:  # noqa: BLE001 - the program's exception may break formatting
            text = f"{type(exc).__name__}: {exc}\n"
        try:
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001, S110 - the program may have broken stderr
            pass
        try:
            os.write(2, text.encode("utf-8", "replace"))
        except OSError:
            pass
        line = text.rstrip("\n").rsplit("\n", 1)[-1]
        if len(line) > RECORD_MAX // 2:
            line = line[:RECORD_MAX // 4] + "..." + line[-RECORD_MAX // 4:]
        return {"kind": "outcome", "status": "exception", "error_line": line, "exc_type": type(exc).__name__}

    try:
        exec(compile(code, "<sandbox>", "exec"), namespace)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            outcome = failed(exc)
    except BaseException as exc:  # noqa: BLE001 - whatever the program raises is its outcome
        if isinstance(exc, MemoryError):
            namespace.clear()
        outcome = failed(exc)
    for stream in (sys.stdout, sys.__stdout__, sys.stderr, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001, S110 - the program may have broken its streams
            pass
    ok = outcome["status"] == "ok"
    try:
        # not through `record`: a code that closed the channel and ended normally is judged by its exit status
        os.write(records_fd, (json.dumps(outcome) + "\n").encode("utf-8", "replace"))
    except BaseException:  # noqa: BLE001, S110 - a closed channel: the exit status decides
        pass
    os._exit(0 if ok else 1)


# ================================================================ entry point

def main():
    cfg = json.loads(read_exact(0, int.from_bytes(read_exact(0, 8), "big")))
    report_fd = cfg["report_fd"]
    libc, _ = load_libc()
    root = os.geteuid() == 0
    target_uid = cfg["drop_uid"] if root and cfg["drop_uid"] is not None else os.getuid()
    base_tasks = user_tasks(target_uid)  # the host's count, before a PID namespace hides it
    layers = {"report_channel": True}
    mount_ns = unshare_process_namespaces(cfg, libc, layers)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # our /proc/<pid>/fd (the report channel) closed to the program
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    if layers["pid_namespace"]:
        init = os.fork()  # PID 1 of the new namespace (an OSError here: no report, the host fails the run)
        if init == 0:
            try:
                layers["reaper"] = True  # PID 1: every process of the run is ours to reap
                become_init(libc, layers, mount_ns)
                reap_and_report(cfg, libc, layers, report_fd, base_tasks, True)
            finally:
                os._exit(70)
        for fd in (report_fd, 0, 1, 2):
            os.close(fd)
        try:
            _, status = os.waitpid(init, 0)
        except ChildProcessError:
            os._exit(71)
        os._exit(0 if os.waitstatus_to_exitcode(status) == 0 else 71)
    layers["reaper"] = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    reap_and_report(cfg, libc, layers, report_fd, base_tasks, False)


if __name__ == "__main__":
    main()
