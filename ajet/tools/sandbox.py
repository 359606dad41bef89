"""Running one Python snippet in a locked-down child process, and finding out how locked down it can be.

What the sandbox enforces, strongest available first (`probe_sandbox()` finds out once per process and
logs the result; `SandboxPlan.describe()` says it in words):

| threat                        | mechanism                                                   | fallback                      |
|-------------------------------|-------------------------------------------------------------|-------------------------------|
| runaway loop                  | wall-clock timeout, the whole process group SIGKILLed; RLIMIT_CPU | -                      |
| memory bomb                   | RLIMIT_AS (`memory_mb`)                                     | -                             |
| fork bomb / subprocesses      | seccomp: fork, vfork and non-thread clone fail (EAGAIN)     | RLIMIT_NPROC = processes the user already has + 32 (not enforced for root) |
| leftovers after the run       | new pid namespace: the runner is pid 1, its exit kills all  | SIGKILL to the process group  |
| reading the trainer's secrets | the namespace gets its own /proc (no /proc/<trainer>/environ) | none: same-user /proc is readable |
| network                       | new network namespace (no interfaces) + Landlock TCP rules  | audit hook blocking socket connect/bind/getaddrinfo (Python-level only) |
| writing outside its directory | Landlock: writes only under the fresh working dir and /dev/null | RLIMIT_FSIZE bounds each file; nothing stops writes where the user may write |
| signalling other processes    | pid namespace + Landlock signal scope                       | none as the same user         |
| huge output                   | read through a cap (`max_output_bytes` per stream), rest discarded | -                      |
| environment leaks             | env scrubbed to PATH/HOME/TMPDIR/LANG; `python -I`          | -                             |

Known limits, by design: files stay readable (the snippet must import the standard library and
numpy/sympy wherever they are installed), so a snippet can read any file the trainer's user can; keep
credentials in the environment (scrubbed) rather than in files, or run training as a user without
them. The child runs as the caller's user: this project's machines run as root with the interpreter
under /root (mode 700), so dropping to an unprivileged uid would leave the snippet unable to import
anything; Landlock gives the write protection without it. Without seccomp, a root caller has no
process cap at all (the kernel ignores RLIMIT_NPROC for root): the timeout and, with namespaces, the
pid-namespace teardown are then all that bound a fork bomb.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ajet.tools import _sandbox_runner

logger = logging.getLogger(__name__)

RUNNER_PATH = str(Path(_sandbox_runner.__file__).resolve())
_NPROC_MARGIN = 32  # extra processes a snippet may start when only RLIMIT_NPROC stands between it and a fork bomb
_SIGNAL_HINTS = {
    signal.SIGKILL: "killed (SIGKILL): out of memory or killed by the sandbox",
    signal.SIGXCPU: "CPU time limit exceeded (SIGXCPU)",
    signal.SIGXFSZ: "file size limit exceeded (SIGXFSZ)",
    signal.SIGSEGV: "segmentation fault (SIGSEGV)",
}


@dataclass(frozen=True)
class ExecutionResult:
    """What one execution produced. `exit_code` follows the shell: 128 + N when killed by signal N."""

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool = False
    truncated: bool = False
    timeout: float | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @property
    def printed_nothing(self) -> bool:
        """True when the code ran fine but wrote nothing to stdout (the classic forgot-to-print mistake)."""
        return self.ok and not self.stdout.strip()

    def to_agent_text(self) -> str:
        """The tool result as the model reads it: stdout, then any error, briefly."""
        parts = []
        if self.stdout:
            parts.append(self.stdout.rstrip("\n"))
        if self.truncated:
            parts.append("[output truncated]")
        if self.timed_out:
            parts.append(f"[timed out after {self.timeout:g} s and was killed]")
        elif self.exit_code != 0:
            if self.stderr.strip():
                parts.append(self.stderr.rstrip("\n"))
            hint = _SIGNAL_HINTS.get(self.exit_code - 128) if self.exit_code > 128 else None
            parts.append(f"[exit code {self.exit_code}{': ' + hint if hint else ''}]")
        if not parts:
            return "[no output: the code ran but printed nothing; use print() to see values]"
        return "\n".join(parts)


@dataclass(frozen=True)
class SandboxLimits:
    """Per-execution limits. The first five are the `tools.python_executor` config keys (their defaults
    live in default.yaml; see `ajet.tools.python_executor.limits_from_config`); the last two are fixed
    properties of the sandbox, not user settings."""

    timeout: float
    cpu_seconds: int
    memory_mb: int
    max_output_bytes: int
    disable_network: bool
    max_file_mb: int = 16
    max_open_files: int = 256


@dataclass(frozen=True)
class SandboxPlan:
    """Which isolation mechanisms this machine supports (decided once by `probe_sandbox`)."""

    unshare_prefix: tuple[str, ...] = ()  # e.g. ("unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--")
    network_namespace: bool = False
    seccomp: bool = False
    landlock_abi: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def pid_namespace(self) -> bool:
        return bool(self.unshare_prefix)

    @property
    def private_proc(self) -> bool:
        return "--mount-proc" in self.unshare_prefix

    @property
    def write_protection(self) -> bool:
        return self.landlock_abi >= 1

    def network_blocked_by(self, disable_network: bool) -> str:
        if not disable_network:
            return "allowed"
        if self.network_namespace:
            return "network namespace"
        if self.landlock_abi >= 4:
            return "landlock"
        return "audit hook (best effort)"

    def describe(self) -> str:
        return (
            f"pid namespace: {self.pid_namespace} (own /proc: {self.private_proc}); "
            f"network: {self.network_blocked_by(True)}; "
            f"no-fork seccomp: {self.seccomp}; landlock ABI: {self.landlock_abi or 'unavailable'}"
            + (f"; notes: {'; '.join(self.notes)}" if self.notes else "")
        )


def _runner_config(plan: SandboxPlan, limits: SandboxLimits) -> dict:
    block_net = limits.disable_network
    cfg = {
        "main": "main.py",
        "memory_bytes": limits.memory_mb * 1024 * 1024,
        "cpu_seconds": max(1, int(limits.cpu_seconds)),
        "fsize_bytes": limits.max_file_mb * 1024 * 1024,
        "nofile": limits.max_open_files,
        "seccomp": plan.seccomp,
        "landlock": plan.landlock_abi >= 1,
        "landlock_block_tcp": block_net,
        "audit_block_network": block_net and not plan.network_namespace and plan.landlock_abi < 4,
    }
    if not plan.seccomp and os.geteuid() != 0:
        cfg["nproc"] = _count_user_processes() + _NPROC_MARGIN
    return cfg


def _count_user_processes() -> int:
    """Processes (and threads, which RLIMIT_NPROC also counts) of the current user, from /proc."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return count


