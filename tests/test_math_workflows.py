"""The six math-agent workflows end to end: real proxy, real sandboxed executor, real judge, real runner.

A random model cannot emit tool calls, so most tests drive the proxy with the scripted engine: its
first reply calls `execute_python_code` with `print(<the arithmetic>)`, and once a tool response is in
its prompt it answers `\\boxed{<whatever the tool printed>}`. A reward of 1 therefore proves the
code really ran in the sandbox and its output reached the model's next prompt. One test per style
runs the tiny random model instead, to show the workflows survive real (garbage) model output.
"""

from __future__ import annotations

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
    with open(gsm8k_dir / "test.jsonl", encoding="utf-8") as f:
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
