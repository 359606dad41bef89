from ajet.judge.base import BaseJudge, call_judge, judge_input_dictionary
from ajet.tracker.turns import ToolCall, Turn

__all__ = ["BaseJudge", "ToolCall", "Turn", "call_judge", "judge_input_dictionary"]
