"""The Anthropic Messages wire format (`POST /v1/messages`): request model, translation to and from
ajet's chat messages, the Message object and its SSE events, errors.

The anthropic SDK sends the episode key as `x-api-key` and appends `/v1/messages` to its base URL,
so it is given the proxy's URL without `/v1` (`AjetTuner.as_anthropic_baseurl_apikey`).

Threads (server-held conversations, which the SDK's tool runner uses): a request with
`thread: {"type": "create"}` is stored under its reply's id; one with `{"type": "continue",
"previous_message_id": id}` (an earlier reply of the same episode) sends only the new turn's
messages, and every other field it omits (system, tools, tool_choice, stop_sequences, ...) is
the thread's. The stored conversation holds the reply the tracker recorded, so the next call's
prompt continues its sampled tokens. An unknown id is a 404.

Translation into the chat messages the template renders and the token splice matches:
- `system` (a string or text blocks) -> a leading system message.
- a user message: text blocks -> one user message (blocks joined by "\\n"); each `tool_result`
  block -> a `role: "tool"` message with its `tool_use_id` (text content; `is_error` results keep
  their text, which is what the model reads). Blocks keep their order.
- an assistant message: its text blocks -> the content, its `tool_use` blocks -> tool calls whose
  arguments are the JSON of `input`. The `id` of a tool_use block is the tool-call id the proxy
  minted, which is what the splice matches a re-sent turn on.
- custom tools `{"name", "description", "input_schema"}` -> chat-format function tools, so the same
  tool renders to the same prompt tokens in every protocol.
- the reply: a text block (the text outside tool calls; one empty text block when there is
  nothing else), then one `tool_use` block per parsed tool call. stop_reason: "tool_use" when it
  calls tools, "max_tokens" when cut by max_tokens or refused by an episode limit,
  "stop_sequence" (with `stop_sequence` set) when one of `stop_sequences` ended it, else "end_turn".
  As on the chat endpoint, the text keeps the stop sequence the model sampled.

Refused with a 400 (`invalid_request_error`), because the real API would do something ajet
cannot: Anthropic-defined / server tools (web_search, bash, text_editor, computer,
code_execution, ...), extended `thinking`, `mcp_servers`, `container`, structured output
(`output_format`, `output_config.format`), non-text content (images, documents), thinking and
server-tool blocks in the history, and a `system` role inside `messages`. Other fields
(`metadata`, `top_k`, `service_tier`, `cache_control` on blocks, ...) are ignored: the episode's
sampling settings apply, as on the chat endpoint.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from ajet.proxy.openai_format import ChatCompletionRequest, ChoiceResult
from ajet.proxy.protocol import CompletionResult, ProtocolError, ProtocolState, WireProtocol, WireRequest

# Anthropic's error `type` for each HTTP status (its SDK picks the exception class by the status).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class _Refusals(BaseModel):
    """The fields ajet refuses (see the module docstring); everything else unknown is ignored."""

    model_config = ConfigDict(extra="ignore")

    thinking: dict[str, Any] | None = None
    mcp_servers: list[Any] | None = None
    container: Any = None
    output_format: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None


class CountTokensRequest(_Refusals):
    """`POST /v1/messages/count_tokens`: the request without the sampling fields."""

    model: str
    messages: list[dict[str, Any]]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    """`POST /v1/messages`."""

    max_tokens: int
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = None
    thread: dict[str, Any] | None = None


@dataclass
class _Parsed:
    request: MessagesRequest  # with a continued thread's fields filled in
    conversation: list[dict[str, Any]]  # the chat messages without the system prompt


_THREADS = "anthropic.threads"  # ProtocolState key: message id -> _Parsed of the call that replied


# -- request -> chat ----------------------------------------------------------------------------


def _refuse_unsupported(req: _Refusals) -> None:
    if req.thinking and req.thinking.get("type", "enabled") != "disabled":
        raise ProtocolError("thinking: extended thinking is not available on ajet's local model; remove the thinking parameter")
    if req.mcp_servers:
        raise ProtocolError("mcp_servers: remote MCP servers are not supported; run the MCP tools in your agent as custom tools")
    if req.container is not None:
        raise ProtocolError("container: code-execution containers are not supported")
    if req.output_format is not None or (req.output_config or {}).get("format") is not None:
        raise ProtocolError(
            "structured output (output_format / output_config.format) cannot be enforced on ajet's local model; "
            "validate the reply in your agent"
        )


def _text_blocks(content: Any, where: str, *, allowed: tuple[str, ...] = ("text",)) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ProtocolError(f"{where}: content must be a string or a list of content blocks")
    pieces = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in allowed:
            raise ProtocolError(f"{where}.{j}: {kind!r} content blocks are not supported here: ajet's proxy serves a text-only model")
        pieces.append(str(block.get("text", "")))
    return "\n".join(pieces)


def system_messages(system: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    text = _text_blocks(system, "system")
    return [{"role": "system", "content": text}] if text else []


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` as chat messages (see the module docstring)."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise ProtocolError(
                f"{where}.role: {role!r} is not a message role (user, assistant); the system prompt goes in the top-level system parameter"
            )
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise ProtocolError(f"{where}.content must be a string or a list of content blocks")
        if role == "assistant":
            out.append(_assistant_message(blocks, where))
            continue
        texts: list[str] = []
        for j, block in enumerate(blocks):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind == "tool_result":
                if texts:
                    out.append({"role": "user", "content": "\n".join(texts)})
                    texts = []
                result = _text_blocks(block.get("content"), f"{where}.content.{j}.content")
                out.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": result})
            else:
                raise ProtocolError(f"{where}.content.{j}: {kind!r} blocks are not supported in user messages (text, tool_result)")
        if texts or not blocks:
            out.append({"role": "user", "content": "\n".join(texts)})
    return out


def _assistant_message(blocks: list[Any], where: str) -> dict[str, Any]:
    texts, calls = [], []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            calls.append({"id": block.get("id"), "type": "function", "function": {"name": block.get("name"), "arguments": arguments}})
        else:
            raise ProtocolError(
                f"{where}.content.{j}: {kind!r} blocks are not supported in assistant messages (text, tool_use); ajet never produces them"
            )
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts)}
    if calls:
        message["tool_calls"] = calls
    return message


def function_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Custom tools as chat-format tools; Anthropic-defined and server tools are refused."""
    out = []
    for i, tool in enumerate(tools or []):
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise ProtocolError(
                f"tools.{i}: {kind!r} is an Anthropic-defined tool (run on Anthropic's servers, or with a schema only Claude knows); "
                "declare a custom tool with name, description and input_schema and run it in your agent"
            )
        if not tool.get("name") or not isinstance(tool.get("input_schema"), dict):
            raise ProtocolError(f"tools.{i}: a custom tool needs name and input_schema")
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        function["parameters"] = tool["input_schema"]
        out.append({"type": "function", "function": function})
    return out or None


