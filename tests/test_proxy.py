"""The OpenAI-compatible proxy over real HTTP on 127.0.0.1: clients, tool calls, tracking, policies."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
import requests
from proxy_helpers import ADD_TOOL, add_until_answer, tokenizer, tool_call_text

from ajet.engine.base import SamplingParams
from ajet.engine.scripted import ScriptedEngine, scripted_logprob
from ajet.proxy import EpisodeLimits, ProxyServer

pytestmark = pytest.mark.network_loopback


def _client(handle) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=handle.base_url, api_key=handle.api_key, max_retries=0)


async def test_openai_client_gets_tool_calls(make_proxy):
    proxy, engine = make_proxy(lambda _: tool_call_text("add", {"a": 1, "b": 2}, content="Adding."))
    handle = proxy.open_episode("ep", SamplingParams(max_tokens=64))
    resp = await _client(handle).chat.completions.create(
        model="whatever", messages=[{"role": "user", "content": "1+2?"}], tools=[ADD_TOOL], logprobs=True
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Adding."
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "add" and json.loads(call.function.arguments) == {"a": 1, "b": 2}
    sampled = engine.requests[-1].completion
    assert [t.logprob for t in choice.logprobs.content] == sampled.logprobs
    assert resp.usage.completion_tokens == len(sampled.token_ids)
    assert resp.usage.prompt_tokens == len(engine.requests[-1].prompt_ids)
    # The prompt the engine saw is the template render, tools included.
    assert "<tools>" in engine.requests[-1].prompt_text and engine.requests[-1].prompt_text.endswith("<|im_start|>assistant\n")


async def test_openai_streaming_assembles_the_same_tool_call(make_proxy):
    proxy, _ = make_proxy(lambda _: tool_call_text("add", {"a": 5, "b": 7}, content="Let me add."))
    handle = proxy.open_episode("ep", SamplingParams(max_tokens=64))
    stream = await _client(handle).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "5+7?"}], tools=[ADD_TOOL], stream=True, stream_options={"include_usage": True}
    )
    content, args, names, ids, finish, usage = "", {}, {}, {}, None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            content += ch.delta.content or ""
            for tc in ch.delta.tool_calls or []:
                args[tc.index] = args.get(tc.index, "") + (tc.function.arguments or "")
                if tc.function.name:
                    names[tc.index] = tc.function.name
                if tc.id:
                    ids[tc.index] = tc.id
            finish = ch.finish_reason or finish
    assert content == "Let me add."
    assert names == {0: "add"} and json.loads(args[0]) == {"a": 5, "b": 7} and ids[0].startswith("call_")
    assert finish == "tool_calls" and usage.completion_tokens > 0


def test_stream_ends_with_done_sentinel(make_proxy):
    proxy, _ = make_proxy(lambda _: "hello")
    handle = proxy.open_episode("ep")
    with httpx.stream(
        "POST",
        f"{handle.base_url}/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
        headers={"Authorization": f"Bearer {handle.api_key}"},
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_requests_client_gets_tool_calls_and_models_list(make_proxy):
    proxy, _ = make_proxy(lambda _: tool_call_text("add", {"a": 1, "b": 1}))
    handle = proxy.open_episode("ep")
    r = requests.post(
        f"{handle.base_url}/chat/completions",
        json={"model": "fill_whatever_model", "messages": [{"role": "user", "content": "1+1"}], "tools": [ADD_TOOL], "unknown_extra": 1},
        headers={"Authorization": f"Bearer {handle.api_key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"][0]["function"]["name"] == "add"
    models = requests.get(f"{handle.base_url}/models", timeout=30).json()
    assert models["data"][0]["id"] == "ajet"


def test_langchain_chat_openai_bind_tools(make_proxy):
    from langchain_openai import ChatOpenAI

    proxy, _ = make_proxy(lambda _: tool_call_text("add", {"a": 2, "b": 3}))
    handle = proxy.open_episode("ep")
    llm = ChatOpenAI(base_url=handle.base_url, api_key=handle.api_key, model="ajet", max_retries=0)
    msg = llm.bind_tools([ADD_TOOL]).invoke("What is 2+3?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "add" and msg.tool_calls[0]["args"] == {"a": 2, "b": 3}
    assert msg.tool_calls[0]["id"].startswith("call_")


def test_langchain_tool_loop_merges_into_one_sample(make_proxy):
    """LangChain re-sends history in its own shape (content "", re-serialised arguments); still one sample."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    proxy, engine = make_proxy(add_until_answer(num_tool_turns=1, answer="It is 3."))
    handle = proxy.open_episode("ep")
    llm = ChatOpenAI(base_url=handle.base_url, api_key=handle.api_key, model="ajet", max_retries=0).bind_tools([ADD_TOOL])
    history = [HumanMessage("What is 1+2?")]
    first = llm.invoke(history)
    history += [first, ToolMessage("3", tool_call_id=first.tool_calls[0]["id"])]
    second = llm.invoke(history)
    assert second.content == "It is 3." and not second.tool_calls
    tracker = proxy.close_episode(handle.api_key)
    (sample,) = tracker.samples()
    trained = [t for t, m in zip(sample.input_ids, sample.loss_mask) if m]
    assert trained == [t for r in engine.requests for t in r.completion.token_ids]
    assert tracker.metrics()["splices"] == 1


