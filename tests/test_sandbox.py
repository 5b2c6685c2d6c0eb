"""The code sandbox and the tool-integrated / program-of-thought protocol (PAPER.md §7), with real processes.

Every attack runs for real in the sandbox (infinite loop, memory bombs, fork bomb, writes outside the
scratch directory, a loopback connection, shell commands) and the test then checks the host: files absent,
no connection seen, no surviving or zombie process, this process's memory unchanged. Where a layer can be
switched off, the attack is repeated with the audit policy off to show the kernel-level layers hold alone.
Programs are checked against an independent reference (the same code exec'd in-process, or hand values).
"""

from __future__ import annotations

import os
import re
import socket
import time

import psutil
import pytest

from dsmath_jax.evals import sandbox
from dsmath_jax.evals.sandbox import ExecutionResult, SandboxLimits, isolation_report, run_python
from dsmath_jax.evals.tool_loop import (
    TOOL_STOP,
    build_program,
    extract_code_blocks,
    format_output_block,
    last_program,
    pot_program,
    run_program_of_thought,
    run_tool_loop,
    truncate_output,
)

# One xdist worker runs every sandbox test: they count the sandbox user's processes.
pytestmark = pytest.mark.xdist_group("sandbox")

FAST = SandboxLimits(cpu_seconds=1, wall_seconds=4)
NO_POLICY = SandboxLimits(cpu_seconds=2, wall_seconds=4, audit_policy=False)
SANDBOX_UID = 65534  # `nobody`: when not root, or no per-run uid is free


class _SandboxUids:
    """The uids sandboxed programs run as: `nobody`, or one of the per-run uids."""

    def __contains__(self, uid: int) -> bool:
        return uid == SANDBOX_UID or sandbox.UID_BASE <= uid < sandbox.UID_BASE + sandbox.UID_SLOTS


SANDBOX_UIDS = _SandboxUids()


@pytest.fixture(scope="module")
def layers() -> dict:
    report = isolation_report()
    print("sandbox isolation here:", report)
    return report


# ------------------------------------------------------------------------------------------- host checks

def _processes(uid) -> list[psutil.Process]:
    """Processes whose real uid is `uid` (an int, or a container of uids)."""
    uids = uid if not isinstance(uid, int) else (uid,)
    out = []
    for p in psutil.process_iter(["uids", "status"]):
        try:
            if p.info["uids"] is not None and p.info["uids"].real in uids:
                out.append(p)
        except psutil.Error:
            continue
    return out


def _settles(predicate, timeout: float = 5.0) -> bool:
    """True once `predicate()` holds (other test workers may briefly run sandboxes of their own)."""
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.05)


def _zombies() -> int:
    return sum(p.info["status"] == psutil.STATUS_ZOMBIE for p in _processes(SANDBOX_UIDS) + _processes(os.getuid()))


def _baseline() -> tuple[set, int, int, int]:
    """What exists before a run: this process's children (other tests in the same worker may have left
    long-lived helpers, e.g. a grader's forkserver), and the process and zombie counts."""
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    return children, len(_processes(SANDBOX_UIDS)), len(_processes(os.getuid())), _zombies()


def _assert_no_leftovers(baseline_children: set, baseline_sandbox: int, baseline_own: int,
                         baseline_zombies: int) -> None:
    me = psutil.Process()
    assert [p for p in me.children(recursive=True) if p.pid not in baseline_children] == []
    assert _settles(lambda: len(_processes(SANDBOX_UIDS)) <= baseline_sandbox), [
        (p.pid, p.info["status"]) for p in _processes(SANDBOX_UIDS)]
    # Processes of our own uid are compared only when no other test worker runs beside this one: under
    # pytest-xdist the other worker starts and ends processes of the same uid at any time.
    if "PYTEST_XDIST_WORKER" not in os.environ:
        assert _settles(lambda: len(_processes(os.getuid())) <= baseline_own)
        # nothing left unreaped (e.g. to a PID 1 that does not reap); other jobs' zombies come and go
        assert _settles(lambda: _zombies() <= baseline_zombies), [
            (p.pid, p.name()) for p in _processes(SANDBOX_UIDS) + _processes(os.getuid())
            if p.info["status"] == psutil.STATUS_ZOMBIE]
    else:
        assert _settles(lambda: sum(p.info["status"] == psutil.STATUS_ZOMBIE
                                    for p in _processes(SANDBOX_UIDS)) == 0)


