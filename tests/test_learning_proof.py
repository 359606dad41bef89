"""GRPO really learns: through the product's own rollout core, tuner, proxy, judge and trainer.

A tiny random character-level model is rewarded for the share of its characters in a target set
(see ajet/testing/charset_task.py). Mean reward starts at or below 0.2 and must reach 0.6; the same run
with every advantage negated must not learn. Both also run with `max_staleness=2` (asynchronous
schedule: rollouts for later steps continue while the trainer updates).
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import pytest
import yaml

from ajet.testing.charset_task import build_char_model, write_prompts

STEPS = 20


@pytest.fixture(scope="module")
def char_model(tmp_path_factory) -> Path:
    return build_char_model(tmp_path_factory.mktemp("char_model"))


def _config(tmp_path: Path, model_dir: Path, *, max_staleness: int):
    from ajet.config import load_config

    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    proof = "ajet.testing.charset_task"
    conf = {
        "ajet": {
            "experiment_name": "learning_proof",
            "model": {"path": str(model_dir), "chat_template": "model"},
            "data": {"train_batch_size": 4, "max_prompt_length": 128, "max_response_length": 64, "seed": 0},
            "rollout": {
                "user_workflow": f"{proof}->CharSetWorkflow",
                "num_repeat": 8,
                "temperature": 1.0,
                "max_env_worker": 32,
                "max_response_length_in_one_turn": 12,
                "max_model_len": 256,
                "multi_turn": {"max_steps": 1},
            },
            "task_reader": {"type": "dataset_file", "dataset_file": {"training": {"file_path": str(prompts)}}},
            "task_judge": {"judge_protocol": f"{proof}->CharSetJudge"},
            "trainer_common": {
                "total_training_steps": STEPS,
                "save_freq": 0,
                "logger": ["jsonl"],
                "micro_batch_size": 32,
                "optim": {"lr": 6.0e-3, "weight_decay": 0.0, "grad_clip": 1.0},
                "async": {"max_staleness": max_staleness},
            },
        }
    }
    path = tmp_path / "proof.yaml"
    path.write_text(yaml.safe_dump(conf))
    return load_config(path, [])


def _train(tmp_path: Path, model_dir: Path, *, sign: float, max_staleness: int = 0) -> list[float]:
    from ajet.training import TrainingLoop

    cfg = _config(tmp_path, model_dir, max_staleness=max_staleness)
    loop = TrainingLoop(cfg, tmp_path / "run", advantage_sign=sign)
    asyncio.run(loop.run())
    return [m["rollout/reward_mean"] for m in loop.history]


@pytest.mark.slow
@pytest.mark.parametrize("max_staleness", [0, 2], ids=["sync", "async-staleness-2"])
def test_grpo_lifts_reward_and_flipped_advantage_does_not(tmp_path, char_model, max_staleness):
    rewards = _train(tmp_path / "learn", char_model, sign=1.0, max_staleness=max_staleness)
    start, end = statistics.fmean(rewards[:3]), statistics.fmean(rewards[-5:])
    assert start <= 0.2, f"the task must start hard: first-steps reward {start:.3f}"
    assert end >= 0.6, f"GRPO did not learn: reward {start:.3f} -> {end:.3f} ({[round(r, 2) for r in rewards]})"

    flipped = _train(tmp_path / "flipped", char_model, sign=-1.0, max_staleness=max_staleness)
    flipped_end = statistics.fmean(flipped[-5:])
    assert flipped_end < 0.3, f"flipped advantages must not learn, got {flipped_end:.3f}"
