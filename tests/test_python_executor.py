"""The sandboxed Python executor against hostile snippets. None of them may harm this test process.

Each hostile snippet runs under the plan this machine supports (`probe_sandbox()`), and the ones whose
defence has a fallback also run under the weaker plans, so the fallbacks are tested too.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from ajet.testing.config import make_config
from ajet.tools import PythonExecutor, SandboxLimits, execute_python_code
from ajet.tools.python_executor import get_python_executor, limits_from_config
from ajet.tools.sandbox import SandboxPlan, probe_sandbox, run_sandboxed

LIMITS = SandboxLimits(timeout=5, cpu_seconds=5, memory_mb=512, max_output_bytes=4096, disable_network=True)


@pytest.fixture(scope="module")
def plan() -> SandboxPlan:
    return probe_sandbox()


def _plans(plan: SandboxPlan) -> dict[str, SandboxPlan]:
    """The machine's plan plus its weaker variants (what other machines may fall back to)."""
    plans = {"full": plan}
    if plan.pid_namespace:
        plans["no-namespaces"] = replace(plan, unshare_prefix=(), network_namespace=False)
    if plan.landlock_abi:
        plans["no-landlock"] = replace(plan, landlock_abi=0)
    plans["rlimits-only"] = SandboxPlan(seccomp=False, landlock_abi=0)
    return plans


def test_prints_result(plan):
    result = run_sandboxed("print(16 - 3 - 4)", LIMITS, plan)
    assert result.stdout == "9\n" and result.exit_code == 0 and result.ok
    assert result.to_agent_text() == "9"


def test_error_reports_traceback_of_the_snippet_only(plan):
    result = run_sandboxed("x = 1\n1 / 0\n", LIMITS, plan)
    assert result.exit_code == 1 and not result.ok
    assert "ZeroDivisionError" in result.stderr and 'File "main.py", line 2' in result.stderr
    assert "_sandbox_runner" not in result.stderr
    assert "ZeroDivisionError" in result.to_agent_text() and "[exit code 1]" in result.to_agent_text()


def test_silent_code_is_flagged(plan):
    result = run_sandboxed("height_difference = 72 - 60\nheight_difference", LIMITS, plan)
    assert result.ok and result.printed_nothing
    assert "print()" in result.to_agent_text()
    assert not run_sandboxed("print(12)", LIMITS, plan).printed_nothing
    assert not run_sandboxed("1 / 0", LIMITS, plan).printed_nothing  # a crash is not a forgotten print


def test_threads_still_work(plan):
    code = "import threading\nout=[]\nt=threading.Thread(target=lambda: out.append(6*7))\nt.start(); t.join()\nprint(out[0])"
    assert run_sandboxed(code, LIMITS, plan).stdout == "42\n"


def test_infinite_loop_is_killed_at_the_timeout(plan):
    result = run_sandboxed("while True:\n    pass\n", replace(LIMITS, timeout=2), plan)
    assert result.timed_out and not result.ok
    assert "timed out after 2 s" in result.to_agent_text()


def test_cpu_limit_kills_a_busy_loop_before_the_wall_clock(plan):
    result = run_sandboxed("while True:\n    pass\n", replace(LIMITS, timeout=30, cpu_seconds=1), plan)
    assert not result.timed_out
    assert result.exit_code in (128 + 24, 128 + 9)  # SIGXCPU at the soft limit (SIGKILL if it lingers)


@pytest.mark.parametrize("variant", ["full", "no-namespaces", "no-landlock"])
def test_fork_bomb_is_stopped(plan, variant):
    plans = _plans(plan)
    if variant not in plans:
        pytest.skip(f"{variant} is the same as the full plan here")
    result = run_sandboxed("import os\nwhile True:\n    os.fork()\n", replace(LIMITS, timeout=3), plans[variant])
    assert not result.ok
    if plans[variant].seccomp:  # fork fails at once instead of running into the timeout
        assert not result.timed_out and "BlockingIOError" in result.stderr
    # the machine is still usable afterwards
    assert run_sandboxed("print('alive')", LIMITS, plan).stdout == "alive\n"