# ------------------------------------------------------------------------------------------- ordinary code

def test_ordinary_code_and_isolation_layers(layers):
    result = run_python("print(sum(i * i for i in range(10)))")
    assert result.ok and result.error is None and result.returncode == 0
    assert result.stdout == "285\n" and result.stderr == ""
    # layers that need nothing special are always there; the others are reported, and used here when possible
    assert layers["rlimits"] and layers["audit_hook"] and layers["reaper"] and layers["report_channel"]
    assert layers["ok"]
    if os.geteuid() == 0 and "drop_skipped" not in layers:
        assert layers["unprivileged"] and layers["user"] in SANDBOX_UIDS
        assert layers["distinct_uid"] == (layers["user"] != SANDBOX_UID)
        assert not layers["read_capability"] or not layers["readonly_filesystem"]


@pytest.mark.usefixtures("layers")
def test_without_process_namespaces_the_fallback_still_contains():
    """With the PID/IPC/UTS namespaces switched off (as on a kernel that refuses them), the reaper is a child
    subreaper with kill sweeps: runs still work, the layers say what is missing, leftovers still fail a run."""
    limits = SandboxLimits(cpu_seconds=2, wall_seconds=4, audit_policy=False, pid_namespace=False,
                           ipc_namespace=False)
    before = _baseline()
    result = run_python("print('fine')", limits=limits)
    assert result.ok and result.stdout == "fine\n"
    assert result.isolation["reaper"] and result.isolation["report_channel"]
    assert not any(result.isolation[k] for k in ("pid_namespace", "ipc_namespace", "uts_namespace", "proc_private"))
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent done')"
    result = run_python(code, limits=limits)
    assert result.stdout == "parent done\n" and result.error == "leftover: 1 process"
    _assert_no_leftovers(*before)


def test_required_layers(layers):
    assert run_python("print(1)", limits=SandboxLimits(require_layers=("rlimits", "report_channel"))).ok
    result = run_python("print(1)", limits=SandboxLimits(require_layers=["no_such_layer"]))
    assert not result.ok and result.stdout == ""  # the code never ran
    assert result.error == "sandbox failure: OSError: required isolation layers unavailable: no_such_layer"
    if layers.get("pid_namespace"):
        result = run_python("print(1)", limits=SandboxLimits(pid_namespace=False, require_layers=("pid_namespace",)))
        assert result.error.endswith("required isolation layers unavailable: pid_namespace")
    with pytest.raises(ValueError, match="require_layers"):
        SandboxLimits(require_layers="pid_namespace")


