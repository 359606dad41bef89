"""The six math-agent workflows end to end: real proxy, real sandboxed executor, real judge, real runner.

A random model cannot emit tool calls, so most tests drive the proxy with the scripted engine: its
first reply calls `execute_python_code` with `print(<the arithmetic>)`, and once a tool response is in
its prompt it answers `\\boxed{<whatever the tool printed>}`. A reward of 1 therefore proves the
code really ran in the sandbox and its output reached the model's next prompt. One test per style
runs the tiny random model instead, to show the workflows survive real (garbage) model output.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from pathlib import Path

import pytest
from proxy_helpers import tokenizer, tool_call_text

from ajet.config import load_config
from ajet.engine.scripted import ScriptedEngine
from ajet.imports import import_object
from ajet.judge.math import MathAnswerAndLlmAsJudge
from ajet.proxy import ProxyServer
from ajet.rollout import RolloutRunner
from ajet.schema import Task
from ajet.workflow import Workflow

pytestmark = pytest.mark.network_loopback

REPO = Path(__file__).resolve().parents[1]
YAML = REPO / "tutorial" / "example_math_agent" / "math_agent.yaml"
_NO_AGENTS_SDK = pytest.mark.skipif(importlib.util.find_spec("agents") is None, reason="openai-agents (the dev extra) is not installed")
STYLES = [
    "math_agent",
    "math_agent_oai_sdk",
    "math_agent_raw_http",
    "math_agent_langchain",
    pytest.param("math_agent_openai_agents", marks=_NO_AGENTS_SDK),  # Responses API
    "math_agent_anthropic",  # Anthropic Messages API
]
TOOL_RESPONSE = re.compile(r"<tool_response>\s*(.*?)\s*</tool_response>", re.DOTALL)


def _config(style: str, *overrides: str):
    return load_config(
        YAML,
        [
            f"rollout.user_workflow=tutorial.example_math_agent.{style}->ExampleMathLearn",
            "rollout.max_env_worker=2",
            "rollout.episode_timeout=60",
            "rollout.multi_turn.max_steps=4",
            "tools.python_executor.timeout=5",
            *overrides,
        ],
    )


def _workflow(cfg) -> type:
    return import_object(cfg.rollout.user_workflow, Workflow, key="ajet.rollout.user_workflow")


@pytest.fixture(scope="module")
def janet(gsm8k_dir: Path) -> Task:
    """GSM8K test row 0: (16 - 3 - 4) * 2 = 18."""
    with gzip.open(gsm8k_dir / "test.jsonl.gz", "rt", encoding="utf-8") as f:
        row = json.loads(f.readline())
    return Task(main_query=row["question"], task_id="gsm8k-test-0", metadata={**row, "reference_answer": "18"})


def solve_with_python(code: str = "print((16 - 3 - 4) * 2)"):
    """reply_fn: call the tool until a tool response is in the prompt, then box what the tool printed."""

    def reply(prompt_text: str) -> str:
        responses = TOOL_RESPONSE.findall(prompt_text)
        if not responses:
            return tool_call_text("execute_python_code", {"code": code}, content="Let me compute it.")
        return f"The tool says {responses[-1]}. The answer is \\boxed{{{responses[-1]}}}."

    return reply


@pytest.fixture
def run_episode():
    """run_episode(cfg, reply_fn, task) -> (EpisodeResult, ScriptedEngine), through the real runner."""
    proxies = []

    async def run(cfg, reply_fn, task):
        engine = ScriptedEngine(tokenizer(), reply_fn)
        proxy = ProxyServer(engine, tokenizer())
        proxy.start()
        proxies.append(proxy)
        runner = RolloutRunner(_workflow(cfg), MathAnswerAndLlmAsJudge(config=cfg), proxy, cfg)
        try:
            return await runner.run_episode(task), engine
        finally:
            runner.close()

    yield run
    for proxy in proxies:
        proxy.stop()


@pytest.mark.parametrize("style", STYLES)
async def test_workflow_solves_with_the_sandboxed_tool(style, janet, run_episode):
    result, engine = await run_episode(_config(style), solve_with_python(), janet)

    assert result.error is None, result.error
    assert result.judge_error is None, result.judge_error
    # the tool ran: its printed output is in the model's second prompt, inside a tool response
    assert len(engine.requests) == 2
    assert TOOL_RESPONSE.findall(engine.requests[1].prompt_text) == ["18"]
    meta = result.output.metadata
    assert meta["python_tool_calls"] == 1 and meta["tool_calls_without_output"] == 0
    assert "\\boxed{18}" in meta["final_answer"]
    assert (result.reward, result.is_success) == (1.0, True)
    assert meta["judge_method"] == "boxed"
    assert meta["episode_stats"]["tool_calls"] == 1 and meta["episode_stats"]["turns"] == 2
    assert result.samples and sum(result.samples[0].loss_mask) > 0


@pytest.mark.parametrize("style", STYLES)
async def test_wrong_arithmetic_gets_reward_zero(style, janet, run_episode):
    result, engine = await run_episode(_config(style), solve_with_python("print(16 - 3 - 4)"), janet)
    assert result.error is None, result.error
    assert TOOL_RESPONSE.findall(engine.requests[1].prompt_text) == ["9"]
    assert (result.reward, result.is_success) == (0.0, False)


@pytest.mark.parametrize("style", STYLES)
async def test_turn_limit_ends_an_endless_tool_loop(style, janet, run_episode):
    def always_tool(prompt_text: str) -> str:
        return tool_call_text("execute_python_code", {"code": "print(1)"})

    result, engine = await run_episode(_config(style, "rollout.multi_turn.max_steps=3"), always_tool, janet)
    assert result.error is None, result.error
    assert len(engine.requests) == 3  # the engine never saw a 4th call
    assert result.reward == 0.0


@pytest.mark.parametrize("style", [pytest.param("math_agent_openai_agents", marks=_NO_AGENTS_SDK), "math_agent_anthropic"])
async def test_every_protocol_style_prompts_the_model_with_the_same_tokens(style, janet, run_episode):
    """Same system prompt, tool and task: the Responses and Messages styles' prompts are token for
    token the Chat Completions style's, on the first call and on the one after the tool ran."""
    reference, reference_engine = await run_episode(_config("math_agent_oai_sdk"), solve_with_python(), janet)
    result, engine = await run_episode(_config(style), solve_with_python(), janet)
    assert result.error is None and reference.error is None, (result.error, reference.error)
    assert [r.prompt_ids for r in engine.requests] == [r.prompt_ids for r in reference_engine.requests]
    assert [s.input_ids for s in result.samples] == [s.input_ids for s in reference.samples]
    assert result.output.metadata["episode_stats"]["splices"] == 1


