"""A run stopped at any moment keeps what it trained.

The last step's checkpoint is on disk before that step's validation starts (an evaluation can take
longer than a step, and a run killed during it used to lose every step since its last save), and
SIGTERM (a scheduler, `ajet --kill`) ends a debug run the way Ctrl-C does: the last finished step
is saved and the resumed run continues from it. The char-model task keeps both fast on a CPU.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ajet.testing.charset_task import write_prompts
from ajet.trainer.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[1]


def _write_conf(root: Path, model_dir: Path, run_dir: Path, *, steps: int, test_freq: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    prompts = write_prompts(root / "prompts.jsonl")
    conf = {
        "ajet": {
            "experiment_name": "stops",
            "model": {"path": str(model_dir), "chat_template": "model"},
            "data": {"train_batch_size": 2, "max_prompt_length": 128, "max_response_length": 64, "seed": 0},
            "rollout": {
                "user_workflow": "ajet.testing.charset_task->CharSetWorkflow",
                "num_repeat": 2,
                "max_response_length_in_one_turn": 8,
                "max_model_len": 256,
                "multi_turn": {"max_steps": 1},
            },
            "task_reader": {
                "type": "dataset_file",
                "dataset_file": {"training": {"file_path": str(prompts)}, "validation": {"file_path": str(prompts)}},
            },
            "task_judge": {"judge_protocol": "ajet.testing.charset_task->CharSetJudge"},
            "trainer_common": {
                "total_training_steps": steps,
                "save_freq": 0,  # only at the end
                "test_freq": test_freq,
                "val_max_num_task_each_validation": 2,
                "logger": ["jsonl"],
                "experiment_dir": str(run_dir),
            },
        }
    }
    path = root / "conf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def _saved_steps(run_dir: Path) -> list[int]:
    return [step for step, _ in list_checkpoints(run_dir / "checkpoints")]


def test_the_last_step_is_saved_before_its_validation_starts(tmp_path, char_model, monkeypatch):
    from ajet.config import load_config
    from ajet.training import TrainingLoop

    run_dir = tmp_path / "run"
    cfg = load_config(_write_conf(tmp_path, char_model, run_dir, steps=2, test_freq=2), [])
    on_disk_when_validating: list[list[int]] = []

    async def validate_and_die(self, val_tasks, step):
        on_disk_when_validating.append(_saved_steps(run_dir))
        raise RuntimeError("killed while evaluating")

    monkeypatch.setattr(TrainingLoop, "_validate", validate_and_die)
    with pytest.raises(RuntimeError, match="killed while evaluating"):
        asyncio.run(TrainingLoop(cfg, run_dir).run())
    assert on_disk_when_validating == [[2]]
    meta = json.loads((run_dir / "checkpoints" / "global_step_2" / "meta.json").read_text())
    assert meta["extra_state"]["step"] == 2


@pytest.mark.slow
def test_sigterm_saves_the_last_finished_step_and_the_run_resumes_from_it(tmp_path, char_model):
    run_dir = tmp_path / "run"
    conf = _write_conf(tmp_path, char_model, run_dir, steps=1000, test_freq=0)
    command = [sys.executable, "-m", "ajet.launcher", "--conf", str(conf), "--backbone", "debug"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "no training step within 5 minutes"
        time.sleep(0.1)
    assert _saved_steps(run_dir) == []  # save_freq 0: nothing saved before the end
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-4000:]

    (saved,) = _saved_steps(run_dir)
    trained = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]
    assert saved >= 1 and saved == max(trained), (saved, trained, out[-4000:])

    resumed = subprocess.run(
        [*command, "ajet.trainer_common.total_training_steps=" + str(saved + 1)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    assert f"resumed from {run_dir / 'checkpoints' / f'global_step_{saved}'} at step {saved}" in resumed.stdout
    assert _saved_steps(run_dir) == [saved, saved + 1]