def test_runner_is_a_stdlib_only_module():
    """The runner runs in the sandbox's interpreter: nothing of ours, nothing outside the standard library,
    and importing it starts nothing."""
    import ast
    import sys

    from dsmath_jax.evals import sandbox, sandbox_runner
    with open(sandbox.RUNNER_PATH) as f:
        tree = ast.parse(f.read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported and imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    assert sandbox_runner.__file__ == sandbox.RUNNER_PATH and callable(sandbox_runner.main)


def test_program_records_can_only_fail_a_run():
    """The reaper's reading of the program's record channel (which the code can write to)."""
    from dsmath_jax.evals.sandbox_runner import parse_records
    ready = b'{"kind": "ready", "layers": {"rlimits": true}}\n'
    clean = parse_records(ready + b'{"kind": "outcome", "status": "ok"}\n', True, False)
    assert clean["ready"] == {"rlimits": True} and clean["outcome"] == {"status": "ok"}
    assert clean["denied_count"] == clean["malformed"] == clean["failed_outcomes"] == 0
    forged = parse_records(ready + b'{"kind": "denied", "what": "process: os.system"}\n'
                           + b'{"kind": "ready", "layers": {}}\n{"kind": "report"}\nnot json\n'
                           + b'{"kind": "outcome", "status": "exception", "error_line": "E", "exc_type": "E"}\n'
                           + b'{"kind": "outcome", "status": "ok"}\n{"kind": "outc', True, False)
    assert forged["ready"] == {"rlimits": True}  # the first one, sent before the code ran
    assert forged["denied"] == ["process: os.system"] and forged["denied_count"] == 1
    assert forged["malformed"] == 4  # a second ready, a foreign kind, garbage, a record cut short
    assert forged["failed_outcomes"] == 1 and forged["outcome"]["error_line"] == "E"  # a later "ok" changes nothing
    assert parse_records(b"", False, True)["malformed"] == 1  # more than the reaper reads


def test_math_libraries_inside():
    code = ("import sympy, numpy as np, math\nfrom fractions import Fraction\nx = sympy.symbols('x')\n"
            "print(sympy.solve(x**2 - 5*x + 6, x))\nprint(Fraction(1, 3) + Fraction(1, 6))\n"
            "print(round(float(np.linalg.det(np.array([[2.0, 1.0], [1.0, 3.0]]))), 6), math.comb(10, 3))")
    result = run_python(code)
    assert result.ok, result.stderr
    assert result.stdout.split("\n")[:3] == ["[2, 3]", "1/2", "5.0 120"]


def test_exception_reports_last_traceback_line():
    result = run_python("x = 1\ny = x / 0")
    assert not result.ok
    assert result.error == "exception: ZeroDivisionError: division by zero"
    assert result.error_line == "ZeroDivisionError: division by zero"
    assert 'File "<sandbox>", line 2' in result.stderr and "y = x / 0" in result.stderr
    assert format_output_block(result) == "```output\nZeroDivisionError: division by zero\n```\n"
    # the harness's default (non-concise) text: the traceback below the top level, file names dropped
    nested = run_python("def f(x):\n    return 1 / x\nprint(f(0))")
    assert format_output_block(nested, concise=False) == (
        "```output\nRuntime errors: in f\n    return 1 / x\n           ~~^~~\n"
        "ZeroDivisionError: division by zero\n```\n")


def test_stdin_is_given_explicitly():
    result = run_python("print(input()[::-1]); print(input())", stdin="abc\n12\n")
    assert result.ok and result.stdout == "cba\n12\n"


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("DSMATH_TEST_SECRET", "hunter2")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("PYTHONPATH", "/nonexistent")
    result = run_python("import os, json\nprint(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd()}))")
    assert result.ok, result.stderr
    assert "hunter2" not in result.stdout and "proxy.invalid" not in result.stdout
    import json
    seen = json.loads(result.stdout)
    assert not {"DSMATH_TEST_SECRET", "HTTPS_PROXY", "PYTHONPATH"} & set(seen["env"])
    assert seen["env"]["HOME"] == seen["env"]["TMPDIR"] == seen["cwd"]
    assert not os.path.exists(seen["cwd"])  # the scratch directory is gone


# ------------------------------------------------------------------------------------------- time and memory

def test_infinite_loop_hits_cpu_limit():
    result = run_python("while True:\n    pass", limits=FAST)
    assert result.error == "timeout" and result.error_line == "Timeout Error" and not result.ok
    # CPU time used (resource accounting, not wall-clock speed): the RLIMIT_CPU kill lands within a
    # second of the limit.
    cpu_limit = FAST.cpu_seconds
    assert result.cpu_s is not None and 0.8 <= result.cpu_s <= cpu_limit + 1.5
    assert format_output_block(result) == "```output\nTimeout Error\n```\n"


def test_sleeping_program_hits_wall_limit():
    limits = SandboxLimits(cpu_seconds=5, wall_seconds=1.5)
    result = run_python("import time\nprint('started', flush=True)\ntime.sleep(120)", limits=limits)
    # The program would sleep for 120 s and exit normally; "timeout" means the wall-clock limit killed it.
    assert result.error == "timeout" and result.cpu_s is not None and result.cpu_s < 1
    assert result.stdout == "started\n"


@pytest.mark.parametrize("code", [
    "x = bytearray(10**10)",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))",
    "import numpy as np\na = np.ones((50_000, 50_000))",
])
def test_memory_bombs(code):
    rss_before = psutil.Process().memory_info().rss
    result = run_python(code)
    assert not result.ok and result.error == "memory", (result.error, result.stderr[-300:])
    assert "MemoryError" in result.error_line
    assert psutil.Process().memory_info().rss < rss_before + 64 * 2**20  # the host did not pay for it
    assert run_python("print('alive')").stdout == "alive\n"


def test_file_size_limit():
    result = run_python("open('big.bin', 'wb').write(b'x' * (20 << 20))",
                        limits=SandboxLimits(max_file_bytes=1 << 20))
    assert result.error == "exception: OSError: [Errno 27] File too large"


