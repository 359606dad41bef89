"""The OpenAI Responses wire format (`POST /v1/responses`): request model, translation to and from
ajet's chat messages, the Response object and its SSE events, errors.

Translation into the chat messages the template renders and the token splice matches:
- `instructions` -> a leading system message. `input` (a string, or a list of items), in order:
  a message item (`{"role", "content"}`, with or without `"type": "message"`; content a string or
  input_text / output_text parts; role "developer" -> "system") -> that chat message;
  `function_call` items -> the tool calls of one assistant message, merged into the assistant
  message item right before them (one model turn: its text, then its calls, as this module emits
  them); `function_call_output` -> a `role: "tool"` message with that `call_id`.
- `previous_response_id` (an earlier response of the same episode): that response's conversation
  (its input and output, not its instructions, as the API specifies) comes before this `input`.
  Responses are stored for it unless `store` is false.
- function tools `{"type": "function", "name", "description", "parameters"}` -> chat-format tools,
  so the same tool renders to the same prompt tokens in every protocol. `strict` is dropped:
  nothing can constrain local sampling to a schema, and the model decides (as for tool_choice).
- the reply: its text as a `message` item (when it has text or no tool call), then one
  `function_call` item per parsed tool call; `call_id` is the tool-call id the splice matches on.
  A reply cut by max_output_tokens (or refused by an episode limit) has status "incomplete".

Refused with a 400 that names the field, because the real API would do something ajet cannot:
hosted / built-in tools (web_search, file_search, computer, code_interpreter, mcp, ...) and a
tool_choice naming one; non-text input (images, files, audio); reasoning, item_reference and other
item types ajet never produces; `background`; server-side `conversation`s; stored `prompt`
templates; structured output (`text.format` json_schema / json_object). An unknown
`previous_response_id` is a 404. Other fields are ignored, as on the chat endpoint.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from ajet.proxy.openai_format import ChatCompletionRequest, ChoiceResult, openai_error_body
from ajet.proxy.protocol import CompletionResult, ProtocolError, ProtocolState, WireProtocol, WireRequest

# The `include` value that asks for the sampled tokens' logprobs on output_text parts.
LOGPROBS_INCLUDE = "message.output_text.logprobs"
_STORE = "responses.stored"  # ProtocolState key: response id -> its conversation (chat messages)
_TEXT_PARTS = ("input_text", "output_text", "text")
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


class ResponsesRequest(BaseModel):
    """The request fields the proxy reads; unknown fields are ignored (see the module docstring)."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[Any] | None = None
    instructions: str | None = None
    model: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    top_logprobs: int | None = None
    include: list[str] | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    stream: bool | None = None
    metadata: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None


@dataclass
class _Parsed:
    request: ResponsesRequest
    conversation: list[dict[str, Any]]  # the chat messages without the instructions


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


# -- request -> chat ----------------------------------------------------------------------------


