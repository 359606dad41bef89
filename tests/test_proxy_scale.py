"""The proxy under concurrency: routing under load, back-pressure (429 + Retry-After), closing an
episode while its request is in flight, and the route table other endpoints plug into."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import threading

import anthropic
import httpx
import openai
import pytest
from proxy_helpers import ADD_TOOL, tokenizer, tool_call_text

from ajet.engine.base import SamplingParams
from ajet.proxy import HTTPRequest, HTTPResponse
from ajet.proxy.openai_format import ChatCompletionRequest
from ajet.proxy.protocol import ProtocolError, WireProtocol, WireRequest

pytestmark = pytest.mark.network_loopback

MARKER = re.compile(r"EPI(\d+)Q")


def _marker_tool_loop():
    """reply_fn: `add` twice, then an answer naming the episode marker found in the prompt.

    A random short wait first, so that the episodes' requests interleave in the engine."""

    async def reply(prompt_text: str) -> str:
        await asyncio.sleep(random.random() * 0.005)
        done = prompt_text.count("<tool_response>")
        if done < 2:
            return tool_call_text("add", {"a": done, "b": 2}, content=f"Step {done}.")
        (marker,) = set(MARKER.findall(prompt_text))  # a prompt holding two episodes' markers fails here
        return f"Episode {marker} is done."

    return reply


async def _sse_message(response: httpx.Response) -> dict:
    content, calls = "", {}
    async for line in response.aiter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        for choice in json.loads(line[6:])["choices"]:
            content += choice["delta"].get("content") or ""
            for tc in choice["delta"].get("tool_calls") or []:
                slot = calls.setdefault(tc["index"], {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                slot["id"] = tc.get("id") or slot["id"]
                slot["function"]["name"] += tc["function"].get("name") or ""
                slot["function"]["arguments"] += tc["function"].get("arguments") or ""
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message


async def test_two_hundred_concurrent_episodes_each_tracker_holds_exactly_its_own_calls(make_proxy):
    proxy, engine = make_proxy(_marker_tool_loop())
    n = 200
    handles = [proxy.open_episode(f"ep-{i}", SamplingParams(max_tokens=64)) for i in range(n)]
    url = f"{proxy.base_url}/chat/completions"
    replies: dict[int, list[dict]] = {}

    async def episode(i: int) -> None:
        # One client (one connection) per episode, as AjetTuner gives each workflow; every 4th streams.
        # verify=False: plain http, and loading the CA bundle costs ~60 ms of CPU per client.
        headers = {"Authorization": f"Bearer {handles[i].api_key}"}
        async with httpx.AsyncClient(timeout=120, headers=headers, verify=False) as http:
            messages = [{"role": "system", "content": "You add."}, {"role": "user", "content": f"EPI{i}Q: 0+2+1+2?"}]
            got = replies[i] = []
            for _ in range(3):
                body = {"model": "m", "messages": messages, "tools": [ADD_TOOL], "stream": i % 4 == 0}
                if body["stream"]:
                    async with http.stream("POST", url, json=body) as r:
                        assert r.status_code == 200
                        message = await _sse_message(r)
                else:
                    r = await http.post(url, json=body)
                    assert r.status_code == 200, r.text
                    message = r.json()["choices"][0]["message"]
                got.append(message)
                messages.append(message)
                for tc in message.get("tool_calls") or []:
                    args = json.loads(tc["function"]["arguments"])
                    messages.append({"role": "tool", "tool_call_id": tc["id"], "content": str(args["a"] + args["b"])})

    await asyncio.gather(*(episode(i) for i in range(n)))

    tok = tokenizer()
    assert len(engine.requests) == 3 * n  # nothing lost, nothing sent twice
    for i, handle in enumerate(handles):
        # The reply each client got is its own episode's...
        assert replies[i][-1]["content"] == f"Episode {i} is done."
        tracker = proxy.close_episode(handle.api_key)
        calls = tracker.calls
        # ...and its tracker holds exactly its three calls, in order, each prompt only its own.
        assert [c.turn for c in calls] == [0, 1, 2]
        assert [c.spliced for c in calls] == [False, True, True]
        for call in calls:
            assert set(MARKER.findall(tok.decode(call.prompt_ids))) == {str(i)}
        assert [c.assistant_message["content"] for c in calls] == [m["content"] for m in replies[i]]
        (sample,) = tracker.samples()
        assert [t for t, m in zip(sample.input_ids, sample.loss_mask) if m] == [t for c in calls for t in c.response_ids]


def _gated_engine_reply(gate: threading.Event, entered: threading.Semaphore):
    """reply_fn that waits (without blocking the proxy loop) until the test opens `gate`."""

    async def reply(prompt_text: str) -> str:
        entered.release()
        while not gate.is_set():
            await asyncio.sleep(0.005)
        return "ok"

    return reply


async def _wait_for(sem: threading.Semaphore, count: int) -> None:
    for _ in range(count):
        while not sem.acquire(blocking=False):
            await asyncio.sleep(0.005)


def _engine_reply_until_cancelled(entered: threading.Semaphore, cancelled: threading.Event):
    """An engine reply that takes a minute: releases `entered` on start, sets `cancelled` if cancelled."""

    async def slow(prompt_text: str) -> str:
        entered.release()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "too late"

    return slow


async def test_past_max_inflight_requests_get_429_with_retry_after_and_the_openai_client_retries(make_proxy):
    gate, entered = threading.Event(), threading.Semaphore(0)
    proxy, engine = make_proxy(_gated_engine_reply(gate, entered), max_inflight=2)
    handle = proxy.open_episode("ep")
    url = f"{proxy.base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {handle.api_key}"}
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    async with httpx.AsyncClient(timeout=60) as http:
        held = [asyncio.ensure_future(http.post(url, json=body, headers=headers)) for _ in range(2)]
        await _wait_for(entered, 2)  # both admitted and waiting in the engine

        refused = await http.post(url, json=body, headers=headers)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "proxy_overloaded" and error["type"] == "rate_limit_error"
        assert int(refused.headers["retry-after"]) >= 1 and float(refused.headers["retry-after-ms"]) > 0
        assert refused.headers["x-should-retry"] == "true"

        # The official client waits the given time and re-sends; it gets through once a slot frees.
        client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=handle.api_key, max_retries=50)
        retried = asyncio.ensure_future(client.chat.completions.with_raw_response.create(model="m", messages=body["messages"]))
        while proxy.admission.refused < 2:  # the client's first attempt was refused too
            await asyncio.sleep(0.005)
        gate.set()
        assert all(r.status_code == 200 for r in await asyncio.gather(*held))
        raw = await retried
        assert raw.retries_taken >= 1 and raw.parse().choices[0].message.content == "ok"
        await client.close()
    tracker = proxy.close_episode(handle.api_key)
    # Refused attempts reached neither the engine nor the tracker: 3 answered requests, 3 calls.
    assert len(engine.requests) == 3 and len(tracker.calls) == 3 and tracker.metrics()["turns"] == 3
    assert proxy.admission.inflight == 0


