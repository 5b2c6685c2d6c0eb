"""Red team: attacks on the code sandbox (issue 15), each asserting containment and that the caller survives.

One test per attack class: verdict forgery (a denied call hidden by closing stderr, a denial too long for the
stderr cap, the report key from the program's frames, the record channel closed or replaced, a forged or
missing report), the fork-chain reaper escape, cleanup crashes (1,100 nested directories), kill(-1, 9), other
runs' scratch directories, host command lines in /proc, SysV IPC objects outliving the run, fork and thread
bombs, memory by allocation, a batch with one crashing program, syscalls the seccomp filter denies (memfd,
fallocate past RLIMIT_FSIZE, SysV shared memory, unshare and namespace clones, ptrace, unix sockets by path),
a fork bomb starving a concurrent run (each run has a uid, and so an RLIMIT_NPROC budget, of its own), memory
summed over processes and tmpfs files (the run's memory cgroup), a thread bomb as root (the pids cgroup), disk
fill (the scratch tmpfs), and host files and sockets by path (the minimal filesystem).

Attacks that could hurt the machine if containment failed (signals, process bombs, escaping processes, IPC
objects) run in a throwaway interpreter inside `unshare --pid --fork --mount-proc --ipc` (`_contained`): it is
PID 1 there, so whatever escapes the sandbox dies with it, and a host-side timeout bounds it. The others run
here, with the sandbox's scratch directories under a test directory.
A test skips only where this kernel cannot give the layer it relies on, and says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from dsmath_jax.evals import sandbox, sandbox_cgroup
from dsmath_jax.evals.sandbox import SandboxLimits, isolation_report, run_python
from dsmath_jax.evals.tool_loop import TOOL_STOP, run_tool_loop

# One xdist worker runs every sandbox test: they count the sandbox user's processes.
pytestmark = pytest.mark.xdist_group("sandbox")

REPO = pathlib.Path(__file__).resolve().parents[1]
NO_POLICY = SandboxLimits(cpu_seconds=3, wall_seconds=6, audit_policy=False)
NOBODY = 65534
_HELPER_CWD = str(REPO)  # where the throwaway interpreter imports dsmath_jax from
_RESULT_MARK = "\x1eREDTEAM-RESULT:"


@pytest.fixture(scope="module")
def layers() -> dict:
    return isolation_report()


def _need(layers: dict, *names: str) -> None:
    missing = [n for n in names if not layers.get(n)]
    if missing:
        pytest.skip(f"this kernel/host gives no {', '.join(missing)} (isolation_report: {layers})")


@pytest.fixture
def scratch_parent(tmp_path, monkeypatch) -> pathlib.Path:
    """The sandbox's scratch directories go here (not the machine's /tmp); its mode is watched."""
    parent = tmp_path / "tmp"
    parent.mkdir(mode=0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(parent))
    return parent


def _unshare_available() -> str | None:
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--ipc", "true"], capture_output=True,
                           check=False)
    return None if probe.returncode == 0 else f"unshare --pid --mount-proc --ipc refused: {probe.stderr!r}"


_PRELUDE = '''
import json, os, sys, threading, time
from dsmath_jax.evals.sandbox import SandboxLimits, run_python
NO_POLICY = SandboxLimits(cpu_seconds=3, wall_seconds=6, audit_policy=False)

def summary(r):
    return {"ok": r.ok, "error": r.error, "stdout": r.stdout[-2000:], "stderr": r.stderr[-2000:],
            "returncode": r.returncode, "duration_s": r.duration_s, "isolation": r.isolation}

SANDBOX_UIDS = set(range(UID_FIRST, UID_END)) | {NOBODY}  # the per-run uids and `nobody`

def uid_processes(uids):
    """Live (not zombie) processes of these uids in this (throwaway) PID namespace."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/status" % name) as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) in uids and not fields["State"].strip().startswith("Z"):
            found.append(int(name))
    return found

def settle(uids, seconds=3.0):
    end = time.monotonic() + seconds
    while uid_processes(uids) and time.monotonic() < end:
        time.sleep(0.05)
    return uid_processes(uids)

