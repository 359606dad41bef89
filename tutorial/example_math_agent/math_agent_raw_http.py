"""Math agent, raw HTTP style: POST {base_url}/chat/completions with httpx, no SDK at all.

`tuner.as_oai_baseurl_apikey()` gives the endpoint and the episode's key; any HTTP client works the
same way (the async httpx client keeps the event loop free while the model generates). The loop is
the OpenAI SDK one, on plain JSON.
"""

from __future__ import annotations

import httpx

from ajet import Workflow, WorkflowOutput, WorkflowTask
from tutorial.example_math_agent.prompts import PYTHON_TOOL_SCHEMA, SYSTEM_PROMPT
from tutorial.example_math_agent.python_tool import PythonToolSession, max_steps


class ExampleMathLearn(Workflow):
    async def execute(self, workflow_task: WorkflowTask, tuner) -> WorkflowOutput:
        endpoint = tuner.as_oai_baseurl_apikey()
        python = PythonToolSession(self.config)
        messages: list[dict] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": workflow_task.task.main_query},
        ]
        final_answer = ""
        async with httpx.AsyncClient(
            base_url=endpoint.base_url,
            headers={"Authorization": f"Bearer {endpoint.api_key}"},
            # As long as the episode may take: a reply waits for the whole batch on a busy engine.
            timeout=endpoint.request_timeout or 600.0,
        ) as http:
            for _ in range(max_steps(self.config)):
                response = await http.post(
                    "/chat/completions",
                    json={"model": "ajet", "messages": messages, "tools": [PYTHON_TOOL_SCHEMA]},
                )
                response.raise_for_status()
                message = response.json()["choices"][0]["message"]
                messages.append(message)
                final_answer = message.get("content") or ""
                tool_calls = message.get("tool_calls") or []
                if not tool_calls:
                    break
                for call in tool_calls:
                    function = call["function"]
                    output = await python.run_openai_tool_call(function["name"], function.get("arguments"))
                    messages.append({"role": "tool", "tool_call_id": call["id"], "content": output})
        return WorkflowOutput(
            reward=None, metadata={"final_answer": final_answer, **python.metadata()}, log_metrics=python.log_metrics()
        )