def function_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses function tools as chat-format tools (see the module docstring); others refused."""
    out = []
    for i, tool in enumerate(tools or []):
        kind = tool.get("type")
        if kind != "function":
            raise ProtocolError(
                f"tools[{i}]: {kind!r} tools run on OpenAI's servers and cannot run against ajet's local model; "
                'declare a function tool ({"type": "function", "name": ..., "parameters": ...}) and run it in your agent',
                param=f"tools[{i}].type",
            )
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise ProtocolError(f"tools[{i}].name is required", param=f"tools[{i}].name")
        function: dict[str, Any] = {"name": tool["name"]}
        for key in ("description", "parameters"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return out or None


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | None:
    """"none" keeps the tools out of the prompt; a function or allowed-tools choice is accepted and
    the model decides (nothing forces a call, as on the chat endpoint); hosted tools are refused."""
    if choice is None or choice in ("none", "auto", "required"):
        return choice
    kind = choice.get("type") if isinstance(choice, dict) else choice
    if kind in ("function", "allowed_tools"):
        return "auto"
    raise ProtocolError(f"tool_choice {kind!r} names a tool ajet cannot run; use none, auto, required or a function", param="tool_choice")


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ProtocolError(f"{where}: content must be a string or a list of parts", param=where)
    pieces = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if isinstance(part, str):
            pieces.append(part)
        elif kind in _TEXT_PARTS:
            pieces.append(str(part.get("text", "")))
        elif kind == "refusal":
            pieces.append(str(part.get("refusal", "")))
        else:
            raise ProtocolError(
                f"{where}[{j}]: {kind!r} content is not supported: ajet's proxy serves a text-only model", param=f"{where}[{j}].type"
            )
    return "".join(pieces)


def input_messages(items: str | list[Any] | None) -> list[dict[str, Any]]:
    """`input` as chat messages (see the module docstring)."""
    if items is None:
        return []
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    turn_open = False  # out[-1] is an assistant turn that the following function_call items extend
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise ProtocolError(f"{where} must be an object", param=where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = _ROLES.get(item.get("role"))  # type: ignore[arg-type]
            if role is None:
                raise ProtocolError(f"{where}.role must be user, assistant, system or developer", param=f"{where}.role")
            out.append({"role": role, "content": _text(item.get("content"), f"{where}.content")})
            turn_open = role == "assistant"
        elif kind == "function_call":
            if not item.get("call_id") or not item.get("name"):
                raise ProtocolError(f"{where}: a function_call needs call_id and name", param=where)
            call = {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": item.get("arguments", "")}}
            if turn_open:
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
                turn_open = True
        elif kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": _text(item.get("output"), f"{where}.output")})
            turn_open = False
        else:
            raise ProtocolError(
                f"{where}: input items of type {kind!r} are not supported "
                "(ajet serves message, function_call and function_call_output items)",
                param=f"{where}.type",
            )
    return out


def _refuse_unsupported(req: ResponsesRequest) -> None:
    if req.background:
        raise ProtocolError("background responses are not supported: call without background", param="background")
    if req.conversation is not None:
        raise ProtocolError(
            "server-side conversations are not supported: send the history in input or chain with previous_response_id", param="conversation"
        )
    if req.prompt is not None:
        raise ProtocolError("stored prompt templates are not supported: send instructions and input", param="prompt")
    fmt = (req.text or {}).get("format") or {}
    if fmt.get("type", "text") != "text":
        raise ProtocolError(
            f"text.format {fmt.get('type')!r} (structured output) cannot be enforced on ajet's local model; "
            "drop it and validate the reply in your agent",
            param="text.format",
        )


# -- chat result -> Response ---------------------------------------------------------------------


def _logprobs(choice: ChoiceResult, top_n: int) -> list[dict[str, Any]]:
    entries = []
    for token, logprob in choice.token_logprobs or []:
        raw = list(token.encode("utf-8"))
        # Engines report only the sampled token's logprob, so top_logprobs holds just that token.
        top = [{"token": token, "bytes": raw, "logprob": logprob}] if top_n > 0 else []
        entries.append({"token": token, "bytes": raw, "logprob": logprob, "top_logprobs": top})
    return entries


def output_items(choice: ChoiceResult, *, status: str, logprobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reply as Responses output items (see the module docstring)."""
    message = choice.message
    calls = message.get("tool_calls") or []
    items: list[dict[str, Any]] = []
    text = message.get("content") or ""
    if text or not calls:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}
        items.append({"type": "message", "id": _new_id("msg_"), "status": status, "role": "assistant", "content": [part]})
    for call in calls:
        fn = call["function"]
        item = {"type": "function_call", "id": _new_id("fc_"), "call_id": call["id"], "name": fn["name"], "arguments": fn["arguments"]}
        items.append({**item, "status": "completed"})
    return items


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.get("name"),
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": bool(tool.get("strict", False)),
    }