tmpdir = os.environ["TMPDIR"]
tmpdir_mode = os.stat(tmpdir).st_mode
result = {}
'''

_EPILOGUE = f'''
result["alive_after"] = run_python("print('alive')").stdout
result["tmpdir_mode_kept"] = os.stat(tmpdir).st_mode == tmpdir_mode
result["scratch_left"] = sorted(n for n in os.listdir(tmpdir) if n.startswith("dsmath-sandbox-"))
print({_RESULT_MARK!r} + json.dumps(result))
'''


def _contained(body: str, tmp_path: pathlib.Path, timeout: float = 90) -> dict:
    """Runs `body` (Python using run_python, filling `result`) in a fresh interpreter that is PID 1 of a
    throwaway PID, mount and IPC namespace, with TMPDIR a fresh directory; returns `result` plus the checks of
    `_EPILOGUE` (a later run works, TMPDIR's mode unchanged, no scratch directory left)."""
    why = _unshare_available()
    if why:
        pytest.skip(f"cannot make a throwaway namespace for this attack: {why}")
    tmpdir = tmp_path / "contained-tmp"
    tmpdir.mkdir(mode=0o755, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(tmpdir), "LANG": "C.UTF-8"}
    prelude = (_PRELUDE.replace("UID_FIRST", str(sandbox.UID_BASE))
               .replace("UID_END", str(sandbox.UID_BASE + sandbox.UID_SLOTS)).replace("NOBODY", str(NOBODY)))
    script = prelude + body + _EPILOGUE
    try:
        proc = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--ipc", sys.executable, "-c", script],
                              cwd=_HELPER_CWD, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as exc:  # unshare's child is PID 1 there: killing unshare ends it all
        pytest.fail(f"the contained attack did not finish in {timeout} s: {exc}")
    _, found, tail = proc.stdout.rpartition(_RESULT_MARK)
    assert found, (f"the contained interpreter failed (rc {proc.returncode}):\n"
                   f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(tail.split("\n", 1)[0])


def _assert_caller_survived(result: dict) -> None:
    assert result["alive_after"] == "alive\n"
    assert result["tmpdir_mode_kept"], "TMPDIR's mode changed"
    assert result["scratch_left"] == [], f"scratch directories left behind: {result['scratch_left']}"


# ------------------------------------------------------------------------------------------- verdict forgery

@pytest.mark.usefixtures("scratch_parent")
def test_denial_then_closing_stderr_is_still_forbidden():
    """Before: the denial travelled in the program's stderr; os.close(2) dropped it and the run was ok."""
    code = "import os\ntry:\n    os.system('true')\nexcept PermissionError:\n    pass\nos.close(2)\nprint('done')"
    result = run_python(code)
    assert result.stdout == "done\n" and result.returncode == 0
    assert not result.ok and result.error == "forbidden: process"
    assert result.violations == ["process: os.system"]
    # closing every descriptor the program has (the record channel among them) after the denial changes nothing
    code = ("import os\ntry:\n    open('/etc/dsmath-probe', 'w')\nexcept PermissionError:\n    pass\n"
            "for fd in range(1024):\n    try:\n        os.close(fd)\n    except OSError:\n        pass")
    result = run_python(code)
    assert not result.ok and result.error == "forbidden: filesystem" and result.returncode == 0


@pytest.mark.usefixtures("scratch_parent")
def test_denial_of_a_120kb_path_is_still_forbidden():
    """Before: the report line carried the whole path and was cut by the stderr cap: the run was ok."""
    code = ("import os\npath = '/etc/' + 'x' * 120_000\ntry:\n    open(path, 'w')\nexcept (PermissionError, OSError):\n"
            "    pass\nprint('done')")
    result = run_python(code, limits=SandboxLimits(max_output_chars=100_000))
    assert result.stdout == "done\n"
    assert not result.ok and result.error == "forbidden: filesystem"
    assert len(result.violations) == 1 and len(result.violations[0]) < 400  # the detail is cut, not the record


_FORGER = r'''
import gc, json, os, sys
try:
    os.system("true")
except PermissionError:
    pass
keys, names = [], set()
frame = sys._getframe()
while frame is not None:  # every frame above the program, and the dicts they hold
    for name, value in list(frame.f_locals.items()):
        names.add(name)
        if isinstance(value, dict):
            names.update(map(str, value))
            if isinstance(value.get("key"), str):
                keys.append(value["key"])
    frame = frame.f_back
forged = {"kind": "program", "status": "ok", "error_line": "", "exc_type": None, "layers": {}, "violations": []}
for key in keys:  # the old protocol: a line "\n<key><json>\n" in stderr, the last one of a kind wins
    os.write(2, ("\n" + key + json.dumps(forged) + "\n").encode())
lines = [json.dumps(r) for r in (
    {"kind": "outcome", "status": "ok"}, {"kind": "ready", "layers": {}},
    {"kind": "report", "timed_out": False, "exit": 0, "leftover": 0, "layers": {},
     "program": {"ready": {}, "denied": [], "denied_count": 0}})]
written = []
for fd in range(3, 256):  # every descriptor the program holds: try to speak for the sandbox on each
    try:
        os.fstat(fd)
    except OSError:
        continue
    try:
        for line in lines:
            os.write(fd, (line + "\n").encode())
        written.append(fd)
    except OSError:
        pass
print(json.dumps({"keys": keys, "names": sorted(names), "written": written}), flush=True)
os._exit(0)  # no report of the runner's own after the forged ones
'''


@pytest.mark.usefixtures("scratch_parent")
def test_report_key_from_frames_and_forged_records_do_not_make_ok():
    """Before: the report key sat in the runner's `cfg` (a frame above the program); a forged report in
    stderr with that key won. Now there is no key, the report channel is closed in the program, and records on
    the program's own channel can only fail a run."""
    result = run_python(_FORGER)
    seen = json.loads(result.stdout)
    assert seen["keys"] == []  # nothing key-like anywhere up the stack
    assert "report_fd" in seen["names"]  # (the number is there; the descriptor is closed)
    assert not result.ok and result.error == "forbidden: process" and result.violations == ["process: os.system"]
    # without any denial, forged records on the program's channel still cannot make a run ok
    result = run_python(_FORGER.replace('os.system("true")', 'pass'), limits=SandboxLimits(audit_policy=True))
    assert result.violations == [] and not result.ok
    assert result.error == "forbidden: sandbox channel"


@pytest.mark.usefixtures("scratch_parent")
def test_record_channel_closed_or_replaced_before_a_denial_kills_the_program():
    """The audit hook writes each denial when it happens; if the channel is gone or replaced by another
    file, the hook kills the process instead of losing the record."""
    closed = "import os\nfor fd in range(3, 256):\n    try:\n        os.close(fd)\n    except OSError:\n        pass\n"
    replaced = ("import os\nfd = os.open('decoy', os.O_WRONLY | os.O_CREAT)\nfor n in range(3, 256):\n"
                "    if n != fd:\n        try:\n            os.dup2(fd, n)\n"
                "        except OSError:\n            pass\n")
    for prefix in (closed, replaced):
        result = run_python(prefix + "try:\n    os.system('true')\nexcept PermissionError:\n    pass\nprint('hidden')")
        assert not result.ok and result.error == "killed: SIGKILL" and result.stdout == ""


@pytest.mark.usefixtures("scratch_parent")
def test_missing_or_malformed_report_fails_the_run(tmp_path, monkeypatch):
    """The host decides: a runner that exits cleanly without a report, or with a malformed one, fails."""
    silent = tmp_path / "silent_runner.py"
    silent.write_text("import sys\nsys.stdin.buffer.read()\nprint('all fine')\n")
    monkeypatch.setattr(sandbox, "RUNNER_PATH", str(silent))
    result = run_python("print(1)")
    assert not result.ok and result.error.startswith("sandbox failure: sandbox report missing")
    garbled = tmp_path / "garbled_runner.py"
    garbled.write_text("import json, os\nn = int.from_bytes(os.read(0, 8), 'big')\nbuf = b''\n"
                       "while len(buf) < n:\n    buf += os.read(0, n - len(buf))\n"
                       "os.write(json.loads(buf)['report_fd'], b'{\"kind\": \"report\", \"exit\": 0\\n')\n")
    monkeypatch.setattr(sandbox, "RUNNER_PATH", str(garbled))
    result = run_python("print(1)")
    assert not result.ok and result.error.startswith("sandbox failure: sandbox report missing")


# ------------------------------------------------------------------------------------------- reaper escapes

_CHAIN = r'''
import ctypes, os, time


