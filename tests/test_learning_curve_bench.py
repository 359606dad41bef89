"""bench/learning_curve.py end to end on the tiny random model: both arms train, validate before and
after, and the report and plot come out with the numbers the issue asks for (structure, never speed
or learning: a random 2-layer model learns nothing in one step)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "learning_curve.py"


@pytest.mark.slow
def test_both_arms_run_and_the_report_has_every_figure(tmp_path):
    out_dir, results = tmp_path / "runs", tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--steps", "2", "--eval-tasks", "2", "--out-dir", str(out_dir),
         "--results-dir", str(results),
         "model.path=builtin:tiny-qwen2-random", "rollout.num_repeat=2", "data.train_batch_size=2",
         "rollout.max_response_length_in_one_turn=12", "rollout.multi_turn.max_steps=2"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "learning curve: 2 steps, 2 held-out questions" in proc.stdout
    (report_path,) = results.glob("learning_curve-*.json")
    report = json.loads(report_path.read_text())
    assert list(report["arms"]) == ["policy", "control"]
    for name, arm in report["arms"].items():
        assert arm["steps_done"] == 2 and len(arm["reward_per_step"]) == 2
        assert len(arm["zero_variance_group_share_per_step"]) == 2
        assert all(0.0 <= share <= 1.0 for share in arm["zero_variance_group_share_per_step"])
        assert len(arm["rollout_s_per_step"]) == 2 and len(arm["update_s_per_step"]) == 2
        after = arm["after"]
        assert after is not None and after["episodes"] == 2.0, name
        assert {"accuracy", "tool_call_rate", "silent_tool_call_share", "format_error_rate", "turns_mean",
                "response_tokens_mean"} <= set(after)
        assert arm["checkpoint_mb"] > 0  # the LoRA adapter of the tutorial's defaults
        assert (out_dir / name / "checkpoints" / "global_step_2" / "adapter").is_dir()
        assert report["processes"][name]["returncode"] == 0 and report["processes"][name]["peak_rss_mb"] > 0
    # "before" is measured once, by the policy arm; the control starts from the same weights
    assert report["before"]["episodes"] == 2.0 and report["arms"]["control"]["before"] is None
    assert (results / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # An interrupted control (no evaluation after its last step) still gets its report rebuilt from
    # the run directories: the steps it finished, and "-" where its evaluation is missing.
    (out_dir / "control" / "validation" / "step_00002.json").unlink()
    rebuilt_dir = tmp_path / "rebuilt"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--steps", "2", "--eval-tasks", "2", "--out-dir", str(out_dir),
         "--results-dir", str(rebuilt_dir), "--report-only"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (rebuilt_path,) = rebuilt_dir.glob("learning_curve-*.json")
    rebuilt = json.loads(rebuilt_path.read_text())
    assert rebuilt["processes"] == {} and rebuilt["settings"]["report_only"] is True
    for name in ("policy", "control"):
        assert rebuilt["arms"][name]["reward_per_step"] == report["arms"][name]["reward_per_step"]
    assert rebuilt["arms"]["policy"]["after"] == report["arms"]["policy"]["after"]
    assert rebuilt["arms"]["control"]["after"] is None
    assert rebuilt["before"] == report["before"]
    assert (rebuilt_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_parallel_arms_run_side_by_side_with_half_the_cores_each(tmp_path):
    out_dir, results = tmp_path / "runs", tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--steps", "1", "--eval-tasks", "2", "--parallel", "--out-dir", str(out_dir),
         "--results-dir", str(results),
         "model.path=builtin:tiny-qwen2-random", "rollout.num_repeat=2", "data.train_batch_size=2",
         "rollout.max_response_length_in_one_turn=12", "rollout.multi_turn.max_steps=2"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report_path,) = results.glob("learning_curve-*.json")
    report = json.loads(report_path.read_text())
    assert report["settings"]["parallel"] is True
    policy, control = report["processes"]["policy"], report["processes"]["control"]
    expected_threads = max(1, (os.cpu_count() or 1) // 2)
    assert policy["torch_threads"] == control["torch_threads"] == expected_threads
    # side by side: each started before the other ended
    assert control["started_at"] < policy["started_at"] + policy["wall_s"]
    assert policy["started_at"] < control["started_at"] + control["wall_s"]
    for name in ("policy", "control"):
        assert report["arms"][name]["steps_done"] == 1 and report["arms"][name]["after"] is not None
        assert report["processes"][name]["peak_rss_mb"] > 0
    assert report["before"] is not None and report["arms"]["control"]["before"] is None

    # --resume continues both arms from their checkpoints to step 2, keeping step 1's evaluation
    resumed_dir = tmp_path / "resumed"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--steps", "2", "--eval-tasks", "2", "--parallel", "--resume",
         "--out-dir", str(out_dir), "--results-dir", str(resumed_dir),
         "model.path=builtin:tiny-qwen2-random", "rollout.num_repeat=2", "data.train_batch_size=2",
         "rollout.max_response_length_in_one_turn=12", "rollout.multi_turn.max_steps=2"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (resumed_path,) = resumed_dir.glob("learning_curve-*.json")
    resumed = json.loads(resumed_path.read_text())
    for name in ("policy", "control"):
        arm = resumed["arms"][name]
        assert arm["steps_done"] == 2, name  # step 1 from the first run, step 2 from the resumed one
        assert arm["reward_per_step"][0] == report["arms"][name]["reward_per_step"][0]
        assert (out_dir / name / "checkpoints" / "global_step_2").is_dir()
    assert set(resumed["arms"]["policy"]["evaluations"]) == {"0", "1", "2"}  # JSON keys
    assert set(resumed["arms"]["control"]["evaluations"]) == {"1", "2"}
    assert resumed["before"] == report["before"]  # not measured again
