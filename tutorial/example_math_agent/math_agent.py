"""Math agent, AgentScope style: a ReActAgent with a Python tool, its model being the tuner.

    ajet --conf tutorial/example_math_agent/math_agent.yaml --backbone=debug

The agent thinks, calls `execute_python_code` as often as it needs (up to
`rollout.multi_turn.max_steps` model calls), and answers; the judge (`task_judge.judge_protocol`)
scores `metadata["final_answer"]` against the reference, because this workflow returns `reward=None`.
"""

from __future__ import annotations

from agentscope.agent import ReActAgent
from agentscope.formatter import OpenAIChatFormatter
from agentscope.memory import InMemoryMemory
from agentscope.message import Msg, TextBlock
from agentscope.tool import Toolkit, ToolResponse

from ajet import Workflow, WorkflowOutput, WorkflowTask
from tutorial.example_math_agent.prompts import PYTHON_TOOL_SCHEMA, SYSTEM_PROMPT
from tutorial.example_math_agent.python_tool import PythonToolSession, max_steps


class ExampleMathLearn(Workflow):
    async def execute(self, workflow_task: WorkflowTask, tuner) -> WorkflowOutput:
        python = PythonToolSession(self.config)

        async def execute_python_code(code: str) -> ToolResponse:
            # AgentScope tools return a ToolResponse; the text is what the model sees next turn.
            return ToolResponse(content=[TextBlock(type="text", text=await python.run(code))])

        toolkit = Toolkit()
        # The same schema the other styles send, so all six train on one task.
        toolkit.register_tool_function(execute_python_code, json_schema=PYTHON_TOOL_SCHEMA)

        agent = ReActAgent(
            name="math_react_agent",
            sys_prompt=SYSTEM_PROMPT,
            model=tuner,  # the tuner is an AgentScope chat model; its calls are trained on
            # OpenAIChatFormatter writes the OpenAI chat format (assistant tool_calls, role "tool"
            # results) that the tuner's OpenAIChatModel sends to ajet's OpenAI-compatible proxy.
            # DashScopeChatFormatter (the AgentJet seed's choice) also works through the proxy but
            # targets DashScope's own message shape.
            formatter=OpenAIChatFormatter(),
            toolkit=toolkit,
            memory=InMemoryMemory(),
            max_iters=max_steps(self.config),
        )
        agent.set_console_output_enabled(False)

        reply = await agent.reply(Msg("user", workflow_task.task.main_query, role="user"))
        final_answer = reply.get_text_content() or ""
        return WorkflowOutput(reward=None, metadata={"final_answer": final_answer, **python.metadata()})
