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
- Back-pressure: at most `max_inflight` requests are held at once (engine queue included); more get
  429 with Retry-After (see ajet.proxy.admission), which the OpenAI and Anthropic SDKs wait out and
  re-send. Every protocol's requests count against the one bound.
- Closing an episode while one of its requests is in flight cancels that request's generation and
  answers it 410 (`episode_closed`, in the request's protocol); nothing is recorded into a tracker
  after `close_episode`.
- A client that disconnects before its reply (its read timeout ran out) cancels that request's
  generation too; nothing is recorded for it, and the episode's `abandoned_calls` counts it.

The thread and route contract: uvicorn serves `asgi` (ajet.proxy.http.FastRoutes) on the proxy's own
thread and event loop. The model endpoints are bytes-in/bytes-out routes there, each one
`_serve(request, protocol)`; everything else (`GET /v1/models`, 404s, routes added to `app`) falls
through to the FastAPI app. Everything runs on that loop, rendering included: it holds the GIL
either way, and a hop to a thread pool per request cost more CPU than the render itself. Only
`open_episode`, `close_episode` and `episode` are called from other threads (under `_lock`).
A new wire protocol is a WireProtocol (ajet.proxy.protocol) served with `add_protocol(path, protocol)`;
it gets authentication, admission, close-in-flight and recording for free.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
import uvicorn
from fastapi import FastAPI

from ajet.config.schema import RolloutConfig
from ajet.engine.base import Completion, Engine, SamplingParams
from ajet.proxy.admission import InflightLimit
from ajet.proxy.anthropic_format import ANTHROPIC_MESSAGES
from ajet.proxy.http import FastRoutes, HTTPRequest, HTTPResponse, json_response
from ajet.proxy.openai_format import CHAT_COMPLETIONS, ChatCompletionRequest, ChoiceResult
from ajet.proxy.protocol import CompletionResult, ProtocolError, ProtocolState, WireProtocol, WireRequest
from ajet.proxy.responses_format import RESPONSES
from ajet.proxy.tool_parser import ParsedReply, parse_tool_calls
from ajet.tracker.call import LLMCall
from ajet.tracker.episode import EpisodeTracker
from ajet.tracker.limits import EpisodeLimits
from ajet.tracker.render import ChatRenderer, end_of_turn_id, normalize_messages

logger = logging.getLogger(__name__)


class ProxyError(Exception):
    """A request the pipeline refuses: the HTTP status, a message, OpenAI's `code` / `param`, and
    extra headers (Retry-After on 429). `_serve` answers it in the request's protocol's error shape
    (`WireProtocol.error_body`)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or []


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
    # Set by close_episode (under _lock); requests then record nothing and answer 410.
    closed: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    # Tasks (on the proxy loop) awaiting the engine for this episode; close_episode cancels them.
    _waiting: set[asyncio.Task] = field(default_factory=set, repr=False, compare=False)


@dataclass
class ChatResult:
    """The engine's answer to one chat request, recorded in the episode's tracker, ready to format."""

    handle: EpisodeHandle
    choices: list[ChoiceResult]
    prompt_tokens: int
    completion_tokens: int


class ProxyServer:
    """The proxy's ASGI app (ajet.proxy.http) served by uvicorn on its own thread (see module docstring)."""

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
        max_inflight: int | None = None,
        freeze_gc: bool = False,
    ) -> None:
        """`max_inflight`: requests held at once, None for no bound (the config's
        `rollout.proxy_max_inflight` through from_config), see ajet.proxy.admission.

        `freeze_gc`: on start(), collect once and move every object then alive (modules, model,
        tokenizer) out of the cyclic collector's view (`gc.freeze`, as vLLM and SGLang do after
        startup). Each full collection otherwise rescans them all while holding the GIL, stalling
        every request; from_config (the backbones' path) turns it on. Process-wide, so off by default.
        """
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
        # "Already borrowed" (the runner's threads render too, for the drift check).
        self._render_lock = threading.Lock()
        self._end_id = end_of_turn_id(tokenizer)
        self._stop_ids = sorted({self._end_id} | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
        self.admission = InflightLimit(max_inflight)
        self.freeze_gc = freeze_gc
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # `app` stays a FastAPI app (GET /v1/models; routes added with its decorators work, on its
        # slower path); `asgi` is what uvicorn serves: the model endpoints, then `app`.
        self.app = self._build_app()
        self.asgi = FastRoutes(self.app)
        self.add_protocol("/v1/chat/completions", CHAT_COMPLETIONS)
        self.add_protocol("/v1/responses", RESPONSES)
        # The anthropic client appends /v1/messages to its base URL: the tuner hands it the URL
        # without /v1, and one given the OpenAI-style URL (ending in /v1) still lands here.
        for prefix in ("/v1", "/v1/v1"):
            self.add_protocol(prefix + "/messages", ANTHROPIC_MESSAGES)
            self.add_route("POST", prefix + "/messages/count_tokens", self._count_tokens)

    @classmethod
    def from_config(cls, engine: Engine, tokenizer: Any, rollout: RolloutConfig, **kwargs: Any) -> ProxyServer:
        """A proxy with the `ajet.rollout` policies (allow_request_sampling_override,
        force_disable_toolcalls, proxy_max_inflight) and the startup heap frozen (freeze_gc)."""
        kwargs.setdefault("max_inflight", rollout.proxy_max_inflight)
        kwargs.setdefault("freeze_gc", True)
        return cls(
            engine,
            tokenizer,
            allow_request_sampling_override=rollout.allow_request_sampling_override,
            disable_tool_calls=rollout.force_disable_toolcalls,
            **kwargs,
        )

    def add_route(self, method: str, path: str, endpoint: Callable[[HTTPRequest], Awaitable[HTTPResponse]]) -> None:
        """Serve `method path` with `endpoint`: `async (HTTPRequest) -> HTTPResponse`, on the proxy loop."""
        self.asgi.add(method, path, endpoint)

    def add_protocol(self, path: str, protocol: WireProtocol) -> None:
        """Serve `POST path` in `protocol` through the one pipeline (`_serve`): authentication,
        admission (429), close in flight (410) and recording, as for the built-in protocols."""

        async def endpoint(request: HTTPRequest) -> HTTPResponse:
            return await self._serve(request, protocol)

        self.add_route("POST", path, endpoint)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> str:
        """Serve on a background thread; returns the base url ("http://host:port/v1")."""
        if self._server is not None:
            return self.base_url
        if self.freeze_gc:
            gc.collect()  # what is garbage now would otherwise stay frozen for good
            gc.freeze()
        config = uvicorn.Config(
            self.asgi,
            host=self.host,
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            # Agents connect directly: no X-Forwarded-* rewriting, no Server header.
            proxy_headers=False,
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="ajet-proxy", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"ajet proxy failed to start on {self.host}:{self.port}")
            time.sleep(0.01)
        listener = self._server.servers[0]
        self._loop = listener.get_loop()
        port = listener.sockets[0].getsockname()[1]
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
        self._loop = None

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
        """Stop serving the episode and return its tracker (from any thread).

        Its key gets 401 from now on; a request of it still waiting for the engine is cancelled and
        answered 410, and no call is recorded into the tracker after this returns.
        """
        with self._lock:
            handle = self._episodes.pop(api_key)
        with handle._lock:
            handle.closed = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # RuntimeError: the loop closed in between, so nothing is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_cancel_waiting, handle)
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

        return app

    async def _serve(self, request: HTTPRequest, protocol: WireProtocol) -> HTTPResponse:
        """The one pipeline behind every model endpoint: authenticate the episode, translate the
        request (ajet.proxy.protocol), `run_chat` (admission, render + splice, engine, record),
        reply in the request's protocol. Every error goes out in that protocol's shape."""
        try:
            handle = self.authenticate(request_key(request))
            wire = _parse(protocol, request.body, handle.protocol_state)
            result = await self.run_chat(handle, wire.chat)
        except ProxyError as exc:
            return _error_response(protocol, exc)
        done = CompletionResult(result.choices, result.prompt_tokens, result.completion_tokens, self.model_name)
        body = protocol.reply(wire, done, handle.protocol_state)
        if isinstance(body, dict):
            return json_response(body)
        # The engine returns whole completions: every event is ready, so they go out as one body.
        return HTTPResponse(body="".join(body).encode("utf-8"), content_type="text/event-stream")

    async def _count_tokens(self, request: HTTPRequest) -> HTTPResponse:
        """Anthropic's `POST /v1/messages/count_tokens`: the length of the request's template render
        (what a first call would send; a spliced continuation can differ by a few tokens)."""
        protocol = ANTHROPIC_MESSAGES
        try:
            self.authenticate(request_key(request))
            try:
                messages, tools = protocol.parse_count_tokens(pydantic_core.from_json(request.body))
            except ProtocolError as exc:
                raise ProxyError(exc.status, exc.message) from None
            except ValueError as exc:  # bad JSON, or pydantic's ValidationError (a ValueError)
                raise ProxyError(400, f"Invalid request: {exc}") from None
        except ProxyError as exc:
            return _error_response(protocol, exc)
        with self._render_lock:
            ids = ChatRenderer(self.tokenizer).render_ids(
                normalize_messages(messages), None if self.disable_tool_calls else tools, add_generation_prompt=True
            )
        return json_response({"input_tokens": len(ids)})

    # -- the pipeline ---------------------------------------------------------------------------

    def authenticate(self, api_key: str | None) -> EpisodeHandle:
        """The open episode with this key, else ProxyError 401."""
        handle = self.episode(api_key) if api_key else None
        if handle is None:
            raise ProxyError(401, "Invalid or missing API key: it must be an open ajet episode's key.", code="invalid_api_key")
        return handle

    async def run_chat(self, handle: EpisodeHandle, req: ChatCompletionRequest) -> ChatResult:
        """Admit the request (ProxyError 429 with Retry-After past max_inflight), then complete it.
        Call it on the proxy loop (from an endpoint)."""
        started = self.admission.try_enter()
        if started is None:
            retry = self.admission.retry_after()
            raise ProxyError(
                429,
                f"The proxy is holding {self.admission.inflight} requests (its max_inflight); retry in {retry.seconds:.2f} s.",
                code="proxy_overloaded",
                headers=retry.headers(),
            )
        try:
            return await self.complete_chat(handle, req)
        finally:
            self.admission.exit(started)

    async def complete_chat(self, handle: EpisodeHandle, req: ChatCompletionRequest) -> ChatResult:
        """normalise -> render/splice -> engine -> record, for an authenticated, admitted request.

        Raises ProxyError: 400 (no messages), 410 (the episode was closed meanwhile), 500 (engine).
        """
        if not req.messages:
            raise ProxyError(400, "messages must not be empty", param="messages")
        tracker, limits = handle.tracker, handle.limits
        n = max(1, req.n or 1)
        turn = tracker.begin_turn(limits.max_turns)
        if turn is None:
            return ChatResult(handle, [_empty_length_choice()] * n, 0, 0)

        messages = normalize_messages(req.messages)
        offer_tools = req.tools and req.tool_choice != "none" and not self.disable_tool_calls
        tools = req.tools if offer_tools else None
        with self._render_lock:
            plan = tracker.prepare_prompt(messages, tools)
        prompt_len = len(plan.prompt_ids)
        params = self._sampling_for(handle, req, prompt_len)
        if (limits.max_prompt_tokens is not None and prompt_len > limits.max_prompt_tokens) or params.max_tokens <= 0:
            tracker.count("prompt_limit_hits")
            return ChatResult(handle, [_empty_length_choice()] * n, prompt_len, 0)

        completions = await self._generate(handle, plan.prompt_ids, params, n)
        built = [self._to_choice(c, req, plan.prompt_ids, messages, tools, turn, plan.source is not None) for c in completions]
        with handle._lock:
            if handle.closed:
                raise _closed_error(handle)
            for _, call in built:
                tracker.record(call)
        choices = [choice for choice, _ in built]
        return ChatResult(handle, choices, prompt_len, sum(c.extra.get("num_tokens", 0) for c in choices))

    async def _generate(self, handle: EpisodeHandle, prompt_ids: list[int], params: SamplingParams, n: int) -> list[Completion]:
        """n engine requests; cancelled (ProxyError 410) when the episode is closed meanwhile."""
        if handle.closed:
            raise _closed_error(handle)
        task = asyncio.current_task()
        if task is not None:
            handle._waiting.add(task)
        try:
            if n == 1:
                return [await self.engine.generate(list(prompt_ids), params)]
            per_choice = [params if params.seed is None else dataclasses.replace(params, seed=params.seed + i) for i in range(n)]
            return list(await asyncio.gather(*(self.engine.generate(list(prompt_ids), p) for p in per_choice)))
        except asyncio.CancelledError:
            if not handle.closed or task is None:
                # The client went away (ajet.proxy.http cancels the endpoint) or the server stops.
                handle.tracker.count("abandoned_calls")
                raise
            # Our own cancellation (close_episode): answer the request instead of ending its task.
            if hasattr(task, "uncancel"):
                task.uncancel()
            raise _closed_error(handle) from None
        except ProxyError:
            raise
        except Exception as exc:  # the agent gets an OpenAI-style 500 instead of a dropped socket
            logger.exception("episode %s: generation failed", handle.episode_id)
            raise ProxyError(500, f"generation failed: {exc}") from exc
        finally:
            if task is not None:
                handle._waiting.discard(task)

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


def request_key(request: HTTPRequest) -> str | None:
    """The episode key a request carries: `Authorization: Bearer <key>` (OpenAI clients, which take
    precedence) or `x-api-key: <key>` (Anthropic clients); None when it carries neither."""
    scheme, _, key = (request.header("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return key.strip()
    return (request.header("x-api-key") or "").strip() or None


def _parse(protocol: WireProtocol, body: bytes, state: ProtocolState) -> WireRequest:
    """`protocol.parse` of a JSON body; what it refuses as ProxyError (400 unless it says otherwise)."""
    try:
        return protocol.parse(pydantic_core.from_json(body), state)
    except ProtocolError as exc:
        raise ProxyError(exc.status, exc.message, param=exc.param, code=exc.code) from None
    except ValueError as exc:  # bad JSON, or pydantic's ValidationError (a ValueError)
        raise ProxyError(400, f"Invalid request: {exc}") from None


def _error_response(protocol: WireProtocol, exc: ProxyError) -> HTTPResponse:
    body = protocol.error_body(exc.status, exc.message, param=exc.param, code=exc.code)
    return json_response(body, exc.status, list(exc.headers))


def _closed_error(handle: EpisodeHandle) -> ProxyError:
    return ProxyError(410, f"episode {handle.episode_id} was closed while this request was in flight", code="episode_closed")


def _cancel_waiting(handle: EpisodeHandle) -> None:
    """On the proxy loop: cancel the episode's requests waiting for the engine (close_episode)."""
    for task in list(handle._waiting):
        task.cancel()


def _empty_length_choice() -> ChoiceResult:
    return ChoiceResult({"role": "assistant", "content": ""}, "length", None, extra={"num_tokens": 0})