# ------------------------------------------------------------------------------------------- processes

def test_fork_bomb_is_stopped_and_leaves_nothing():
    before = _baseline()
    result = run_python("import os\nwhile True:\n    os.fork()", limits=FAST)
    assert not result.ok and result.error == "forbidden: process"
    assert result.violations == ["process: os.fork"]
    _assert_no_leftovers(*before)


def test_fork_bomb_without_audit_policy_is_contained_by_rlimits(layers):
    """RLIMIT_NPROC (as `nobody`), the wall clock and the reaper alone."""
    if not layers.get("unprivileged"):
        pytest.skip("RLIMIT_NPROC does not bind root (drop_privileges off?)")
    before = _baseline()
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = run_python(code, limits=NO_POLICY)
    assert result.error == "timeout"  # the loop never ends by itself: the wall-clock limit stopped it
    _assert_no_leftovers(*before)
    # and a double-forked, setsid() process that outlives its parent is killed, and fails the run
    # (the parent waits for the middle process: otherwise it may still be exiting, and count as a leftover)
    code = ("import os, time\npid = os.fork()\nif pid == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        time.sleep(60)\n    os._exit(0)\nos.waitpid(pid, 0)\nprint('parent done')")
    result = run_python(code, limits=NO_POLICY)
    assert not result.ok and result.stdout == "parent done\n" and result.returncode == 0
    assert result.error == "leftover: 1 process"
    _assert_no_leftovers(*before)


@pytest.mark.parametrize("call", [
    "import os\nos.system('touch {marker}')",
    "import subprocess\nsubprocess.run(['touch', '{marker}'])",
    "import os\nos.popen('touch {marker}').read()",
    "import os\nos.execv('/usr/bin/touch', ['touch', '{marker}'])",
    "import os\nos.posix_spawn('/usr/bin/touch', ['touch', '{marker}'], {{}})",
    "import _posixsubprocess, os\nr, w = os.pipe()\n_posixsubprocess.fork_exec([b'/usr/bin/touch', b'{marker}'], "
    "[b'/usr/bin/touch'], True, (w,), None, None, -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, "
    "-1, -1, None, False)",
    "import ctypes\nctypes.CDLL(None).system(b'touch {marker}')",
])
def test_shell_and_process_calls_are_refused(tmp_path, call):
    marker = tmp_path / "marker"
    result = run_python(call.format(marker=marker))
    assert not result.ok and result.error in ("forbidden: process", "forbidden: native code"), result.error
    assert "PermissionError: sandbox:" in result.error_line
    assert not marker.exists()


def test_caught_violation_is_still_reported():
    result = run_python("import os\ntry:\n    os.system('true')\nexcept PermissionError:\n    pass\nprint(42)")
    assert result.returncode == 0 and result.stdout == "42\n"
    assert not result.ok and result.error == "forbidden: process"
    assert format_output_block(result) == "```output\n42\n```\n"


# ------------------------------------------------------------------------------------------- filesystem

def test_writes_inside_scratch_work():
    code = ("import os, shutil, tempfile\nos.makedirs('a/b')\nopen('a/b/x.txt', 'w').write('hi')\n"
            "shutil.copy('a/b/x.txt', 'y.txt')\nos.rename('y.txt', 'z.txt')\nshutil.rmtree('a')\n"
            "with tempfile.NamedTemporaryFile(dir='.') as f:\n    f.write(b'1')\n"
            "print(sorted(os.listdir('.')), open('z.txt').read())")
    result = run_python(code)
    assert result.ok, result.stderr
    assert result.stdout == "['z.txt'] hi\n"


@pytest.mark.parametrize("policy", [True, False], ids=["policy", "kernel-only"])
@pytest.mark.parametrize("how", ["open({path!r}, 'w').write('x')",
                                 "import os\nos.close(os.open({path!r}, os.O_WRONLY | os.O_CREAT))",
                                 "import pathlib\npathlib.Path({path!r}).write_text('x')",
                                 "import shutil\nopen('src.txt', 'w').write('x')\nshutil.copy('src.txt', {path!r})"])