def wipe_environment():
    """The run's marker is in /proc/<pid>/environ, which shows this memory: zero it (children inherit it)."""
    fields = open("/proc/self/stat").read().rpartition(")")[2].split()
    start, end = int(fields[47]), int(fields[48])  # env_start, env_end
    if start and end > start:
        ctypes.memset(start, 0, end - start)


def link():
    while True:  # fork one child, wait for it, fork again: the chain regrows at its bottom as it is cut at its top
        try:
            pid = os.fork()
        except OSError:  # RLIMIT_NPROC: retry at once, to regrow faster than a sweep cuts
            continue
        if pid == 0:
            try:
                open("beat-%d" % os.getpid(), "w").close()  # keep writing into scratch
            except OSError:
                pass
            continue  # the child is the next link
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


wipe_environment()
if os.fork() == 0:
    os.setsid()
    link()
time.sleep(1.0)
print("chain started")
'''


def test_fork_chain_does_not_outlive_the_run(tmp_path, layers):
    """Before: only the chain's top was the reaper's child, the run marker was gone from /proc/<pid>/environ,
    the sweeps (one link each) gave up, survivors kept writing into scratch, cleanup failed and chmod'ed
    TMPDIR 0700, and the run was ok. Now the reaper is PID 1 of the run's PID namespace: everything dies with
    it, and the run fails."""
    _need(layers, "pid_namespace")
    body = f'''
r = run_python({_CHAIN!r}, limits=NO_POLICY)
result["run"] = summary(r)
result["survivors"] = settle(SANDBOX_UIDS)
'''
    result = _contained(body, tmp_path)
    run = result["run"]
    assert run["stdout"] == "chain started\n", run
    assert not run["ok"] and run["error"].startswith("leftover: "), run["error"]
    assert result["survivors"] == []
    _assert_caller_survived(result)


# ------------------------------------------------------------------------------------------- cleanup crashes

@pytest.mark.parametrize("minimal", [True, False], ids=["scratch_tmpfs", "scratch_on_host"])
def test_deeply_nested_directories_do_not_crash_the_caller(scratch_parent, minimal):
    """Before: shutil.rmtree recursed, raised RecursionError out of run_python and left the scratch dir.
    With the scratch tmpfs the tree dies with the run's mount namespace; on the host's disk (no minimal
    filesystem) the host removes it without recursion."""
    mode = scratch_parent.stat().st_mode
    code = ("import os\nprint(os.getcwd())\nfor _ in range(1100):\n    os.mkdir('d')\n    os.chdir('d')\n"
            "open('bottom.txt', 'w').write('x')")
    result = run_python(code, limits=SandboxLimits(minimal_filesystem=minimal))
    assert result.ok, (result.error, result.stderr[-500:])
    assert not os.path.exists(result.stdout.strip())
    # deeper than PATH_MAX, with directories the program made unreadable (no audit policy to stop it)
    code = ("import os\nfor _ in range(1100):\n    os.mkdir('deep_directory')\n    os.chdir('deep_directory')\n"
            "open('bottom.txt', 'w').write('x')\nfor _ in range(3):\n    os.chdir('..')\n"
            "    os.chmod('deep_directory', 0)\nos.symlink('/etc', 'etc')\nprint('built')")
    result = run_python(code, limits=dataclasses.replace(NO_POLICY, minimal_filesystem=minimal))
    assert result.ok and result.stdout == "built\n", (result.error, result.stderr[-500:])
    assert os.listdir(scratch_parent) == [] and scratch_parent.stat().st_mode == mode
    assert os.path.exists("/etc/passwd")  # the symlink's target was not followed
    assert run_python("print('alive')").stdout == "alive\n"


def test_remove_tree_is_not_recursive_and_stays_inside(tmp_path):
    """The cleanup alone, on a tree a Python-recursive removal cannot handle, next to a file it must keep."""
    keep = tmp_path / "keep.txt"
    keep.write_text("keep")
    root = tmp_path / "scratch"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(1100):  # built through descriptors: deeper than PATH_MAX and the recursion limit
            os.mkdir("n" * 50, dir_fd=fd)
            child = os.open("n" * 50, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.symlink(str(keep), "link", dir_fd=fd)
        os.mkdir("locked", mode=0, dir_fd=fd)
    finally:
        os.close(fd)
    assert sandbox._remove_tree(str(root)) is None
    assert not root.exists() and keep.read_text() == "keep"
    assert sandbox._remove_tree(str(root)) is None  # already gone: nothing to do


# ------------------------------------------------------------------------------------------- signals and other runs

def test_kill_minus_one_reaches_no_host_process_and_no_other_run(tmp_path, layers):
    """Before: every run was `nobody` in the host's PID namespace: kill(-1, 9) killed a host process of that
    uid and the concurrent run. Now the program's kill(-1) stays in its run's PID namespace."""
    _need(layers, "pid_namespace")
    body = f'''