def chat_tool_choice(choice: dict[str, Any] | None) -> str | None:
    """{"type": "none"} keeps the tools out of the prompt; auto, any and a named tool are accepted and
    the model decides (nothing forces a call, as on the chat endpoint)."""
    if choice is None:
        return None
    kind = choice.get("type")
    if kind == "none":
        return "none"
    if kind in ("auto", "any", "tool"):
        return "auto"
    raise ProtocolError(f"tool_choice.type: {kind!r} is not one of auto, any, tool, none")


def _continue_thread(req: MessagesRequest, state: ProtocolState) -> tuple[MessagesRequest, list[dict[str, Any]]]:
    """(the request with the thread's fields for those it omits, the thread's conversation so far)."""
    kind = (req.thread or {}).get("type")
    if kind in (None, "create"):
        return req, []
    if kind != "continue":
        raise ProtocolError(f"thread.type: {kind!r} is not one of create, continue")
    previous = state.get(_THREADS, {}).get(req.thread.get("previous_message_id"))  # type: ignore[union-attr]
    if previous is None:
        raise ProtocolError(
            f"thread.previous_message_id: no threaded message {req.thread.get('previous_message_id')!r} in this episode",  # type: ignore[union-attr]
            status=404,
        )
    # Everything but messages, thread and stream comes from the thread unless this turn sets it.
    update = {key: getattr(req, key) for key in req.model_fields_set}
    update.update(messages=req.messages, thread=req.thread, stream=req.stream)
    return previous.request.model_copy(update=update), list(previous.conversation)


# -- chat result -> Message ----------------------------------------------------------------------


