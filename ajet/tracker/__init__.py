"""Token-exact context tracking: per-call records, splicing, prefix merge into samples, drift check."""

from ajet.tracker.call import LLMCall
from ajet.tracker.drift import DriftReport
from ajet.tracker.episode import EpisodeTracker
from ajet.tracker.limits import EpisodeLimits
from ajet.tracker.turns import ToolCall, Turn

__all__ = ["DriftReport", "EpisodeLimits", "EpisodeTracker", "LLMCall", "ToolCall", "Turn"]