import subprocess
same_uid = subprocess.Popen(["sleep", "60"], user={NOBODY}, group={NOBODY})
ours = subprocess.Popen(["sleep", "60"])
other = {{}}
def concurrent():
    other["r"] = run_python("import time\\ntime.sleep(4)\\nprint('survived')",
                            limits=SandboxLimits(audit_policy=False, wall_seconds=15, cpu_seconds=5))
thread = threading.Thread(target=concurrent)
thread.start()
time.sleep(1.5)
attack = run_python("import os\\ntry:\\n    os.kill(-1, 9)\\n    print('sent')\\n"
                    "except ProcessLookupError:\\n    print('no process to signal')", limits=NO_POLICY)
thread.join()
result["attack"] = summary(attack)
result["concurrent"] = summary(other["r"])
result["same_uid_alive"] = same_uid.poll() is None
result["ours_alive"] = ours.poll() is None
same_uid.kill(); ours.kill()
'''
    result = _contained(body, tmp_path)
    # in its own PID namespace the program finds nobody to signal (PID 1 and itself are exempt)
    assert result["attack"]["stdout"] in ("sent\n", "no process to signal\n"), result["attack"]
    assert result["same_uid_alive"] and result["ours_alive"]
    assert result["concurrent"]["ok"] and result["concurrent"]["stdout"] == "survived\n", result["concurrent"]
    _assert_caller_survived(result)


@pytest.mark.usefixtures("scratch_parent")
def test_other_runs_scratch_is_invisible(layers):
    """Before: every run is `nobody` and sees the whole filesystem: it could list and read a concurrent run's
    scratch directory (by path, or through /proc/<pid>/cwd). Now the scratch directory's parent is an empty
    tmpfs in the run's mount namespace with only its own scratch bound back, and /proc is its own."""
    _need(layers, "scratch_private", "proc_private")
    secret = secrets.token_hex(8)
    holder = (f"import time\nopen('secret.txt', 'w').write({secret!r})\nprint('written', flush=True)\ntime.sleep(4)")
    snoop = r'''
import glob, os, time
found, seen = [], []
end = time.monotonic() + 2.5
while not found and time.monotonic() < end:
    parent = os.path.dirname(os.getcwd())
    seen = sorted(os.listdir(parent))
    for path in glob.glob(os.path.join(parent, "*", "secret.txt")) + glob.glob("/proc/*/cwd/secret.txt"):
        try:
            found.append(open(path).read())
        except OSError:
            pass
    time.sleep(0.1)
print(found, seen)
'''
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(run_python, holder, limits=SandboxLimits(wall_seconds=10))
        time.sleep(0.8)
        snooped = run_python(snoop, limits=SandboxLimits(wall_seconds=10))
        held = held.result()
    assert held.ok and held.stdout == "written\n"
    assert snooped.ok, snooped.error
    assert secret not in snooped.stdout
    assert snooped.stdout.startswith("[] ['dsmath-sandbox-"), snooped.stdout  # only its own scratch dir


def test_host_command_lines_are_invisible(layers):
    """Before: /proc was the host's: every host process's command line (tokens, paths) was readable."""
    _need(layers, "pid_namespace", "proc_private")
    secret = "dsmath-secret-" + secrets.token_hex(8)
    sleeper = subprocess.Popen(["sh", "-c", "sleep 30", secret])
    try:
        code = ("import os\nhits, pids = [], []\nfor name in os.listdir('/proc'):\n    if name.isdigit():\n"
                "        pids.append(int(name))\n        try:\n"
                f"            if {secret!r} in open('/proc/%s/cmdline' % name).read():\n"
                "                hits.append(name)\n"
                "        except OSError:\n            pass\nprint(hits, sorted(pids))")
        result = run_python(code)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert result.ok, result.error
    assert result.stdout == "[] [1, 2]\n"  # the reaper (PID 1) and the program itself: nothing of the host


# ------------------------------------------------------------------------------------------- IPC

_IPC = r'''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
IPC_CREAT = 0o1000
print(libc.shmget(0x5D5A0001, 4096, IPC_CREAT | 0o600), libc.msgget(0x5D5A0002, IPC_CREAT | 0o600),
      libc.semget(0x5D5A0003, 1, IPC_CREAT | 0o600))
'''


def test_sysv_ipc_objects_die_with_the_run(tmp_path, layers):
    """Before: SysV shared memory, message queues and semaphores a program created outlived its run (and the
    run was ok). Now they live in the run's IPC namespace, die with it, and fail the run (shown with the
    seccomp filter off); with the filter on, they cannot be created at all."""
    _need(layers, "ipc_namespace")
    body = f'''
r = run_python({_IPC!r}, limits=SandboxLimits(cpu_seconds=3, wall_seconds=6, audit_policy=False, seccomp=False))
result["run"] = summary(r)
result["filtered"] = summary(run_python({_IPC!r}, limits=NO_POLICY))
keys = {{0x5D5A0001, 0x5D5A0002, 0x5D5A0003}}
left = []
for kind in ("shm", "msg", "sem"):
    with open("/proc/sysvipc/" + kind) as f:
        next(f)
        left += [kind for line in f if line.split() and int(line.split()[0]) in keys]
result["left"] = left
'''
    result = _contained(body, tmp_path)
    run = result["run"]
    assert all(int(i) >= 0 for i in run["stdout"].split()), run  # the program did create all three
    assert not run["ok"] and run["error"] == "leftover: 3 IPC objects"
    assert result["left"] == []
    filtered = result["filtered"]
    if filtered["isolation"].get("seccomp"):
        assert filtered["ok"] and filtered["stdout"] == "-1 -1 -1\n", filtered
    _assert_caller_survived(result)


# ------------------------------------------------------------------------------------------- bombs and memory

_BOMB = r'''
import os, threading, time
def threads():
    n = 0
    while True:
        try:
            threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
            n += 1
        except RuntimeError:
            return n
print("threads", threads(), flush=True)
while True:  # and a fork bomb whose children bomb too
    try:
        if os.fork() == 0:
            os.setsid()
    except OSError:
        time.sleep(0.001)
