"""`ajet --backbone=debug` with `rollout.engine=vllm`: the math tutorial trains, checkpoints and syncs weights.

Six arithmetic tasks in a local file (no dataset download, nothing to skip).

Runs the launcher as a user does, on a random Qwen2 with head_dim 32 (tests/vllm_helpers.py) that vLLM's
CPU attention accepts, float32 on both sides, with a judge whose rewards vary within a group (so the
policy really changes) and a learning rate large enough that a stale engine would show (with the
weight sync disabled by hand, the step-3 logprob gap below was ~0.3; with it, ~1e-5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from vllm_helpers import build_vllm_test_model

REPO = Path(__file__).resolve().parents[1]
CONF = "tutorial/example_math_agent/math_agent.yaml"
# |trainer - engine| mean logprob gap on trained tokens when the engine serves the trainer's weights.
SYNCED_GAP = 1e-3

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_vllm_test_model(tmp_path_factory.mktemp("vllm-train-model"))


QUESTIONS = [("What is 1+1?", 2), ("What is 2+3?", 5), ("What is 4+4?", 8), ("What is 3+6?", 9), ("What is 7-2?", 5), ("What is 2*6?", 12)]


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vllm-train-tasks") / "tasks.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": f"#### {a}"}) + "\n" for q, a in QUESTIONS))
    return path


def _train(task_file: Path, model_dir: Path, run_dir: Path, *extra: str) -> list[dict]:
    overrides = [
        f"ajet.model.path={model_dir}",
        "ajet.rollout.engine=vllm",
        "ajet.lora.lora_rank=0",  # full weights: the gaps in the module docstring were measured so
        "ajet.task_reader.type=dataset_file",
        f"ajet.task_reader.dataset_file.training.file_path={task_file}",
        "ajet.rollout.user_workflow=tutorial.example_math_agent.math_agent_oai_sdk->ExampleMathLearn",
        f"ajet.task_judge.judge_protocol={REPO / 'tests' / 'vllm_helpers.py'}->ReplyShapeJudge",
        "ajet.rollout.num_repeat=2",
        "ajet.rollout.max_response_length_in_one_turn=16",
        "ajet.rollout.max_model_len=2048",
        "ajet.rollout.max_batch_size=8",
        "ajet.rollout.multi_turn.max_steps=2",
        "ajet.data.train_batch_size=2",
        "ajet.trainer_common.optim.lr=1e-3",
        "ajet.trainer_common.total_training_steps=3",
        "ajet.trainer_common.save_freq=1",
        "ajet.trainer_common.logger=[jsonl]",
        f"ajet.trainer_common.experiment_dir={run_dir}",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "ajet.launcher", "--conf", CONF, "--backbone", "debug", *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "rollout engine: vllm" in (run_dir / "ajet.log").read_text()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith(".")) == [
        "global_step_1", "global_step_2", "global_step_3",
    ]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    return rows


def _episode_versions(run_dir: Path, step: int) -> list[list[int]]:
    lines = (run_dir / "rollouts" / f"step_{step:05d}.jsonl").read_text().splitlines()
    return [json.loads(line)["policy_versions"] for line in lines if not json.loads(line)["dropped_as_stale"]]


def test_three_synchronous_grpo_steps_with_vllm_serve_each_steps_weights(tmp_path, task_file, model_dir):
    rows = _train(task_file, model_dir, tmp_path / "sync")
    assert all(r["train/grad_norm"] > 0 for r in rows), [(r["step"], r["train/grad_norm"], r.get("rollout/reward_std")) for r in rows]
    # Synchronous: step k's episodes are all sampled by version k-1, the weights step k-1 produced.
    for step in (1, 2, 3):
        assert _episode_versions(tmp_path / "sync", step) == [[step - 1]] * 4
    # ... and the engine really holds them: its logprobs equal the trainer's before each update.
    for r in rows:
        assert r["train/rollout_trainer_logprob_diff"] < SYNCED_GAP


def test_asynchronous_training_with_vllm_trains_groups_sampled_before_the_last_update(tmp_path, task_file, model_dir):
    rows = _train(task_file, model_dir, tmp_path / "async", "ajet.trainer_common.async.max_staleness=1")
    assert all(r["train/grad_norm"] > 0 for r in rows), [(r["step"], r["train/grad_norm"]) for r in rows]
    # Step 2 trains groups launched with step 1's (sampled while step 1 trained, by version 0).
    assert rows[1]["async/staleness_max"] == 1
    assert all(r["async/staleness_max"] <= 1 for r in rows)
    assert any(0 in versions for versions in _episode_versions(tmp_path / "async", 2))
