from ajet.judge.base import BaseJudge

__all__ = ["BaseJudge"]
