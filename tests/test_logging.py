"""MetricsLogger sinks: JSONL lines, the console table, SwanLab offline runs, and failing sinks."""

from __future__ import annotations

import io
import json
import logging

import torch
from rich.console import Console

from ajet.logging import MetricsLogger
from ajet.logging import metrics as metrics_mod
from ajet.logging.metrics import ConsoleBackend
from ajet.testing.config import make_config


def test_jsonl_writes_one_flushed_line_per_step(tmp_path):
    logger = MetricsLogger(tmp_path, ["jsonl"])
    logger.log({"reward/mean": torch.tensor(0.25), "loss": 1.5, "grad_norm": float("nan"), "note": "ok"}, step=1)
    logger.log({"reward/mean": 0.5}, step=2)
    # readable before close: every line is flushed
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["step"] == 1 and first["reward/mean"] == 0.25 and first["loss"] == 1.5
    assert first["grad_norm"] is None and first["note"] == "ok"
    assert json.loads(lines[1]) | {"time": 0} == {"step": 2, "reward/mean": 0.5, "time": 0}
    logger.close()
    # a resumed run appends
    again = MetricsLogger(tmp_path, ["jsonl"])
    again.log({"x": 1}, step=3)
    again.close()
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_console_table_shows_every_numeric_metric():
    buffer = io.StringIO()
    backend = ConsoleBackend(Console(file=buffer, width=200, color_system=None))
    backend.log({"reward/mean": 0.123456, "loss": -2.0, "label": "skip-me", "tokens": 1200}, step=7)
    out = buffer.getvalue()
    assert "step 7" in out
    assert "reward/mean" in out and "0.1235" in out
    assert "loss" in out and "-2" in out and "1200" in out
    assert "skip-me" not in out


class _Broken:
    name = "broken"

    def __init__(self):
        self.closed = False

    def log(self, metrics, step):
        raise OSError("disk full")

    def close(self):
        self.closed = True


def test_failing_backend_is_disabled_and_others_continue(tmp_path, caplog):
    logger = MetricsLogger(tmp_path, ["jsonl", "nonsense"])
    assert logger.active == ["jsonl"]
    broken = _Broken()
    logger.backends.insert(0, broken)
    with caplog.at_level(logging.WARNING):
        logger.log({"a": 1.0}, step=1)
        logger.log({"a": 2.0}, step=2)
    assert logger.active == ["jsonl"] and broken.closed
    assert sum("disk full" in r.getMessage() for r in caplog.records) == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    logger.close()


def test_swanlab_that_cannot_start_is_disabled(tmp_path, monkeypatch, caplog):
    import swanlab

    def refuse(**kwargs):
        raise RuntimeError("no swanlab today")

    monkeypatch.setattr(swanlab, "init", refuse)
    with caplog.at_level(logging.WARNING):
        logger = MetricsLogger(tmp_path, ["swanlab", "jsonl"], swanlab_mode="offline")
    assert logger.active == ["jsonl"]
    assert any("no swanlab today" in r.getMessage() for r in caplog.records)
    logger.close()


def test_swanlab_offline_run_is_stored_under_run_dir(tmp_path):
    logger = MetricsLogger(tmp_path, ["swanlab"], project="ajet_test", experiment="unit", config_dict={"lr": 1e-6},
                           swanlab_mode="offline")
    assert logger.active == ["swanlab"]
    logger.log({"reward_mean_marker": 0.5, "text": "ignored"}, step=1)
    logger.log({"reward_mean_marker": 0.75}, step=2)
    logger.close()
    runs = list((tmp_path / "swanlog").glob("run-*"))
    assert len(runs) == 1
    data = b"".join(p.read_bytes() for p in runs[0].rglob("*.swanlab"))
    assert b"reward_mean_marker" in data


def test_swanlab_mode_auto_prefers_offline_without_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("SWANLAB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc or saved login here
    monkeypatch.chdir(tmp_path)
    assert metrics_mod._swanlab_mode() == "offline"
    monkeypatch.setenv("SWANLAB_API_KEY", "x" * 21)
    assert metrics_mod._swanlab_mode() == "online"


def test_swanlab_mode_is_read_from_the_config(tmp_path):
    config = make_config("trainer_common.swanlab_mode=disabled", "trainer_common.logger=[swanlab]")
    logger = MetricsLogger.from_config(tmp_path, config)
    assert [b.mode for b in logger.backends] == ["disabled"]
    logger.log({"a": 1.0}, step=1)
    logger.close()
    assert not list((tmp_path / "swanlog").glob("run-*"))  # disabled writes nothing
