"""The proxy's HTTP front: an ASGI app that serves the model endpoints directly, bytes in, bytes out.

    routes = FastRoutes(fallback=fastapi_app)
    routes.add("POST", "/v1/chat/completions", endpoint)   # async (HTTPRequest) -> HTTPResponse
    uvicorn.Config(routes, ...)

Why not FastAPI routes for these: at a few hundred calls per second the proxy is CPU-bound, and per
request FastAPI's middleware stack, dependency solving, `Request` object and `jsonable_encoder`
walk over the reply cost more CPU than the proxy's own work (rendering, splicing, tracking), as the
py-spy profiles of bench/proxy_load.py showed (bench/RESULTS.md, section 6). A model endpoint needs
none of it: it reads one JSON body and writes one. Everything that is not a registered route
(`GET /v1/models`, 404s, routes added to the FastAPI app) falls through to the FastAPI app.

A client that goes away before its reply (its own read timeout, a killed agent) cancels the
endpoint: the generation it was waiting for stops, instead of running on for nobody and, when the
client re-sends after its timeout as the OpenAI SDK does, running twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic_core

logger = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]


@dataclass
class HTTPRequest:
    """One request to a registered route: method, path, raw headers (lower-case names), whole body."""

    method: str
    path: str
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        key = name.lower().encode("latin-1")
        for k, v in self.headers:
            if k == key:
                return v.decode("latin-1")
        return None


@dataclass
class HTTPResponse:
    """A reply: `body` sent whole, or `stream` (an async iterator of byte chunks) when set."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: Headers = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None


Endpoint = Callable[[HTTPRequest], Awaitable[HTTPResponse]]


def json_response(payload: Any, status: int = 200, headers: Headers | None = None) -> HTTPResponse:
    # pydantic-core's serializer (a dependency already) is ~5x faster than json.dumps on these bodies.
    return HTTPResponse(status=status, body=pydantic_core.to_json(payload), headers=headers or [])


class FastRoutes:
    """ASGI app: exact (method, path) routes served directly, the rest passed to `fallback`.

    A route that raises gets a 500 with an OpenAI-style error body instead of a dropped socket.
    """

    def __init__(self, fallback: Callable[..., Awaitable[None]]) -> None:
        self.fallback = fallback
        self._routes: dict[tuple[str, str], Endpoint] = {}

    def add(self, method: str, path: str, endpoint: Endpoint) -> None:
        """Serve `method path` (path exactly, e.g. "/v1/chat/completions") with `endpoint`."""
        self._routes[(method.upper(), path)] = endpoint
        if path.endswith("/"):
            return
        # Some clients join base_url and path with a trailing slash.
        self._routes[(method.upper(), path + "/")] = endpoint

    def routes(self) -> list[tuple[str, str]]:
        return sorted(self._routes)

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Awaitable[dict]], send: Callable[..., Awaitable[None]]) -> None:
        endpoint = self._routes.get((scope.get("method", ""), scope.get("path", ""))) if scope["type"] == "http" else None
        if endpoint is None:
            await self.fallback(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away before sending its body
            return
        request = HTTPRequest(scope["method"], scope["path"], scope["headers"], body)
        response = await _unless_disconnected(_respond(endpoint, request), receive)
        if response is None:
            logger.warning("client of %s %s went away before its reply; its generation was cancelled", request.method, request.path)
            return
        await _send(send, response)


async def _respond(endpoint: Endpoint, request: HTTPRequest) -> HTTPResponse:
    try:
        return await endpoint(request)
    except Exception as exc:  # noqa: BLE001 - an OpenAI-style 500 instead of a dropped socket
        logger.exception("proxy endpoint %s %s failed", request.method, request.path)
        message = f"proxy error: {type(exc).__name__}: {exc}"
        return json_response({"error": {"message": message, "type": "server_error", "param": None, "code": None}}, 500)


async def _unless_disconnected(reply: Awaitable[HTTPResponse], receive: Callable[..., Awaitable[dict]]) -> HTTPResponse | None:
    """`reply`'s response, or None (with `reply` cancelled) when the client disconnects first.

    Once the body is read, uvicorn's `receive()` returns only at `http.disconnect`, so a task
    waiting on it beside the endpoint is how an ASGI app learns its client has gone (Starlette's
    streaming responses listen the same way). `reply` runs in this task and the watcher cancels
    it: one task a request. That added about 45 µs a request on a loaded 2-core CPU (two tasks
    and an `asyncio.wait`: 75 µs), against the proxy's ~1.2 ms of CPU a call (bench/RESULTS.md §6).
    """
    this = asyncio.current_task()
    assert this is not None  # an ASGI app always runs inside a task
    replying = True

    def client_gone(watcher: asyncio.Task[None]) -> None:
        if replying and not watcher.cancelled() and watcher.exception() is None:
            this.cancel()

    watcher = asyncio.get_running_loop().create_task(_wait_for_disconnect(receive))
    watcher.add_done_callback(client_gone)
    try:
        return await reply
    except asyncio.CancelledError:
        if not watcher.done() or watcher.cancelled() or watcher.exception() is not None:
            raise  # cancelled from outside (the server stops): not ours to swallow
        if hasattr(this, "uncancel"):  # Python 3.11+
            this.uncancel()
        return None
    finally:
        replying = False
        watcher.cancel()


async def _wait_for_disconnect(receive: Callable[..., Awaitable[dict]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _read_body(receive: Callable[..., Awaitable[dict]]) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send: Callable[..., Awaitable[None]], response: HTTPResponse) -> None:
    headers = [(b"content-type", response.content_type.encode("latin-1")), *response.headers]
    if response.stream is None:
        headers.append((b"content-length", str(len(response.body)).encode("latin-1")))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
        return
    headers.append((b"cache-control", b"no-cache"))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    async for chunk in response.stream:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
