"""RolloutRunner: episodes through the real proxy; failures become recorded zero rewards."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from ajet import Workflow, WorkflowOutput
from ajet.config import AjetConfig
from ajet.engine.scripted import ScriptedEngine
from ajet.judge.base import BaseJudge
from ajet.proxy import ProxyServer
from ajet.rollout import RolloutRunner
from ajet.schema import Task
from ajet.testing.config import make_config
from ajet.tuner import AjetTuner  # noqa: F401 - imported up front: its first import is slow


@pytest.fixture(scope="module")
def tokenizer():
    from ajet.models import load_tokenizer

    return load_tokenizer("builtin:tiny-qwen2-random")


@pytest.fixture
def stack(tokenizer):
    engine = ScriptedEngine(tokenizer, lambda prompt: "The answer is 42.")
    proxy = ProxyServer(engine, tokenizer)
    proxy.start()
    yield engine, proxy
    proxy.stop()


class AskOnce(Workflow):
    async def execute(self, workflow_task, tuner):
        client = tuner.as_raw_openai_sdk_client()
        reply = await client.chat.completions.create(model="m", messages=workflow_task.task.init_messages)
        return WorkflowOutput(reward=None, metadata={"final_answer": reply.choices[0].message.content})


class Raises(Workflow):
    async def execute(self, workflow_task, tuner):
        await AskOnce().execute(workflow_task, tuner)  # a model call is recorded before the failure
        raise RuntimeError("tool exploded")


class Sleeps(Workflow):
    async def execute(self, workflow_task, tuner):
        await asyncio.sleep(30)


class BlocksSynchronously(Workflow):
    """User code that blocks its thread (like the seed's `requests.post`) must not stall others."""

    lock = threading.Lock()
    running = 0
    most_at_once = 0

    async def execute(self, workflow_task, tuner):
        cls = type(self)
        with cls.lock:
            cls.running += 1
            cls.most_at_once = max(cls.most_at_once, cls.running)
        time.sleep(0.3)
        with cls.lock:
            cls.running -= 1
        return WorkflowOutput(reward=1.0, is_success=True)


class ContainsJudge(BaseJudge):
    def compute_reward(self, workflow_task, workflow_output):
        ok = workflow_task.task.metadata["reference_answer"] in workflow_output.metadata["final_answer"]
        return float(ok), ok


class AsyncJudge(BaseJudge):
    async def compute_reward(self, workflow_task, workflow_output):
        await asyncio.sleep(0)
        return 0.25, False


class BrokenJudge(BaseJudge):
    def compute_reward(self, workflow_task, workflow_output):
        raise KeyError("reference_answer")


def _config(*overrides: str) -> AjetConfig:
    return make_config("rollout.max_env_worker=8", "rollout.episode_timeout=5", *overrides)


TASK = Task(main_query="What is 6*7?", task_id="t0", metadata={"reference_answer": "42"})


async def test_episode_is_judged_and_its_tokens_are_exact(stack):
    engine, proxy = stack
    engine.policy_version = 3
    runner = RolloutRunner(AskOnce, ContainsJudge(), proxy, _config())
    result = await runner.run_episode(TASK)
    assert result.error is None and result.judge_error is None
    assert result.reward == 1.0 and result.is_success
    (sample,) = result.samples
    sampled = [t for t, m in zip(sample.input_ids, sample.loss_mask) if m]
    assert sampled == engine.requests[-1].completion.token_ids
    assert sample.reward == 1.0 and sample.task_id == "t0"
    assert {v for v, m in zip(sample.token_versions, sample.loss_mask) if m} == {3}
    assert result.output.metadata["episode_stats"]["turns"] == 1
    runner.close()


class ReportsClientTimeouts(Workflow):
    async def execute(self, workflow_task, tuner):
        timeouts = {
            "openai": tuner.as_raw_openai_sdk_client().timeout,
            "agentscope": tuner.as_agentscope_model().client.timeout,
            "anthropic": tuner.as_raw_anthropic_sdk_client().timeout,
            "base_url": tuner.as_oai_baseurl_apikey().request_timeout,
        }
        return WorkflowOutput(reward=1.0, metadata={"timeouts": timeouts})


async def test_every_client_the_tuner_makes_waits_as_long_as_the_episode_may(stack):
    """The SDKs' own 600 s is shorter than a call waits behind a batch on a loaded CPU engine."""
    _, proxy = stack
    runner = RolloutRunner(ReportsClientTimeouts, ContainsJudge(), proxy, _config("rollout.episode_timeout=1234"))
    result = await runner.run_episode(TASK)
    assert result.error is None
    assert result.output.metadata["timeouts"] == {"openai": 1234.0, "agentscope": 1234.0, "anthropic": 1234.0, "base_url": 1234.0}
    runner.close()


async def test_async_judge_and_workflow_reward_bypass(stack):
    _, proxy = stack
    runner = RolloutRunner(AskOnce, AsyncJudge(), proxy, _config())
    assert (await runner.run_episode(TASK)).reward == 0.25
    runner = RolloutRunner(BlocksSynchronously, BrokenJudge(), proxy, _config())
    result = await runner.run_episode(TASK)
    assert result.reward == 1.0 and result.judge_error is None, "a workflow's own reward skips the judge"
    runner.close()


async def test_raising_workflow_gives_recorded_zero_reward_sample(stack):
    _, proxy = stack
    runner = RolloutRunner(Raises, ContainsJudge(), proxy, _config())
    result = await runner.run_episode(TASK)
    assert result.reward == 0.0 and not result.is_success
    assert "RuntimeError: tool exploded" in result.error
    assert len(result.samples) == 1 and result.samples[0].reward == 0.0
    assert result.samples[0].metadata["error"].startswith("RuntimeError")
    runner.close()


async def test_judge_failure_and_timeout_are_zero_reward(stack):
    _, proxy = stack
    runner = RolloutRunner(AskOnce, BrokenJudge(), proxy, _config())
    result = await runner.run_episode(TASK)
    assert result.reward == 0.0 and "KeyError" in result.judge_error
    runner = RolloutRunner(Sleeps, ContainsJudge(), proxy, _config("rollout.episode_timeout=0.3"))
    result = await runner.run_episode(TASK)
    assert result.reward == 0.0 and result.error.startswith("timeout")
    runner.close()


async def test_batch_runs_blocking_episodes_concurrently_and_in_order(stack):
    _, proxy = stack
    BlocksSynchronously.most_at_once = 0
    runner = RolloutRunner(BlocksSynchronously, None, proxy, _config("rollout.max_env_worker=4"))
    tasks = [Task(main_query=f"q{i}", task_id=f"t{i}") for i in range(2)]
    results = await runner.run_batch(tasks, num_repeat=4)
    assert [(r.task_id, r.repeat_index) for r in results] == [(f"t{i}", j) for i in range(2) for j in range(4)]
    # Each episode blocks its thread in time.sleep: on a shared event loop they would run one by one.
    assert BlocksSynchronously.most_at_once > 1, "blocking episodes were serialised"
    assert BlocksSynchronously.most_at_once <= 4, "rollout.max_env_worker bounds concurrency"
    runner.close()


async def test_reward_list_is_assigned_per_sample(stack, tokenizer):
    _, proxy = stack

    class TwoConversations(Workflow):
        async def execute(self, workflow_task, tuner):
            client = tuner.as_raw_openai_sdk_client()
            for query in ("first", "second, unrelated"):
                await client.chat.completions.create(model="m", messages=[{"role": "user", "content": query}])
            return WorkflowOutput(reward=[0.1, 0.9])

    runner = RolloutRunner(TwoConversations, None, proxy, _config())
    result = await runner.run_episode(TASK)
    assert [s.reward for s in result.samples] == [0.1, 0.9]
    assert result.reward == 0.9
    runner.close()


async def test_waiting_for_a_worker_thread_does_not_count_against_the_timeout(stack):
    _, proxy = stack

    class SlowButInTime(Workflow):
        async def execute(self, workflow_task, tuner):
            await asyncio.sleep(0.6)
            return WorkflowOutput(reward=1.0, is_success=True)

    # One worker thread, four episodes of 0.6 s each, a 1.5 s timeout + 0.1 s grace: the fourth waits
    # 1.8 s for the thread, which must not count as running past its timeout.
    config = _config("rollout.max_env_worker=1", "rollout.episode_timeout=1.5")
    runner = RolloutRunner(SlowButInTime, None, proxy, config, blocked_grace=0.1)
    results = await runner.run_batch([TASK], num_repeat=4)
    assert [r.error for r in results] == [None] * 4
    assert [r.reward for r in results] == [1.0] * 4
    runner.close()


async def test_reply_cut_by_the_turn_cap_is_counted_and_not_credited_by_its_last_number(tokenizer):
    """Every turn hitting rollout.max_response_length_in_one_turn must show in the metrics (samples stay
    whole, so truncated_samples alone reads 0) and the math judge must not score the cut reply."""
    from ajet.judge.math import MathAnswerAsJudge
    from ajet.rollout.metrics import summarize_episodes

    text = "6 * 7 = 42, so far; now let me also check the other numbers one by one before I answer"
    engine = ScriptedEngine(tokenizer, lambda prompt: text)
    proxy = ProxyServer(engine, tokenizer)
    proxy.start()
    try:
        results = {}
        for cap in (8, 200):
            runner = RolloutRunner(AskOnce, MathAnswerAsJudge(), proxy, _config(f"rollout.max_response_length_in_one_turn={cap}"))
            results[cap] = await runner.run_episode(TASK)
            runner.close()
    finally:
        proxy.stop()
    cut, whole = results[8], results[200]
    assert engine.requests[0].completion.finish_reason == "length"
    assert cut.output.metadata["final_answer"] == "6 * 7 = 42"  # cut after 8 tokens (digits are one token each)
    assert cut.metrics["last_reply_truncated"] == 1.0 and cut.metrics["length_cuts"] == 1.0
    assert (cut.reward, cut.output.metadata["judge_decided_by"]) == (0.0, "truncated")
    assert whole.metrics["last_reply_truncated"] == 0.0
    metrics = summarize_episodes([cut, whole], prefix="val/")
    assert metrics["val/truncated_samples"] == 0.0
    assert metrics["val/truncated_turns"] == 1.0 and metrics["val/truncated_turn_rate"] == 0.5
    assert metrics["val/truncated_last_reply_rate"] == 0.5
