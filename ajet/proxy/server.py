"""The model server every agent talks to: one per process, many episodes at once.

    proxy = ProxyServer(engine, tokenizer)
    base_url = proxy.start()                       # "http://127.0.0.1:PORT/v1"
    handle = proxy.open_episode("ep-1", sampling, limits)
    ...  # the agent calls POST {base_url}/chat/completions with `Authorization: Bearer {handle.api_key}`
    tracker = proxy.close_episode(handle.api_key)  # later calls with that key get 401

Three wire protocols, one pipeline (`_serve`, see ajet.proxy.protocol): OpenAI Chat Completions
(`/v1/chat/completions`), OpenAI Responses (`/v1/responses`) and Anthropic Messages
(`/v1/messages`, key in `x-api-key`). An episode may mix them; every call lands in its tracker.

The api key is the episode: a random secret per episode, so concurrent episodes never share
context and a stale agent cannot write into a closed episode. Each request is rendered (and spliced
onto the episode's earlier sampled tokens, see ajet.tracker.splice), sent to the engine as token ids,
and every sampled choice is recorded token for token before the reply goes out.

Policies (tested in tests/test_proxy.py):
- Sampling: training rollouts must sample at the configured temperature, so the episode's
  SamplingParams win; a request's temperature/top_p apply only with
  `allow_request_sampling_override=True`. A request's max_tokens/max_completion_tokens always apply,
  capped by the episode's max_tokens and its limits. seed and stop strings pass through.
- Limits: a request past `max_turns`, or whose prompt is over `max_prompt_tokens` (or leaves no room
  under `max_total_tokens`), gets an empty assistant reply with finish_reason "length" without
  reaching the engine, and is counted in the tracker's metrics. Agents stop on an empty
  final reply, so the episode ends normally and is judged, instead of raising inside the agent
  library and losing the turns it did sample.
- `tool_choice: "none"` (or `disable_tool_calls=True`, the config's `force_disable_toolcalls`, which
  also turns off tool-call parsing) leaves the tools out of the prompt; "auto", "required" and a named function
  are accepted, and the model decides (nothing forces a call).
- `n > 1`: n independent engine requests; each choice is recorded as its own call (its own branch).
- Missing or unknown api key: 401 with an error body in the request's protocol.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from ajet.config.schema import RolloutConfig
from ajet.engine.base import Completion, Engine, SamplingParams
from ajet.proxy.anthropic_format import ANTHROPIC_MESSAGES
from ajet.proxy.openai_format import CHAT_COMPLETIONS, ChatCompletionRequest, ChoiceResult
from ajet.proxy.protocol import CompletionResult, ProtocolError, ProtocolState, WireProtocol
from ajet.proxy.responses_format import RESPONSES
from ajet.proxy.tool_parser import ParsedReply, parse_tool_calls
from ajet.tracker.call import LLMCall
from ajet.tracker.episode import EpisodeTracker
from ajet.tracker.limits import EpisodeLimits
from ajet.tracker.render import ChatRenderer, end_of_turn_id, normalize_messages
from ajet.tracker.splice import PromptPlan

logger = logging.getLogger(__name__)


@dataclass
class EpisodeHandle:
    """What the runner needs to hand an episode to a workflow (see AjetTuner) and collect it."""

    episode_id: str
    api_key: str
    base_url: str
    tracker: EpisodeTracker
    sampling: SamplingParams
    limits: EpisodeLimits
    # What a protocol keeps between calls of this episode (stored Responses for previous_response_id).
    protocol_state: ProtocolState = field(default_factory=dict)


class ProxyServer:
    """FastAPI app served by uvicorn on its own thread (see module docstring for the policies)."""

    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model_name: str = "ajet",
        allow_request_sampling_override: bool = False,
        disable_tool_calls: bool = False,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.host = host
        self.port = port
        self.model_name = model_name
        self.allow_request_sampling_override = allow_request_sampling_override
        self.disable_tool_calls = disable_tool_calls
        self.base_url = ""
        self._episodes: dict[str, EpisodeHandle] = {}
        self._lock = threading.Lock()
        # One render at a time: a Rust-backed fast tokenizer shared across threads can fail with
        # "Already borrowed", and jinja rendering holds the GIL anyway, so nothing is lost.
        self._render_lock = threading.Lock()
        self._end_id = end_of_turn_id(tokenizer)
        self._stop_ids = sorted({self._end_id} | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    @classmethod
    def from_config(cls, engine: Engine, tokenizer: Any, rollout: RolloutConfig, **kwargs: Any) -> ProxyServer:
        """A proxy with the `ajet.rollout` policies: allow_request_sampling_override, force_disable_toolcalls."""
        return cls(
            engine,
            tokenizer,
            allow_request_sampling_override=rollout.allow_request_sampling_override,
            disable_tool_calls=rollout.force_disable_toolcalls,
            **kwargs,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> str:
        """Serve on a background thread; returns the base url ("http://host:port/v1")."""
        if self._server is not None:
            return self.base_url
        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="ajet-proxy", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"ajet proxy failed to start on {self.host}:{self.port}")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://{self.host}:{port}/v1"
        logger.info("ajet proxy serving at %s", self.base_url)
        return self.base_url

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    # -- episodes -------------------------------------------------------------------------------

    def open_episode(
        self,
        episode_id: str,
        sampling: SamplingParams | None = None,
        limits: EpisodeLimits | None = None,
        *,
        task_id: str = "",
    ) -> EpisodeHandle:
        api_key = "ajet-" + secrets.token_urlsafe(24)
        handle = EpisodeHandle(
            episode_id=episode_id,
            api_key=api_key,
            base_url=self.base_url,
            tracker=EpisodeTracker(episode_id, self.tokenizer, task_id=task_id),
            sampling=sampling or SamplingParams(),
            limits=limits or EpisodeLimits(),
        )
        with self._lock:
            self._episodes[api_key] = handle
        return handle

    def close_episode(self, api_key: str) -> EpisodeTracker:
        """Stop serving the episode (its key gets 401 from now on) and return its tracker."""
        with self._lock:
            handle = self._episodes.pop(api_key)
        return handle.tracker

    def episode(self, api_key: str) -> EpisodeHandle | None:
        with self._lock:
            return self._episodes.get(api_key)

    # -- HTTP -----------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="ajet proxy", docs_url=None, redoc_url=None, openapi_url=None)

        @app.get("/v1/models")
        async def list_models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0, "owned_by": "ajet"}]}

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Response:
            return await self._serve(request, CHAT_COMPLETIONS)

        @app.post("/v1/responses")
        async def responses(request: Request) -> Response:
            return await self._serve(request, RESPONSES)

        # The anthropic client appends /v1/messages to its base URL: the tuner hands it the URL
        # without /v1, and one given the OpenAI-style URL (ending in /v1) still lands here.
        async def messages(request: Request) -> Response:
            return await self._serve(request, ANTHROPIC_MESSAGES)

        async def count_tokens(request: Request) -> Response:
            return await self._count_tokens(request)

        for prefix in ("/v1", "/v1/v1"):
            app.add_api_route(prefix + "/messages", messages, methods=["POST"])
            app.add_api_route(prefix + "/messages/count_tokens", count_tokens, methods=["POST"])

        return app

    async def _serve(self, request: Request, protocol: WireProtocol) -> Response:
        """The one pipeline behind every endpoint: authenticate the episode, translate the request
        (ajet.proxy.protocol), complete it (`_complete`: render + splice, engine, record), reply in
        the request's protocol. Every error goes out in that protocol's shape."""

        def error(status: int, message: str, **kw: Any) -> JSONResponse:
            return JSONResponse(protocol.error_body(status, message, **kw), status_code=status)

        handle = self._authenticate(request)
        if handle is None:
            return error(401, "Invalid or missing API key: it must be an open ajet episode's key.", code="invalid_api_key")
        try:
            wire = protocol.parse(await request.json(), handle.protocol_state)
        except ProtocolError as exc:
            return error(exc.status, exc.message, param=exc.param, code=exc.code)
        except (ValueError, ValidationError) as exc:
            return error(400, f"Invalid request: {exc}")
        try:
            choices, prompt_len = await self._complete(handle, wire.chat)
        except Exception as exc:  # the agent gets a 500 in its SDK's shape instead of a dropped socket
            logger.exception("episode %s: generation failed", handle.episode_id)
            return error(500, f"generation failed: {exc}")
        completion_tokens = sum(c.extra.get("num_tokens", 0) for c in choices)
        result = CompletionResult(choices, prompt_len, completion_tokens, self.model_name)
        body = protocol.reply(wire, result, handle.protocol_state)
        if isinstance(body, dict):
            return JSONResponse(body)
        return StreamingResponse(body, media_type="text/event-stream")

    async def _count_tokens(self, request: Request) -> Response:
        """Anthropic's `POST /v1/messages/count_tokens`: the length of the request's template render
        (what a first call would send; a spliced continuation can differ by a few tokens)."""
        protocol = ANTHROPIC_MESSAGES

        def error(status: int, message: str) -> JSONResponse:
            return JSONResponse(protocol.error_body(status, message), status_code=status)

        if self._authenticate(request) is None:
            return error(401, "Invalid or missing API key: it must be an open ajet episode's key.")
        try:
            messages, tools = protocol.parse_count_tokens(await request.json())
        except ProtocolError as exc:
            return error(exc.status, exc.message)
        except (ValueError, ValidationError) as exc:
            return error(400, f"Invalid request: {exc}")
        ids = await asyncio.to_thread(self._render_ids, normalize_messages(messages), None if self.disable_tool_calls else tools)
        return JSONResponse({"input_tokens": len(ids)})

    def _authenticate(self, request: Request) -> EpisodeHandle | None:
        """The episode whose key the request carries: `Authorization: Bearer <key>` (OpenAI clients,
        which take precedence) or `x-api-key: <key>` (Anthropic clients)."""
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() == "bearer" and key.strip():
            return self.episode(key.strip())
        key = request.headers.get("x-api-key", "").strip()
        return self.episode(key) if key else None

    # -- one request ----------------------------------------------------------------------------

    async def _complete(self, handle: EpisodeHandle, req: ChatCompletionRequest) -> tuple[list[ChoiceResult], int]:
        tracker, limits = handle.tracker, handle.limits
        n = max(1, req.n or 1)
        turn = tracker.begin_turn(limits.max_turns)
        if turn is None:
            return [_empty_length_choice()] * n, 0

        messages = normalize_messages(req.messages)
        offer_tools = req.tools and req.tool_choice != "none" and not self.disable_tool_calls
        tools = req.tools if offer_tools else None
        # Rendering is CPU work (jinja + tokenizer); off the event loop so other episodes keep flowing.
        plan = await asyncio.to_thread(self._prepare_prompt, tracker, messages, tools)
        prompt_len = len(plan.prompt_ids)
        params = self._sampling_for(handle, req, prompt_len)
        if (limits.max_prompt_tokens is not None and prompt_len > limits.max_prompt_tokens) or params.max_tokens <= 0:
            tracker.count("prompt_limit_hits")
            return [_empty_length_choice()] * n, prompt_len

        per_choice = [params if n == 1 or params.seed is None else dataclasses.replace(params, seed=params.seed + i) for i in range(n)]
        completions = await asyncio.gather(*(self.engine.generate(list(plan.prompt_ids), p) for p in per_choice))

        choices = []
        for completion in completions:
            choice, call = self._to_choice(completion, req, plan.prompt_ids, messages, tools, turn, plan.source is not None)
            tracker.record(call)
            choices.append(choice)
        return choices, prompt_len

    def _prepare_prompt(
        self, tracker: EpisodeTracker, messages: list[dict[str, Any]], tools: list[dict] | None
    ) -> PromptPlan:
        with self._render_lock:
            return tracker.prepare_prompt(messages, tools)

    def _render_ids(self, messages: list[dict[str, Any]], tools: list[dict] | None) -> list[int]:
        with self._render_lock:
            return ChatRenderer(self.tokenizer).render_ids(messages, tools, add_generation_prompt=True)

    def _sampling_for(self, handle: EpisodeHandle, req: ChatCompletionRequest, prompt_len: int) -> SamplingParams:
        base, limits = handle.sampling, handle.limits
        max_tokens = base.max_tokens
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if requested is not None:
            max_tokens = min(max_tokens, requested)
        if limits.max_response_tokens_per_turn is not None:
            max_tokens = min(max_tokens, limits.max_response_tokens_per_turn)
        if limits.max_total_tokens is not None:
            max_tokens = min(max_tokens, limits.max_total_tokens - prompt_len)
        max_tokens = min(max_tokens, self.engine.max_model_len - prompt_len)
        temperature, top_p = base.temperature, base.top_p
        if self.allow_request_sampling_override:
            temperature = req.temperature if req.temperature is not None else temperature
            top_p = req.top_p if req.top_p is not None else top_p
        return dataclasses.replace(
            base,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop_token_ids=sorted(set(base.stop_token_ids) | set(self._stop_ids)),
            stop=list(base.stop) + req.stop_list,
            seed=req.seed if req.seed is not None else base.seed,
        )

    def _to_choice(
        self,
        completion: Completion,
        req: ChatCompletionRequest,
        prompt_ids: list[int],
        messages: list[dict[str, Any]],
        tools: list[dict] | None,
        turn: int,
        spliced: bool,
    ) -> tuple[ChoiceResult, LLMCall]:
        ids = list(completion.token_ids)
        text_ids = ids[:-1] if ids and ids[-1] in self._stop_ids else ids
        text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
        parsed = ParsedReply(content=text) if self.disable_tool_calls else parse_tool_calls(text)
        message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
        finish_reason: str
        if parsed.tool_calls:
            message["tool_calls"] = parsed.tool_calls
            finish_reason = "tool_calls" if completion.finish_reason == "stop" else completion.finish_reason
        else:
            if message["content"] is None:
                message["content"] = ""
            finish_reason = completion.finish_reason
        token_logprobs = None
        if req.logprobs:
            token_logprobs = [(self.tokenizer.decode([t]), float(lp)) for t, lp in zip(ids, completion.logprobs)]
        call = LLMCall(
            prompt_ids=list(prompt_ids),
            response_ids=ids,
            response_logprobs=[float(x) for x in completion.logprobs],
            response_versions=list(completion.policy_versions),
            finish_reason=completion.finish_reason,
            messages=messages,
            tools=tools,
            assistant_message=message,
            tool_call_format_error=parsed.format_error,
            num_tool_calls=len(parsed.tool_calls),
            turn=turn,
            spliced=spliced,
        )
        return ChoiceResult(message, finish_reason, token_logprobs, extra={"num_tokens": len(ids)}), call


def _empty_length_choice() -> ChoiceResult:
    return ChoiceResult({"role": "assistant", "content": ""}, "length", None, extra={"num_tokens": 0})
