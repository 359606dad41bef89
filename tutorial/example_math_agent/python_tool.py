"""The Python tool for one episode, shared by the six workflows.

Runs the model's code in ajet's sandboxed executor (limits from `tools.python_executor`, one
concurrency cap shared by every episode) and counts what the judge's shaping terms look at:
`tool_calls_without_output` (code that ran fine but printed nothing) feeds `task_judge.behavior_penalty`.
"""

from __future__ import annotations

import json
from typing import Any

from ajet.config import AjetConfig
from ajet.tools import get_python_executor
from tutorial.example_math_agent.prompts import TOOL_NAME


class PythonToolSession:
    """Call `run(code)` for each tool call; put `metadata()` into the WorkflowOutput."""

    def __init__(self, config: AjetConfig | None = None) -> None:
        self.executor = get_python_executor(config)
        self.calls = 0
        self.calls_without_output = 0
        self.failed_calls = 0

    async def run(self, code: str) -> str:
        """Execute `code` and return the tool message text the model reads next."""
        result = await self.executor.arun(code)
        self.calls += 1
        self.calls_without_output += int(result.printed_nothing)
        self.failed_calls += int(not result.ok)
        return result.to_agent_text()

    async def run_openai_tool_call(self, name: str, arguments: str | None) -> str:
        """Execute one OpenAI-format tool call (arguments as a JSON string); see `run_tool_call`."""
        try:
            args: Any = json.loads(arguments or "{}")
        except ValueError as exc:
            args = ValueError(f"arguments are not JSON: {exc}")
        return await self.run_tool_call(name, args)

    async def run_tool_call(self, name: str, args: Any) -> str:
        """Execute one tool call with parsed arguments (an Anthropic `tool_use` input). Bad calls get
        an explanation instead of an exception, so the model can correct itself on the next turn."""
        if name != TOOL_NAME:
            self.failed_calls += 1
            return f"Error: unknown tool {name!r}. The only tool is {TOOL_NAME}."
        code = args.get("code") if isinstance(args, dict) else None
        if not isinstance(code, str):
            self.failed_calls += 1
            reason = args if isinstance(args, ValueError) else 'no "code" string'
            return f'Error: invalid arguments ({reason}). Call {TOOL_NAME} with {{"code": "<python code>"}}.'
        return await self.run(code)

    def metadata(self) -> dict[str, int]:
        return {
            "python_tool_calls": self.calls,
            "tool_calls_without_output": self.calls_without_output,
            "python_tool_errors": self.failed_calls,
        }


def max_steps(config: AjetConfig) -> int:
    """`rollout.multi_turn.max_steps`: model calls allowed per episode."""
    return config.rollout.multi_turn.max_steps