async def test_three_turn_tool_episode_is_one_merged_token_exact_sample(make_proxy):
    proxy, engine = make_proxy(add_until_answer(num_tool_turns=2))
    handle = proxy.open_episode("ep-3", SamplingParams(max_tokens=128), task_id="task-7")
    client = _client(handle)
    messages = [{"role": "system", "content": "You add."}, {"role": "user", "content": "What is 0+2+1+2?"}]
    tool_results = []
    for _ in range(3):
        resp = await client.chat.completions.create(model="m", messages=messages, tools=[ADD_TOOL])
        msg = resp.choices[0].message
        messages.append(msg.model_dump(exclude_none=True))
        for tc in msg.tool_calls or []:
            result = f"RESULT-{len(tool_results)}"
            tool_results.append(result)
            messages.append({"role": "tool", "tool_call_id": tc.id, "content": result})
    assert messages[-1]["content"] == "The answer is 42."

    tracker = proxy.close_episode(handle.api_key)
    (sample,) = tracker.samples()
    completions = [r.completion for r in engine.requests]
    assert len(completions) == 3
    trained = [t for t, m in zip(sample.input_ids, sample.loss_mask) if m == 1]
    assert trained == [t for c in completions for t in c.token_ids]
    assert [lp for lp, m in zip(sample.rollout_logprobs, sample.loss_mask) if m == 1] == [lp for c in completions for lp in c.logprobs]
    assert sample.rollout_logprobs[-1] == scripted_logprob(len(completions[-1].token_ids) - 1)
    # Each engine request saw exactly the tracked prefix: the sample is what the model conditioned on.
    for request in engine.requests:
        assert sample.input_ids[: len(request.prompt_ids)] == request.prompt_ids
    # Tool results are context (mask 0) only.
    tok = tokenizer()
    for result in tool_results:
        ids = tok.encode(result, add_special_tokens=False)
        start = next(i for i in range(len(sample.input_ids)) if sample.input_ids[i : i + len(ids)] == ids)
        assert sample.loss_mask[start : start + len(ids)] == [0] * len(ids)
    assert sample.task_id == "task-7" and sample.episode_id == "ep-3"
    stats = tracker.metrics()
    assert stats["turns"] == 3 and stats["tool_calls"] == 2 and stats["splices"] == 2 and stats["drift"] == 0
    assert stats["response_tokens"] == len(trained)


async def test_concurrent_episodes_never_share_context(make_proxy):
    async def echo(prompt_text: str) -> str:
        await asyncio.sleep(0.01)  # let the two episodes interleave
        last_user = prompt_text.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0]
        return f"echo:{last_user}"

    proxy, _ = make_proxy(echo)
    handles = [proxy.open_episode(f"ep-{name}") for name in ("alpha", "beta")]

    async def run(handle, word):
        client = _client(handle)
        messages = []
        for turn in range(3):
            messages.append({"role": "user", "content": f"{word}-{turn}"})
            resp = await client.chat.completions.create(model="m", messages=messages)
            assert resp.choices[0].message.content == f"echo:{word}-{turn}"
            messages.append({"role": "assistant", "content": resp.choices[0].message.content})

    await asyncio.gather(run(handles[0], "alpha"), run(handles[1], "beta"))
    tok = tokenizer()
    for handle, mine, other in ((handles[0], "alpha", "beta"), (handles[1], "beta", "alpha")):
        tracker = proxy.close_episode(handle.api_key)
        (sample,) = tracker.samples()
        text = tok.decode(sample.input_ids)
        assert all(f"{mine}-{t}" in text for t in range(3)) and other not in text
        assert all(other not in tok.decode(c.prompt_ids) for c in tracker.calls)


