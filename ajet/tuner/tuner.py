"""AjetTuner: the per-episode handle a workflow uses to reach the model being trained.

    async def execute(self, workflow_task, tuner):
        agent = ReActAgent(model=tuner, formatter=DashScopeChatFormatter(), toolkit=..., memory=...)
        client = tuner.as_raw_openai_sdk_client()          # openai.AsyncOpenAI: chat.completions, responses
        url_key = tuner.as_oai_baseurl_apikey()             # .base_url / .api_key for requests, LangChain
        claude = tuner.as_raw_anthropic_sdk_client()        # anthropic.AsyncAnthropic: messages
        url_key = tuner.as_anthropic_baseurl_apikey()       # .base_url (no /v1) / .api_key for other Anthropic clients

All forms reach the same proxy (ajet.proxy) with the episode's api key, so every call, in any of
its protocols (Chat Completions, Responses, Anthropic Messages), is tracked into this episode and
no other.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import openai
from agentscope.model import ChatModelBase, ChatResponse, OpenAIChatModel

if TYPE_CHECKING:
    import anthropic


@dataclass(frozen=True)
class OaiBaseUrlApiKey:
    """What any OpenAI-compatible HTTP client needs: POST {base_url}/chat/completions with
    `Authorization: Bearer {api_key}`."""

    base_url: str
    api_key: str
    # Seconds one model call may take: the episode's own timeout. Give it to your client as its
    # read timeout; a shorter one gives up on a call that is only queued behind a busy engine.
    request_timeout: float | None = None


@dataclass(frozen=True)
class AnthropicBaseUrlApiKey:
    """What an Anthropic Messages client needs: `base_url` without `/v1` (the client appends
    `/v1/messages`), and the key it sends as `x-api-key`."""

    base_url: str
    api_key: str
    request_timeout: float | None = None  # as OaiBaseUrlApiKey.request_timeout


class AjetTuner(ChatModelBase):
    """One per episode. Is itself an AgentScope chat model (so `ReActAgent(model=tuner)` works):
    calls are delegated to an `OpenAIChatModel` pointed at the proxy.

    `stream` (AgentScope's flag) defaults to False; when True the reply comes as an async generator
    with one chunk (see __call__), which is all a ReActAgent needs.

    `request_timeout` (the runner passes `rollout.episode_timeout`) is the read timeout of every
    client the tuner makes. The SDKs' default (600 s, then two re-sends) is shorter than a call can
    take on a loaded CPU engine, where a reply waits for the whole batch: at 25 episodes on one
    core, 16 of 50 evaluation episodes failed with APITimeoutError (bench/RESULTS.md, section 7).
    The episode's timeout bounds every call anyway.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        episode_id: str,
        *,
        model_name: str = "ajet",
        stream: bool = False,
        request_timeout: float | None = None,
    ) -> None:
        super().__init__(model_name=model_name, stream=stream)
        self.base_url = base_url
        self.api_key = api_key
        self.episode_id = episode_id
        self.request_timeout = request_timeout
        self._agentscope_model: OpenAIChatModel | None = None
        self._clients: list[Any] = []  # SDK clients this tuner made (openai / anthropic), closed in aclose()
        self._judge_inputs: dict[str, Any] = {}

    def update_judge_input_dictionary(self, **values: Any) -> None:
        """The older AgentScope-tuner way to hand the judge values (`final_answer=...`): they reach it
        as keys of `workflow_output.metadata` (keys the workflow's own metadata sets win)."""
        self._judge_inputs.update(values)

    def add_judge_inputs_to(self, output: Any) -> None:
        """Copy the values given to `update_judge_input_dictionary` into `output.metadata` (a
        WorkflowOutput); done where the workflow ran, before the output travels to the judge."""
        metadata = getattr(output, "metadata", None)
        if isinstance(metadata, dict):
            for key, value in self._judge_inputs.items():
                metadata.setdefault(key, value)

    def as_oai_baseurl_apikey(self) -> OaiBaseUrlApiKey:
        """For OpenAI clients: `{base_url}/chat/completions` and `{base_url}/responses`."""
        return OaiBaseUrlApiKey(base_url=self.base_url, api_key=self.api_key, request_timeout=self.request_timeout)

    def as_anthropic_baseurl_apikey(self) -> AnthropicBaseUrlApiKey:
        """For Anthropic Messages clients: `{base_url}/v1/messages` with `x-api-key: {api_key}`."""
        base = self.base_url.rstrip("/")
        return AnthropicBaseUrlApiKey(base_url=base.removesuffix("/v1"), api_key=self.api_key, request_timeout=self.request_timeout)

    def as_raw_anthropic_sdk_client(self, **client_kwargs: Any) -> anthropic.AsyncAnthropic:
        """A fresh `anthropic.AsyncAnthropic` bound to this episode; kwargs go to its constructor.

        The tuner closes it in `aclose()` (the runner calls that when the episode ends).
        """
        import anthropic  # on first use: importing it takes ~1 s of CPU, which most workflows never need

        endpoint = self.as_anthropic_baseurl_apikey()
        if endpoint.base_url.startswith("http://"):
            # Plain HTTP on loopback: skip loading the system CA bundle (see _http_client).
            client_kwargs.setdefault("http_client", anthropic.DefaultAsyncHttpxClient(verify=False))
        if self.request_timeout is not None:
            client_kwargs.setdefault("timeout", self.request_timeout)
        client = anthropic.AsyncAnthropic(base_url=endpoint.base_url, api_key=endpoint.api_key, **client_kwargs)
        self._clients.append(client)
        return client

    def as_raw_openai_sdk_client(self, **client_kwargs: Any) -> openai.AsyncOpenAI:
        """A fresh `openai.AsyncOpenAI` bound to this episode; kwargs go to its constructor.

        The tuner closes it in `aclose()` (the runner calls that when the episode ends).
        """
        client_kwargs.setdefault("http_client", self._http_client())
        if self.request_timeout is not None:
            client_kwargs.setdefault("timeout", self.request_timeout)
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, **client_kwargs)
        self._clients.append(client)
        return client

    def as_agentscope_model(self) -> OpenAIChatModel:
        """A non-streaming AgentScope `OpenAIChatModel` bound to this episode (created once, reused)."""
        if self._agentscope_model is None:
            client_kwargs: dict[str, Any] = {"base_url": self.base_url, "http_client": self._http_client()}
            if self.request_timeout is not None:
                client_kwargs["timeout"] = self.request_timeout
            self._agentscope_model = OpenAIChatModel(
                model_name=self.model_name, api_key=self.api_key, stream=False, client_kwargs=client_kwargs
            )
        return self._agentscope_model

    async def __call__(self, *args: Any, **kwargs: Any) -> ChatResponse | AsyncGenerator[ChatResponse, None]:
        # The delegate never streams: AgentScope 1.0.21's OpenAIChatModel stream parser breaks on
        # openai>=2's ChoiceDelta (`"data" in delta.audio` with audio=None). With `self.stream` set
        # (ReActAgent reads it to decide how to consume the result) the whole reply is yielded once.
        response = await self.as_agentscope_model()(*args, **kwargs)
        if not self.stream:
            return response
        # The delegate was built with stream=False, so this is one ChatResponse, not a generator.
        return _single_chunk(cast(ChatResponse, response))

    def _http_client(self) -> openai.DefaultAsyncHttpxClient | None:
        # The proxy speaks plain HTTP on loopback, yet a default client loads the system CA bundle
        # (~60-90 ms of CPU per client, measured in bench/proxy_overhead.py): once per episode
        # and form. For an http:// base_url, TLS settings are unused, so skip loading them.
        if self.base_url.startswith("http://"):
            return openai.DefaultAsyncHttpxClient(verify=False)
        return None

    async def aclose(self) -> None:
        """Close the HTTP clients this tuner created, on the loop that made them."""
        clients, self._clients = self._clients, []
        if self._agentscope_model is not None:
            clients.append(self._agentscope_model.client)
            self._agentscope_model = None
        for client in clients:
            await client.close()

    def __repr__(self) -> str:
        return f"AjetTuner(episode_id={self.episode_id!r}, base_url={self.base_url!r})"


async def _single_chunk(response: ChatResponse) -> AsyncGenerator[ChatResponse, None]:
    yield response
