"""The proxy's OpenAI Responses and Anthropic Messages endpoints over real HTTP on 127.0.0.1.

With the official clients (`openai` responses.create / responses.stream, `anthropic`
messages.create / messages.stream / the SDK's tool runner) and an `openai-agents` Agent: tool
loops with and without streaming, chaining (`previous_response_id`, Anthropic threads), one episode
mixing all three protocols, errors in each SDK's own exception types, and token exactness: every
episode's samples train exactly the ids the engine sampled, with their logprobs.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest
from proxy_helpers import ADD_TOOL, ANTHROPIC_ADD_TOOL, RESPONSES_ADD_TOOL, add_until_answer, tokenizer, tool_call_text
from pydantic import TypeAdapter

from ajet.engine.base import SamplingParams
from ajet.proxy import EpisodeLimits, ProxyServer
from ajet.tracker.render import ChatRenderer

pytestmark = pytest.mark.network_loopback

QUESTION = "What is 0+2+1+2?"


def _openai(handle) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=handle.base_url, api_key=handle.api_key, max_retries=0)


def _anthropic(handle, **kwargs) -> anthropic.AsyncAnthropic:
    """An Anthropic client on the proxy URL without /v1 (the client appends /v1/messages)."""
    kwargs.setdefault("api_key", handle.api_key)
    return anthropic.AsyncAnthropic(base_url=kwargs.pop("base_url", handle.base_url.removesuffix("/v1")), max_retries=0, **kwargs)


def assert_one_token_exact_sample(tracker, engine):
    """The episode is one sample whose trained tokens are exactly what the engine sampled, in order,
    with the engine's logprobs, and every engine prompt is a prefix of it."""
    (sample,) = tracker.samples()
    completions = [r.completion for r in engine.requests]
    trained = [t for t, m in zip(sample.input_ids, sample.loss_mask) if m]
    assert trained == [t for c in completions for t in c.token_ids]
    assert [lp for lp, m in zip(sample.rollout_logprobs, sample.loss_mask) if m] == [lp for c in completions for lp in c.logprobs]
    for request in engine.requests:
        assert sample.input_ids[: len(request.prompt_ids)] == request.prompt_ids
    return sample


def _sum_of(arguments: Any) -> str:
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    return str(args["a"] + args["b"])


def _tool_outputs(response) -> list[dict]:
    """function_call_output items answering a Response's function calls with the sum."""
    calls = [o for o in response.output if o.type == "function_call"]
    return [{"type": "function_call_output", "call_id": o.call_id, "output": _sum_of(o.arguments)} for o in calls]


def _sse(text: str) -> list[tuple[str, dict]]:
    """(event name, data) pairs of an SSE body."""
    events = []
    for chunk in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# -- OpenAI Responses -----------------------------------------------------------------------------


async def test_responses_tool_loop_with_input_items_is_one_token_exact_sample(make_proxy):
    proxy, engine = make_proxy(add_until_answer(num_tool_turns=2))
    handle = proxy.open_episode("ep", SamplingParams(max_tokens=128))
    client = _openai(handle)
    items: list[dict] = [{"role": "user", "content": QUESTION}]
    statuses = []
    for _ in range(3):
        resp = await client.responses.create(model="m", instructions="You add.", input=items, tools=[RESPONSES_ADD_TOOL])
        statuses.append(resp.status)
        items += [item.model_dump(exclude_none=True) for item in resp.output]
        items += _tool_outputs(resp)
    assert resp.output_text == "The answer is 42." and statuses == ["completed"] * 3
    first = engine.requests[0]
    # The function tool and instructions render exactly as the chat-completions form of the same request.
    chat_form = [{"role": "system", "content": "You add."}, {"role": "user", "content": QUESTION}]
    assert first.prompt_ids == ChatRenderer(tokenizer()).render_ids(chat_form, [ADD_TOOL], add_generation_prompt=True)
    assert "<tool_response>\n2\n</tool_response>" in engine.requests[1].prompt_text
    assert resp.usage.input_tokens == len(engine.requests[-1].prompt_ids)
    assert resp.usage.output_tokens == len(engine.requests[-1].completion.token_ids)

    tracker = proxy.close_episode(handle.api_key)
    assert_one_token_exact_sample(tracker, engine)
    stats = tracker.metrics()
    assert stats["splices"] == 2 and stats["tool_calls"] == 2 and stats["drift"] == 0