async def test_bad_missing_and_closed_keys_get_401(make_proxy):
    proxy, engine = make_proxy(lambda _: "hi")
    handle = proxy.open_episode("ep")
    body = {"messages": [{"role": "user", "content": "x"}]}
    url = f"{handle.base_url}/chat/completions"
    async with httpx.AsyncClient() as http:
        r = await http.post(url, json=body, headers={"Authorization": "Bearer not-a-key"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = await http.post(url, json=body)
        assert r.status_code == 401
        assert (await http.post(url, json=body, headers={"Authorization": f"Bearer {handle.api_key}"})).status_code == 200
        proxy.close_episode(handle.api_key)
        assert (await http.post(url, json=body, headers={"Authorization": f"Bearer {handle.api_key}"})).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        await openai.AsyncOpenAI(base_url=handle.base_url, api_key="wrong", max_retries=0).chat.completions.create(model="m", messages=body["messages"])
    assert len(engine.requests) == 1


async def test_malformed_tool_call_is_plain_content_and_counted(make_proxy):
    bad = '<tool_call>\n{"name": "add", "arguments": {"a": 1,\n</tool_call>'
    proxy, _ = make_proxy(lambda _: bad)
    handle = proxy.open_episode("ep")
    resp = await _client(handle).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], tools=[ADD_TOOL])
    assert resp.choices[0].message.content == bad
    assert resp.choices[0].message.tool_calls is None and resp.choices[0].finish_reason == "stop"
    stats = proxy.close_episode(handle.api_key).metrics()
    assert stats["format_errors"] == 1 and stats["tool_calls"] == 0


async def test_sampling_defaults_come_from_episode_and_override_is_opt_in(make_proxy):
    episode_sampling = SamplingParams(max_tokens=50, temperature=0.7, top_p=0.9)
    for allow, expect_temp, expect_top_p in ((False, 0.7, 0.9), (True, 0.1, 0.5)):
        proxy, engine = make_proxy(lambda _: "ok", allow_request_sampling_override=allow)
        handle = proxy.open_episode("ep", episode_sampling, EpisodeLimits(max_response_tokens_per_turn=30))
        await _client(handle).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], temperature=0.1, top_p=0.5, max_tokens=1000, seed=3, stop=["END"]
        )
        params = engine.requests[-1].params
        assert (params.temperature, params.top_p) == (expect_temp, expect_top_p)
        assert params.max_tokens == 30  # request's 1000 capped by the per-turn limit
        assert params.seed == 3 and "END" in params.stop
        assert tokenizer().convert_tokens_to_ids("<|im_end|>") in params.stop_token_ids
        await _client(handle).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_completion_tokens=5)
        assert engine.requests[-1].params.max_tokens == 5


async def test_turn_limit_gives_empty_length_reply_without_calling_engine(make_proxy):
    proxy, engine = make_proxy(lambda _: "fine")
    handle = proxy.open_episode("ep", limits=EpisodeLimits(max_turns=1))
    client = _client(handle)
    first = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
    second = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "b"}])
    assert first.choices[0].message.content == "fine"
    assert second.choices[0].finish_reason == "length" and second.choices[0].message.content == ""
    assert len(engine.requests) == 1
    stats = proxy.close_episode(handle.api_key).metrics()
    assert stats["turn_limit_hits"] == 1 and stats["turns"] == 1 and stats["truncations"] == 1


async def test_prompt_over_limit_is_refused_and_max_tokens_cut_is_length(make_proxy):
    proxy, engine = make_proxy(lambda _: "a long reply that will be cut by max tokens")
    handle = proxy.open_episode("ep", SamplingParams(max_tokens=3), EpisodeLimits(max_prompt_tokens=40))
    client = _client(handle)
    short = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    long = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "word " * 100}])
    assert long.choices[0].finish_reason == "length" and long.choices[0].message.content == ""
    assert len(engine.requests) == 1
    assert proxy.close_episode(handle.api_key).metrics()["prompt_limit_hits"] == 1


async def test_n_choices_are_sampled_and_recorded_separately(make_proxy):
    counter = iter(range(100))
    proxy, engine = make_proxy(lambda _: f"choice {next(counter)}")
    handle = proxy.open_episode("ep")
    resp = await _client(handle).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], n=3)
    assert sorted(c.message.content for c in resp.choices) == ["choice 0", "choice 1", "choice 2"]
    tracker = proxy.close_episode(handle.api_key)
    assert len(tracker.calls) == 3 and len(tracker.samples()) == 3 and tracker.metrics()["turns"] == 1
    assert len(engine.requests) == 3 and len({tuple(r.prompt_ids) for r in engine.requests}) == 1


async def test_tool_choice_none_drops_tools_from_prompt(make_proxy):
    proxy, engine = make_proxy(lambda _: "no tools")
    handle = proxy.open_episode("ep")
    client = _client(handle)
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], tools=[ADD_TOOL], tool_choice="none")
    assert "<tools>" not in engine.requests[-1].prompt_text
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], tools=[ADD_TOOL], tool_choice="required")
    assert "<tools>" in engine.requests[-1].prompt_text


async def test_engine_failure_is_an_openai_style_500(make_proxy):
    def boom(_):
        raise RuntimeError("engine exploded")

    proxy, _ = make_proxy(boom)
    handle = proxy.open_episode("ep")
    with pytest.raises(openai.InternalServerError) as info:
        await _client(handle).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert "engine exploded" in str(info.value)


