"""Math agent, code-interpreter style: the model writes a ```python program, the workflow runs it.

No tool schema and no `<tool_call>` markup: the question comes with one instruction, to write a
Python program that computes the answer and prints it. A reply ends as soon as a code block closes
(stop strings: the closing fence, and "```output", where a model would start inventing the result
itself). The workflow runs the reply's last ```python block in the sandbox, then:

- the program ran and printed something: that output is the episode's final answer (the judge reads
  its last number), as in program-of-thought prompting (PAL, PoT);
- it raised, timed out or printed nothing: what happened goes back as the next message, in an
  ```output block, and the model writes a corrected program (the ToRL / ReTool loop, where the real
  output replaces anything the model would have made up);
- the reply has no code: the reply is the final answer.

`ANSWER_FROM_OUTPUT = False` sends every output back instead and lets the model state the answer
in words. On Qwen2.5-Coder-0.5B that second turn copied the instruction's `\\boxed{N}` literally in 24
of 24 questions (bench/RESULTS.md, section 7), so the printed output is the answer by default.

The episode has at most `rollout.multi_turn.max_steps` model calls. Tool use is counted by the
workflow (`log_metrics["tool_calls"]`), since the proxy sees no tool-call markup to parse.
"""

from __future__ import annotations

import re

from ajet import Workflow, WorkflowOutput, WorkflowTask
from tutorial.example_math_agent.prompts import (
    CODE_FENCE_END,
    CODE_INSTRUCTION,
    FIX_MESSAGE,
    OUTPUT_FENCE,
    OUTPUT_MESSAGE,
)
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
    ANSWER_FROM_OUTPUT = True  # a program that ran and printed gives the final answer (see above)

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
                result = await python.execute(last_python_block(text) or "")
                output = result.to_agent_text().strip()
                if self.ANSWER_FROM_OUTPUT and result.ok and not result.printed_nothing:
                    final_answer = output
                    break
                template = FIX_MESSAGE if self.ANSWER_FROM_OUTPUT else OUTPUT_MESSAGE
                messages.append({"role": "user", "content": template.format(fence=OUTPUT_FENCE, output=output)})
        return WorkflowOutput(
            reward=None,
            metadata={"final_answer": final_answer, **python.metadata()},
            log_metrics=python.log_metrics(),
        )
