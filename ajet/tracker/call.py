"""One recorded model call: what the proxy sent to the engine and what came back, token for token."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LLMCall:
    """A single chat-completion turn of an episode.

    prompt_ids: the exact ids fed to the engine (after any splicing of earlier sampled tokens).
    response_ids / response_logprobs / response_versions: exactly as the engine returned them.
    messages / tools: the request as the agent sent it (for the drift check and the logview).
    assistant_message: the OpenAI-format message the proxy returned (content, tool_calls).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    response_logprobs: list[float]
    response_versions: list[int]
    finish_reason: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    assistant_message: dict[str, Any] = field(default_factory=dict)
    tool_call_format_error: bool = False
    num_tool_calls: int = 0
    prompt_truncated: bool = False
    # Which request of the episode this came from (0-based); the n choices of one request share it.
    turn: int = 0
    # True when prompt_ids reuse an earlier call's sampled tokens (see ajet.tracker.splice).
    spliced: bool = False
