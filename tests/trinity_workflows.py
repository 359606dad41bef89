"""Workflow and judge for tests/test_trinity_backbone.py, imported by path from the run's ajet config
(as Trinity's runner processes import them)."""

from __future__ import annotations

import json

import httpx

from ajet import Workflow, WorkflowOutput
from ajet.judge import BaseJudge

ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]},
    },
}


class AddToolWorkflow(Workflow):
    """Calls the model until it stops asking for the `add` tool, then returns its answer."""

    async def execute(self, workflow_task, tuner):
        creds = tuner.as_oai_baseurl_apikey()
        messages = [{"role": "user", "content": workflow_task.task.main_query}]
        async with httpx.AsyncClient(base_url=creds.base_url, headers={"Authorization": f"Bearer {creds.api_key}"}, timeout=60) as client:
            for _ in range(4):
                reply = (await client.post("/chat/completions", json={"model": "m", "messages": messages, "tools": [ADD_TOOL]})).json()
                message = reply["choices"][0]["message"]
                messages.append({k: v for k, v in message.items() if v is not None})
                if not message.get("tool_calls"):
                    return WorkflowOutput(reward=None, metadata={"final_answer": message["content"]})
                for call in message["tool_calls"]:
                    args = json.loads(call["function"]["arguments"])
                    messages.append({"role": "tool", "tool_call_id": call["id"], "content": str(args["a"] + args["b"])})
        return WorkflowOutput(reward=None, metadata={"final_answer": ""})


class AnswerAndToolJudge(BaseJudge):
    """1 for the reference answer, plus 0.5 per tool call of the episode's turns."""

    def compute_reward(self, workflow_task, workflow_output, turns):
        ok = workflow_output.metadata["final_answer"].strip() == workflow_task.task.metadata["reference_answer"]
        return float(ok) + 0.5 * sum(len(t.tool_calls) for t in turns), ok