'''


def test_fork_and_thread_bombs_are_contained(tmp_path, layers):
    _need(layers, "pid_namespace", "unprivileged")
    body = f'''
t = time.monotonic()
r = run_python({_BOMB!r}, limits=SandboxLimits(cpu_seconds=2, wall_seconds=3, audit_policy=False,
                                                max_processes=16))
result["elapsed"] = time.monotonic() - t
result["run"] = summary(r)
result["survivors"] = settle(SANDBOX_UIDS)
'''
    result = _contained(body, tmp_path)
    run = result["run"]
    assert run["error"] == "timeout", run
    threads = int(run["stdout"].split()[1])
    assert threads <= 16  # RLIMIT_NPROC (tasks of `nobody`, the program's own among them)
    assert result["elapsed"] < 3 + 5  # the wall clock, not the bomb, decided
    assert result["survivors"] == []
    _assert_caller_survived(result)


def test_concurrent_runs_get_distinct_uids_and_a_fork_bomb_starves_no_other_run(tmp_path, layers):
    """Before: every run was `nobody`, so RLIMIT_NPROC was one budget for all of them: a fork bomb started
    after a run took that run's process slots, and it failed with "RuntimeError: can't start new thread". Now each
    concurrent run has a uid of its own (its scratch directory owned by it): the bomb exhausts only its own budget,
    and even without a PID namespace it could not signal the other run."""
    _need(layers, "distinct_uid")
    body = f'''
other = {{}}
def concurrent():
    other["r"] = run_python("import os, threading, time\\ntime.sleep(1.5)\\n"  # the bomb is at its limit now
                            "print(os.getuid(), os.stat('.').st_uid)\\n"
                            "ts = [threading.Thread(target=int) for _ in range(8)]\\n"
                            "[t.start() for t in ts]\\n[t.join() for t in ts]\\n"
                            "pid = os.fork()\\nif pid == 0:\\n    os._exit(0)\\nos.waitpid(pid, 0)\\nprint('fine')",
                            limits=SandboxLimits(audit_policy=False, pid_namespace=False, ipc_namespace=False,
                                                 wall_seconds=6))
thread = threading.Thread(target=concurrent)
thread.start()  # first: its RLIMIT_NPROC was set before the bomb's processes existed
time.sleep(0.5)
bomb = run_python({_BOMB!r}, limits=SandboxLimits(cpu_seconds=3, wall_seconds=3, audit_policy=False,
                                                  pid_namespace=False, ipc_namespace=False, max_processes=16))