def test_subprocesses_are_refused(plan):
    if not plan.seccomp:
        pytest.skip("no seccomp here: subprocesses are only bounded by RLIMIT_NPROC")
    result = run_sandboxed("import subprocess\nsubprocess.run(['echo', 'hi'])\n", LIMITS, plan)
    assert result.exit_code == 1 and "hi" not in result.stdout


def test_background_process_dies_with_the_sandbox(plan):
    if not plan.pid_namespace:
        pytest.skip("no pid namespace here")
    marker = f"{random.randint(10**6, 10**7)}.5"
    code = f"import subprocess\nsubprocess.Popen(['sleep', '{marker}'], start_new_session=True)\nprint('started')"
    result = run_sandboxed(code, LIMITS, replace(plan, seccomp=False))
    assert result.stdout == "started\n"

    def sleepers() -> list[str]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes() == f"sleep\0{marker}\0".encode():
                    found.append(pid)
            except OSError:
                continue
        return found

    assert sleepers() == []


def test_ten_gigabyte_allocation_fails_inside_the_sandbox(plan):
    result = run_sandboxed("b = bytearray(10 * 1024**3)\nprint(len(b))\n", LIMITS, plan)
    assert result.exit_code != 0 and "MemoryError" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("variant", ["full", "no-namespaces"])
def test_writing_outside_its_directory_is_prevented(plan, variant, tmp_path):
    plans = _plans(plan)
    if variant not in plans:
        pytest.skip(f"{variant} is the same as the full plan here")
    if not plan.write_protection:
        pytest.skip("no Landlock here: the sandbox cannot stop writes where this user may write (documented)")
    target = tmp_path / "escaped.txt"
    code = (
        "import os\n"
        "open('inside.txt', 'w').write('ok')\n"  # its own directory is writable
        "print(os.getcwd())\n"
        f"open({str(target)!r}, 'w').write('pwned')\n"
    )
    result = run_sandboxed(code, LIMITS, plans[variant])
    assert result.exit_code == 1 and "PermissionError" in result.stderr
    assert not target.exists()
    workdir = result.stdout.strip()
    assert workdir and workdir != str(tmp_path) and not os.path.exists(workdir)  # fresh dir, deleted after


def test_file_size_limit(plan):
    result = run_sandboxed("open('big.bin', 'wb').write(b'x' * (3 * 1024 * 1024))\n", replace(LIMITS, max_file_mb=1), plan)
    assert result.exit_code != 0  # SIGXFSZ is ignored by Python, so the write raises EFBIG (exit 1)


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1 that records whether anything connected."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def accept_loop():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


@pytest.mark.network_loopback
@pytest.mark.parametrize("variant", ["full", "no-namespaces", "rlimits-only"])
def test_socket_to_a_local_listener_fails(plan, variant, listener):
    port, accepted = listener
    plans = _plans(plan)
    if variant not in plans:
        pytest.skip(f"{variant} is the same as the full plan here")
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n"
    result = run_sandboxed(code, LIMITS, plans[variant])
    assert "connected" not in result.stdout and result.exit_code == 1
    assert accepted == []
    # control: the same connection from outside the sandbox works, so the listener was reachable
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    for _ in range(20):
        if accepted:
            break
        threading.Event().wait(0.05)
    assert len(accepted) == 1


def test_network_allowed_when_configured(plan, listener):
    port, accepted = listener
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()\nprint('connected')\n"
    # disable_network=False keeps the host network: only meaningful without the network namespace
    no_netns = replace(plan, unshare_prefix=(), network_namespace=False)
    result = run_sandboxed(code, replace(LIMITS, disable_network=False), no_netns)
    assert result.stdout == "connected\n", result.stderr