async def test_closing_an_episode_cancels_its_in_flight_request_with_a_clean_410(make_proxy):
    entered, cancelled = threading.Semaphore(0), threading.Event()
    proxy, engine = make_proxy(_engine_reply_until_cancelled(entered, cancelled))
    handle, other = proxy.open_episode("ep"), proxy.open_episode("other")
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=handle.api_key, max_retries=0)
    request = asyncio.ensure_future(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}]))
    await _wait_for(entered, 1)
    tracker = proxy.close_episode(handle.api_key)
    with pytest.raises(openai.APIStatusError) as info:
        await request
    assert info.value.status_code == 410 and info.value.body["code"] == "episode_closed"
    assert cancelled.is_set()  # the engine stopped working on it
    assert tracker.calls == [] and engine.requests == []
    assert proxy.admission.inflight == 0
    # The proxy goes on serving other episodes; the closed key is now unknown.
    proxy.engine.reply_fn = lambda _: "fine"
    ok = await openai.AsyncOpenAI(base_url=proxy.base_url, api_key=other.api_key, max_retries=0).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "y"}]
    )
    assert ok.choices[0].message.content == "fine"
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    await client.close()


async def test_a_reply_finishing_after_close_is_answered_410_and_not_recorded(make_proxy):
    """An engine that does not stop when cancelled: its late completion must not reach the tracker."""
    entered = threading.Semaphore(0)

    async def stubborn(prompt_text: str) -> str:
        entered.release()
        with contextlib.suppress(asyncio.CancelledError):  # swallows the cancellation, answers anyway
            await asyncio.sleep(60)
        return "late"

    proxy, engine = make_proxy(stubborn)
    handle = proxy.open_episode("ep")
    async with httpx.AsyncClient(timeout=60) as http:
        request = asyncio.ensure_future(
            http.post(f"{proxy.base_url}/chat/completions", json={"messages": [{"role": "user", "content": "x"}]},
                      headers={"Authorization": f"Bearer {handle.api_key}"})
        )
        await _wait_for(entered, 1)
        tracker = proxy.close_episode(handle.api_key)
        response = await request
    assert response.status_code == 410 and response.json()["error"]["code"] == "episode_closed"
    assert len(engine.requests) == 1 and tracker.calls == []