thread.join()
result["bomb"] = summary(bomb)
result["other"] = summary(other["r"])
result["survivors"] = settle(SANDBOX_UIDS)
'''
    result = _contained(body, tmp_path)
    bomb, other = result["bomb"], result["other"]
    assert bomb["error"] == "timeout", bomb
    assert other["ok"], other
    uid, owner, fine = other["stdout"].split()
    assert fine == "fine" and uid == owner, other["stdout"]
    assert int(uid) != bomb["isolation"]["user"] and other["isolation"]["distinct_uid"]
    assert result["survivors"] == []
    _assert_caller_survived(result)


@pytest.mark.parametrize("code", [
    "x = bytearray(10**10)",
    "chunks = []\nwhile True:\n    chunks.append(b'x' * 10**7)",
    "import mmap\nm = mmap.mmap(-1, 10**10)\nm[-1] = 1",
    "import numpy as np\na = np.ones((40_000, 40_000))",
])
@pytest.mark.usefixtures("scratch_parent")
def test_memory_by_allocation_is_bounded(code):
    rss_before = psutil.Process().memory_info().rss
    result = run_python(code, limits=SandboxLimits(memory_bytes=512 << 20))
    assert not result.ok
    assert result.error == "memory" or "Cannot allocate memory" in result.error, result.error
    assert psutil.Process().memory_info().rss < rss_before + 64 * 2**20  # the host did not pay for it
    assert run_python("print('alive')").stdout == "alive\n"


# ------------------------------------------------------------------------------------------- seccomp

_LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
# attack -> (code, what it prints when the call went through); run without the audit policy (ctypes is
# denied there), so the filter alone is what stops it
_SYSCALL_ATTACKS = {
    "memfd_create": ("import os\nfd = os.memfd_create('x')\nprint('went through')",
                     "went through\n"),
    "fallocate_keep_size": (_LIBC + "fd = os.open('f', os.O_CREAT | os.O_WRONLY)\n"
                            "rc = libc.fallocate(fd, 1, ctypes.c_long(0), ctypes.c_long(64 << 20))\n"
                            "print(rc, ctypes.get_errno(), os.fstat(fd).st_blocks * 512 >= 64 << 20)",
                            "0 0 True\n"),
    "sysv_shmget": (_LIBC + "shm = libc.shmget(0, 1 << 20, 0o1600)\nprint(shm >= 0)\n"
                    "shm >= 0 and libc.shmctl(shm, 0, None)", "True\n"),
    "ptrace_traceme": (_LIBC + "print(libc.ptrace(0, 0, 0, 0), ctypes.get_errno())", "0 0\n"),
    "unix_socket": ("import socket\ns = socket.socket(socket.AF_UNIX)\nprint('went through')", "went through\n"),
}


@pytest.mark.parametrize("attack", sorted(_SYSCALL_ATTACKS))
def test_seccomp_denies_what_generated_code_never_needs(attack, layers, scratch_parent):
    """Before: memfd escaped RLIMIT_AS, fallocate(KEEP_SIZE) ignored RLIMIT_FSIZE (64 MiB on disk under a 1 MiB
    limit), SysV shared memory was free to make, ptrace and unix sockets were open. Now each call fails with
    EPERM (a clean PermissionError, not a kill); without the filter the same code goes through (the contrast
    shows the filter is what stops it)."""
    _need(layers, "seccomp")
    code, went_through = _SYSCALL_ATTACKS[attack]
    limits = SandboxLimits(cpu_seconds=3, wall_seconds=6, audit_policy=False, max_file_bytes=1 << 20)
    result = run_python(code, limits=limits)
    assert result.isolation["seccomp"]
    assert result.stdout != went_through, result
    assert ("PermissionError: [Errno 1] Operation not permitted" in result.error_line
            or result.stdout.split()[:2] in (["False"], ["-1", "1"], ["-1", "1", "False"])), result
    assert "SIGSYS" not in (result.error or "")
    assert os.listdir(scratch_parent) == []
    # on the host's disk (no scratch tmpfs: on tmpfs, fallocate respects RLIMIT_FSIZE)
    contrast = run_python(code, limits=dataclasses.replace(limits, seccomp=False, minimal_filesystem=False))
    assert contrast.stdout == went_through, contrast


def test_seccomp_posix_fallocate_cannot_fill_the_disk(layers, scratch_parent):
    """glibc's posix_fallocate falls back to writing when fallocate is refused with EOPNOTSUPP; with EPERM it
    fails outright, and the writes it could fall back to are bounded by RLIMIT_FSIZE."""
    _need(layers, "seccomp")
    code = ("import os, shutil\nfd = os.open('f', os.O_CREAT | os.O_WRONLY)\ntry:\n"
            "    os.posix_fallocate(fd, 0, 256 << 20)\nexcept OSError as exc:\n"
            "    print(type(exc).__name__, exc.errno)\n"
            "print(os.fstat(fd).st_size <= 1 << 20, os.fstat(fd).st_blocks * 512 <= 1 << 20)")
    free_before = shutil.disk_usage(scratch_parent).free
    result = run_python(code, limits=SandboxLimits(audit_policy=False, max_file_bytes=1 << 20))
    assert result.ok, result
    assert result.stdout == "PermissionError 1\nTrue True\n"
    assert shutil.disk_usage(scratch_parent).free > free_before - (64 << 20)


@pytest.mark.usefixtures("scratch_parent")
def test_seccomp_unshare_and_namespace_clones_are_denied(layers):
    """unshare(2) and clone(2) with a namespace flag fail with EPERM (a user namespace would otherwise give the
    program every capability over the mounts it can then make); clone3 says ENOSYS so libc uses clone."""
    _need(layers, "seccomp")
    code = (_LIBC + "print(libc.unshare(0x10000000), ctypes.get_errno())\n"
            "print(libc.unshare(0x00020000), ctypes.get_errno())\n"
            "print(libc.syscall(435, None, 0), ctypes.get_errno())\n"  # clone3
            "import threading\nt = threading.Thread(target=print, args=('thread',))\nt.start()\nt.join()\n"
            "pid = os.fork()\nif pid == 0:\n    os._exit(7)\nprint(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))")
    result = run_python(code, limits=NO_POLICY)
    assert result.ok, result
    assert result.stdout == "-1 1\n-1 1\n-1 38\nthread\n7\n"


def test_seccomp_unix_socket_by_path_is_unreachable(layers):
    """A host service listening on a unix socket in a directory the program can see: socket() itself fails."""
    _need(layers, "seccomp")
    if not os.path.isdir("/var/tmp"):
        pytest.skip("no /var/tmp (a directory the program can see, outside its scratch directory's parent)")
    where = pathlib.Path(tempfile.mkdtemp(prefix="dsmath-redteam-", dir="/var/tmp"))
    try:
        os.chmod(where, 0o755)
        path = str(where / "service.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        os.chmod(path, 0o777)
        server.listen(4)
        server.settimeout(0.3)
        code = f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({path!r})\nprint('connected')"
        result = run_python(code, limits=NO_POLICY)
        assert not result.ok and "PermissionError" in result.error_line and result.stdout == ""
        with pytest.raises(socket.timeout):
            server.accept()  # nobody ever connected
        server.close()
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.usefixtures("scratch_parent")
def test_seccomp_leaves_the_math_stack_working(layers):
    _need(layers, "seccomp")
    code = ("import fractions, math, numpy as np, sympy\nx = sympy.symbols('x')\n"
            "print(sympy.solve(x**2 - 4, x), round(float(np.linalg.det(np.eye(3) * 2)), 6),\n"
            "      fractions.Fraction(1, 3) + 1, math.comb(10, 3))")
    result = run_python(code, limits=SandboxLimits(require_layers=("seccomp",)))
    assert result.ok, result
    assert result.stdout == "[-2, 2] 8.0 4/3 120\n"


# ------------------------------------------------------------------------------------------- batches

_NESTED = "import os\nfor _ in range(1100):\n    os.mkdir('d')\n    os.chdir('d')\nprint('nested')"
_SEGFAULT = "import faulthandler\nfaulthandler._sigsegv()"


def test_one_crashing_program_never_loses_a_batch(scratch_parent, monkeypatch):
    """A thread-pool batch (the tool loop's) with a segfault, an os._exit, a cleanup bomb and a host-side
    failure (no scratch directory could be made) among ordinary programs: every one gets its own result."""
    programs = ["print(1)", _SEGFAULT, _NESTED, "import os\nos._exit(3)", "print(2)", "FAIL_HOST", "print(3)"]
    real_mkdtemp = tempfile.mkdtemp
    calls = threading.local()

    def flaky_mkdtemp(*args, **kwargs):
        if getattr(calls, "fail", False):
            raise OSError(28, "No space left on device")
        return real_mkdtemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", flaky_mkdtemp)

    def execute(code, *, limits):
        calls.fail = code == "FAIL_HOST"
        try:
            return run_python(code, limits=limits)
        finally:
            calls.fail = False

    script = {f"Q{i}": f"```python\n{p}\n```{TOOL_STOP}" for i, p in enumerate(programs)}

    def generate(texts):
        return [script[t.split("\n", 1)[0]] if "```output" not in t else " done" for t in texts]

    traces = run_tool_loop(generate, [f"Q{i}\n" for i in range(len(programs))], executor=execute,
                           limits=SandboxLimits(audit_policy=False), max_workers=4, max_rounds=2)
    results = [t.results[0] for t in traces]
    assert [r.stdout for r in results[:1] + results[4:5] + results[6:]] == ["1\n", "2\n", "3\n"]
    assert all(r.ok for r in results[:1] + results[4:5] + results[6:])
    assert results[1].error == "killed: SIGSEGV"
    assert results[2].ok and results[2].stdout == "nested\n"
    assert results[3].error == "exit status 3"
    assert results[5].error == "sandbox failure: OSError: [Errno 28] No space left on device"
    assert all(t.completion.endswith(" done") for t in traces)
    assert os.listdir(scratch_parent) == []
    # and straight through an Executor.map, with the policy on
    with ThreadPoolExecutor(4) as pool:
        direct = list(pool.map(run_python, ["print(1)", _SEGFAULT, "import os\nos.system('true')", "print(4)"]))
    assert [r.ok for r in direct] == [True, False, False, True]
    assert direct[1].error == "killed: SIGSEGV" and direct[2].error == "forbidden: process"


# ------------------------------------------------------------------------------------------- cgroup

_FORK_MEMORY = """
import os, time
kids = []
for _ in range(6):
    pid = os.fork()
    if pid == 0:
        block = bytearray(100 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(1)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
print('all children done')
"""


def test_memory_across_processes_is_one_budget(layers, scratch_parent):
    """Before: RLIMIT_AS is per process, so six children of 100 MiB each used 600 MiB under a 256 MiB limit.
    The run's memory cgroup counts them together: the kernel's OOM killer stops the run, and the host reads
    the kill from the group's accounting (not from anything the program says) and reports "memory"."""
    _need(layers, "cgroup_memory")
    limits = SandboxLimits(cpu_seconds=10, wall_seconds=20, audit_policy=False, memory_bytes=512 << 20,
                           total_memory_bytes=256 << 20)
    result = run_python(_FORK_MEMORY, limits=limits)
    assert not result.ok and result.error == "memory", result
    assert result.accounting["oom_kills"] >= 1
    assert result.accounting["memory_peak_bytes"] <= 256 << 20
    assert os.listdir(scratch_parent) == []
    contrast = run_python(_FORK_MEMORY, limits=dataclasses.replace(limits, cgroup=False))
    assert contrast.ok and contrast.stdout == "all children done\n", contrast
    assert run_python("print('alive')").stdout == "alive\n"


@pytest.mark.usefixtures("scratch_parent")
def test_files_in_the_scratch_tmpfs_are_charged_to_the_run(layers):
    """tmpfs pages are memory: a 512 MiB scratch directory cannot hold more than the run's 128 MiB budget, so
    writing files (like shared memory would) cannot take the host's memory either."""
    _need(layers, "cgroup_memory", "scratch_tmpfs")
    code = "for i in range(40):\n    open('f%d' % i, 'wb').write(b'x' * (8 << 20))\nprint('wrote 320 MiB')"
    limits = SandboxLimits(cpu_seconds=10, wall_seconds=20, audit_policy=False, total_memory_bytes=128 << 20,
                           scratch_bytes=512 << 20)
    result = run_python(code, limits=limits)
    assert not result.ok and result.error == "memory" and result.stdout == "", result
    assert result.accounting["memory_peak_bytes"] <= 128 << 20


@pytest.mark.usefixtures("scratch_parent")
def test_a_thread_bomb_as_root_meets_the_pids_limit(layers):
    """Root ignores RLIMIT_NPROC; the pids cgroup does not: with the privilege drop off (the program is root),
    `max_processes` still caps the run's tasks, and the group counts the refused forks."""
    if os.geteuid() != 0:
        pytest.skip("needs root (as another user RLIMIT_NPROC already caps the run)")
    _need(layers, "cgroup_pids")
    code = ("import threading, time\nn = 0\ntry:\n    for _ in range(200):\n"
            "        threading.Thread(target=time.sleep, args=(1,)).start()\n        n += 1\n"
            "except RuntimeError:\n    pass\nprint(n)")
    limits = SandboxLimits(drop_privileges=False, max_processes=8, audit_policy=False)
    result = run_python(code, limits=limits)
    assert result.ok and result.stdout == "8\n", result
    assert result.accounting["pids_refused"] >= 1
    contrast = run_python(code, limits=dataclasses.replace(limits, cgroup=False))
    assert contrast.ok and int(contrast.stdout) > 8, contrast


@pytest.mark.usefixtures("scratch_parent")
def test_run_cgroups_are_removed_and_stragglers_killed(layers, monkeypatch):
    """After every run its groups are gone; a task still in a group when the run ends is killed, counted, and
    fails the run (the host's check, independent of the PID namespace)."""
    _need(layers, "cgroup_memory", "cgroup_pids")
    made = []
    real_create = sandbox.create_run_cgroup

    def recording(*args):
        made.append(real_create(*args))
        return made[-1]

    monkeypatch.setattr(sandbox, "create_run_cgroup", recording)
    assert run_python("print(1)").ok
    assert run_python("import os\nif os.fork() == 0:\n    os._exit(0)\nos.wait()", limits=NO_POLICY).ok
    assert made and all(not os.path.exists(d) for group in made for d in group.dirs.values())

    group = sandbox_cgroup.create_run_cgroup(64 << 20, 4)
    straggler = subprocess.Popen(["sleep", "60"])
    try:
        for path in group.procs_files():
            pathlib.Path(path).write_text(str(straggler.pid))
        accounting, left = group.finish()
        assert left == 1 and straggler.wait(timeout=5) == -9
        assert all(not os.path.exists(d) for d in group.dirs.values())
        assert accounting["oom_kills"] == 0
    finally:
        straggler.kill()
        straggler.wait()


def test_cgroup_discovery_reads_mountinfo_and_proc_cgroup():
    """Finding our groups: v1 per-controller mounts, a v2 mount whose root is a sub-group (a cgroup namespace
    or a bind mount), and a path outside the mount."""
    mountinfo = ("35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
                 "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
                 "41 31 0:38 /user.slice /sys/fs/cgroup/my\\040group rw - cgroup2 cgroup2 rw,nsdelegate\n"
                 "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n")
    mounts = sandbox_cgroup.parse_mountinfo(mountinfo)
    assert mounts == [("/", "/sys/fs/cgroup/memory", "cgroup", {"rw", "memory"}),
                      ("/", "/sys/fs/cgroup/pids", "cgroup", {"rw", "pids"}),
                      ("/user.slice", "/sys/fs/cgroup/my group", "cgroup2", {"rw", "nsdelegate"})]
    paths = sandbox_cgroup.parse_proc_cgroup("8:pids:/\n4:memory:/jobs/42\n1:name=systemd:/\n0::/user.slice/me\n")
    assert paths == {"pids": "/", "memory": "/jobs/42", "name=systemd": "/", "": "/user.slice/me"}
    directory = sandbox_cgroup._directory
    assert directory("/", "/sys/fs/cgroup/memory", "/jobs/42") == "/sys/fs/cgroup/memory/jobs/42"
    assert directory("/user.slice", "/sys/fs/cgroup/my group", "/user.slice/me") == "/sys/fs/cgroup/my group/me"
    assert directory("/user.slice", "/mnt", "/system.slice/x") is None


# ------------------------------------------------------------------------------------------- filesystem view

def test_host_files_and_sockets_do_not_exist_in_the_program_view(layers, shared_data):
    """Before: the benchmark files (answers included), other users' world-readable files and unix sockets by
    path were all readable or reachable. The program's root now holds only the system directories, the
    Python installation and its scratch tmpfs: none of those paths exists there."""
    _need(layers, "minimal_filesystem")
    benchmark = next(p for p in sorted(shared_data.rglob("*")) if p.is_file())
    where = pathlib.Path(tempfile.mkdtemp(prefix="dsmath-redteam-", dir="/var/tmp" if os.path.isdir("/var/tmp")
                                          else None))
    try:
        os.chmod(where, 0o755)
        secret = where / "answers.txt"
        secret.write_text("42")
        os.chmod(secret, 0o644)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(where / "service.sock"))
        server.listen(1)
        paths = [str(benchmark), str(secret), str(where / "service.sock"), str(REPO / "README.md"),
                 "/run", "/var", "/home", "/sys/fs/cgroup", "/root/.bash_history"]
        code = (f"import os, sys\nfor p in {paths!r}:\n    print(os.path.exists(p))\n"
                "print(' '.join(sorted(os.listdir('/'))))\nprint(os.getcwd() == os.environ['HOME'])\n"
                "import numpy, sympy\nprint('math stack', numpy.__name__, sympy.__name__)")
        result = run_python(code, limits=SandboxLimits(audit_policy=False))
        assert result.ok, result
        lines = result.stdout.splitlines()
        assert lines[:len(paths)] == ["False"] * len(paths), list(zip(paths, lines))
        top = set(lines[len(paths)].split())
        allowed = {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr"}
        allowed |= {pathlib.Path(p).resolve().parts[1] for p in (sys.prefix, sys.base_prefix) + tuple(sys.path)
                    if p and pathlib.Path(p).exists() and len(pathlib.Path(p).resolve().parts) > 1}
        allowed |= {pathlib.Path(tempfile.gettempdir()).resolve().parts[1]}
        assert top <= allowed, top - allowed
        assert lines[-2:] == ["True", "math stack numpy sympy"]
        # the layer is what hides them: in the host's tree (no minimal filesystem) the benchmark is readable
        contrast = run_python(f"print(open({str(benchmark)!r}).read(10) != '')",
                              limits=SandboxLimits(audit_policy=False, minimal_filesystem=False))
        assert contrast.ok and contrast.stdout == "True\n", contrast
        server.close()
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_disk_fill_stops_at_the_scratch_size(layers, scratch_parent):
    """Before: files in the scratch directory were bounded only by RLIMIT_FSIZE each, so many files filled the
    host's disk. The scratch tmpfs holds `scratch_bytes`: the next write fails with ENOSPC, nothing reaches
    the host's disk, and the whole tree is gone with the run."""
    _need(layers, "scratch_tmpfs")
    code = ("import errno\ntotal = 0\ntry:\n    for i in range(1000):\n        with open('f%d' % i, 'wb') as f:\n"
            "            f.write(b'x' * (4 << 20))\n        total += 4 << 20\nexcept OSError as exc:\n"
            "    print(errno.errorcode[exc.errno], total <= 32 << 20)")
    free_before = shutil.disk_usage(scratch_parent).free
    result = run_python(code, limits=SandboxLimits(audit_policy=False, scratch_bytes=32 << 20))
    assert result.ok and result.stdout == "ENOSPC True\n", result
    assert shutil.disk_usage(scratch_parent).free > free_before - (16 << 20)
    assert os.listdir(scratch_parent) == []


@pytest.mark.usefixtures("scratch_parent")
def test_required_layers_include_the_cgroup_and_the_filesystem_view(layers):
    """A deployment can demand the new layers; a run without them fails before the code runs."""
    _need(layers, "cgroup_memory", "cgroup_pids", "minimal_filesystem", "scratch_tmpfs")
    wanted = ("cgroup_memory", "cgroup_pids", "minimal_filesystem", "scratch_tmpfs")
    assert run_python("print(1)", limits=SandboxLimits(require_layers=wanted)).ok
    refused = run_python("print(1)", limits=SandboxLimits(require_layers=wanted, cgroup=False,
                                                          minimal_filesystem=False))
    assert not refused.ok and refused.stdout == ""
    assert "required isolation layers unavailable: cgroup_memory, cgroup_pids, minimal_filesystem" in refused.error