def test_printing_100_megabytes_is_truncated_and_memory_stays_bounded(plan):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    code = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)\nprint('done')\n"
    result = run_sandboxed(code, replace(LIMITS, timeout=15), plan)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert result.truncated and len(result.stdout) == LIMITS.max_output_bytes
    assert not result.timed_out and result.exit_code == 0  # the pipe was drained, the writer never blocked
    assert after - before < 50 * 1024  # far below the 100 MB printed
    assert result.to_agent_text().endswith("[output truncated]")


@pytest.mark.parametrize("variant", ["full", "rlimits-only"])
def test_killing_the_parent_does_not_reach_the_trainer(plan, variant):
    code = "import os\nprint(os.getppid(), flush=True)\nos.kill(os.getppid(), 9)\n"
    result = run_sandboxed(code, LIMITS, _plans(plan)[variant])
    assert int(result.stdout.split()[0]) != os.getpid()
    # we are still here, and so is the executor
    assert run_sandboxed("print(1 + 1)", LIMITS, plan).stdout == "2\n"


def test_environment_is_scrubbed(plan, monkeypatch):
    monkeypatch.setenv("AJET_TEST_SECRET_KEY", "s3cret")
    result = run_sandboxed("import os\nprint(sorted(os.environ))\nprint(os.environ.get('HOME'))", LIMITS, plan)
    assert "AJET_TEST_SECRET_KEY" not in result.stdout and "s3cret" not in result.stdout
    assert "ajet-pyexec-" in result.stdout.splitlines()[1]


def test_trainer_environment_is_not_readable_through_proc(plan):
    if not plan.private_proc:
        pytest.skip("no private /proc here: a same-user snippet can read /proc/<pid>/environ (documented)")
    # An entry of this process's environment as the kernel shows it (the scrubbed env has no such entry).
    ours = Path(f"/proc/{os.getpid()}/environ").read_bytes().split(b"\0")
    marker = next(e for e in ours if e.startswith((b"PYENV", b"SHELL=", b"HOSTNAME=", b"PWD=", b"PATH=/root"))).decode()
    code = (
        "import os\nfound = []\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n        data = open(f'/proc/{pid}/environ', 'rb').read()\n"
        "    except OSError:\n        continue\n"
        f"    found += [pid] if {marker.encode()!r} in data else []\n"
        "print(found)\n"
    )
    assert run_sandboxed(code, LIMITS, plan).stdout == "[]\n"
    # control: the same scan in a pid namespace that shares the host /proc finds the trainer
    host_proc = replace(plan, unshare_prefix=tuple(a for a in plan.unshare_prefix if a != "--mount-proc"))
    assert run_sandboxed(code, LIMITS, host_proc).stdout != "[]\n"


async def test_concurrency_cap_holds_across_async_callers():
    executor = PythonExecutor(replace(LIMITS, timeout=10), max_concurrency=2)
    code = "import time\nstart = time.time()\ntime.sleep(0.4)\nprint(start, time.time())\n"
    results = await asyncio.gather(*(executor.arun(code) for _ in range(5)))
    spans = [tuple(map(float, r.stdout.split())) for r in results]
    assert len(spans) == 5
    # at no instant were more than two snippets running
    for start, _ in spans:
        running = sum(1 for s, e in spans if s <= start < e)
        assert running <= 2


def test_config_section_and_shared_executor():
    settings = {"timeout": 3, "cpu_seconds": 2, "memory_mb": 256, "max_output_bytes": 100, "max_concurrency": 3}
    config = make_config(*(f"tools.python_executor.{key}={value}" for key, value in settings.items()))
    limits, concurrency = limits_from_config(config.tools.python_executor)
    assert (limits.timeout, limits.cpu_seconds, limits.memory_mb, limits.max_output_bytes) == (3.0, 2, 256, 100)
    assert concurrency == 3
    assert get_python_executor(config) is get_python_executor(config.tools.python_executor)
    assert get_python_executor(config).max_concurrency == 3
    result = get_python_executor(config).run("print('y' * 1000)")
    assert result.truncated and len(result.stdout) == 100


def test_module_level_function_uses_defaults():
    result = execute_python_code("import math\nprint(math.comb(5, 2))", timeout=5)
    assert result.stdout == "10\n"
