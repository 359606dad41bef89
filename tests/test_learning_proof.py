"""GRPO really learns: through the product's own rollout core, tuner, proxy, judge and trainer.

A tiny random character-level model is rewarded for the share of its characters in a target set
(see ajet/testing/charset_task.py). Mean reward starts at or below 0.25 and must reach 0.6; the same run
with every advantage negated must not learn. Both also run with `max_staleness=2` (asynchronous
schedule: rollouts for later steps continue while the trainer updates).

Every other registered estimator and policy loss, and dynamic sampling (on the reward rounded down to
quarters, so that groups without a spread occur), passes the same proof on the synchronous schedule;
their flipped-sign controls run CONTROL_STEPS steps, enough for the reward to fall below where it
started (a loss that ignored the advantage's sign would rise there too).
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import pytest
import yaml

from ajet.testing.charset_task import write_prompts

STEPS = 20
CONTROL_STEPS = 8

# variant -> (trainer_common.algorithm settings, judge)
VARIANTS = {
    "grpo-no-std": ({"norm_adv_by_std_in_grpo": False}, "CharSetJudge"),
    "dr_grpo": ({"adv_estimator": "dr_grpo", "loss_agg_mode": "seq-mean-token-sum-norm"}, "CharSetJudge"),
    "rloo": ({"adv_estimator": "rloo"}, "CharSetJudge"),
    "reinforce_plus_plus_baseline": ({"adv_estimator": "reinforce_plus_plus_baseline"}, "CharSetJudge"),
    "gspo": ({"policy_loss": {"loss_mode": "gspo"}, "loss_agg_mode": "seq-mean-token-mean"}, "CharSetJudge"),
    "cispo": ({"policy_loss": {"loss_mode": "cispo"}}, "CharSetJudge"),
    "filter_groups": ({"filter_groups": {"enable": True}}, "CharSetLevelsJudge"),
}


def _config(tmp_path: Path, model_dir: Path, *, max_staleness: int, steps: int = STEPS,
            algorithm: dict | None = None, judge: str = "CharSetJudge"):
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
            "task_judge": {"judge_protocol": f"{proof}->{judge}"},
            "trainer_common": {
                "total_training_steps": steps,
                "algorithm": algorithm or {},
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


def _train(tmp_path: Path, model_dir: Path, *, sign: float, max_staleness: int = 0, **variant) -> list[float]:
    return [m["rollout/reward_mean"] for m in _history(tmp_path, model_dir, sign=sign, max_staleness=max_staleness, **variant)]


def _history(tmp_path: Path, model_dir: Path, *, sign: float, max_staleness: int = 0, **variant) -> list[dict]:
    from ajet.training import TrainingLoop

    cfg = _config(tmp_path, model_dir, max_staleness=max_staleness, **variant)
    loop = TrainingLoop(cfg, tmp_path / "run", advantage_sign=sign)
    asyncio.run(loop.run())
    return loop.history


@pytest.mark.slow
@pytest.mark.parametrize("max_staleness", [0, 2], ids=["sync", "async-staleness-2"])
def test_grpo_lifts_reward_and_flipped_advantage_does_not(tmp_path, char_model, max_staleness):
    rewards = _train(tmp_path / "learn", char_model, sign=1.0, max_staleness=max_staleness)
    start, end = statistics.fmean(rewards[:3]), statistics.fmean(rewards[-5:])
    assert start <= 0.25, f"the task must start hard: first-steps reward {start:.3f}"
    assert end >= 0.6, f"GRPO did not learn: reward {start:.3f} -> {end:.3f} ({[round(r, 2) for r in rewards]})"

    flipped = _train(tmp_path / "flipped", char_model, sign=-1.0, max_staleness=max_staleness)
    flipped_end = statistics.fmean(flipped[-5:])
    assert flipped_end < 0.3, f"flipped advantages must not learn, got {flipped_end:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_algorithm_lifts_reward_and_its_flipped_control_does_not(tmp_path, char_model, variant):
    algorithm, judge = VARIANTS[variant]
    history = _history(tmp_path / "learn", char_model, sign=1.0, algorithm=algorithm, judge=judge)
    rewards = [m["rollout/reward_mean"] for m in history]
    start, end = statistics.fmean(rewards[:3]), statistics.fmean(rewards[-5:])
    assert start <= 0.25, f"the task must start hard: first-steps reward {start:.3f}"
    assert end >= 0.6, f"{variant} did not learn: reward {start:.3f} -> {end:.3f} ({[round(r, 2) for r in rewards]})"
    if variant == "filter_groups":
        assert sum(m["filter_groups/dropped_groups"] for m in history) > 0, "nothing was filtered: the proof proves nothing"
        assert all(m["filter_groups/trained_zero_variance_token_share"] == 0 for m in history if not m["filter_groups/cap_reached"])

    flipped = _train(tmp_path / "flipped", char_model, sign=-1.0, steps=CONTROL_STEPS, algorithm=algorithm, judge=judge)
    flipped_start, flipped_end = statistics.fmean(flipped[:3]), statistics.fmean(flipped[-3:])
    assert flipped_end < min(flipped_start, 0.2), (
        f"{variant} with flipped advantages must not learn: {flipped_start:.3f} -> {flipped_end:.3f} "
        f"({[round(r, 2) for r in flipped]})"
    )