async def test_real_hf_engine_over_http_is_token_exact(tiny_hf_engine):
    # No tool parsing: the random model's text comes back verbatim whatever it samples (a stray
    # `<tool_call>` would otherwise turn into tool_calls and change what the agent re-sends).
    proxy = ProxyServer(tiny_hf_engine, tokenizer(), disable_tool_calls=True)
    proxy.start()
    try:
        handle = proxy.open_episode("ep", SamplingParams(max_tokens=12, temperature=1.0, seed=7))
        client = _client(handle)
        messages = [{"role": "user", "content": "Hello"}]
        responses = []
        for turn in range(2):
            resp = await client.chat.completions.create(model="m", messages=messages, logprobs=True)
            responses.append(resp)
            messages += [{"role": "assistant", "content": resp.choices[0].message.content}, {"role": "user", "content": f"more {turn}"}]
        tracker = proxy.close_episode(handle.api_key)
    finally:
        proxy.stop()
    calls = tracker.calls
    assert len(calls) == 2
    samples = tracker.samples()
    trained = [t for s in samples for t, m in zip(s.input_ids, s.loss_mask) if m == 1]
    assert trained == calls[0].response_ids + calls[1].response_ids
    for resp, call in zip(responses, calls):
        assert [t.logprob for t in resp.choices[0].logprobs.content] == pytest.approx(call.response_logprobs)
        assert resp.usage.completion_tokens == len(call.response_ids)
    # The agent re-sent the decoded garbage as text; the second prompt still holds the sampled ids.
    assert calls[0].num_tool_calls == 0
    assert calls[1].spliced and len(samples) == 1
    assert calls[1].prompt_ids[: len(calls[0].prompt_ids) + len(calls[0].response_ids)] == calls[0].prompt_ids + calls[0].response_ids


async def test_force_disable_toolcalls_hides_tools_and_skips_parsing(make_proxy):
    from ajet.config import load_config

    text = tool_call_text("add", {"a": 1, "b": 2})
    config = load_config(None, overrides=["rollout.force_disable_toolcalls=true"])
    engine = ScriptedEngine(tokenizer(), lambda _: text)
    proxy = ProxyServer.from_config(engine, tokenizer(), config.rollout)
    proxy.start()
    try:
        handle = proxy.open_episode("ep")
        resp = await _client(handle).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], tools=[ADD_TOOL])
    finally:
        proxy.stop()
    assert "<tools>" not in engine.requests[-1].prompt_text
    assert resp.choices[0].message.tool_calls is None and resp.choices[0].message.content == text


# -- the scripted engine itself ---------------------------------------------------------------------


async def test_scripted_engine_tokenises_appends_stop_and_truncates():
    tok = tokenizer()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    seen = []

    async def reply(prompt_text, prompt_ids):
        seen.append((prompt_text, prompt_ids))
        return "Hello world, this is a reply."

    engine = ScriptedEngine(tok, reply)
    prompt = tok.encode("<|im_start|>user\nhi<|im_end|>\n", add_special_tokens=False)
    full = await engine.generate(prompt, SamplingParams(max_tokens=100))
    assert seen == [("<|im_start|>user\nhi<|im_end|>\n", prompt)]
    assert full.token_ids == tok.encode("Hello world, this is a reply.", add_special_tokens=False) + [end]
    assert full.finish_reason == "stop" and full.logprobs == [scripted_logprob(i) for i in range(len(full.token_ids))]
    assert full.logprobs[:2] == [-0.01, -0.02]
    cut = await engine.generate(prompt, SamplingParams(max_tokens=3))
    assert cut.finish_reason == "length" and cut.token_ids == full.token_ids[:3]
    engine.update_weights(iter([]), version=5)
    assert (await engine.generate(prompt, SamplingParams())).policy_versions[0] == 5
    ids_reply = ScriptedEngine(tok, lambda _: [11, 12])
    ids_reply.update_weights([], version=2)
    exact = await ids_reply.generate(prompt, SamplingParams())
    assert exact.token_ids == [11, 12, end] and exact.policy_versions == [2, 2, 2]


def test_proxy_overhead_bench_runs_and_every_path_samples_the_same_tokens(tmp_path):
    """The benchmark's paths (in-process vs HTTP in each protocol) must produce identical rollouts to be comparable."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "proxy_overhead.py"
    args = ["--engines", "scripted", "--episodes", "2", "--turns", "2", "--concurrency", "2", "--repeats", "1", "--out-dir", str(tmp_path)]
    subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True, text=True, timeout=300)
    (result_file,) = tmp_path.glob("proxy_overhead-*.json")
    rows = json.loads(result_file.read_text())["results"]
    assert [row["protocol"] for row in rows] == ["chat", "responses", "messages"]
    assert all(row["engine"] == "scripted" and row["calls"] == 4 and row["same_tokens"] is True for row in rows)