async def test_responses_body_and_stream_events_validate_against_the_sdk_types(make_proxy):
    from openai.types.responses import Response, ResponseStreamEvent

    proxy, _ = make_proxy(lambda _: tool_call_text("add", {"a": 5, "b": 7}, content="Let me add."))
    handle = proxy.open_episode("ep")
    body = {"model": "m", "input": "5+7?", "tools": [RESPONSES_ADD_TOOL]}
    headers = {"Authorization": f"Bearer {handle.api_key}"}
    async with httpx.AsyncClient(base_url=handle.base_url) as http:
        plain = (await http.post("/responses", json=body, headers=headers)).json()
        streamed = await http.post("/responses", json={**body, "stream": True}, headers=headers)
    response = Response.model_validate(plain)  # strict: every field the SDK declares has the right type
    message, call = response.output
    assert message.type == "message" and message.content[0].text == "Let me add."
    assert call.type == "function_call" and call.name == "add" and json.loads(call.arguments) == {"a": 5, "b": 7}
    assert call.call_id.startswith("call_") and response.id.startswith("resp_")

    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = _sse(streamed.text)
    adapter = TypeAdapter(ResponseStreamEvent)
    for name, data in events:
        assert adapter.validate_python(data).type == name
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert events[0][0] == "response.created" and events[-1][0] == "response.completed"
    final = Response.model_validate(events[-1][1]["response"])
    assert [(o.type, getattr(o, "name", None)) for o in final.output] == [("message", None), ("function_call", "add")]
    deltas = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    arguments = "".join(d["delta"] for n, d in events if n == "response.function_call_arguments.delta")
    assert deltas == "Let me add." and json.loads(arguments) == {"a": 5, "b": 7}


async def test_responses_streaming_tool_loop_is_one_token_exact_sample(make_proxy):
    proxy, engine = make_proxy(add_until_answer(num_tool_turns=2))
    handle = proxy.open_episode("ep", SamplingParams(max_tokens=128))
    client = _openai(handle)
    items: list[dict] = [{"role": "user", "content": QUESTION}]
    texts = []
    for turn in range(3):
        if turn % 2 == 0:  # the SDK's stream helper ...
            async with client.responses.stream(model="m", input=items, tools=[RESPONSES_ADD_TOOL]) as stream:
                async for _ in stream:
                    pass
                final = await stream.get_final_response()
        else:  # ... and raw events
            events = [e async for e in await client.responses.create(model="m", input=items, tools=[RESPONSES_ADD_TOOL], stream=True)]
            final = events[-1].response
            assert events[-1].type == "response.completed"
        texts.append(final.output_text)
        items += [item.model_dump(exclude_none=True) for item in final.output]
        items += _tool_outputs(final)
    assert texts == ["Step 0.", "Step 1.", "The answer is 42."]
    tracker = proxy.close_episode(handle.api_key)
    assert_one_token_exact_sample(tracker, engine)
    assert tracker.metrics()["splices"] == 2


