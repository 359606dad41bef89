"""Math agent, LangChain style: `ChatOpenAI` pointed at the tuner's endpoint + `create_agent`.

LangChain runs the tool loop itself; `ModelCallLimitMiddleware` stops it after
`rollout.multi_turn.max_steps` model calls, like the other styles.
"""

from __future__ import annotations

from langchain.agents import create_agent
from langchain.agents.middleware import ModelCallLimitMiddleware
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from ajet import Workflow, WorkflowOutput, WorkflowTask
from tutorial.example_math_agent.prompts import SYSTEM_PROMPT, TOOL_DESCRIPTION, TOOL_NAME
from tutorial.example_math_agent.python_tool import PythonToolSession, max_steps


class ExampleMathLearn(Workflow):
    async def execute(self, workflow_task: WorkflowTask, tuner) -> WorkflowOutput:
        endpoint = tuner.as_oai_baseurl_apikey()
        python = PythonToolSession(self.config)

        @tool(TOOL_NAME, description=TOOL_DESCRIPTION)
        async def execute_python_code(code: str) -> str:
            return await python.run(code)

        llm = ChatOpenAI(
            model="ajet",  # ignored by ajet's proxy
            base_url=endpoint.base_url,
            api_key=endpoint.api_key,
            max_retries=0,  # a retried request would be a second, untracked sample of the same turn
            timeout=endpoint.request_timeout,  # the episode's; the SDK's 600 s is short on a busy CPU
        )
        agent = create_agent(
            model=llm,
            tools=[execute_python_code],
            system_prompt=SYSTEM_PROMPT,
            middleware=[ModelCallLimitMiddleware(run_limit=max_steps(self.config), exit_behavior="end")],
        )
        state = await agent.ainvoke({"messages": [{"role": "user", "content": workflow_task.task.main_query}]})
        final_answer = _last_model_text(state["messages"])
        return WorkflowOutput(
            reward=None, metadata={"final_answer": final_answer, **python.metadata()}, log_metrics=python.log_metrics()
        )


def _last_model_text(messages: list) -> str:
    """Text of the model's last reply (the call-limit middleware may append its own notice after it)."""
    for message in reversed(messages):
        if isinstance(message, AIMessage) and message.response_metadata:
            return message.text if isinstance(message.text, str) else message.text()
    return ""
