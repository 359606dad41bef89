"""What the math-agent workflows share: the system prompt and the Python tool's description.

One copy, so the six tool-calling styles (AgentScope, OpenAI SDK, raw HTTP, LangChain, OpenAI Agents
SDK on the Responses API, Anthropic SDK on the Messages API) train on the same task and their results
can be compared: ajet's proxy translates every protocol's tool declaration back to PYTHON_TOOL_SCHEMA,
so each style's prompt is the same tokens. The code-interpreter style has its own instruction, since
it offers no tool schema.
"""

TOOL_NAME = "execute_python_code"

SYSTEM_PROMPT = """You are an agent that solves math word problems, using a Python tool for calculations.
Think step by step. When you need to calculate, call the `execute_python_code` tool with Python code
that print()s every value you need: the tool returns only what the code prints.
Wait for the tool's output and use it; never guess a result.
When you know the answer, reply without calling a tool and give the final answer as \\boxed{N},
for example \\boxed{42}."""

# The code-interpreter style (math_agent_code_interpreter.py): Python in ```python blocks, run by the
# workflow, the printed result sent back in an ```output block.
OUTPUT_FENCE = "```output"

CODE_INTERPRETER_SYSTEM_PROMPT = """You are an agent that solves math word problems by writing Python.
Think step by step. For each calculation, write a Python code block that print()s the values you need,
then write ```output and stop. The code is run and what it printed comes back to you; never write the
output yourself. For example:
```python
pens = 3 * 12 + 5
print(pens)
```
```output
When you know the answer, reply with the final answer as \\boxed{N}, for example \\boxed{41}."""

TOOL_DESCRIPTION = (
    "Execute Python 3 code in a sandbox and return what it printed (stdout), or the error it raised. "
    "Only printed values come back, so print() the results you need."
)

CODE_ARG_DESCRIPTION = "Python code to run; print() every value you need to see."

# The OpenAI `tools` entry (OpenAI SDK, raw HTTP); AgentScope and LangChain build the same schema.
PYTHON_TOOL_SCHEMA = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": TOOL_DESCRIPTION,
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": CODE_ARG_DESCRIPTION}},
            "required": ["code"],
        },
    },
}

# The same tool as an Anthropic Messages custom tool (Anthropic SDK style).
ANTHROPIC_PYTHON_TOOL = {
    "name": TOOL_NAME,
    "description": TOOL_DESCRIPTION,
    "input_schema": PYTHON_TOOL_SCHEMA["function"]["parameters"],
}