async def test_previous_response_id_continues_the_sampled_tokens_within_the_episode_only(make_proxy):
    proxy, engine = make_proxy(add_until_answer(num_tool_turns=1, answer="It is 3."))
    handle, other = proxy.open_episode("ep"), proxy.open_episode("other")
    client = _openai(handle)
    first = await client.responses.create(model="m", instructions="You add.", input="What is 1+2?", tools=[RESPONSES_ADD_TOOL])
    (call,) = [o for o in first.output if o.type == "function_call"]
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "3"}
    second = await client.responses.create(
        model="m", instructions="You add.", previous_response_id=first.id, input=[output], tools=[RESPONSES_ADD_TOOL]
    )
    assert second.output_text == "It is 3." and second.previous_response_id == first.id
    assert "What is 1+2?" in engine.requests[1].prompt_text and "<tool_response>\n3\n</tool_response>" in engine.requests[1].prompt_text

    # Another episode cannot reach this episode's responses; store=false keeps nothing to chain on.
    with pytest.raises(openai.NotFoundError) as info:
        await _openai(other).responses.create(model="m", previous_response_id=first.id, input="x")
    assert info.value.code == "previous_response_not_found"
    unstored = await client.responses.create(model="m", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="m", previous_response_id=unstored.id, input="again")
    # Instructions are not carried over from the previous response (as the API specifies).
    await client.responses.create(model="m", previous_response_id=first.id, input=[output], tools=[RESPONSES_ADD_TOOL])
    assert "You add." not in engine.requests[-1].prompt_text and "What is 1+2?" in engine.requests[-1].prompt_text
    assert len(engine.requests) == 4

    calls = proxy.close_episode(handle.api_key).calls
    assert calls[1].spliced and calls[1].prompt_ids[: len(calls[0].prompt_ids) + len(calls[0].response_ids)] == (
        calls[0].prompt_ids + calls[0].response_ids
    )


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"tools": [{"type": "web_search"}]}, "'web_search' tools run on OpenAI's servers"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice 'file_search'"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]}, "text-only model"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "type 'reasoning' are not supported"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}, "structured output"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversations are not supported"),
    ],
)
async def test_responses_refuses_what_ajet_cannot_honour(make_proxy, extra, words):
    proxy, engine = make_proxy(lambda _: "never")
    handle = proxy.open_episode("ep")
    with pytest.raises(openai.BadRequestError) as info:
        await _openai(handle).responses.create(**{"model": "m", "input": "hi", **extra})
    assert words in info.value.message
    assert engine.requests == []


async def test_responses_logprobs_and_incomplete_replies(make_proxy):
    proxy, engine = make_proxy(lambda _: "a long reply that max_output_tokens will cut")
    handle = proxy.open_episode("ep", SamplingParams(max_tokens=64))
    client = _openai(handle)
    full = await client.responses.create(model="m", input="x", include=["message.output_text.logprobs"], top_logprobs=1)
    logprobs = full.output[0].content[0].logprobs
    assert [e.logprob for e in logprobs] == engine.requests[-1].completion.logprobs
    assert logprobs[0].top_logprobs[0].token == logprobs[0].token
    cut = await client.responses.create(model="m", input="x", max_output_tokens=3)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens" and cut.usage.output_tokens == 3
    events = [e async for e in await client.responses.create(model="m", input="x", max_output_tokens=3, stream=True)]
    assert events[-1].type == "response.incomplete" and events[-1].response.status == "incomplete"
    # An episode limit refuses the turn the same way, without reaching the engine.
    limited = proxy.open_episode("limited", limits=EpisodeLimits(max_turns=0))
    refused = await _openai(limited).responses.create(model="m", input="x")
    assert refused.status == "incomplete" and refused.output_text == "" and len(engine.requests) == 3


# -- Anthropic Messages ---------------------------------------------------------------------------


async def test_anthropic_tool_loop_is_one_token_exact_sample(make_proxy):
    proxy, engine = make_proxy(add_until_answer(num_tool_turns=2))
    handle = proxy.open_episode("ep", SamplingParams(max_tokens=128))
    client = _anthropic(handle)
    messages: list[dict] = [{"role": "user", "content": QUESTION}]
    stop_reasons = []
    for _ in range(3):
        msg = await client.messages.create(model="m", max_tokens=128, system="You add.", messages=messages, tools=[ANTHROPIC_ADD_TOOL])
        stop_reasons.append(msg.stop_reason)
        messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]})
        results = [{"type": "tool_result", "tool_use_id": b.id, "content": _sum_of(b.input)} for b in msg.content if b.type == "tool_use"]
        if results:
            messages.append({"role": "user", "content": results})
    assert stop_reasons == ["tool_use", "tool_use", "end_turn"] and msg.content[0].text == "The answer is 42."
    chat_form = [{"role": "system", "content": "You add."}, {"role": "user", "content": QUESTION}]
    assert engine.requests[0].prompt_ids == ChatRenderer(tokenizer()).render_ids(chat_form, [ADD_TOOL], add_generation_prompt=True)
    assert msg.usage.input_tokens == len(engine.requests[-1].prompt_ids)
    assert msg.usage.output_tokens == len(engine.requests[-1].completion.token_ids)
    tracker = proxy.close_episode(handle.api_key)
    assert_one_token_exact_sample(tracker, engine)
    assert tracker.metrics()["splices"] == 2


