"""Summaries of a batch of episodes: what the training log, validation and evaluation report."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from ajet.schema import EpisodeResult


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values)) if values else 0.0


def summarize_episodes(episodes: Sequence[EpisodeResult], prefix: str = "rollout/") -> dict[str, float]:
    """Reward, success, length, turn, tool and failure statistics over finished episodes.

    Token counts are per episode: `response_tokens` counts sampled tokens (loss mask 1) over all the
    episode's samples; `tokens_per_episode` counts every token the model saw or produced.
    """
    if not episodes:
        return {}
    rewards = [e.reward for e in episodes]
    response_tokens = [float(sum(s.num_trained_tokens for s in e.samples)) for e in episodes]
    total_tokens = [float(sum(len(s.input_ids) for s in e.samples)) for e in episodes]
    turns = [float(e.num_turns) for e in episodes]
    tool_calls = [float(e.metrics.get("tool_calls", 0.0)) for e in episodes]
    format_errors = [float(e.metrics.get("format_errors", 0.0)) for e in episodes]
    n_turns = sum(turns)
    out = {
        "reward_mean": _mean(rewards),
        "reward_std": float(statistics.pstdev(rewards)) if len(rewards) > 1 else 0.0,
        "reward_max": max(rewards),
        "reward_min": min(rewards),
        "success_rate": _mean([float(e.is_success) for e in episodes]),
        "response_tokens_mean": _mean(response_tokens),
        "tokens_per_episode": _mean(total_tokens),
        "turns_mean": _mean(turns),
        "tool_calls_per_episode": _mean(tool_calls),
        "tool_call_rate": _mean([float(c > 0) for c in tool_calls]),
        "format_error_rate": (sum(format_errors) / n_turns) if n_turns else 0.0,
        "failed_episodes": float(sum(1 for e in episodes if e.error)),
        "judge_errors": float(sum(1 for e in episodes if e.judge_error)),
        "truncated_samples": float(sum(1 for e in episodes for s in e.samples if s.truncated)),
        "samples_per_episode": _mean([float(len(e.samples)) for e in episodes]),
        "drift_episodes": float(sum(e.metrics.get("drift", 0.0) for e in episodes)),
        "splice_misses": float(sum(e.metrics.get("splice_misses", 0.0) for e in episodes)),
        "episodes": float(len(episodes)),
    }
    return {prefix + k: v for k, v in out.items()}
