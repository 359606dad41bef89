"""The contract between the proxy's one completion pipeline and the wire protocols it serves.

Every endpoint runs the same pipeline (`ProxyServer._serve`): authenticate the episode key ->
`protocol.parse` the body into ajet's internal chat request -> render + splice -> engine -> record
-> `protocol.reply`. A protocol only translates:

- its request into OpenAI-format chat `messages` and function `tools` (a `ChatCompletionRequest`),
  the one form the chat template, the tracker and the token splice work on, so calls made in
  different protocols land in the same EpisodeTracker and merge token for token;
- the sampled choices back into its own response body or SSE events;
- errors into its own error shape and status code, so each official SDK raises its own exception
  types (openai.BadRequestError, anthropic.AuthenticationError, ...).

Protocols: Chat Completions (ajet.proxy.openai_format), OpenAI Responses
(ajet.proxy.responses_format), Anthropic Messages (ajet.proxy.anthropic_format).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ajet.proxy.openai_format import ChatCompletionRequest, ChoiceResult

# Per-episode state a protocol may keep between calls (e.g. stored Responses for
# `previous_response_id`); it lives on the EpisodeHandle and goes away with the episode.
ProtocolState = dict[str, Any]


class ProtocolError(Exception):
    """A request the protocol refuses; becomes an error reply in the protocol's own shape.

    status: the HTTP status (400 bad request, 404 unknown referenced object, ...);
    param / code: OpenAI's `error.param` / `error.code` (Anthropic's shape has neither).
    """

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code


@dataclass
class WireRequest:
    """A parsed request: `chat` is what the pipeline runs; `original` is the protocol's own parsed
    request, handed back to `reply` (echoed fields, stop sequences, ...)."""

    chat: ChatCompletionRequest
    stream: bool = False
    original: Any = None


@dataclass
class CompletionResult:
    """What the pipeline produced for one request: the recorded choices and the token counts."""

    choices: list[ChoiceResult]
    prompt_tokens: int
    completion_tokens: int
    model: str


class WireProtocol(abc.ABC):
    """One wire protocol (see the module docstring)."""

    name: str

    @abc.abstractmethod
    def parse(self, body: Any, state: ProtocolState) -> WireRequest:
        """The request as ajet's chat request; raises ProtocolError (or pydantic's ValidationError,
        answered with 400) for what the protocol refuses."""

    @abc.abstractmethod
    def reply(self, request: WireRequest, result: CompletionResult, state: ProtocolState) -> dict[str, Any] | Iterator[str]:
        """The response body, or (when `request.stream`) the SSE text chunks."""

    @abc.abstractmethod
    def error_body(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
        """The protocol's error body for an HTTP `status`."""
