"""The Python tool agents call: `execute_python_code(code)` runs a snippet in the sandbox and returns
what it printed.

    result = execute_python_code("print(16 - 3 - 4)")
    result.stdout          # "9\\n"
    result.to_agent_text() # what goes back to the model as the tool message

    result = await aexecute_python_code(code)   # from a coroutine (workflows)

A `PythonExecutor` holds the limits (config section `tools.python_executor`) and caps how many snippets
run at once (`max_concurrency`): rollouts run many episodes concurrently, and each snippet is a
process. The module-level functions use one shared executor per distinct setting, so all episodes of a
training run share one cap. See `ajet.tools.sandbox` for what is isolated and how.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from ajet.config import AjetConfig, default_config
from ajet.config.schema import PythonExecutorConfig
from ajet.tools.sandbox import ExecutionResult, SandboxLimits, SandboxPlan, probe_sandbox, run_sandboxed

__all__ = [
    "ExecutionResult",
    "PythonExecutor",
    "SandboxLimits",
    "aexecute_python_code",
    "execute_python_code",
    "get_python_executor",
    "limits_from_config",
]


class PythonExecutor:
    """Runs snippets under `limits`, at most `max_concurrency` at a time (sync and async callers together)."""

    def __init__(self, limits: SandboxLimits, max_concurrency: int) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.limits = limits
        self.max_concurrency = max_concurrency
        self._slots = threading.BoundedSemaphore(max_concurrency)
        # Async callers wait in this pool's queue rather than in the event loop's default executor, so
        # a burst of tool calls cannot starve other to_thread users.
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="ajet-pyexec")

    @property
    def plan(self) -> SandboxPlan:
        return probe_sandbox()

    def run(self, code: str, timeout: float | None = None) -> ExecutionResult:
        """Run `code`; blocks until it finishes or `timeout` (default: the configured one) passes."""
        limits = self.limits if timeout is None else _with_timeout(self.limits, timeout)
        with self._slots:
            return run_sandboxed(code, limits, probe_sandbox())

    async def arun(self, code: str, timeout: float | None = None) -> ExecutionResult:
        """`run` without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.run, code, timeout)


def _with_timeout(limits: SandboxLimits, timeout: float) -> SandboxLimits:
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    # CPU time can never usefully exceed the wall clock; keep the smaller of the two.
    return replace(limits, timeout=float(timeout), cpu_seconds=min(limits.cpu_seconds, max(1, int(timeout) + 1)))


def limits_from_config(section: PythonExecutorConfig) -> tuple[SandboxLimits, int]:
    """(limits, max_concurrency) of a `tools.python_executor` section."""
    limits = SandboxLimits(
        timeout=section.timeout,
        cpu_seconds=section.cpu_seconds,
        memory_mb=section.memory_mb,
        max_output_bytes=section.max_output_bytes,
        disable_network=section.disable_network,
    )
    return limits, section.max_concurrency


_executors: dict[tuple[SandboxLimits, int], PythonExecutor] = {}
_executors_lock = threading.Lock()


def get_python_executor(config: AjetConfig | PythonExecutorConfig | None = None) -> PythonExecutor:
    """The shared executor for a run's `tools.python_executor` settings (the packaged defaults if None).

    Takes the whole `ajet` config (what a workflow holds as `self.config`) or the section itself.
    """
    if config is None:
        config = default_config()
    section = config.tools.python_executor if isinstance(config, AjetConfig) else config
    key = limits_from_config(section)
    with _executors_lock:
        if key not in _executors:
            _executors[key] = PythonExecutor(*key)
        return _executors[key]


def execute_python_code(code: str, timeout: float = 10) -> ExecutionResult:
    """Run a Python snippet in the sandbox (default limits) and return what it printed."""
    return get_python_executor().run(code, timeout=timeout)


async def aexecute_python_code(code: str, timeout: float = 10) -> ExecutionResult:
    """Async `execute_python_code`."""
    return await get_python_executor().arun(code, timeout=timeout)
