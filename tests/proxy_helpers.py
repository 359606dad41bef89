"""Shared by the proxy, tracker and tuner tests: the tokenizer, a tool schema (per protocol) and scripted replies."""

from __future__ import annotations

import functools
import json
from typing import Any

ADD_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The exact Qwen2.5 tokenizer with ajet's ChatML tool template (loaded once per test process)."""
    from ajet.models import load_tokenizer

    return load_tokenizer("builtin:tiny-qwen2-random")


def tool_call_text(name: str, arguments: dict[str, Any], content: str = "") -> str:
    block = "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"
    return f"{content}\n{block}" if content else block


def add_until_answer(num_tool_turns: int = 2, answer: str = "The answer is 42."):
    """reply_fn: call `add` while the prompt holds fewer than `num_tool_turns` tool responses, then answer."""

    def reply(prompt_text: str) -> str:
        done = prompt_text.count("<tool_response>")
        if done < num_tool_turns:
            return tool_call_text("add", {"a": done, "b": 2}, content=f"Step {done}.")
        return answer

    return reply


# The same `add` tool in the other protocols' shapes (ajet translates both back to ADD_TOOL).
RESPONSES_ADD_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "add",
    "description": "Add two integers.",
    "parameters": ADD_TOOL["function"]["parameters"],
}
ANTHROPIC_ADD_TOOL: dict[str, Any] = {
    "name": "add",
    "description": "Add two integers.",
    "input_schema": ADD_TOOL["function"]["parameters"],
}
