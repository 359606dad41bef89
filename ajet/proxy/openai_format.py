"""The OpenAI chat-completions wire format: request model, response bodies, SSE chunks, errors.

Only the shapes; no engine, tracker or HTTP server here. Field names follow the OpenAI API so that
the official SDK, LangChain and AgentScope parse the replies without special cases.
`ChatCompletionRequest` is also the proxy's internal request: the other protocols
(ajet.proxy.protocol) translate into it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from ajet.proxy.protocol import CompletionResult, ProtocolError, ProtocolState, WireProtocol, WireRequest


class ChatCompletionRequest(BaseModel):
    """The request fields the proxy honours; anything else (LangChain/AgentScope extras) is ignored."""

    model_config = ConfigDict(extra="ignore")

    messages: list[dict[str, Any]]
    model: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


@dataclass
class ChoiceResult:
    """One sampled choice, ready to serialise."""

    message: dict[str, Any]
    finish_reason: str
    token_logprobs: list[tuple[str, float]] | None = None  # (token text, logprob) when requested
    extra: dict[str, Any] = field(default_factory=dict)


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def error_body(message: str, *, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openai_error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object for an HTTP status (the SDK picks its exception class by the status)."""
    type_ = "server_error" if status >= 500 else "rate_limit_error" if status == 429 else "invalid_request_error"
    return error_body(message, type_=type_, code=code, param=param)


def _logprobs_field(token_logprobs: list[tuple[str, float]] | None, top_n: int) -> dict[str, Any] | None:
    if token_logprobs is None:
        return None
    content = []
    for token, logprob in token_logprobs:
        entry: dict[str, Any] = {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}
        # Engines report only the sampled token's logprob, so top_logprobs holds just that token.
        entry["top_logprobs"] = [{"token": token, "logprob": logprob, "bytes": entry["bytes"]}] if top_n > 0 else []
        content.append(entry)
    return {"content": content, "refusal": None}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def completion_body(
    cid: str, model: str, choices: list[ChoiceResult], *, prompt_tokens: int, completion_tokens: int, top_logprobs: int = 0
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": c.message,
                "logprobs": _logprobs_field(c.token_logprobs, top_logprobs),
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
        "system_fingerprint": None,
    }


def stream_events(
    cid: str,
    model: str,
    choices: list[ChoiceResult],
    *,
    prompt_tokens: int,
    completion_tokens: int,
    top_logprobs: int = 0,
    include_usage: bool = False,
) -> Iterator[str]:
    """SSE `data:` lines for already-finished choices: role, content, tool-call deltas, finish, [DONE].

    The engine returns whole completions, so each choice goes out in a few chunks rather than token
    by token; clients that accumulate deltas (all of them) see the same message either way.
    """
    created = int(time.time())

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None) -> str:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    for i, c in enumerate(choices):
        yield chunk(i, {"role": "assistant", "content": ""})
        content = c.message.get("content")
        lp = _logprobs_field(c.token_logprobs, top_logprobs)
        if content:
            yield chunk(i, {"content": content}, logprobs=lp)
            lp = None
        for j, call in enumerate(c.message.get("tool_calls") or []):
            head = {"index": j, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}}
            yield chunk(i, {"tool_calls": [head]})
            yield chunk(i, {"tool_calls": [{"index": j, "function": {"arguments": call["function"]["arguments"]}}]})
        yield chunk(i, {}, finish_reason=c.finish_reason, logprobs=lp)
    if include_usage:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage(prompt_tokens, completion_tokens),
        }
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"


class ChatCompletionsProtocol(WireProtocol):
    """`POST /v1/chat/completions`: the request is already ajet's internal form."""

    name = "chat.completions"

    def parse(self, body: Any, state: ProtocolState) -> WireRequest:
        req = ChatCompletionRequest.model_validate(body)
        if not req.messages:
            raise ProtocolError("messages must not be empty", param="messages")
        return WireRequest(chat=req, stream=bool(req.stream))

    def reply(self, request: WireRequest, result: CompletionResult, state: ProtocolState) -> dict[str, Any] | Iterator[str]:
        req = request.chat
        cid = completion_id()
        top_n = req.top_logprobs or 0
        counts = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}
        if request.stream:
            return stream_events(cid, result.model, result.choices, **counts, top_logprobs=top_n, include_usage=req.include_usage)
        return completion_body(cid, result.model, result.choices, **counts, top_logprobs=top_n)

    def error_body(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
        return openai_error_body(status, message, param=param, code=code)


CHAT_COMPLETIONS = ChatCompletionsProtocol()
