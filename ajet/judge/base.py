"""The judge interface: score a finished episode from its task and the workflow's output."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from ajet.config import AjetConfig, default_config
from ajet.schema import WorkflowOutput, WorkflowTask


class BaseJudge:
    """Subclass and implement `compute_reward`; may be sync or `async def`.

    Returns `(raw_reward, is_success)`. Called only for episodes whose workflow returned `reward=None`.
    `config` is the validated `ajet` config, so a judge can read its own settings from
    `config.task_judge` (extra keys under `task_judge` are kept for it); a judge built by hand without
    one gets the packaged defaults.
    """

    def __init__(self, config: AjetConfig | None = None, **kwargs: Any) -> None:
        self.config: AjetConfig = config if config is not None else default_config()
        for key, value in kwargs.items():
            setattr(self, key, value)

    def compute_reward(
        self, workflow_task: WorkflowTask, workflow_output: WorkflowOutput
    ) -> tuple[float, bool] | Awaitable[tuple[float, bool]]:
        raise NotImplementedError(f"{type(self).__name__} must implement compute_reward(workflow_task, workflow_output)")