def stop_reason(choice: ChoiceResult, stop_sequences: list[str]) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for a choice (see the module docstring)."""
    if choice.message.get("tool_calls"):
        return "tool_use", None
    if choice.finish_reason == "length":
        return "max_tokens", None
    text = choice.message.get("content") or ""
    # The engine stops at the token that completes a stop string, so one in the text ended the reply.
    hits = sorted((text.find(s), s) for s in stop_sequences if s and s in text)
    if hits:
        return "stop_sequence", hits[0][1]
    return "end_turn", None


def content_blocks(choice: ChoiceResult) -> list[dict[str, Any]]:
    message = choice.message
    blocks: list[dict[str, Any]] = []
    if message.get("content"):
        blocks.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        blocks.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": json.loads(call["function"]["arguments"])})
    # Agents read content[0]; an empty reply (an episode limit) is one empty text block, not [].
    return blocks or [{"type": "text", "text": ""}]


def message_object(request: MessagesRequest, result: CompletionResult) -> dict[str, Any]:
    (choice,) = result.choices
    reason, sequence = stop_reason(choice, request.stop_sequences or [])
    return {
        "id": "msg_" + secrets.token_hex(12),
        "type": "message",
        "role": "assistant",
        "model": result.model,
        "content": content_blocks(choice),
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": {
            "input_tokens": result.prompt_tokens,
            "output_tokens": result.completion_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def stream_events(message: dict[str, Any]) -> Iterator[str]:
    """SSE events for a finished Message: message_start, per block start / delta / stop,
    message_delta (stop_reason, output tokens), message_stop.

    The engine returns whole completions, so each block goes out as one delta; the SDK's
    accumulator (`messages.stream`) assembles the same Message either way.
    """

    def event(kind: str, **fields: Any) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields}, ensure_ascii=False)}\n\n"

    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 0}}
    yield event("message_start", message=start)
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield event("content_block_start", index=index, content_block={"type": "text", "text": ""})
            if block["text"]:
                yield event("content_block_delta", index=index, delta={"type": "text_delta", "text": block["text"]})
        else:
            head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            yield event("content_block_start", index=index, content_block=head)
            partial = json.dumps(block["input"], ensure_ascii=False)
            yield event("content_block_delta", index=index, delta={"type": "input_json_delta", "partial_json": partial})
        yield event("content_block_stop", index=index)
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    yield event("message_delta", delta=delta, usage={"output_tokens": usage["output_tokens"]})
    yield event("message_stop")


class AnthropicMessagesProtocol(WireProtocol):
    """`POST /v1/messages` (see the module docstring); also parses `count_tokens` requests."""

    name = "anthropic.messages"

    def parse(self, body: Any, state: ProtocolState) -> WireRequest:
        req = MessagesRequest.model_validate(body)
        _refuse_unsupported(req)
        if not req.messages:
            raise ProtocolError("messages: at least one message is required")
        req, history = _continue_thread(req, state)
        conversation = history + chat_messages(req.messages)
        chat = ChatCompletionRequest(
            messages=system_messages(req.system) + conversation,
            tools=function_tools(req.tools),
            tool_choice=chat_tool_choice(req.tool_choice),
            temperature=req.temperature,
            top_p=req.top_p,
            max_tokens=req.max_tokens,
            stop=req.stop_sequences,
            n=1,
        )
        return WireRequest(chat=chat, stream=bool(req.stream), original=_Parsed(req, conversation))

    def parse_count_tokens(self, body: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """(chat messages, chat tools) of a count_tokens request, as `parse` would send them."""
        req = CountTokensRequest.model_validate(body)
        _refuse_unsupported(req)
        tools = function_tools(req.tools) if chat_tool_choice(req.tool_choice) != "none" else None
        return system_messages(req.system) + chat_messages(req.messages), tools

    def reply(self, request: WireRequest, result: CompletionResult, state: ProtocolState) -> dict[str, Any] | Iterator[str]:
        parsed: _Parsed = request.original
        message = message_object(parsed.request, result)
        if parsed.request.thread is not None:
            (choice,) = result.choices
            state.setdefault(_THREADS, {})[message["id"]] = _Parsed(parsed.request, parsed.conversation + [choice.message])
        return stream_events(message) if request.stream else message

    def error_body(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}


ANTHROPIC_MESSAGES = AnthropicMessagesProtocol()