async def test_a_client_that_gives_up_cancels_its_generation_and_nothing_is_recorded(make_proxy):
    """The OpenAI SDK times out a slow call and re-sends it: the abandoned one must not run on."""
    entered, cancelled = threading.Semaphore(0), threading.Event()
    proxy, engine = make_proxy(_engine_reply_until_cancelled(entered, cancelled))
    handle = proxy.open_episode("ep")
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=handle.api_key, max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    await _wait_for(entered, 1)
    for _ in range(400):  # the proxy sees the disconnect on its own loop
        if cancelled.is_set() and proxy.admission.inflight == 0:
            break
        await asyncio.sleep(0.01)
    assert cancelled.is_set()  # the engine stopped working on it
    assert proxy.admission.inflight == 0
    # The episode goes on: the re-sent call is answered and is the episode's only recorded call.
    proxy.engine.reply_fn = lambda _: "fine"
    ok = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert ok.choices[0].message.content == "fine"
    tracker = proxy.close_episode(handle.api_key)
    assert [c.assistant_message["content"] for c in tracker.calls] == ["fine"] and len(engine.requests) == 1
    assert tracker.metrics()["abandoned_calls"] == 1
    await client.close()


class _EchoProtocol(WireProtocol):
    """A toy wire protocol: {"say": text} in, {"text", "tokens"} out, errors as {"type": "error", ...}."""

    name = "echo"

    def parse(self, body, state):
        if not isinstance(body, dict) or not isinstance(body.get("say"), str):
            raise ProtocolError("say: a string is required")
        return WireRequest(chat=ChatCompletionRequest(messages=[{"role": "user", "content": body["say"]}]))

    def reply(self, request, result, state):
        return {"text": result.choices[0].message["content"], "tokens": result.completion_tokens}

    def error_body(self, status, message, *, param=None, code=None):
        return {"type": "error", "error": {"status": status, "message": message}}


async def test_an_added_protocol_runs_the_same_pipeline_and_other_paths_fall_through(make_proxy):
    """How another wire format plugs in: a WireProtocol served with add_protocol; raw routes with add_route."""
    proxy, engine = make_proxy(lambda _: "pong")

    async def chunks(request: HTTPRequest) -> HTTPResponse:
        async def gen():
            yield b"data: one\n\n"
            yield b"data: two\n\n"

        return HTTPResponse(stream=gen(), content_type="text/event-stream")

    proxy.add_protocol("/v1/echo", _EchoProtocol())
    proxy.add_route("POST", "/v1/chunks", chunks)
    handle = proxy.open_episode("ep")
    async with httpx.AsyncClient(base_url=proxy.base_url.removesuffix("/v1")) as http:
        r = await http.post("/v1/echo", json={"say": "ping"}, headers={"x-api-key": handle.api_key})
        assert r.status_code == 200 and r.json()["text"] == "pong"
        assert r.json()["tokens"] == len(engine.requests[-1].completion.token_ids)
        r = await http.post("/v1/echo", json={"say": "ping"}, headers={"x-api-key": "nope"})
        assert r.status_code == 401 and r.json()["type"] == "error" and r.json()["error"]["status"] == 401
        r = await http.post("/v1/echo", json={"shout": 1}, headers={"x-api-key": handle.api_key})
        assert r.status_code == 400 and r.json()["error"]["message"] == "say: a string is required"
        r = await http.post("/v1/chunks/", content=b"")  # a trailing slash reaches the same route
        assert r.text == "data: one\n\ndata: two\n\n" and r.headers["content-type"] == "text/event-stream"
        assert (await http.get("/v1/models")).json()["data"][0]["id"] == "ajet"  # the FastAPI fallback
        assert (await http.post("/v1/nothing", json={})).status_code == 404
        r = await http.post("/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {handle.api_key}"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert len(proxy.close_episode(handle.api_key).calls) == 1


def _openai_error(body: dict) -> tuple[str, str | None]:
    return body["error"]["type"], body["error"]["code"]


def _anthropic_error(body: dict) -> tuple[str, str | None]:
    assert body["type"] == "error"
    return body["error"]["type"], None


async def _sdk_chat(handle, **kw):
    async with openai.AsyncOpenAI(base_url=handle.base_url, api_key=handle.api_key, **kw) as client:
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "x"}])
        return raw.retries_taken, raw.parse().choices[0].message.content


