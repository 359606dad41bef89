"""Math agent, Anthropic SDK style: a hand-written tool loop on the Messages API.

`tuner.as_raw_anthropic_sdk_client()` is an `anthropic.AsyncAnthropic` pointed at the proxy's
`/v1/messages` endpoint with the episode's key. Each turn sends the conversation with the Python
tool (`ANTHROPIC_PYTHON_TOOL`, the shared schema as a custom tool); `tool_use` blocks are executed
and their output goes back as `tool_result` blocks, until the model answers without a tool call or
`rollout.multi_turn.max_steps` model calls have been made.
"""

from __future__ import annotations

from ajet import Workflow, WorkflowOutput, WorkflowTask
from tutorial.example_math_agent.prompts import ANTHROPIC_PYTHON_TOOL, SYSTEM_PROMPT
from tutorial.example_math_agent.python_tool import PythonToolSession, max_steps

# The Messages API requires max_tokens; ajet's proxy caps it at rollout.max_response_length_in_one_turn.
MAX_TOKENS = 4096


class ExampleMathLearn(Workflow):
    async def execute(self, workflow_task: WorkflowTask, tuner) -> WorkflowOutput:
        client = tuner.as_raw_anthropic_sdk_client()
        python = PythonToolSession(self.config)
        messages: list[dict] = [{"role": "user", "content": workflow_task.task.main_query}]
        final_answer = ""
        async with client:
            for _ in range(max_steps(self.config)):
                # The model name is ignored by ajet's proxy: it always serves the model being trained.
                reply = await client.messages.create(
                    model="ajet", max_tokens=MAX_TOKENS, system=SYSTEM_PROMPT, messages=messages, tools=[ANTHROPIC_PYTHON_TOOL]
                )
                messages.append({"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in reply.content]})
                final_answer = "".join(block.text for block in reply.content if block.type == "text")
                tool_uses = [block for block in reply.content if block.type == "tool_use"]
                if not tool_uses:
                    break
                results = [
                    {"type": "tool_result", "tool_use_id": block.id, "content": await python.run_tool_call(block.name, block.input)}
                    for block in tool_uses
                ]
                messages.append({"role": "user", "content": results})
        return WorkflowOutput(reward=None, metadata={"final_answer": final_answer, **python.metadata()})
