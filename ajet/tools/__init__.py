"""Tools agents call during an episode. The sandboxed Python executor lives here."""

from ajet.tools.python_executor import (
    ExecutionResult,
    PythonExecutor,
    SandboxLimits,
    aexecute_python_code,
    execute_python_code,
    get_python_executor,
)

__all__ = [
    "ExecutionResult",
    "PythonExecutor",
    "SandboxLimits",
    "aexecute_python_code",
    "execute_python_code",
    "get_python_executor",
]
