"""The judge for environment-service tasks: the environment instance scores its own episode."""

from __future__ import annotations

from ajet.env_service import EnvServiceClient, EnvServiceError
from ajet.judge.base import BaseJudge
from ajet.schema import WorkflowOutput, WorkflowTask


class EnvServiceJudge(BaseJudge):
    """Scores an episode by asking its environment instance: `POST /instances/{id}/evaluate`."""

    async def compute_reward(self, workflow_task: WorkflowTask, workflow_output: WorkflowOutput) -> tuple[float, bool]:
        env = workflow_task.env
        if not isinstance(env, EnvServiceClient):
            raise EnvServiceError(
                f"EnvServiceJudge needs workflow_task.env to be an EnvServiceClient (task {workflow_task.task_id!r} "
                f"has {type(env).__name__}); use task_reader.type: env_service"
            )
        result = await env.evaluate()
        return result.reward, result.is_success