@pytest.mark.parametrize("style", ["math_agent_oai_sdk", "math_agent"])
async def test_behavior_penalty_for_tool_code_that_prints_nothing(style, janet, run_episode):
    def forgets_print(prompt_text: str) -> str:
        if "<tool_response>" not in prompt_text:
            return tool_call_text("execute_python_code", {"code": "eggs = (16 - 3 - 4) * 2\neggs"})
        return "The answer is \\boxed{18}."

    cfg = _config(style, "task_judge.behavior_penalty=0.25")
    result, engine = await run_episode(cfg, forgets_print, janet)
    assert "use print()" in TOOL_RESPONSE.findall(engine.requests[1].prompt_text)[0]
    assert result.output.metadata["tool_calls_without_output"] == 1
    assert result.reward == pytest.approx(0.75) and result.is_success


async def test_format_penalty_for_a_malformed_tool_call(janet, run_episode):
    def malformed(prompt_text: str) -> str:
        return '<tool_call>\n{"name": "execute_python_code", "arguments": {"code": "print(18)"\n</tool_call>\nSo \\boxed{18}.'

    cfg = _config("math_agent_oai_sdk", "task_judge.format_penalty=0.3")
    result, _ = await run_episode(cfg, malformed, janet)
    assert result.output.metadata["episode_stats"]["format_errors"] >= 1
    assert result.output.metadata["python_tool_calls"] == 0  # a malformed call is not executed
    assert result.reward == pytest.approx(0.7) and result.is_success


