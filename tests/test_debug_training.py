"""`ajet --conf tutorial/example_math_agent/math_agent.yaml --backbone=debug` end to end, as a user runs it.

With the tiny random model and the shipped GSM8K: several training steps write checkpoints, metrics
(JSONL + SwanLab), per-step rollout logs and logview pages; a run killed mid-way resumes from its
last checkpoint and trains on the same tasks, in the same order, as an uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = "tutorial/example_math_agent/math_agent.yaml"


def _overrides(gsm8k_dir: Path, run_dir: Path, steps: int) -> list[str]:
    return [
        "ajet.model.path=builtin:tiny-qwen2-random",
        f"ajet.task_reader.huggingface_dat_repo.dataset_path={gsm8k_dir}",
        "ajet.rollout.user_workflow=tutorial.example_math_agent.math_agent_oai_sdk->ExampleMathLearn",
        "ajet.rollout.num_repeat=2",
        "ajet.rollout.max_response_length_in_one_turn=16",
        "ajet.rollout.multi_turn.max_steps=2",
        "ajet.data.train_batch_size=2",
        f"ajet.trainer_common.total_training_steps={steps}",
        "ajet.trainer_common.save_freq=1",
        "ajet.trainer_common.logger=[jsonl,swanlab]",
        "ajet.trainer_common.swanlab_mode=offline",
        f"ajet.trainer_common.experiment_dir={run_dir}",
    ]


def _launch(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "ajet.launcher", "--conf", CONF, "--backbone", "debug", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw,
    )


def _run(args: list[str]) -> str:
    proc = _launch(args)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    return out


def _trained_tasks(run_dir: Path) -> list[list[str]]:
    steps = sorted((run_dir / "rollouts").glob("step_*.jsonl"))
    return [sorted({json.loads(line)["task_id"] for line in p.read_text().splitlines()}) for p in steps]


@pytest.mark.slow
def test_math_agent_trains_checkpoints_logs_and_resumes_after_a_kill(tmp_path, gsm8k_dir):
    reference = tmp_path / "reference"
    out = _run(["--with-logview", *_overrides(gsm8k_dir, reference, steps=3)])
    assert "training" in out

    assert sorted(p.name for p in (reference / "checkpoints").iterdir() if not p.name.startswith(".")) == [
        "global_step_1", "global_step_2", "global_step_3",
    ]
    metrics = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    train_rows = [m for m in metrics if "rollout/reward_mean" in m]
    assert [m["step"] for m in train_rows] == [1, 2, 3]
    assert all("train/loss" in m and "timing/rollout_s" in m for m in train_rows)
    assert list((reference / "swanlog").rglob("*")), "SwanLab wrote nothing"
    pages = sorted((reference / "logview").glob("step_*.html"))
    assert [p.name for p in pages] == ["step_00001.html", "step_00002.html", "step_00003.html"]
    assert "<html" in pages[0].read_text().lower()
    reference_order = _trained_tasks(reference)
    assert len(reference_order) == 3 and all(len(step) == 2 for step in reference_order)

    # Kill a second run right after its first checkpoint lands, then start it again.
    killed = tmp_path / "killed"
    proc = _launch(_overrides(gsm8k_dir, killed, steps=3), start_new_session=True)
    deadline = time.monotonic() + 600
    while not (killed / "checkpoints" / "global_step_1").exists():
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "global_step_3").exists()

    out = _run(_overrides(gsm8k_dir, killed, steps=3))
    assert "resumed from" in out
    assert (killed / "checkpoints" / "global_step_3").exists()
    # Steps logged twice (the killed run's step 2, if it finished rolling out) are replaced by the
    # resumed run's; what was trained at each step matches the uninterrupted run.
    assert _trained_tasks(killed) == reference_order


@pytest.mark.slow
@pytest.mark.parametrize(
    "style",
    [
        pytest.param(
            "math_agent_openai_agents",  # OpenAI Agents SDK, Responses API
            marks=pytest.mark.skipif(importlib.util.find_spec("agents") is None, reason="openai-agents (the dev extra) is not installed"),
        ),
        "math_agent_anthropic",  # Anthropic SDK, Messages API
    ],
)
def test_responses_and_messages_styles_train_a_step(tmp_path, gsm8k_dir, style):
    """The workflows on the other two protocols train on the debug backbone: episodes end without
    errors (cut replies included) and their sampled tokens reach the update."""
    run_dir = tmp_path / style
    overrides = [o for o in _overrides(gsm8k_dir, run_dir, steps=1) if not o.startswith(("ajet.rollout.user_workflow=", "ajet.trainer_common.logger="))]
    _run([*overrides, f"ajet.rollout.user_workflow=tutorial.example_math_agent.{style}->ExampleMathLearn", "ajet.trainer_common.logger=[jsonl]"])
    (row,) = [m for m in (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()) if "train/loss" in m]
    assert row["step"] == 1 and row["rollout/episodes"] == 4 and row["rollout/failed_episodes"] == 0
    assert row["train/trained_tokens"] > 0
    episodes = [json.loads(line) for line in (run_dir / "rollouts" / "step_00001.jsonl").read_text().splitlines()]
    assert len(episodes) == 4 and all(e["error"] is None and e["turns"] >= 1 for e in episodes)
    assert (run_dir / "checkpoints" / "global_step_1").exists()
