"""The proxy between agents and the inference engine: OpenAI Chat Completions, OpenAI Responses and
Anthropic Messages endpoints over one tracked pipeline with back-pressure (see ajet.proxy.server,
ajet.proxy.protocol, ajet.proxy.admission)."""

from ajet.proxy.http import HTTPRequest, HTTPResponse, json_response
from ajet.proxy.server import ChatResult, EpisodeHandle, ProxyError, ProxyServer
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
    "json_response",
    "parse_tool_calls",
]
