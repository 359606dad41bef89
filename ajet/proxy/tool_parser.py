"""Hermes/Qwen tool calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` -> OpenAI tool_calls.

Parsing never raises: a reply whose tool-call markup is broken (bad JSON, no name, an unclosed tag)
is handed back as plain content with `format_error=True`, so the agent sees what the model wrote and
the tracker can count (and a judge can penalise) the mistake. All-or-nothing per reply: if any block
is malformed the whole reply is content, since executing half of what the model meant is worse than
letting the agent treat it as text.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)


@dataclass
class ParsedReply:
    """A model reply split into OpenAI message parts.

    content: the text outside tool-call blocks (stripped), None when there is none.
    tool_calls: OpenAI-format calls: {"id", "type": "function", "function": {"name", "arguments": str}}.
    format_error: tool-call markup was present but malformed; then content is the raw text.
    """

    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    format_error: bool = False


def new_tool_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def parse_tool_calls(text: str) -> ParsedReply:
    """Split `text` into content and tool calls (see module docstring for the error policy)."""
    if TOOL_CALL_OPEN not in text and TOOL_CALL_CLOSE not in text:
        return ParsedReply(content=text if text else None)

    calls: list[dict[str, Any]] = []
    for match in _BLOCK.finditer(text):
        call = _parse_block(match.group(1))
        if call is None:
            return ParsedReply(content=text, format_error=True)
        calls.append(call)

    outside = _BLOCK.sub("", text)
    # A stray opening or closing tag outside complete blocks means an unclosed / unopened call.
    if TOOL_CALL_OPEN in outside or TOOL_CALL_CLOSE in outside or not calls:
        return ParsedReply(content=text, format_error=True)

    content = outside.strip()
    return ParsedReply(content=content or None, tool_calls=calls)


def _parse_block(body: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(body.strip())
    except (json.JSONDecodeError, ValueError):
        return None
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        # Some models emit the arguments pre-serialised; OpenAI clients expect a JSON object string.
        try:
            arguments = json.loads(arguments)
        except (json.JSONDecodeError, ValueError):
            return None
    if not isinstance(arguments, dict):
        return None
    return {
        "id": new_tool_call_id(),
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }
