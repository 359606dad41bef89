"""The base class users subclass to make an agent trainable.

    class MyAgent(Workflow):
        async def execute(self, workflow_task: WorkflowTask, tuner: AjetTuner) -> WorkflowOutput:
            client = tuner.as_raw_openai_sdk_client()
            ...
            return WorkflowOutput(reward=None, metadata={"final_answer": answer})

One Workflow instance is created per episode, so instance attributes never leak between episodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ajet.config import AjetConfig, default_config
from ajet.schema import WorkflowOutput, WorkflowTask

if TYPE_CHECKING:
    from ajet.tuner import AjetTuner


class Workflow:
    """Subclass and implement `execute`. `config` is the run's validated `ajet` config (read-only); a
    workflow built by hand without one gets the packaged defaults."""

    def __init__(self, config: AjetConfig | None = None, **kwargs: Any) -> None:
        self.config: AjetConfig = config if config is not None else default_config()
        for key, value in kwargs.items():
            setattr(self, key, value)

    async def execute(self, workflow_task: WorkflowTask, tuner: AjetTuner) -> WorkflowOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement `async def execute(self, workflow_task, tuner)`")
