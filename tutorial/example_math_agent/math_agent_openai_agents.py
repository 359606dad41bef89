"""Math agent, OpenAI Agents SDK style: an `agents.Agent` with a function tool, on the Responses API.

`OpenAIResponsesModel` over `tuner.as_raw_openai_sdk_client()` sends each model call to the proxy's
`/v1/responses` endpoint; `Runner.run` runs the tool loop, at most `rollout.multi_turn.max_steps`
model calls (`max_turns`), and the SDK keeps the history (input items) between calls. The tool is declared with the shared schema (`strict_json_schema=False`
keeps it as written), so the model sees the same prompt tokens as in the other styles.
"""

from __future__ import annotations

from agents import (
    Agent,
    FunctionTool,
    ItemHelpers,
    MaxTurnsExceeded,
    MessageOutputItem,
    ModelBehaviorError,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
)

from ajet import Workflow, WorkflowOutput, WorkflowTask
from tutorial.example_math_agent.prompts import PYTHON_TOOL_SCHEMA, SYSTEM_PROMPT, TOOL_DESCRIPTION, TOOL_NAME
from tutorial.example_math_agent.python_tool import PythonToolSession, max_steps


class ExampleMathLearn(Workflow):
    async def execute(self, workflow_task: WorkflowTask, tuner) -> WorkflowOutput:
        python = PythonToolSession(self.config)

        async def execute_python_code(context, arguments: str) -> str:
            return await python.run_openai_tool_call(TOOL_NAME, arguments)

        tool = FunctionTool(
            name=TOOL_NAME,
            description=TOOL_DESCRIPTION,
            params_json_schema=PYTHON_TOOL_SCHEMA["function"]["parameters"],
            on_invoke_tool=execute_python_code,
            strict_json_schema=False,
        )
        client = tuner.as_raw_openai_sdk_client()
        agent = Agent(
            name="math_agent",
            instructions=SYSTEM_PROMPT,
            tools=[tool],
            # The model name is ignored by ajet's proxy: it always serves the model being trained.
            model=OpenAIResponsesModel(model="ajet", openai_client=client),
        )
        # tracing_disabled: the SDK would otherwise try to export every rollout to OpenAI's trace backend.
        run_config = RunConfig(tracing_disabled=True)
        try:
            result = await Runner.run(agent, workflow_task.task.main_query, max_turns=max_steps(self.config), run_config=run_config)
            final_answer = str(result.final_output or "")
        except (MaxTurnsExceeded, ModelBehaviorError) as exc:
            # The run stops early when the model is out of calls while still calling the tool
            # (MaxTurnsExceeded), or misbehaves (ModelBehaviorError): it called a tool that does not
            # exist, or its reply was cut at rollout.max_response_length_in_one_turn, which the
            # Responses API marks "incomplete" and the SDK raises on. The judge reads its last text.
            items = exc.run_data.new_items if exc.run_data else []
            texts = [ItemHelpers.text_message_output(item) for item in items if isinstance(item, MessageOutputItem)]
            final_answer = texts[-1] if texts else ""
        return WorkflowOutput(reward=None, metadata={"final_answer": final_answer, **python.metadata()})