def response_object(rid: str, req: ResponsesRequest, result: CompletionResult, output: list[dict[str, Any]], *, status: str) -> dict[str, Any]:
    """The Response object (fields the SDK's `Response` model declares, values ajet used)."""
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": result.model,
        "output": output,
        "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "store": req.store is not False,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "tool_choice": "auto" if req.tool_choice is None else req.tool_choice,
        "tools": [_echo_tool(t) for t in req.tools or []],
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "metadata": req.metadata or {},
        "usage": {
            "input_tokens": result.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": result.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }


def stream_events(response: dict[str, Any]) -> Iterator[str]:
    """SSE events for a finished Response, in the order the API sends them: created, in_progress,
    per output item added / deltas / done, then response.completed (or response.incomplete).

    The engine returns whole completions, so each text or arguments string goes out as one delta;
    the SDK's stream accumulators assemble the same Response either way. No `[DONE]` sentinel.
    """
    sequence = itertools.count()

    def event(kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": next(sequence), **fields}
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    snapshot = {**response, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
    yield event("response.created", response=snapshot)
    yield event("response.in_progress", response=snapshot)
    for index, item in enumerate(response["output"]):
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            yield event("response.output_item.added", output_index=index, item={**item, "status": "in_progress", "content": []})
            for c, part in enumerate(item["content"]):
                yield event("response.content_part.added", **where, content_index=c, part={**part, "text": "", "logprobs": []})
                if part["text"]:
                    yield event("response.output_text.delta", **where, content_index=c, delta=part["text"], logprobs=part["logprobs"])
                yield event("response.output_text.done", **where, content_index=c, text=part["text"], logprobs=part["logprobs"])
                yield event("response.content_part.done", **where, content_index=c, part=part)
        else:
            yield event("response.output_item.added", output_index=index, item={**item, "status": "in_progress", "arguments": ""})
            yield event("response.function_call_arguments.delta", **where, delta=item["arguments"])
            yield event("response.function_call_arguments.done", **where, arguments=item["arguments"], name=item["name"])
        yield event("response.output_item.done", output_index=index, item=item)
    terminal = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
    yield event(terminal, response=response)


class ResponsesProtocol(WireProtocol):
    """`POST /v1/responses` (see the module docstring)."""

    name = "responses"

    def parse(self, body: Any, state: ProtocolState) -> WireRequest:
        req = ResponsesRequest.model_validate(body)
        _refuse_unsupported(req)
        history: list[dict[str, Any]] = []
        if req.previous_response_id is not None:
            stored = state.get(_STORE, {}).get(req.previous_response_id)
            if stored is None:
                raise ProtocolError(
                    f"Previous response with id '{req.previous_response_id}' not found (ajet keeps an episode's stored responses until it ends).",
                    status=404,
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            history = list(stored)
        conversation = history + input_messages(req.input)
        if not conversation:
            raise ProtocolError("input must not be empty", param="input")
        system = [{"role": "system", "content": req.instructions}] if req.instructions else []
        chat = ChatCompletionRequest(
            messages=system + conversation,
            tools=function_tools(req.tools),
            tool_choice=chat_tool_choice(req.tool_choice),
            temperature=req.temperature,
            top_p=req.top_p,
            max_tokens=req.max_output_tokens,
            logprobs=LOGPROBS_INCLUDE in (req.include or []),
            top_logprobs=req.top_logprobs,
            n=1,
        )
        return WireRequest(chat=chat, stream=bool(req.stream), original=_Parsed(req, conversation))

    def reply(self, request: WireRequest, result: CompletionResult, state: ProtocolState) -> dict[str, Any] | Iterator[str]:
        parsed: _Parsed = request.original
        (choice,) = result.choices
        status = "incomplete" if choice.finish_reason == "length" else "completed"
        logprobs = _logprobs(choice, parsed.request.top_logprobs or 0) if request.chat.logprobs else []
        rid = _new_id("resp_")
        body = response_object(rid, parsed.request, result, output_items(choice, status=status, logprobs=logprobs), status=status)
        if parsed.request.store is not False:
            # The conversation as the next call's splice must see it: the returned message is the one
            # the tracker recorded, so a call chained on this id continues its sampled tokens.
            state.setdefault(_STORE, {})[rid] = parsed.conversation + [choice.message]
        return stream_events(body) if request.stream else body

    def error_body(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
        return openai_error_body(status, message, param=param, code=code)


RESPONSES = ResponsesProtocol()
