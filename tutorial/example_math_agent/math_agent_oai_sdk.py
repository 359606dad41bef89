"""Math agent, OpenAI SDK style: a hand-written tool loop on `tuner.as_raw_openai_sdk_client()`.

Each turn sends the conversation with the Python tool; tool calls are executed and their output goes
back as `role: "tool"` messages, until the model answers without a tool call or
`rollout.multi_turn.max_steps` model calls have been made.
"""

from __future__ import annotations

from ajet import Workflow, WorkflowOutput, WorkflowTask
from tutorial.example_math_agent.prompts import PYTHON_TOOL_SCHEMA, SYSTEM_PROMPT
from tutorial.example_math_agent.python_tool import PythonToolSession, max_steps


class ExampleMathLearn(Workflow):
    async def execute(self, workflow_task: WorkflowTask, tuner) -> WorkflowOutput:
        client = tuner.as_raw_openai_sdk_client()
        python = PythonToolSession(self.config)
        messages: list[dict] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": workflow_task.task.main_query},
        ]
        final_answer = ""
        async with client:
            for _ in range(max_steps(self.config)):
                # The model name is ignored by ajet's proxy: it always serves the model being trained.
                completion = await client.chat.completions.create(
                    model="ajet", messages=messages, tools=[PYTHON_TOOL_SCHEMA]
                )
                message = completion.choices[0].message
                messages.append(message.model_dump(exclude_none=True))
                final_answer = message.content or ""
                if not message.tool_calls:
                    break
                for call in message.tool_calls:
                    output = await python.run_openai_tool_call(call.function.name, call.function.arguments)
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": output})
        return WorkflowOutput(
            reward=None, metadata={"final_answer": final_answer, **python.metadata()}, log_metrics=python.log_metrics()
        )
