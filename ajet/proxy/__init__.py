"""The OpenAI-compatible proxy between agents and the inference engine (see ajet.proxy.server)."""

from ajet.proxy.http import HTTPRequest, HTTPResponse, json_response
from ajet.proxy.server import ChatResult, EpisodeHandle, ProxyError, ProxyServer, bearer_key, parse_chat_request
from ajet.proxy.tool_parser import ParsedReply, parse_tool_calls
from ajet.tracker.limits import EpisodeLimits

__all__ = [
    "ChatResult",
    "EpisodeHandle",
    "EpisodeLimits",
    "HTTPRequest",
    "HTTPResponse",
    "ParsedReply",
    "ProxyError",
    "ProxyServer",
    "bearer_key",
    "json_response",
    "parse_chat_request",
    "parse_tool_calls",
]
