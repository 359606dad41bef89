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
# workflow, the printed result sent back in an ```output block. The instruction goes in the user turn,
# right after the question, with no system prompt: Qwen2.5-Coder-0.5B then writes a program for most
# GSM8K questions (the tool-call rate, measured, is in bench/RESULTS.md, section 7).
OUTPUT_FENCE = "```output"
CODE_FENCE_END = "\n```\n"  # a closed code block: the reply stops there and the code runs

CODE_INSTRUCTION = "Write a Python program that computes the answer and prints it."
# Sent back when a program failed or printed nothing (the model writes a corrected one) ...
FIX_MESSAGE = "{fence}\n{output}\n```\nThe program did not print the answer. Write a corrected program that prints it."
# ... or, with ANSWER_FROM_OUTPUT = False, after every program (the model states the answer itself).
OUTPUT_MESSAGE = "{fence}\n{output}\n```\nThat is what the program printed. Give the final answer as \\boxed{{N}}."

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