def _scrubbed_env(workdir: str) -> dict[str, str]:
    # Nothing of the trainer's environment (API keys, CUDA settings, proxies) reaches the snippet.
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _collect_output(proc: subprocess.Popen, timeout: float, cap: int) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout/stderr until both close, keeping at most `cap` bytes of each (the rest is read and
    dropped, so a snippet printing 100 MB neither blocks on a full pipe nor fills our memory).

    Returns (stdout, stderr, truncated, timed_out). On timeout the process group is killed.
    """
    deadline = time.monotonic() + timeout
    buffers = {"stdout": bytearray(), "stderr": bytearray()}
    truncated = timed_out = False
    with selectors.DefaultSelector() as selector:
        for name in ("stdout", "stderr"):
            pipe = getattr(proc, name)
            os.set_blocking(pipe.fileno(), False)
            selector.register(pipe, selectors.EVENT_READ, name)
        exited_at: float | None = None
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline and not timed_out:
                timed_out = True
                _kill_group(proc.pid)
                deadline = now + 1.0  # drain what is already in the pipes, then stop
            elif timed_out and now >= deadline:
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            elif exited_at is not None and now - exited_at > 0.5:
                # The runner is gone but something it started still holds the pipes open (only
                # possible without a pid namespace): stop reading; its group is killed below.
                break
            for key, _ in selector.select(timeout=min(0.1, max(0.0, deadline - now))):
                try:
                    chunk = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer = buffers[key.data]
                room = cap - len(buffer)
                if room > 0:
                    buffer += chunk[:room]
                if len(chunk) > room:
                    truncated = True
    return bytes(buffers["stdout"]), bytes(buffers["stderr"]), truncated, timed_out


def run_sandboxed(code: str, limits: SandboxLimits, plan: SandboxPlan | None = None) -> ExecutionResult:
    """Run `code` as `main.py` in a fresh temporary directory under the sandbox; blocking."""
    plan = plan if plan is not None else probe_sandbox()
    workdir = tempfile.mkdtemp(prefix="ajet-pyexec-")
    proc: subprocess.Popen | None = None
    try:
        Path(workdir, "main.py").write_text(code, encoding="utf-8")
        argv = [*plan.unshare_prefix, sys.executable, "-I", RUNNER_PATH, json.dumps(_runner_config(plan, limits))]
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=_scrubbed_env(workdir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as a whole
            close_fds=True,
        )
        stdout, stderr, truncated, timed_out = _collect_output(proc, limits.timeout, limits.max_output_bytes)
        _kill_group(proc.pid)  # leftovers, if the snippet managed to start any
        returncode = proc.wait()
        exit_code = 128 - returncode if returncode < 0 else returncode
        return ExecutionResult(
            stdout=stdout.decode("utf-8", errors="replace"),
            stderr=stderr.decode("utf-8", errors="replace"),
            exit_code=exit_code,
            timed_out=timed_out,
            truncated=truncated,
            timeout=limits.timeout,
        )
    finally:
        if proc is not None:
            _kill_group(proc.pid)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _unshare_prefix() -> tuple[tuple[str, ...], str | None]:
    """The unshare invocation that works here (as root, or via a user namespace), or a reason why none."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return (), "no `unshare` binary"
    base = ("--net", "--pid", "--fork", "--kill-child")
    # --mount-proc gives the namespace its own /proc: without it the snippet could read the trainer's
    # /proc/<pid>/environ (API keys) even though its own environment is scrubbed.
    candidates = []
    for user_ns in ((), ("--user", "--map-root-user")):
        if user_ns or os.geteuid() == 0:
            candidates += [(unshare, *user_ns, *base, "--mount-proc", "--"), (unshare, *user_ns, *base, "--")]
    for prefix in candidates:
        try:
            ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return prefix, None
    return (), "unshare of net+pid namespaces is not permitted here"