@pytest.mark.parametrize("style", STYLES)
async def test_tiny_random_model_completes_an_episode(style, janet, tiny_hf_engine):
    cfg = _config(style, "rollout.max_response_length_in_one_turn=24", "rollout.multi_turn.max_steps=2")
    proxy = ProxyServer(tiny_hf_engine, tokenizer())
    proxy.start()
    runner = RolloutRunner(_workflow(cfg), MathAnswerAndLlmAsJudge(config=cfg), proxy, cfg)
    try:
        result = await runner.run_episode(janet)
    finally:
        runner.close()
        proxy.stop()
    assert result.error is None, result.error
    assert result.judge_error is None, result.judge_error
    assert result.reward == 0.0 and not result.is_success  # garbage text does not say 18
    assert "final_answer" in result.output.metadata
    assert result.samples and result.num_turns >= 1


# -------------------------------------------------------------- the code-interpreter style

CODE_STYLE = "math_agent_code_interpreter"
OUTPUT_BLOCK = re.compile(r"```output\n(.*?)\n```", re.DOTALL)


def _outputs_sent(prompt_text: str) -> list[str]:
    """What the workflow sent back: the ```output blocks of the user turns after the question."""
    user_turns = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt_text, re.DOTALL)[1:]
    return [out for turn in user_turns for out in OUTPUT_BLOCK.findall(turn)]


def write_python(code: str = "print((16 - 3 - 4) * 2)", tail: str = "\n"):
    """reply_fn in the code-interpreter form: a ```python block that ends where the real engine stops
    (right after the closing fence), then, once an ```output block is in the prompt, the boxed value."""

    def reply(prompt_text: str) -> str:
        outputs = _outputs_sent(prompt_text)
        if not outputs:
            return f"Eggs left times price.\n```python\n{code}\n```{tail}"
        return f"The program printed {outputs[-1]}, so the answer is \\boxed{{{outputs[-1]}}}."

    return reply


async def test_code_interpreter_runs_the_models_code_and_its_output_is_the_answer(janet, run_episode):
    from ajet.rollout.metrics import summarize_episodes

    result, engine = await run_episode(_config(CODE_STYLE), write_python(), janet)
    assert result.error is None and result.judge_error is None, result.error or result.judge_error
    assert len(engine.requests) == 1  # the program ran and printed: that is the answer
    # the reply ends at the closed code block, or where an invented output would start
    assert engine.requests[0].params.stop == ["\n```\n", "```output"]
    first_prompt = engine.requests[0].prompt_text
    assert "<tools>" not in first_prompt  # no tool schema in this form
    assert f"{janet.main_query}\n\nWrite a Python program that computes the answer and prints it.<|im_end|>" in first_prompt
    assert result.output.metadata["final_answer"] == "18"
    assert (result.reward, result.is_success) == (1.0, True)
    assert result.output.metadata["python_tool_calls"] == 1
    # the proxy parsed no <tool_call>, the workflow's own count is the one reported
    assert result.metrics["tool_calls"] == 0 and result.metrics["workflow/tool_calls"] == 1
    assert summarize_episodes([result])["rollout/tool_call_rate"] == 1.0


async def test_code_interpreter_runs_the_real_code_not_an_invented_output(janet, run_episode):
    # A reply that runs past the code with its own "result" (as the untrained model does without the
    # stop strings): the code still runs and its real value, not the invented 16, is the answer.
    result, engine = await run_episode(_config(CODE_STYLE), write_python(tail="\n```output\n16\n```"), janet)
    assert result.output.metadata["final_answer"] == "18" and result.reward == 1.0


