"""AjetTuner: the per-episode handle a workflow uses to reach the model being trained.

    async def execute(self, workflow_task, tuner):
        agent = ReActAgent(model=tuner, formatter=DashScopeChatFormatter(), toolkit=..., memory=...)
        client = tuner.as_raw_openai_sdk_client()          # openai.AsyncOpenAI
        url_key = tuner.as_oai_baseurl_apikey()             # .base_url / .api_key for requests, LangChain

All forms reach the same proxy (ajet.proxy) with the episode's api key, so every call is tracked
into this episode and no other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import openai
from agentscope.model import ChatModelBase, ChatResponse, OpenAIChatModel

@dataclass(frozen=True)
class OaiBaseUrlApiKey:
    """What any OpenAI-compatible HTTP client needs: POST {base_url}/chat/completions with
    `Authorization: Bearer {api_key}`."""

    base_url: str
    api_key: str


class AjetTuner(ChatModelBase):
    """One per episode. Is itself an AgentScope chat model (so `ReActAgent(model=tuner)` works):
    calls are delegated to an `OpenAIChatModel` pointed at the proxy.

    `stream` (AgentScope's flag) defaults to False; ReActAgent flips it temporarily for structured
    output, so it is forwarded to the delegate on every call.
    """

    def __init__(self, base_url: str, api_key: str, episode_id: str, *, model_name: str = "ajet", stream: bool = False) -> None:
        super().__init__(model_name=model_name, stream=stream)
        self.base_url = base_url
        self.api_key = api_key
        self.episode_id = episode_id
        self._agentscope_model: OpenAIChatModel | None = None

    def as_oai_baseurl_apikey(self) -> OaiBaseUrlApiKey:
        return OaiBaseUrlApiKey(base_url=self.base_url, api_key=self.api_key)

    def as_raw_openai_sdk_client(self, **client_kwargs: Any) -> openai.AsyncOpenAI:
        """A fresh `openai.AsyncOpenAI` bound to this episode; kwargs go to its constructor."""
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, **client_kwargs)

    def as_agentscope_model(self) -> OpenAIChatModel:
        """An AgentScope `OpenAIChatModel` bound to this episode (created once, then reused)."""
        if self._agentscope_model is None:
            self._agentscope_model = OpenAIChatModel(
                model_name=self.model_name,
                api_key=self.api_key,
                stream=self.stream,
                client_kwargs={"base_url": self.base_url},
            )
        return self._agentscope_model

    async def __call__(self, *args: Any, **kwargs: Any) -> ChatResponse | Any:
        model = self.as_agentscope_model()
        model.stream = self.stream
        return await model(*args, **kwargs)

    def __repr__(self) -> str:
        return f"AjetTuner(episode_id={self.episode_id!r}, base_url={self.base_url!r})"
