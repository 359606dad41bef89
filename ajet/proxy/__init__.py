"""The proxy between agents and the inference engine: OpenAI Chat Completions, OpenAI Responses and
Anthropic Messages endpoints over one tracked pipeline (see ajet.proxy.server, ajet.proxy.protocol)."""

from ajet.proxy.server import EpisodeHandle, ProxyServer
from ajet.proxy.tool_parser import ParsedReply, parse_tool_calls
from ajet.tracker.limits import EpisodeLimits

__all__ = ["EpisodeHandle", "EpisodeLimits", "ParsedReply", "ProxyServer", "parse_tool_calls"]
