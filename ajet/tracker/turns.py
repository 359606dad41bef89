"""The episode's model turns as a judge reads them: what the agent sent, what the model replied.

A judge that scores how an answer was reached (tool use, number of turns, a reply cut by the length
limit) needs every turn, not only the final answer the workflow returns. The tracker holds them as
`LLMCall` records, which carry token ids and logprobs for training; this module turns them into a
small, typed, read-only view:

    for turn in turns:
        turn.messages        # the request as the agent sent it (normalised OpenAI messages)
        turn.content         # the reply's text
        turn.tool_calls      # (ToolCall(id, name, arguments), ...) parsed from the reply
        turn.prompt_tokens, turn.completion_tokens, turn.finish_reason

Whichever wire protocol the agent spoke (Chat Completions, Responses, Anthropic Messages), the
proxy records the request in OpenAI chat form, so a judge reads one shape: Responses items and
Anthropic content blocks appear as OpenAI messages (`tool_calls` on assistant messages, tool results
as `tool` messages), their tool schemas as OpenAI function tools.

The view is built from copies: a judge may change what it was given without touching what is
trained. One `Turn` per sampled reply, in the order they were recorded; the `n` choices of one
request share `index`. Requests the proxy refused (turn or prompt limit) reached no model and are
not turns; the tracker's metrics count them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ajet.tracker.call import LLMCall
from ajet.tracker.render import content_text


@dataclass(frozen=True)
class ToolCall:
    """One tool call of a reply, as the proxy returned it to the agent.

    arguments: the JSON text the model wrote (verbatim; `parsed_arguments()` decodes it).
    """

    id: str
    name: str
    arguments: str

    def parsed_arguments(self) -> dict[str, Any] | None:
        """The arguments as a dict, or None when they are not a JSON object."""
        try:
            value = json.loads(self.arguments)
        except (TypeError, ValueError):
            return None
        return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class Turn:
    """One model reply of an episode and the request it answered.

    index: the request's position in the episode (0-based); the n choices of one request share it.
    messages: the request's messages (normalised: text content, OpenAI tool calls), oldest first.
    tools: the tool schemas the request offered (empty when none).
    content: the reply's text (tool-call markup removed when the proxy parsed tool calls out of it).
    tool_calls: the tool calls parsed from the reply, in order.
    prompt_tokens / completion_tokens: token counts of the prompt the model saw and of its reply.
    finish_reason: "stop", "length" (cut by max_tokens or the context limit) or "abort".
    tool_call_format_error: the reply had tool-call markup the parser could not read.
    """

    index: int
    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...]
    content: str
    tool_calls: tuple[ToolCall, ...]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    tool_call_format_error: bool = False

    @property
    def reply(self) -> dict[str, Any]:
        """The reply as an OpenAI assistant message (a fresh dict on every access)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        return message


def turn_from_call(call: LLMCall) -> Turn:
    message = call.assistant_message or {}
    return Turn(
        index=int(call.turn),
        messages=tuple(copy.deepcopy(list(call.messages))),
        tools=tuple(copy.deepcopy(list(call.tools or []))),
        content=content_text(message.get("content")),
        tool_calls=tuple(_tool_call(c) for c in message.get("tool_calls") or []),
        prompt_tokens=len(call.prompt_ids),
        completion_tokens=len(call.response_ids),
        finish_reason=str(call.finish_reason),
        tool_call_format_error=bool(call.tool_call_format_error),
    )


def turns_from_calls(calls: Sequence[LLMCall]) -> tuple[Turn, ...]:
    """The judge's view of an episode's recorded calls, in recording order."""
    return tuple(turn_from_call(call) for call in calls)


def _tool_call(raw: dict[str, Any]) -> ToolCall:
    fn = raw.get("function", raw)
    arguments = fn.get("arguments", "")
    if not isinstance(arguments, str):
        # Agents normally receive a JSON string; a dict (some clients send one back) keeps its content.
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ToolCall(id=str(raw.get("id", "")), name=str(fn.get("name", "")), arguments=arguments)
