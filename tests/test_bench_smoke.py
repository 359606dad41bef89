"""bench/grpo_vs_trl.py: its pieces, and one tiny step of each side, checked for structure (never speed)."""

from __future__ import annotations

import json

import pytest
from bench_helpers import load_bench_module


@pytest.fixture(scope="module")
def bench():
    yield from load_bench_module("grpo_vs_trl.py")


def _step(bench, **kw):
    values = dict(step_s=10.0, rollout_s=4.0, generation_s=3.5, judge_s=0.5, update_s=6.0,
                  completion_tokens=64, prompt_tokens=200, reward_mean=0.0, cpu_s=12.0,
                  rollout_cpu_s=5.0, rollout_peak_mb=300.0, update_peak_mb=400.0)
    values.update(kw)
    return bench.StepRecord(**values)


def test_a_side_without_measured_steps_is_reported_as_an_error(bench):
    settings = bench.BenchSettings()
    trl = bench.SideResult("trl", steps=[_step(bench)], peak_memory_mb=1.0)
    report = bench.build_report(settings, {"trl": trl, "ajet": bench.SideResult("ajet")})
    assert "ajet" in report["errors"] and "ajet" not in report["sides"]
    assert report["ratio_ajet_over_trl"] == {}  # no ratio from one side
    report = bench.build_report(settings, {"trl": trl, "ajet": "ajet failed (exit 1): boom"})
    assert report["errors"]["ajet"].endswith("boom")


def test_rounds_alternate_order_and_pool_steps(bench):
    assert bench.round_orders(["trl", "ajet"], 3) == [["trl", "ajet"], ["ajet", "trl"], ["trl", "ajet"]]
    a = bench.SideResult("trl", steps=[_step(bench, step_s=1.0)], peak_memory_mb=10.0, setup_s=3.0)
    b = bench.SideResult("trl", steps=[_step(bench, step_s=2.0), _step(bench, step_s=3.0)], peak_memory_mb=30.0)
    merged = bench.merge_rounds(a, b)
    assert [s.step_s for s in merged.steps] == [1.0, 2.0, 3.0]
    assert merged.peak_memory_mb == 30.0 and merged.setup_s == 3.0
    assert bench.merge_rounds(a, "trl timed out") == "trl timed out"


def test_side_figures_and_ratios_use_per_step_values(bench):
    trl = bench.SideResult("trl", steps=[_step(bench, step_s=10.0), _step(bench, step_s=20.0), _step(bench, step_s=30.0)],
                           peak_memory_mb=1000.0)
    ajet = bench.SideResult("ajet", steps=[_step(bench, step_s=5.0, generation_s=1.75, rollout_peak_mb=200.0,
                                                 update_peak_mb=150.0)] * 3)
    t, a = bench.side_figures(trl), bench.side_figures(ajet)
    assert t["step_s"] == {"min": 10.0, "median": 20.0, "max": 30.0, "n": 3}
    # tokens/s are computed per step, then spread: 64 tokens / 10, 20, 30 s
    assert t["step_tokens_per_s"]["max"] == pytest.approx(6.4)
    assert a["gen_tokens_per_s"]["median"] == pytest.approx(64 / 1.75)
    r = bench.ratios(a, t)
    assert r["step_s"] == pytest.approx(5.0 / 20.0)
    assert r["gen_tokens_per_s"] == pytest.approx((64 / 1.75) / (64 / 3.5))
    # the step's peak is the larger of its two phases' peaks: 200 (rollout) for ajet, 400 (update) for TRL
    assert a["peak_memory_mb"]["median"] == 200.0 and t["peak_memory_mb"]["median"] == 400.0
    assert r["peak_memory_mb"] == pytest.approx(0.5)
    assert r["update_peak_mb"] == pytest.approx(150.0 / 400.0)
    assert t["update_cpu_s"]["median"] == pytest.approx(12.0 - 5.0)


def test_math_reward_uses_the_gsm8k_reference(bench):
    solution = "She sold 48/2 = 24 clips.\n#### 1,072"
    assert bench.math_reward("so the total is\n#### 1072", solution) == 1.0
    assert bench.math_reward("The answer is 1072.", solution) == 1.0
    assert bench.math_reward("#### 1071", solution) == 0.0
    assert bench.math_reward("", solution) == 0.0