def test_writes_outside_scratch_are_refused(tmp_path, layers, policy, how):
    if not policy and not (layers.get("readonly_filesystem") or layers.get("unprivileged")):
        pytest.skip("without the policy only a read-only mount namespace or an unprivileged user stop this")
    limits = SandboxLimits(audit_policy=policy)
    for path in (tmp_path / "outside.txt", "/etc/dsmath_sandbox_probe.txt"):
        result = run_python(how.format(path=str(path)), limits=limits)
        assert not result.ok
        if policy:
            assert result.error == "forbidden: filesystem"
        else:
            # read-only mounts, `nobody`'s permissions, or (tmp_path, under the scratch directory's parent) hidden
            assert re.search(r"Read-only file system|Permission denied|No such file or directory",
                             result.error), result.error
        assert not os.path.exists(path)


def test_other_filesystem_escapes_are_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for code in (f"import os\nos.remove({str(victim)!r})",
                 f"import os\nos.rename({str(victim)!r}, 'stolen.txt')",
                 f"import os\nos.chmod({str(victim)!r}, 0o777)",
                 f"import os\nos.symlink({str(victim)!r}, 'link')",
                 # a directory outside scratch that exists inside the sandbox (tmp_path is hidden there)
                 "import os\nfd = os.open('/etc', os.O_RDONLY)\nos.remove('dsmath-sandbox-probe', dir_fd=fd)",
                 f"import os\nos.mkfifo({str(tmp_path / 'fifo')!r})"):
        result = run_python(code)
        assert result.error == "forbidden: filesystem", (code, result.error)
    assert victim.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]


# ------------------------------------------------------------------------------------------- network

@pytest.mark.parametrize("policy", [True, False], ids=["policy", "namespace-only"])
def test_no_network_even_to_loopback(layers, policy):
    if not policy and not layers.get("network_namespace"):
        pytest.skip("no network namespace here: only the audit policy blocks sockets")
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        for code in (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
                     f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))",
                     f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2)"):
            # the namespace alone (without the seccomp filter, socket() itself fails: see the red-team tests)
            result = run_python(code, limits=SandboxLimits(audit_policy=policy, seccomp=policy))
            assert not result.ok
            if policy:
                assert result.error == "forbidden: network", result.error
            else:
                assert "unreachable" in result.error.lower() or "Errno 101" in result.error, result.error
        with pytest.raises(socket.timeout):
            server.accept()  # nobody ever connected
    finally:
        server.close()


# ------------------------------------------------------------------------------------------- output

def test_huge_output_is_bounded_and_marked():
    rss_before = psutil.Process().memory_info().rss
    result = run_python("import sys\nsys.stdout.write('a' + 'x' * 10**8 + 'z\\n')",
                        limits=SandboxLimits(max_output_chars=10_000))
    assert result.ok and result.truncated
    assert len(result.stdout) < 10_100
    assert result.stdout.startswith("axxx") and result.stdout.endswith("xxz\n")
    assert re.search(r"\n\.\.\.\[99990\d\d\d bytes truncated\]\.\.\.\n", result.stdout)
    assert psutil.Process().memory_info().rss < rss_before + 64 * 2**20
    # the protocol's own truncation for the prompt: first 50 + "..." + last 50 characters
    assert format_output_block(result) == "```output\na" + "x" * 49 + "..." + "x" * 49 + "z\n```\n"


# ------------------------------------------------------------------------------------------- protocol pieces

def test_protocol_helpers():
    text = ("Let's compute.\n```python\nx = 2\nprint(x)\n```\n```output\n2\n```\nMore.\n```python\n"
            "for i in range(2):\n    print(i)\ny = x + 1\nprint(y)\n```")
    blocks = extract_code_blocks(text)
    assert blocks == ["x = 2\nprint(x)", "for i in range(2):\n    print(i)\ny = x + 1\nprint(y)"]
    assert last_program(text) == blocks[1] and last_program("no code") == ""
    assert build_program(blocks) == "x = 2\n" + blocks[1]
    assert truncate_output("y" * 100) == "y" * 100
    assert truncate_output("0123456789" * 11) == ("0123456789" * 5) + "..." + ("0123456789" * 5)
    silent = run_python("x = 1")
    assert silent.ok and format_output_block(silent) == "```output\n\n```\n"


def test_tool_cells_share_state():
    cells = ["import math\nr = 3\nprint('area', math.pi * r * r)", "r2 = r * 2\nprint(r2)"]
    result = run_python(build_program(cells))
    assert result.ok and result.stdout == "6\n"  # the first cell's print is not repeated


