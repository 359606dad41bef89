"""bench/update_memory.py: the episode layout it trains on, and one child run on a tiny model (structure, never speed)."""

from __future__ import annotations

import pytest
from bench_helpers import load_bench_module


@pytest.fixture(scope="module")
def bench():
    yield from load_bench_module("update_memory.py")


@pytest.mark.parametrize("length", [301, 800, 2401])
def test_an_episode_is_a_prompt_then_three_replies_split_by_two_tool_results(bench, length):
    mask = bench.episode_layout(length, prompt=300)
    assert len(mask) == length
    assert mask[:300] == [0] * 300 and mask[-1] == 1
    spans = [m for i, m in enumerate(mask) if i == 0 or m != mask[i - 1]]
    assert spans == [0, 1, 0, 1, 0, 1] or length - 300 < 8  # too short to hold tool results


@pytest.mark.parametrize(("chunk_tokens", "checkpointing"), [(16, False), (None, True)])
def test_a_child_run_reports_the_peak_of_one_update(bench, checkpointing, chunk_tokens, monkeypatch):
    from ajet.trainer import logprobs

    budget = logprobs.LOGITS_CHUNK_BYTES
    monkeypatch.setattr(logprobs, "LOGITS_CHUNK_BYTES", budget)  # run_child may change it: restore after the test
    spec = {"conf": str(bench.TUTORIAL_YAML), "model": "builtin:tiny-qwen2-random", "length": 120, "prompt": 40,
            "samples": 2, "threads": 1, "checkpointing": checkpointing, "chunk_tokens": chunk_tokens}
    result = bench.run_child(spec)
    assert result["checkpointing"] is checkpointing
    assert result["lm_head_chunk_tokens"] == (chunk_tokens or max(1, budget // (4 * result["vocab"])))
    assert result["peak_rss_mb"] >= result["loaded_rss_mb"] > 0
    assert result["trained_tokens"] == 2 * sum(bench.episode_layout(120, 40))
    assert result["lora_rank"] > 0 and result["update_s"] > 0
