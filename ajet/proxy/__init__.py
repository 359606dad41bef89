"""The OpenAI-compatible proxy between agents and the inference engine (see ajet.proxy.server)."""

from ajet.proxy.server import EpisodeHandle, ProxyServer
from ajet.proxy.tool_parser import ParsedReply, parse_tool_calls
from ajet.tracker.limits import EpisodeLimits

__all__ = ["EpisodeHandle", "EpisodeLimits", "ParsedReply", "ProxyServer", "parse_tool_calls"]
