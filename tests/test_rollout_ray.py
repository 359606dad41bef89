"""`--with-ray` on the debug backbone: workflows run in Ray worker processes, tracking stays exact."""

from __future__ import annotations

from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ajet.engine.scripted import ScriptedEngine  # noqa: E402
from ajet.proxy import ProxyServer  # noqa: E402
from ajet.rollout import RolloutRunner  # noqa: E402
from ajet.rollout.ray_executor import RayWorkflowExecutor  # noqa: E402
from ajet.schema import Task  # noqa: E402
from ajet.testing.config import make_config  # noqa: E402

# A path spec: the worker re-imports the class from the file (it cannot be unpickled by name).
WORKFLOWS = Path(__file__).resolve().parent / "ray_workflows.py"
SPEC = f"{WORKFLOWS}->PidReportingWorkflow"


@pytest.fixture(scope="module")
def ray_cluster():
    from ajet.ray_utils import ray_session

    with ray_session(num_cpus=2, namespace="ajet-test") as info:
        yield info


@pytest.mark.slow
async def test_workflow_runs_in_a_ray_worker_and_its_tokens_are_tracked(ray_cluster, tmp_path, monkeypatch):
    import os

    from ajet.imports import import_object
    from ajet.models import load_tokenizer

    tokenizer = load_tokenizer("builtin:tiny-qwen2-random")
    engine = ScriptedEngine(tokenizer, lambda prompt: "The answer is 42.")
    proxy = ProxyServer(engine, tokenizer)
    proxy.start()
    try:
        workflow_cls = import_object(SPEC)
        runner = RolloutRunner(
            workflow_cls, None, proxy, make_config("rollout.max_env_worker=4", "rollout.episode_timeout=60"),
            remote=RayWorkflowExecutor(SPEC),
        )
        task = Task(main_query="What is 6*7?", task_id="t0")
        results = await runner.run_batch([task], num_repeat=2)
        for result in results:
            assert result.error is None, result.error
            assert result.output.metadata["pid"] != os.getpid(), "the workflow ran in this process"
            assert result.reward == 1.0
            (sample,) = result.samples
            sampled = [t for t, m in zip(sample.input_ids, sample.loss_mask) if m]
            assert sampled in [r.completion.token_ids for r in engine.requests]

        failing = RolloutRunner(
            workflow_cls, None, proxy, make_config("rollout.max_env_worker=2", "rollout.episode_timeout=60"),
            remote=RayWorkflowExecutor(f"{WORKFLOWS}->RaisingWorkflow"),
        )
        result = await failing.run_episode(task)
        assert result.reward == 0.0 and "ValueError: boom in a worker" in result.error
        runner.close()
        failing.close()
    finally:
        proxy.stop()