async def test_anthropic_body_and_stream_events_validate_against_the_sdk_types(make_proxy):
    from anthropic.types import Message, RawMessageStreamEvent

    proxy, _ = make_proxy(lambda _: tool_call_text("add", {"a": 5, "b": 7}, content="Let me add."))
    handle = proxy.open_episode("ep")
    body = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "5+7?"}], "tools": [ANTHROPIC_ADD_TOOL]}
    headers = {"x-api-key": handle.api_key, "anthropic-version": "2023-06-01"}
    base = handle.base_url.removesuffix("/v1")
    async with httpx.AsyncClient(base_url=base) as http:
        plain = (await http.post("/v1/messages", json=body, headers=headers)).json()
        streamed = await http.post("/v1/messages", json={**body, "stream": True}, headers=headers)
    message = Message.model_validate(plain)
    text, tool_use = message.content
    assert text.text == "Let me add." and tool_use.name == "add" and tool_use.input == {"a": 5, "b": 7}
    assert message.stop_reason == "tool_use" and message.id.startswith("msg_")
    events = _sse(streamed.text)
    adapter = TypeAdapter(RawMessageStreamEvent)
    for name, data in events:
        assert adapter.validate_python(data).type == name
    assert [n for n, _ in events] == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert json.loads(events[5][1]["delta"]["partial_json"]) == {"a": 5, "b": 7}
    assert events[7][1]["delta"]["stop_reason"] == "tool_use"


async def test_anthropic_streaming_tool_loop_is_one_token_exact_sample(make_proxy):
    proxy, engine = make_proxy(add_until_answer(num_tool_turns=2))
    handle = proxy.open_episode("ep", SamplingParams(max_tokens=128))
    client = _anthropic(handle)
    messages: list[dict] = [{"role": "user", "content": QUESTION}]
    texts = []
    for turn in range(3):
        kwargs = {"model": "m", "max_tokens": 128, "messages": messages, "tools": [ANTHROPIC_ADD_TOOL]}
        if turn % 2 == 0:  # the SDK's stream helper ...
            async with client.messages.stream(**kwargs) as stream:
                streamed_text = "".join([t async for t in stream.text_stream])
                msg = await stream.get_final_message()
            assert streamed_text == msg.content[0].text
        else:  # ... and raw events, accumulated by hand
            blocks: list[dict] = []
            async for event in await client.messages.create(**kwargs, stream=True):
                if event.type == "content_block_start":
                    blocks.append(event.content_block.model_dump(exclude_none=True))
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    blocks[event.index]["text"] += event.delta.text
                elif event.type == "content_block_delta":
                    blocks[event.index]["input"] = json.loads(event.delta.partial_json)
            usage = {"input_tokens": 0, "output_tokens": 0}
            msg = anthropic.types.Message.model_validate({"id": "x", "type": "message", "role": "assistant", "model": "m", "content": blocks, "usage": usage})
        texts.append(msg.content[0].text)
        messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]})
        results = [{"type": "tool_result", "tool_use_id": b.id, "content": _sum_of(b.input)} for b in msg.content if b.type == "tool_use"]
        if results:
            messages.append({"role": "user", "content": results})
    assert texts == ["Step 0.", "Step 1.", "The answer is 42."]
    tracker = proxy.close_episode(handle.api_key)
    assert_one_token_exact_sample(tracker, engine)
    assert tracker.metrics()["splices"] == 2


