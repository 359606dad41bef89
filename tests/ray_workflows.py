"""Workflows for tests/test_rollout_ray.py, importable by name inside Ray worker processes."""

from __future__ import annotations

import os

from ajet import Workflow, WorkflowOutput


class PidReportingWorkflow(Workflow):
    async def execute(self, workflow_task, tuner):
        client = tuner.as_raw_openai_sdk_client()
        reply = await client.chat.completions.create(model="m", messages=workflow_task.task.init_messages)
        ok = "42" in (reply.choices[0].message.content or "")
        return WorkflowOutput(reward=float(ok), is_success=ok, metadata={"pid": os.getpid()})


class RaisingWorkflow(Workflow):
    async def execute(self, workflow_task, tuner):
        raise ValueError("boom in a worker")


class JudgeInputWorkflow(Workflow):
    """Hands its answer to the judge the older way, from inside the Ray worker."""

    async def execute(self, workflow_task, tuner):
        client = tuner.as_raw_openai_sdk_client()
        reply = await client.chat.completions.create(model="m", messages=workflow_task.task.init_messages)
        tuner.update_judge_input_dictionary(final_answer=reply.choices[0].message.content, pid=os.getpid())
        return WorkflowOutput(reward=None)
