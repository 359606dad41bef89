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


TINY = ["model.path=builtin:tiny-qwen2-random", "rollout.num_repeat=2", "data.train_batch_size=2",
        "rollout.max_response_length_in_one_turn=12", "rollout.multi_turn.max_steps=2"]


def _bench(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BENCH), "--eval-tasks", "2", *args, *TINY],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_both_arms_run_and_the_report_has_every_figure(tmp_path):
    """Step 1 with the arms side by side (--parallel), then --resume to step 2 one after the other
    (both schedules, one test: CI's budget), then --report-only."""
    out_dir = tmp_path / "runs"
    first = tmp_path / "first"
    _bench("--steps", "1", "--parallel", "--out-dir", str(out_dir), "--results-dir", str(first))
    (first_path,) = first.glob("learning_curve-*.json")
    first_report = json.loads(first_path.read_text())
    assert first_report["settings"]["parallel"] is True
    policy, control = first_report["processes"]["policy"], first_report["processes"]["control"]
    assert policy["torch_threads"] == control["torch_threads"] == max(1, (os.cpu_count() or 1) // 2)
    # side by side: each started before the other ended
    assert control["started_at"] < policy["started_at"] + policy["wall_s"]
    assert policy["started_at"] < control["started_at"] + control["wall_s"]

    results = tmp_path / "results"
    proc = _bench("--steps", "2", "--resume", "--out-dir", str(out_dir), "--results-dir", str(results))
    assert "learning curve: 2 steps, 2 held-out questions" in proc.stdout
    (report_path,) = results.glob("learning_curve-*.json")
    report = json.loads(report_path.read_text())
    assert list(report["arms"]) == ["policy", "control"]
    assert report["processes"]["policy"]["torch_threads"] is None  # one after the other: all cores
    assert report["processes"]["control"]["started_at"] >= (
        report["processes"]["policy"]["started_at"] + report["processes"]["policy"]["wall_s"] - 1.0)
    for name, arm in report["arms"].items():
        # step 1 from the first run, step 2 from the resumed one
        assert arm["steps_done"] == 2 and len(arm["reward_per_step"]) == 2
        assert arm["reward_per_step"][0] == first_report["arms"][name]["reward_per_step"][0]
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
    assert set(report["arms"]["policy"]["evaluations"]) == {"0", "1", "2"}  # JSON keys: every evaluation kept
    assert set(report["arms"]["control"]["evaluations"]) == {"1", "2"}
    # "before" is measured once, by the policy arm, and not again on resuming; the control starts
    # from the same weights
    assert report["before"] == first_report["before"] and report["before"]["episodes"] == 2.0
    assert report["arms"]["control"]["before"] is None
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


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("learning_curve_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fitting_check_trains_and_evaluates_on_the_same_named_questions(tmp_path):
    """--fit-tasks 3 0: both splits read exactly GSM8K test questions 3 and 0, and one step takes both."""
    import gzip

    from ajet.config import load_config
    from ajet.task_reader import build_task_reader

    bench = _bench_module()
    overrides = bench.fit_overrides([3, 0], tmp_path)
    cfg = load_config(bench.TUTORIAL_YAML, overrides)
    with gzip.open(REPO / "data" / "gsm8k" / "test.jsonl.gz", "rt") as handle:
        rows = [json.loads(line) for line in handle]
    wanted = {rows[3]["question"], rows[0]["question"]}
    reader = build_task_reader(cfg)
    assert {t.main_query for t in reader.train_tasks()} == wanted
    assert [t.main_query for t in reader.val_tasks()] == [rows[3]["question"], rows[0]["question"]]
    assert reader.val_tasks()[0].metadata["reference_answer"] == rows[3]["answer"].split("####")[-1].strip()
    assert cfg.data.train_batch_size == 2

    for bad in ([0, 0], [-1], [len(rows)]):
        with pytest.raises(SystemExit, match="--fit-tasks"):
            bench.fit_overrides(bad, tmp_path)