async def test_anthropic_keys_paths_and_auth_errors(make_proxy):
    proxy, engine = make_proxy(lambda _: "hi")
    handle = proxy.open_episode("ep")
    ask = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "x"}]}
    # x-api-key on the URL without /v1; the OpenAI-style URL (with /v1) works too; so does a bearer token.
    assert (await _anthropic(handle).messages.create(**ask)).content[0].text == "hi"
    assert (await _anthropic(handle, base_url=handle.base_url).messages.create(**ask)).content[0].text == "hi"
    bearer = anthropic.AsyncAnthropic(base_url=handle.base_url.removesuffix("/v1"), auth_token=handle.api_key, max_retries=0)
    assert (await bearer.messages.create(**ask)).content[0].text == "hi"
    with pytest.raises(anthropic.AuthenticationError):
        await _anthropic(handle, api_key="not-a-key").messages.create(**ask)
    async with httpx.AsyncClient() as http:
        r = await http.post(handle.base_url + "/messages", json=ask)
    assert r.status_code == 401 and r.json()["type"] == "error" and r.json()["error"]["type"] == "authentication_error"
    proxy.close_episode(handle.api_key)
    with pytest.raises(anthropic.AuthenticationError):
        await _anthropic(handle).messages.create(**ask)
    assert len(engine.requests) == 3


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "Anthropic-defined tool"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "Anthropic-defined tool"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}]}]}, "'image' blocks"),
        ({"messages": [{"role": "system", "content": "x"}]}, "top-level system parameter"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "extended thinking"),
        ({"extra_body": {"mcp_servers": [{"type": "url", "url": "http://x", "name": "x"}]}}, "MCP"),
    ],
)
async def test_anthropic_refuses_what_ajet_cannot_honour(make_proxy, extra, words):
    proxy, engine = make_proxy(lambda _: "never")
    handle = proxy.open_episode("ep")
    ask = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "x"}], **extra}
    with pytest.raises(anthropic.BadRequestError) as info:
        await _anthropic(handle).messages.create(**ask)
    assert words in info.value.message and info.value.body["error"]["type"] == "invalid_request_error"
    assert engine.requests == []


async def test_anthropic_missing_max_tokens_is_a_400_in_anthropic_shape(make_proxy):
    proxy, _ = make_proxy(lambda _: "never")
    handle = proxy.open_episode("ep")
    async with httpx.AsyncClient() as http:
        r = await http.post(handle.base_url + "/messages", json={"model": "m", "messages": []}, headers={"x-api-key": handle.api_key})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error" and "max_tokens" in r.json()["error"]["message"]


async def test_anthropic_stop_reasons_and_count_tokens(make_proxy):
    proxy, engine = make_proxy(lambda _: "one two END three")
    handle = proxy.open_episode("ep", SamplingParams(max_tokens=64))
    client = _anthropic(handle)
    ask = {"model": "m", "system": "Be brief.", "messages": [{"role": "user", "content": "count"}], "tools": [ANTHROPIC_ADD_TOOL]}
    stopped = await client.messages.create(**ask, max_tokens=64, stop_sequences=["END"])
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "END") and "END" in engine.requests[-1].params.stop
    assert (await client.messages.create(**ask, max_tokens=64)).stop_reason == "end_turn"
    cut = await client.messages.create(**ask, max_tokens=2)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2 and engine.requests[-1].params.max_tokens == 2
    counted = await client.messages.count_tokens(**ask)
    assert counted.input_tokens == len(engine.requests[0].prompt_ids)


async def test_anthropic_thread_continues_the_sampled_tokens(make_proxy):
    proxy, engine = make_proxy(add_until_answer(num_tool_turns=1, answer="It is 3."))
    handle = proxy.open_episode("ep")
    client = _anthropic(handle)
    ask = {"model": "m", "max_tokens": 64}
    first = await client.beta.messages.create(
        **ask, system="You add.", tools=[ANTHROPIC_ADD_TOOL], messages=[{"role": "user", "content": "1+2?"}], thread={"type": "create"}
    )
    tool_use = first.content[-1]
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "3"}]}
    # Only the new turn: system and tools come from the thread.
    second = await client.beta.messages.create(**ask, messages=[result], thread={"type": "continue", "previous_message_id": first.id})
    assert second.content[0].text == "It is 3."
    assert "You add." in engine.requests[1].prompt_text and "<tools>" in engine.requests[1].prompt_text
    with pytest.raises(anthropic.NotFoundError):
        await client.beta.messages.create(**ask, messages=[result], thread={"type": "continue", "previous_message_id": "msg_unknown"})
    tracker = proxy.close_episode(handle.api_key)
    assert_one_token_exact_sample(tracker, engine)
    assert tracker.metrics()["splices"] == 1