async def _sdk_responses(handle, **kw):
    async with openai.AsyncOpenAI(base_url=handle.base_url, api_key=handle.api_key, **kw) as client:
        raw = await client.responses.with_raw_response.create(model="m", input="x")
        return raw.retries_taken, raw.parse().output_text


async def _sdk_messages(handle, **kw):
    async with anthropic.AsyncAnthropic(base_url=handle.base_url.removesuffix("/v1"), api_key=handle.api_key, **kw) as client:
        raw = await client.messages.with_raw_response.create(model="m", max_tokens=16, messages=[{"role": "user", "content": "x"}])
        return raw.retries_taken, (await raw.parse()).content[0].text


# path, body, key header, error reader (type, code), the official SDK's call (retries_taken, text)
PROTOCOLS = {
    "chat": ("/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}]}, "authorization", _openai_error, _sdk_chat),
    "responses": ("/responses", {"model": "m", "input": "x"}, "authorization", _openai_error, _sdk_responses),
    "messages": (
        "/messages",
        {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "x"}]},
        "x-api-key",
        _anthropic_error,
        _sdk_messages,
    ),
}


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
async def test_every_protocol_gets_429_with_retry_after_and_410_when_closed_in_flight(make_proxy, protocol):
    path, body, key_header, read_error, sdk_call = PROTOCOLS[protocol]
    gate, entered = threading.Event(), threading.Semaphore(0)
    proxy, engine = make_proxy(_gated_engine_reply(gate, entered), max_inflight=1)
    holder, handle = proxy.open_episode("holder"), proxy.open_episode("ep")

    def headers(h):
        return {"authorization": f"Bearer {h.api_key}"} if key_header == "authorization" else {"x-api-key": h.api_key}

    url = proxy.base_url + path
    async with httpx.AsyncClient(timeout=60) as http:
        # A chat request of another episode holds the one slot: this protocol's request is refused...
        held = asyncio.ensure_future(http.post(proxy.base_url + "/chat/completions", json=PROTOCOLS["chat"][1], headers={"authorization": f"Bearer {holder.api_key}"}))
        await _wait_for(entered, 1)
        refused = await http.post(url, json=body, headers=headers(handle))
        assert refused.status_code == 429
        kind, code = read_error(refused.json())
        assert kind == "rate_limit_error" and code in (None, "proxy_overloaded")
        assert int(refused.headers["retry-after"]) >= 1 and refused.headers["x-should-retry"] == "true"
        # ...and its official SDK waits, re-sends and gets through once the slot frees.
        retried = asyncio.ensure_future(sdk_call(handle, max_retries=50))
        while proxy.admission.refused < 2:
            await asyncio.sleep(0.005)
        gate.set()
        assert (await held).status_code == 200
        retries, text = await retried
        assert retries >= 1 and text == "ok"
        assert [c.assistant_message["content"] for c in proxy.episode(handle.api_key).tracker.calls] == ["ok"]

        # Closing the episode while a request of it waits for the engine answers it 410 in its shape.
        gate.clear()
        other = proxy.open_episode("other")
        in_flight = asyncio.ensure_future(http.post(url, json=body, headers=headers(other)))
        await _wait_for(entered, 2)  # the retried request entered once; this one now
        tracker = proxy.close_episode(other.api_key)
        closed = await in_flight
        assert closed.status_code == 410
        kind, code = read_error(closed.json())
        assert code in (None, "episode_closed") and "closed" in closed.json()["error"]["message"]
        gate.set()
    assert tracker.calls == [] and proxy.admission.inflight == 0
    assert len(engine.requests) == 2  # the held request and the retried one; nothing refused reached it