def _fake_model(script: list[str]):
    calls = []

    def generate(texts: list[str]) -> list[str]:
        calls.append(list(texts))
        return [script[min(len(calls) - 1, len(script) - 1)] for _ in texts]

    return generate, calls


def test_tool_loop_runs_code_and_continues():
    generate, calls = _fake_model([
        "We need 17 * 23.\n```python\nfrom sympy import Integer\nprint(Integer(17) * 23)\n```\n" + TOOL_STOP,
        " The product is $391$, so the answer is $\\boxed{391}$.",
    ])
    prompts = ["User: What is 17*23?\n\nAssistant:", "User: Compute 17 times 23.\n\nAssistant:"]
    traces = run_tool_loop(generate, prompts)
    assert len(calls) == 2 and len(calls[1]) == 2
    expected = ("We need 17 * 23.\n```python\nfrom sympy import Integer\nprint(Integer(17) * 23)\n```\n"
                "```output\n391\n```\n The product is $391$, so the answer is $\\boxed{391}$.")
    for _prompt, trace in zip(prompts, traces):
        assert trace.completion == expected
        assert trace.rounds == 1 and trace.generations == 2
        assert trace.programs == ["from sympy import Integer\nprint(Integer(17) * 23)"]
        assert trace.results[0].ok
    assert calls[1][0] == prompts[0] + expected[:expected.index(" The product")]


def test_tool_loop_stops_after_two_rounds_and_keeps_state():
    cell = "```python\nn = globals().get('n', 0) + 1\nprint(n * 10)\n```"
    generate, calls = _fake_model([f"Step.\n{cell}\n{TOOL_STOP}"])  # keeps asking forever
    [trace] = run_tool_loop(generate, ["User: count\n\nAssistant:"])
    assert len(calls) == 2 and trace.rounds == 2 and trace.generations == 2
    assert re.findall(r"```output\n(.*?)\n```", trace.completion) == ["10", "20"]  # cell 1 re-ran first
    assert trace.completion.endswith("```output\n20\n```\n")


def test_tool_loop_stop_string_dropped_and_errors():
    # a sampler that drops the stop string (as vLLM does): a closed python block still asks for output
    generate, _ = _fake_model(["```python\nprint(1 / 0)\n```", "Oops. The answer is \\boxed{0}."])
    [trace] = run_tool_loop(generate, ["Q"])
    assert "```output\nZeroDivisionError: division by zero\n```\n" in trace.completion
    assert trace.results[0].error == "exception: ZeroDivisionError: division by zero"
    # a final answer, or a code block next to a boxed answer, ends the trajectory without running code
    generate, calls = _fake_model(["The answer is \\boxed{5}.\n```python\nprint(5)\n```"])
    [trace] = run_tool_loop(generate, ["Q"])
    assert trace.rounds == 0 and len(calls) == 1


def test_tool_loop_with_injected_executor():
    seen = []

    def executor(code, *, limits):
        seen.append((code, limits))
        return ExecutionResult(stdout="7\n", stderr="", ok=True, error=None, returncode=0, duration_s=0.0)

    generate, _ = _fake_model([f"```python\nprint(3 + 4)\n```{TOOL_STOP}", "\\boxed{7}"])
    limits = SandboxLimits(wall_seconds=3)
    [trace] = run_tool_loop(generate, ["Q"], executor=executor, limits=limits)
    assert seen == [("print(3 + 4)", limits)] and "```output\n7\n```" in trace.completion


# ------------------------------------------------------------------------------------------- program of thought

def _pal_gsm_programs(text: str) -> list[str]:
    return [chunk.split("\nQ:")[0].strip("\n") for chunk in text.split("# solution in Python:")[1:]]


def _reference(program: str, expression: str) -> str:
    namespace: dict = {}
    exec(program, namespace)  # the exemplars are our own trusted data
    return str(eval(expression, namespace))  # noqa: S307 - our own trusted exemplars


def test_pot_pal_gsm_exemplars(shared_data):
    programs = _pal_gsm_programs((shared_data / "few_shot" / "pal_gsm_8_shot.txt").read_text())
    assert len(programs) == 8 and programs[0].startswith("def solution():")
    first = run_program_of_thought(programs[0])
    assert first.ok and first.answer == first.stdout == "8"  # Olivia: 23 - 5 * 3
    for program in programs[1:]:
        result = run_program_of_thought(program)
        assert result.ok and result.answer == _reference(program, "solution()")


