"""AjetTuner: its forms (AgentScope, OpenAI, Anthropic) reach the episode's proxy; a real AgentScope ReActAgent runs on it."""

from __future__ import annotations

import dataclasses
import json

import pytest
from proxy_helpers import tokenizer, tool_call_text

from ajet.engine.base import SamplingParams
from ajet.engine.scripted import ScriptedEngine
from ajet.proxy import ProxyServer
from ajet.tuner import AjetTuner, AnthropicBaseUrlApiKey, OaiBaseUrlApiKey

pytestmark = pytest.mark.network_loopback


@pytest.fixture
def scripted_proxy():
    """scripted_proxy(reply_fn) -> (proxy, engine, handle, tuner)."""
    started = []

    def make(reply_fn):
        engine = ScriptedEngine(tokenizer(), reply_fn)
        proxy = ProxyServer(engine, tokenizer())
        proxy.start()
        started.append(proxy)
        handle = proxy.open_episode("ep-tuner", SamplingParams(max_tokens=128))
        return proxy, engine, handle, AjetTuner(handle.base_url, handle.api_key, handle.episode_id)

    yield make
    for proxy in started:
        proxy.stop()


def test_oai_baseurl_apikey_is_frozen_and_points_at_the_episode():
    tuner = AjetTuner("http://127.0.0.1:1/v1", "ajet-secret", "ep")
    pair = tuner.as_oai_baseurl_apikey()
    assert pair == OaiBaseUrlApiKey("http://127.0.0.1:1/v1", "ajet-secret")
    with pytest.raises(dataclasses.FrozenInstanceError):
        pair.api_key = "other"  # type: ignore[misc]


def test_anthropic_baseurl_apikey_is_the_proxy_url_without_v1():
    tuner = AjetTuner("http://127.0.0.1:1/v1", "ajet-secret", "ep")
    assert tuner.as_anthropic_baseurl_apikey() == AnthropicBaseUrlApiKey("http://127.0.0.1:1", "ajet-secret")
    assert tuner.as_oai_baseurl_apikey().base_url == "http://127.0.0.1:1/v1"


async def test_anthropic_and_responses_clients_are_tracked_into_the_episode_and_closed(scripted_proxy):
    proxy, engine, handle, tuner = scripted_proxy(lambda _: "one reply")
    claude = tuner.as_raw_anthropic_sdk_client()
    assert str(claude.base_url).rstrip("/") == handle.base_url.removesuffix("/v1") and claude.api_key == handle.api_key
    message = await claude.messages.create(model="x", max_tokens=32, messages=[{"role": "user", "content": "hi"}])
    response = await tuner.as_raw_openai_sdk_client().responses.create(model="x", input="hi")
    assert message.content[0].text == response.output_text == "one reply"
    calls = proxy.close_episode(handle.api_key).calls
    assert [c.response_ids for c in calls] == [r.completion.token_ids for r in engine.requests] and len(calls) == 2
    clients = list(tuner._clients)
    await tuner.aclose()
    assert len(clients) == 2 and all(c.is_closed() for c in clients)


async def test_raw_openai_client_is_tracked_into_the_episode(scripted_proxy):
    proxy, engine, handle, tuner = scripted_proxy(lambda _: "raw reply")
    client = tuner.as_raw_openai_sdk_client()
    assert str(client.base_url).rstrip("/") == handle.base_url and client.api_key == handle.api_key
    resp = await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == "raw reply"
    (call,) = proxy.close_episode(handle.api_key).calls
    assert call.response_ids == engine.requests[0].completion.token_ids
    model_client = tuner.as_agentscope_model().client
    await tuner.aclose()
    assert client.is_closed() and model_client.is_closed()


async def test_as_agentscope_model_returns_openai_chat_model(scripted_proxy):
    from agentscope.model import ChatModelBase, OpenAIChatModel

    _, _, _, tuner = scripted_proxy(lambda _: tool_call_text("add", {"a": 1, "b": 2}, content="Adding."))
    model = tuner.as_agentscope_model()
    assert isinstance(model, OpenAIChatModel) and isinstance(tuner, ChatModelBase)
    assert tuner.stream is False and tuner.model_name == "ajet"
    resp = await model([{"role": "user", "content": "1+2"}], tools=[_add_schema()])
    blocks = {b["type"]: b for b in resp.content}
    assert blocks["text"]["text"] == "Adding."
    assert blocks["tool_use"]["name"] == "add" and blocks["tool_use"]["input"] == {"a": 1, "b": 2}


def _add_schema():
    return {
        "type": "function",
        "function": {"name": "add", "description": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}},
    }


@pytest.mark.parametrize(
    ("formatter_name", "stream"), [("OpenAIChatFormatter", False), ("DashScopeChatFormatter", False), ("OpenAIChatFormatter", True)]
)
async def test_react_agent_with_model_tuner_completes_a_tool_turn(scripted_proxy, formatter_name, stream):
    import agentscope.formatter
    from agentscope.agent import ReActAgent
    from agentscope.memory import InMemoryMemory
    from agentscope.message import Msg, TextBlock
    from agentscope.tool import Toolkit, ToolResponse

    executed = []

    def add(a: int, b: int) -> ToolResponse:
        """Add two integers.

        Args:
            a (int): first addend
            b (int): second addend
        """
        executed.append((a, b))
        return ToolResponse(content=[TextBlock(type="text", text=f"SUM={a + b}")])

    def reply(prompt_text: str) -> str:
        if "SUM=" not in prompt_text:
            return tool_call_text("add", {"a": 20, "b": 22}, content="I will use the tool.")
        return "The sum is 42."

    proxy, engine, handle, tuner = scripted_proxy(reply)
    tuner.stream = stream  # ReActAgent then consumes an async generator of ChatResponse chunks
    toolkit = Toolkit()
    toolkit.register_tool_function(add)
    agent = ReActAgent(
        name="math",
        sys_prompt="You are a math agent.",
        model=tuner,
        formatter=getattr(agentscope.formatter, formatter_name)(),
        toolkit=toolkit,
        memory=InMemoryMemory(),
        max_iters=4,
    )
    agent.set_console_output_enabled(False)
    result = await agent.reply(Msg("user", "What is 20+22?", role="user"))

    assert executed == [(20, 22)]
    assert result.get_text_content() == "The sum is 42."
    assert len(engine.requests) == 2
    # The second prompt carried the tool's output, and the tools were in the prompt.
    assert "SUM=42" in engine.requests[1].prompt_text and "<tools>" in engine.requests[0].prompt_text
    tracker = proxy.close_episode(handle.api_key)
    stats = tracker.metrics()
    assert stats["tool_calls"] == 1 and stats["turns"] == 2
    # AgentScope re-sends the history in its own shape; the tracker still splices it into one sample.
    (sample,) = tracker.samples()
    trained = [t for t, m in zip(sample.input_ids, sample.loss_mask) if m]
    assert trained == engine.requests[0].completion.token_ids + engine.requests[1].completion.token_ids
    args_text = json.dumps({"a": 20, "b": 22})
    assert args_text in tokenizer().decode(sample.input_ids)
