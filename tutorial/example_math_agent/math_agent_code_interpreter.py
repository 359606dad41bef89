"""Math agent, code-interpreter style: the model writes a ```python program, the workflow runs it.

This is the form tool-integrated math RL uses (ToRL; ReTool, which verl ships as a recipe): no tool
schema and no `<tool_call>` markup. The question comes with one instruction, to write a Python
program that prints the answer. A reply ends as soon as a code block closes (stop strings: the
closing fence, and "```output", where a model would start inventing the result itself). The
workflow runs the reply's last ```python block in the sandbox and sends what it printed back as the
next message, in an ```output block, asking for the final answer as \\boxed{N}; the model carries on
from the real value. The episode ends at a reply without new code, or after
`rollout.multi_turn.max_steps` model calls.

Tool use here is counted by the workflow (`log_metrics["tool_calls"]`), since the proxy sees no
tool-call markup to parse.
"""

from __future__ import annotations

import re

from ajet import Workflow, WorkflowOutput, WorkflowTask
from tutorial.example_math_agent.prompts import CODE_FENCE_END, CODE_INSTRUCTION, OUTPUT_FENCE, OUTPUT_MESSAGE
from tutorial.example_math_agent.python_tool import PythonToolSession, max_steps

# A fenced Python block: ```python (or ```py) ... ```; the closing fence may be missing when the
# reply stopped at "```output" right after the code, or ran into the token limit.
_PYTHON_BLOCK = re.compile(r"```(?:python|py)[ \t]*\n(.*?)(?:\n```|\Z)", re.DOTALL)
_BOXED = re.compile(r"\\boxed\s*\{")


def last_python_block(text: str) -> str | None:
    """The code of the reply's last ```python block before any ```output fence, or None.

    What follows an output fence the model wrote itself builds on a value that was never computed,
    so only the code before it runs.
    """
    blocks = [b.strip() for b in _PYTHON_BLOCK.findall(text.split(OUTPUT_FENCE, 1)[0])]
    blocks = [b for b in blocks if b]
    return blocks[-1] if blocks else None


def wants_execution(text: str) -> bool:
    """Whether a reply asks for its code to run: it has Python and no final answer yet (a reply that
    boxed an answer after its code has answered without waiting for the output)."""
    return last_python_block(text) is not None and not _BOXED.search(text)


class ExampleMathLearn(Workflow):
    async def execute(self, workflow_task: WorkflowTask, tuner) -> WorkflowOutput:
        client = tuner.as_raw_openai_sdk_client()
        python = PythonToolSession(self.config)
        messages: list[dict] = [{"role": "user", "content": f"{workflow_task.task.main_query}\n\n{CODE_INSTRUCTION}"}]
        final_answer = ""
        async with client:
            for _ in range(max_steps(self.config)):
                completion = await client.chat.completions.create(
                    model="ajet", messages=messages, stop=[CODE_FENCE_END, OUTPUT_FENCE]
                )
                text = completion.choices[0].message.content or ""
                # Sent back exactly as returned, so the proxy splices the sampled tokens (see ajet.tracker.splice).
                messages.append({"role": "assistant", "content": text})
                final_answer = text
                if not wants_execution(text):
                    break
                output = await python.run(last_python_block(text) or "")
                messages.append({"role": "user", "content": OUTPUT_MESSAGE.format(fence=OUTPUT_FENCE, output=output.strip())})
        return WorkflowOutput(
            reward=None,
            metadata={"final_answer": final_answer, **python.metadata()},
            log_metrics=python.log_metrics(),
        )
