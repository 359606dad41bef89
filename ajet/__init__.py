"""ajet: train any LLM agent with reinforcement learning."""

from ajet.schema import Task, WorkflowOutput, WorkflowTask
from ajet.workflow import Workflow

__version__ = "0.1.0"

__all__ = ["Task", "Workflow", "WorkflowOutput", "WorkflowTask", "AjetTuner", "BaseJudge", "__version__"]


def __getattr__(name: str) -> type:
    # Lazy: the tuner pulls in openai/agentscope, the judge nothing heavy, but `import ajet` in a
    # launcher's --help path should stay fast.
    if name == "AjetTuner":
        from ajet.tuner import AjetTuner

        return AjetTuner
    if name == "BaseJudge":
        from ajet.judge.base import BaseJudge

        return BaseJudge
    raise AttributeError(name)
