"""What the six math-agent workflows share: the system prompt and the Python tool's description.

One copy, so the six styles (AgentScope, OpenAI SDK, raw HTTP, LangChain, OpenAI Agents SDK on the
Responses API, Anthropic SDK on the Messages API) train on the same task and their results can be
compared: ajet's proxy translates every protocol's tool declaration back to PYTHON_TOOL_SCHEMA, so
each style's prompt is the same tokens.
"""

TOOL_NAME = "execute_python_code"

SYSTEM_PROMPT = """You are an agent that solves math word problems, using a Python tool for calculations.
Think step by step. When you need to calculate, call the `execute_python_code` tool with Python code
that print()s every value you need: the tool returns only what the code prints.
Wait for the tool's output and use it; never guess a result.
When you know the answer, reply without calling a tool and give the final answer as \\boxed{N},
for example \\boxed{42}."""

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