async def test_engine_failure_is_a_500_in_each_protocol(make_proxy):
    def boom(_):
        raise RuntimeError("engine exploded")

    proxy, _ = make_proxy(boom)
    handle = proxy.open_episode("ep")
    with pytest.raises(openai.InternalServerError) as openai_error:
        await _openai(handle).responses.create(model="m", input="x")
    with pytest.raises(anthropic.InternalServerError) as anthropic_error:
        await _anthropic(handle).messages.create(model="m", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert "engine exploded" in str(openai_error.value) and "engine exploded" in str(anthropic_error.value)
    with pytest.raises(openai.AuthenticationError):
        await openai.AsyncOpenAI(base_url=handle.base_url, api_key="wrong", max_retries=0).responses.create(model="m", input="x")


# -- one episode, three protocols -----------------------------------------------------------------


async def test_one_episode_mixing_three_protocols_merges_into_one_token_exact_sample(make_proxy):
    """Turn 1 over Chat Completions, turn 2 over Responses, turn 3 over Anthropic Messages, each
    re-sending the whole history in its own shape: still one sample, tool results masked out."""
    proxy, engine = make_proxy(add_until_answer(num_tool_turns=2))
    handle = proxy.open_episode("ep", SamplingParams(max_tokens=128))
    system = "You add."

    chat = await _openai(handle).chat.completions.create(
        model="m", messages=[{"role": "system", "content": system}, {"role": "user", "content": QUESTION}], tools=[ADD_TOOL]
    )
    (call1,) = chat.choices[0].message.tool_calls
    items: list[dict] = [
        {"role": "user", "content": QUESTION},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": chat.choices[0].message.content}]},
        {"type": "function_call", "call_id": call1.id, "name": "add", "arguments": call1.function.arguments},
        {"type": "function_call_output", "call_id": call1.id, "output": "RESULT-0"},
    ]
    resp = await _openai(handle).responses.create(model="m", instructions=system, input=items, tools=[RESPONSES_ADD_TOOL])
    text2, call2 = resp.output[0].content[0].text, resp.output[1]
    messages = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": [{"type": "text", "text": chat.choices[0].message.content},
                                          {"type": "tool_use", "id": call1.id, "name": "add", "input": json.loads(call1.function.arguments)}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call1.id, "content": "RESULT-0"}]},
        {"role": "assistant", "content": [{"type": "text", "text": text2},
                                          {"type": "tool_use", "id": call2.call_id, "name": "add", "input": json.loads(call2.arguments)}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call2.call_id, "content": "RESULT-1"}]},
    ]  # fmt: skip
    final = await _anthropic(handle).messages.create(model="m", max_tokens=128, system=system, messages=messages, tools=[ANTHROPIC_ADD_TOOL])
    assert final.content[0].text == "The answer is 42."

    tracker = proxy.close_episode(handle.api_key)
    sample = assert_one_token_exact_sample(tracker, engine)
    assert tracker.metrics()["splices"] == 2 and tracker.metrics()["drift"] == 0
    tok = tokenizer()
    for result in ("RESULT-0", "RESULT-1"):
        ids = tok.encode(result, add_special_tokens=False)
        start = next(i for i in range(len(sample.input_ids)) if sample.input_ids[i : i + len(ids)] == ids)
        assert sample.loss_mask[start : start + len(ids)] == [0] * len(ids)