async def test_code_interpreter_a_failing_program_gets_its_error_back_and_is_fixed(janet, run_episode):
    def reply(prompt_text: str) -> str:
        if not _outputs_sent(prompt_text):
            return "```python\nprint((16 - 3 - 4) * price)\n```\n"
        return "```python\nprint((16 - 3 - 4) * 2)\n```\n"

    result, engine = await run_episode(_config(CODE_STYLE), reply, janet)
    assert len(engine.requests) == 2
    (sent,) = _outputs_sent(engine.requests[1].prompt_text)
    assert "NameError" in sent and "price" in sent  # the real traceback came back
    assert "Write a corrected program that prints it.<|im_end|>\n<|im_start|>assistant\n" in engine.requests[1].prompt_text
    assert (result.output.metadata["final_answer"], result.reward) == ("18", 1.0)
    assert result.metrics["workflow/tool_calls"] == 2 and result.metrics["workflow/tool_errors"] == 1
    # both turns are one sample: the second prompt extends the first reply token for token
    assert len(result.samples) == 1 and result.output.metadata["episode_stats"]["splices"] == 1


async def test_code_interpreter_with_the_answer_in_words_sends_every_output_back(janet, run_episode, monkeypatch):
    from tutorial.example_math_agent.math_agent_code_interpreter import ExampleMathLearn

    monkeypatch.setattr(ExampleMathLearn, "ANSWER_FROM_OUTPUT", False)
    result, engine = await run_episode(_config(CODE_STYLE), write_python(), janet)
    assert len(engine.requests) == 2 and _outputs_sent(engine.requests[1].prompt_text) == ["18"]
    assert "Give the final answer as \\boxed{N}.<|im_end|>" in engine.requests[1].prompt_text
    assert result.reward == 1.0  # the reply boxed the value the program printed


async def test_code_interpreter_answer_without_code_ends_the_episode(janet, run_episode):
    result, engine = await run_episode(_config(CODE_STYLE), lambda prompt: "It is 9 * 2 = \\boxed{18}.", janet)
    assert len(engine.requests) == 1 and result.reward == 1.0
    assert result.metrics["workflow/tool_calls"] == 0


async def test_code_interpreter_code_that_prints_nothing_is_told_so(janet, run_episode):
    result, engine = await run_episode(_config(CODE_STYLE, "task_judge.behavior_penalty=0.25"),
                                       write_python("eggs = (16 - 3 - 4) * 2\neggs"), janet)
    assert "use print()" in _outputs_sent(engine.requests[1].prompt_text)[0]
    assert result.metrics["workflow/tool_calls_without_output"] == 1
    assert result.reward == pytest.approx(-0.25)  # it boxed the notice, not 18


async def test_code_interpreter_turn_limit(janet, run_episode):
    result, engine = await run_episode(_config(CODE_STYLE, "rollout.multi_turn.max_steps=3"),
                                       lambda prompt: "```python\nprint(1 / 0)\n```\n", janet)
    assert result.error is None and len(engine.requests) == 3 and result.reward == 0.0
    assert result.metrics["workflow/tool_calls"] == 3 and result.metrics["workflow/tool_errors"] == 3


def test_last_python_block_and_when_to_execute():
    from tutorial.example_math_agent.math_agent_code_interpreter import last_python_block, wants_execution

    assert last_python_block("a\n```python\nx = 1\n```\nb\n```py\nprint(2)\n```\n") == "print(2)"
    assert last_python_block("```python\nprint(3)\n```output") == "print(3)"  # fence cut by the stop
    assert last_python_block("```python\nprint(1)\n```\n```output\n1\n```\n```python\nprint(9)\n```") == "print(1)"
    assert last_python_block("no code") is None and last_python_block("```python\n\n```") is None
    assert last_python_block("```json\n{}\n```\n") is None
    assert wants_execution("```python\nprint(1)\n```\n```output")
    assert wants_execution("```python\nprint(1)\n```\n")
    assert not wants_execution("```python\nprint(1)\n```\nSo \\boxed{1}.")  # answered without waiting
    assert not wants_execution("The answer is \\boxed{1}.")
