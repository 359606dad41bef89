"""Running workflows in Ray worker processes: `ajet --backbone debug --with-ray`.

Only the user's workflow moves: it reaches the model through the proxy over HTTP with its episode's
api key, exactly as it does on a thread, so the tracker, the judge and the trainer stay in the driver.
The worker imports the workflow class from its spec (a class loaded from a file path cannot be
unpickled by name in another process) with the driver's working directory on `sys.path`, so
`tutorial.…` dot imports resolve there as they do here.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TYPE_CHECKING, Protocol

from ajet.config import AjetConfig
from ajet.schema import WorkflowOutput, WorkflowTask

if TYPE_CHECKING:
    from ajet.tuner import AjetTuner


class RemoteExecutor(Protocol):
    """Runs one episode's workflow somewhere other than the episode's thread (see RolloutRunner)."""

    async def execute(
        self, config: AjetConfig, workflow_task: WorkflowTask, tuner: AjetTuner, timeout: float
    ) -> WorkflowOutput: ...


def _execute_in_worker(
    workflow_spec: str, config: AjetConfig, workflow_task: WorkflowTask, base_url: str, api_key: str, episode_id: str,
    cwd: str, timeout: float,
) -> WorkflowOutput:
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    from ajet.imports import import_object
    from ajet.tuner import AjetTuner
    from ajet.workflow import Workflow

    workflow_cls = import_object(workflow_spec, Workflow, key="ajet.rollout.user_workflow")

    async def run() -> WorkflowOutput:
        tuner = AjetTuner(base_url, api_key, episode_id, request_timeout=timeout)
        try:
            output = await asyncio.wait_for(workflow_cls(config=config).execute(workflow_task, tuner), timeout=timeout)
            tuner.add_judge_inputs_to(output)  # this tuner is the worker's copy; its values travel in the output
            return output
        finally:
            await tuner.aclose()

    return asyncio.run(run())


class RayWorkflowExecutor:
    """Submits one Ray task per episode; the caller awaits it like the local `execute` coroutine."""

    def __init__(self, workflow_spec: str, *, num_cpus: float = 0.25) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("RayWorkflowExecutor needs Ray running: start it with ajet.ray_utils.ray_session()")
        self.workflow_spec = workflow_spec
        self._remote = ray.remote(num_cpus=num_cpus, max_retries=0)(_execute_in_worker)
        self._cwd = os.getcwd()

    async def execute(self, config: AjetConfig, workflow_task: WorkflowTask, tuner: AjetTuner, timeout: float) -> WorkflowOutput:
        import ray

        ref = self._remote.remote(
            self.workflow_spec, config, workflow_task, tuner.base_url, tuner.api_key, tuner.episode_id, self._cwd, timeout
        )
        try:
            # The worker enforces the timeout itself; this bound covers a worker stuck in sync code.
            return await asyncio.wait_for(ref, timeout=timeout + 30.0)
        except asyncio.TimeoutError:
            ray.cancel(ref, force=True)
            raise
        except ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            if isinstance(cause, asyncio.TimeoutError):
                raise asyncio.TimeoutError() from None
            raise cause from None
