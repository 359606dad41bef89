"""Dynamic sampling through the real training loop: the char-model learning-proof task, a judge that
gives every even-numbered task the same reward (no spread: dropped) and the rest their character share.

A run stopped after two steps and resumed from its checkpoint trains, step for step, the same tasks as
an uninterrupted run, drops the same ones, and ends at the same task-stream position; the asynchronous
schedule (staleness bound 1) trains only groups with a spread, full batches every step.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from ajet.testing.charset_task import CharSetJudge, write_prompts

BATCH = 4


class EvenTasksFlatJudge(CharSetJudge):
    """Reward 0 for every episode of an even-numbered task (`train-<row>`); otherwise the character
    share plus 0.01 per repeat index, so an odd task's group always has a spread whatever was sampled
    (which groups are dropped must not depend on sampling, which varies with the machine's load)."""

    def compute_reward(self, workflow_task, workflow_output):
        if int(workflow_task.task.task_id.rsplit("-", 1)[1]) % 2 == 0:
            return 0.0, False
        reward, success = super().compute_reward(workflow_task, workflow_output)
        return reward + 0.01 * workflow_task.repeat_index, success


def _config(root: Path, model_dir: Path, *, steps: int, max_staleness: int = 0):
    from ajet.config import load_config

    root.mkdir(parents=True, exist_ok=True)
    prompts = write_prompts(root / "prompts.jsonl")
    conf = {
        "ajet": {
            "experiment_name": "dynamic_sampling",
            "model": {"path": str(model_dir), "chat_template": "model"},
            "data": {"train_batch_size": BATCH, "max_prompt_length": 128, "max_response_length": 64, "seed": 0},
            "rollout": {
                "user_workflow": "ajet.testing.charset_task->CharSetWorkflow",
                "num_repeat": 4,
                "temperature": 1.0,
                "max_env_worker": 32,
                "max_response_length_in_one_turn": 8,
                "max_model_len": 256,
                "multi_turn": {"max_steps": 1},
            },
            "task_reader": {"type": "dataset_file", "dataset_file": {"training": {"file_path": str(prompts)}}},
            "task_judge": {"judge_protocol": f"{__file__}->EvenTasksFlatJudge"},
            "trainer_common": {
                "total_training_steps": steps,
                "save_freq": 1,
                "logger": ["jsonl"],
                "micro_batch_size": 32,
                "optim": {"lr": 1.0e-3, "weight_decay": 0.0},
                "async": {"max_staleness": max_staleness},
                "algorithm": {"filter_groups": {"enable": True, "max_num_gen_batches": 4}},
            },
        }
    }
    path = root / "conf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return load_config(path, [])


def _train(root: Path, run_dir: Path, model_dir: Path, *, steps: int, max_staleness: int = 0) -> list[dict]:
    from ajet.training import TrainingLoop

    loop = TrainingLoop(_config(root, model_dir, steps=steps, max_staleness=max_staleness), run_dir)
    asyncio.run(loop.run())
    return loop.history


def _steps(run_dir: Path) -> list[dict[str, list[str]]]:
    """Per step: the task ids of trained and of filter-dropped groups (one per group), from the rollout log."""
    out = []
    for path in sorted((run_dir / "rollouts").glob("step_*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        # one row per episode, REPEAT episodes per group (a task may come twice in a step across epochs)
        first_episodes = [r for r in rows if r["repeat_index"] == 0]
        out.append({
            "trained": sorted(r["task_id"] for r in first_episodes if not r["dropped_by_filter"] and not r["dropped_as_stale"]),
            "filtered": sorted(r["task_id"] for r in first_episodes if r["dropped_by_filter"]),
        })
    return out


def _filtered_rewards(run_dir: Path) -> list[set[float]]:
    """Per filter-dropped task of every step: the set of rewards its episodes got (one value: no spread)."""
    out = []
    for path in sorted((run_dir / "rollouts").glob("step_*.jsonl")):
        rewards: dict[str, set[float]] = {}
        for row in map(json.loads, path.read_text().splitlines()):
            if row["dropped_by_filter"]:
                rewards.setdefault(row["task_id"], set()).add(row["reward"])
        out.extend(rewards.values())
    return out


def _position(run_dir: Path, step: int) -> int:
    meta = json.loads((run_dir / "checkpoints" / f"global_step_{step}" / "meta.json").read_text())
    return meta["extra_state"]["stream_position"]


def _is_even(task_id: str) -> bool:
    return int(task_id.rsplit("-", 1)[1]) % 2 == 0


@pytest.mark.slow
def test_dynamic_sampling_resumes_at_the_exact_task_position(tmp_path, char_model):
    reference_dir = tmp_path / "reference"
    history = _train(tmp_path / "a", reference_dir, char_model, steps=4)
    reference = _steps(reference_dir)
    assert len(reference) == 4
    for step, metrics in zip(reference, history):
        assert len(step["trained"]) == BATCH and not any(_is_even(t) for t in step["trained"])
        assert all(_is_even(t) for t in step["filtered"])
        assert metrics["filter_groups/dropped_groups"] == len(step["filtered"])
        assert metrics["filter_groups/kept_groups"] == BATCH and metrics["filter_groups/cap_reached"] == 0
    assert sum(len(s["filtered"]) for s in reference) > 0
    # Only groups without a spread are dropped.
    assert all(len(rewards) == 1 for rewards in _filtered_rewards(reference_dir))
    # Every group rolled out (trained or dropped) was consumed from the stream, and nothing else.
    assert _position(reference_dir, 4) == sum(len(s["trained"]) + len(s["filtered"]) for s in reference)

    resumed_dir = tmp_path / "resumed"
    _train(tmp_path / "b", resumed_dir, char_model, steps=2)
    _train(tmp_path / "b", resumed_dir, char_model, steps=4)  # resumes from global_step_2
    assert _steps(resumed_dir) == reference
    assert _position(resumed_dir, 2) == _position(reference_dir, 2)
    assert _position(resumed_dir, 4) == _position(reference_dir, 4)


@pytest.mark.slow
def test_dynamic_sampling_under_the_asynchronous_schedule_trains_only_groups_with_a_spread(tmp_path, char_model):
    history = _train(tmp_path, tmp_path / "run", char_model, steps=3, max_staleness=1)
    steps = _steps(tmp_path / "run")
    assert [len(s["trained"]) for s in steps] == [BATCH] * 3
    assert not any(_is_even(t) for s in steps for t in s["trained"])
    assert sum(m["filter_groups/dropped_groups"] for m in history) == sum(len(s["filtered"]) for s in steps) > 0
    assert all(m["async/staleness_max"] <= 1 for m in history)