# -- agent frameworks -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["run", "run_streamed", "previous_response_id"])
async def test_openai_agents_agent_with_a_function_tool(make_proxy, mode):
    agents = pytest.importorskip("agents")  # openai-agents (the dev extra)

    proxy, engine = make_proxy(add_until_answer(num_tool_turns=2))
    handle = proxy.open_episode("ep", SamplingParams(max_tokens=128))
    executed = []

    @agents.function_tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        executed.append((a, b))
        return a + b

    model = agents.OpenAIResponsesModel(model="ajet", openai_client=_openai(handle))
    agent = agents.Agent(name="adder", instructions="You add.", tools=[add], model=model)
    run_config = agents.RunConfig(tracing_disabled=True)  # never export rollouts to OpenAI's trace backend
    if mode == "run_streamed":
        result = agents.Runner.run_streamed(agent, QUESTION, max_turns=5, run_config=run_config)
        async for _ in result.stream_events():
            pass
    else:
        chain = mode == "previous_response_id"
        result = await agents.Runner.run(agent, QUESTION, max_turns=5, run_config=run_config, auto_previous_response_id=chain)
    assert result.final_output == "The answer is 42."
    assert executed == [(0, 2), (1, 2)]
    assert "<tool_response>\n3\n</tool_response>" in engine.requests[2].prompt_text
    tracker = proxy.close_episode(handle.api_key)
    assert_one_token_exact_sample(tracker, engine)
    assert tracker.metrics()["tool_calls"] == 2 and tracker.metrics()["splices"] == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_sdk_tool_runner_agent_loop(make_proxy, stream):
    proxy, engine = make_proxy(add_until_answer(num_tool_turns=2))
    handle = proxy.open_episode("ep", SamplingParams(max_tokens=128))
    executed = []

    @anthropic.beta_async_tool
    async def add(a: int, b: int) -> str:
        """Add two integers.

        Args:
            a: first addend
            b: second addend
        """
        executed.append((a, b))
        return str(a + b)

    runner = _anthropic(handle).beta.messages.tool_runner(
        model="m", max_tokens=128, system="You add.", messages=[{"role": "user", "content": QUESTION}], tools=[add], max_iterations=5, stream=stream
    )
    final = await runner.until_done()
    assert final.content[0].text == "The answer is 42." and final.stop_reason == "end_turn"
    assert executed == [(0, 2), (1, 2)]
    tracker = proxy.close_episode(handle.api_key)
    assert_one_token_exact_sample(tracker, engine)
    assert tracker.metrics()["tool_calls"] == 2 and tracker.metrics()["splices"] == 2


# -- the tiny random model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_engine():
    import torch

    from ajet.engine.hf import HFEngine
    from ajet.models import load_model

    torch.set_num_threads(2)
    engine = HFEngine(load_model("builtin:tiny-qwen2-random"), tokenizer(), max_batch_size=8, seed=0)
    yield engine
    engine.shutdown()


async def test_tiny_model_over_responses_and_messages_is_token_exact(hf_engine):
    """Real sampled garbage, re-sent as text by both clients, still trains exactly the sampled ids."""
    proxy = ProxyServer(hf_engine, tokenizer())
    proxy.start()
    try:
        handle = proxy.open_episode("ep", SamplingParams(max_tokens=12, temperature=1.0, seed=7))
        client, claude = _openai(handle), _anthropic(handle)
        items: list[dict] = [{"role": "user", "content": "Hello"}]
        first = await client.responses.create(model="m", input=items, include=["message.output_text.logprobs"])
        items += [o.model_dump(exclude_none=True) for o in first.output] + [{"role": "user", "content": "more"}]
        second = await client.responses.create(model="m", input=items)
        messages = [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "more"},
            {"role": "assistant", "content": second.output_text},
            {"role": "user", "content": "again"},
        ]
        third = await claude.messages.create(model="m", max_tokens=12, messages=messages)
        tracker = proxy.close_episode(handle.api_key)
    finally:
        proxy.stop()
    calls = tracker.calls
    assert len(calls) == 3
    assert [e.logprob for e in first.output[0].content[0].logprobs] == pytest.approx(calls[0].response_logprobs)
    assert third.usage.output_tokens == len(calls[2].response_ids)
    trained = [t for s in tracker.samples() for t, m in zip(s.input_ids, s.loss_mask) if m]
    assert trained == [t for c in calls for t in c.response_ids]
    if not any(c.num_tool_calls or c.tool_call_format_error for c in calls[:2]):  # (a random <tool_call> is possible)
        assert calls[1].spliced and calls[2].spliced and len(tracker.samples()) == 1