@functools.lru_cache(maxsize=1)
def probe_sandbox() -> SandboxPlan:
    """Find the strongest plan that actually runs a snippet on this machine (cached per process).

    Each mechanism is tried for real (a trial `print('ok')`), and dropped with a note if the trial
    fails, so a container that forbids namespaces or seccomp still gets every mechanism it allows.
    """
    notes: list[str] = []
    prefix, why = _unshare_prefix()
    if why:
        notes.append(why)
    try:
        abi = _sandbox_runner.landlock_abi()
    except (OSError, AttributeError):
        abi = 0
    if not abi:
        notes.append("Landlock unavailable: writes outside the working directory are not prevented")
    plan = SandboxPlan(unshare_prefix=prefix, network_namespace=bool(prefix), seccomp=True, landlock_abi=abi)
    trial_limits = SandboxLimits(timeout=20, cpu_seconds=10, memory_mb=1024, max_output_bytes=4096, disable_network=True)
    fallbacks = [
        ("seccomp filter", lambda p: replace(p, seccomp=False)),
        ("Landlock", lambda p: replace(p, landlock_abi=0)),
        ("namespaces", lambda p: replace(p, unshare_prefix=(), network_namespace=False)),
    ]
    while True:
        result = run_sandboxed("print('ok')", trial_limits, plan)
        if result.stdout.strip() == "ok":
            break
        if not fallbacks:
            raise RuntimeError(f"the Python sandbox cannot run even without isolation: {result.stderr[-2000:]}")
        # Drop the mechanism the runner named in its setup error, else the next in line.
        named = [f for f in fallbacks if f[0].split()[0].lower() in result.stderr.lower()]
        name, weaken = named[0] if named else fallbacks[0]
        fallbacks.remove((name, weaken))
        notes.append(f"{name} failed its trial run and is off ({result.stderr.strip()[-200:]})")
        plan = weaken(plan)
    plan = replace(plan, notes=tuple(notes))
    logger.info("python sandbox: %s", plan.describe())
    return plan