def test_pot_pal_math_exemplars(shared_data):
    text = (shared_data / "few_shot" / "pal_math_4_shot.txt").read_text()
    completions = [chunk[chunk.index("```"):chunk.index("I hope my solution is correct.")]
                   for chunk in text.split("Problem:\n")[1:]]
    assert len(completions) == 5
    for completion in completions:
        program, expression = pot_program(completion)
        assert expression == "answer"
        result = run_program_of_thought(completion)
        try:
            expected = _reference(program, "answer")
        except NameError as exc:  # the third exemplar really says `answer = n_value`
            assert result.error == f"exception: NameError: {exc}" and result.answer is None
            continue
        assert result.ok and result.answer == expected, (result.error, result.stderr[-300:])
    assert run_program_of_thought(completions[0]).answer == "[20/3]"
    assert pot_program("```\nanswer = 1\n```")[0] == "answer = '[invalid]'"


def test_pot_plain_program_prints_answer():
    result = run_program_of_thought("```python\nimport math\nprint(math.factorial(5))\n```")
    assert result.ok and result.answer == "120"
    failing = run_program_of_thought("def solution():\n    return 1 / 0")
    assert failing.error == "exception: ZeroDivisionError: division by zero" and failing.answer is None


# ------------------------------------------------------------------------------------------- seccomp and uids

def test_seccomp_program_builds_for_known_architectures_only():
    from dsmath_jax.evals import sandbox_runner
    for machine in ("x86_64", "aarch64"):
        program = sandbox_runner.seccomp_program(machine)
        assert program is not None and len(program) % 8 == 0 and 8 < len(program) // 8 < 4096
        # the first instruction loads the architecture, the second compares it with the expected one
        assert program[:8] == bytes.fromhex("2000000004000000")
    assert sandbox_runner.seccomp_program("riscv64") is None


def test_seccomp_switch_and_required_layer(layers):
    if not layers.get("seccomp"):
        result = run_python("print(1)", limits=SandboxLimits(require_layers=("seccomp",)))
        assert not result.ok and "required isolation layers unavailable: seccomp" in result.error
        pytest.skip(f"no seccomp filter here: {layers.get('seccomp_skipped')}")
    result = run_python("import os\nos.memfd_create('x')\nprint('made')", limits=SandboxLimits(seccomp=False))
    assert result.ok and result.stdout == "made\n" and result.isolation["seccomp"] is False
    result = run_python("print(1)", limits=SandboxLimits(require_layers=("seccomp", "distinct_uid"))
                        if layers.get("distinct_uid") else SandboxLimits(require_layers=("seccomp",)))
    assert result.ok and result.isolation["seccomp"]


def test_run_uids_are_distinct_and_skip_uids_in_use(monkeypatch):
    if os.geteuid() != 0:
        assert sandbox._acquire_ids(True).uid is None
        pytest.skip("per-run uids need root")
    assert sandbox._acquire_ids(False).uid is None
    monkeypatch.setattr(sandbox, "_ids_in_use", lambda: {sandbox.UID_BASE + 1})  # a process has this one
    held = [sandbox._acquire_ids(True) for _ in range(3)]
    try:
        uids = [ids.uid for ids in held]
        assert len(set(uids)) == 3 and sandbox.UID_BASE + 1 not in uids and all(ids.distinct for ids in held)
        assert all(uid == ids.gid for uid, ids in zip(uids, held))
        held[0].release()
        again = sandbox._acquire_ids(True)
        held.append(again)
        assert again.uid == uids[0]  # released: free again
    finally:
        for ids in held:
            ids.release()
    # a uid another process on this host holds (its abstract socket is bound) is skipped
    other = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        other.bind(b"\0dsmath-sandbox-uid-%d" % sandbox.UID_BASE)
        ids = sandbox._acquire_ids(True)
        ids.release()
        assert ids.uid not in (sandbox.UID_BASE, sandbox.UID_BASE + 1)
    finally:
        other.close()
    monkeypatch.setattr(sandbox, "UID_SLOTS", 0)  # none free: `nobody`
    fallback = sandbox._acquire_ids(True)
    assert fallback.uid == SANDBOX_UID and not fallback.distinct