def test_gsm8k_rows_keep_file_order(bench, tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"#### {i}", "extra": 1}) + "\n" for i in range(5)))
    rows = bench.load_gsm8k_rows(path, 3)
    assert [r["question"] for r in rows] == ["q0", "q1", "q2"]
    assert set(rows[0]) == {"question", "answer"}
    with pytest.raises(ValueError, match="needs 9"):
        bench.load_gsm8k_rows(path, 9)


def test_ajet_config_matches_the_trl_settings(bench, tmp_path):
    import yaml

    from ajet.config import load_config

    settings = bench.BenchSettings(prompts_per_step=3, group_size=4, max_new_tokens=7, lr=2e-5, warmup_steps=1, steps=2)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(bench.ajet_config_dict(settings, tmp_path / "tasks.jsonl")))
    cfg = load_config(path, [])
    assert cfg.data.train_batch_size == 3 and cfg.rollout.num_repeat == 4
    assert cfg.rollout.max_response_length_in_one_turn == 7 and cfg.rollout.multi_turn.max_steps == 1
    assert cfg.trainer_common.micro_batch_size == 12  # one forward/backward over the batch, as TRL's
    assert cfg.trainer_common.gradient_checkpointing is False  # the TRL side runs without it too
    assert cfg.trainer_common.total_training_steps == 3
    assert cfg.trainer_common.optim.lr == pytest.approx(2e-5) and cfg.trainer_common.optim.weight_decay == 0.0
    assert cfg.trainer_common.use_kl_loss is False and cfg.data.shuffle is False


def test_gpu_preset_is_the_issue_reference_shape(bench):
    settings, _ = bench.parse_settings(["--preset", "gpu", "--steps", "2"])
    assert (settings.model, settings.device, settings.dtype) == ("builtin:qwen2.5-0.5b-random", "cuda", "bfloat16")
    assert (settings.prompts_per_step, settings.group_size, settings.max_new_tokens, settings.steps) == (16, 8, 256, 2)
    cpu, _ = bench.parse_settings(["--preset", "cpu"])
    assert (cpu.device, cpu.dtype, cpu.prompts_per_step, cpu.max_new_tokens) == ("cpu", "float32", 2, 32)


@pytest.mark.slow
@pytest.mark.network_loopback
def test_one_tiny_step_each_side_gives_a_complete_report(bench, tmp_path, gsm8k_dir):
    import torch

    torch.set_num_threads(1)
    settings = bench.BenchSettings(
        model="builtin:tiny-qwen2-random", prompts_per_step=1, group_size=2, max_new_tokens=4,
        warmup_steps=0, steps=1, dataset=str(gsm8k_dir / "train.jsonl.gz"),
    )
    results = {}
    for side in ("trl", "ajet"):
        workdir = tmp_path / side
        workdir.mkdir()
        results[side] = bench.run_side(side, settings, workdir)
    report = json.loads(json.dumps(bench.build_report(settings, results)))  # must be JSON-serialisable

    assert report["errors"] == {}
    assert report["settings"]["group_size"] == 2
    assert {"date_utc", "device", "versions", "torch_threads", "load_average"} <= set(report["environment"])
    for side in ("trl", "ajet"):
        figures = report["sides"][side]["figures"]
        assert set(bench.FIGURES) <= set(figures)
        assert figures["step_s"]["n"] == 1
        step = report["sides"][side]["steps"][0]
        # 2 sequences x at most 4 sampled tokens each; the random model rarely stops early
        assert 2 <= step["completion_tokens"] <= 8
        assert step["update_s"] > 0 and step["generation_s"] > 0
        assert step["step_s"] >= step["rollout_s"] >= step["generation_s"]
        # RSS/allocated peaks include the resident model, so both phases have a positive peak
        assert step["rollout_peak_mb"] > 0 and step["update_peak_mb"] > 0
        assert 0 < step["rollout_cpu_s"] < step["cpu_s"]
        assert figures["peak_memory_mb"]["median"] == max(step["rollout_peak_mb"], step["update_peak_mb"])
    # Same prompts, same chat template, same tokenizer: both sides must see identical prompt tokens.
    assert report["sides"]["trl"]["steps"][0]["prompt_tokens"] == report["sides"]["ajet"]["steps"][0]["prompt_tokens"]
    assert set(report["ratio_ajet_over_trl"]) == {*bench.FIGURES, *bench.MEMORY_FIGURES}
    rows = bench.report_rows(report)
    assert [r[0] for r in rows] == list(bench.TABLE_ROWS) and all(len(r) == 4 for r in rows)
