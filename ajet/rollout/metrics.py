"""Summaries of a batch of episodes: what the training log, validation and evaluation report."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from ajet.schema import EpisodeResult


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values)) if values else 0.0


WORKFLOW_PREFIX = "workflow/"  # episode metrics from WorkflowOutput.log_metrics (see ajet.rollout.runner)


def episode_tool_calls(episode: EpisodeResult) -> float:
    """Tool calls the episode made: the workflow's own count when it reports one
    (`WorkflowOutput.log_metrics["tool_calls"]`, e.g. code it ran from plain ```python blocks, which
    has no markup for the proxy to parse), else the proxy's count of parsed `<tool_call>`s."""
    own = episode.metrics.get(WORKFLOW_PREFIX + "tool_calls")
    return float(own if own is not None else episode.metrics.get("tool_calls", 0.0))


def summarize_episodes(episodes: Sequence[EpisodeResult], prefix: str = "rollout/") -> dict[str, float]:
    """Reward, success, length, turn, tool and failure statistics over finished episodes.

    Token counts are per episode: `response_tokens` counts sampled tokens (loss mask 1) over all the
    episode's samples; `tokens_per_episode` counts every token the model saw or produced. Tool calls
    are counted by `episode_tool_calls`. Each `log_metrics` key a workflow reports is averaged over
    the episodes that report it, as `workflow/<key>`.
    """
    if not episodes:
        return {}
    rewards = [e.reward for e in episodes]
    response_tokens = [float(sum(s.num_trained_tokens for s in e.samples)) for e in episodes]
    total_tokens = [float(sum(len(s.input_ids) for s in e.samples)) for e in episodes]
    turns = [float(e.num_turns) for e in episodes]
    tool_calls = [episode_tool_calls(e) for e in episodes]
    format_errors = [float(e.metrics.get("format_errors", 0.0)) for e in episodes]
    length_cuts = [float(e.metrics.get("length_cuts", 0.0)) for e in episodes]
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
        # Samples cut to data.max_response_length / max_prompt_length ...
        "truncated_samples": float(sum(1 for e in episodes for s in e.samples if s.truncated)),
        # ... and replies cut by max_tokens (rollout.max_response_length_in_one_turn or the context
        # window), which leave every sample whole: a run can hit the per-turn cap on every turn
        # with truncated_samples at 0.
        "truncated_turns": float(sum(length_cuts)),
        "truncated_turn_rate": (sum(length_cuts) / n_turns) if n_turns else 0.0,
        "truncated_last_reply_rate": _mean([float(e.metrics.get("last_reply_truncated", 0.0)) for e in episodes]),
        "samples_per_episode": _mean([float(len(e.samples)) for e in episodes]),
        "drift_episodes": float(sum(e.metrics.get("drift", 0.0) for e in episodes)),
        "splice_misses": float(sum(e.metrics.get("splice_misses", 0.0) for e in episodes)),
        # Model calls whose client went away before the reply (its own read timeout, most often):
        # generation stopped, nothing recorded; the SDK may have re-sent the call.
        "abandoned_calls": float(sum(e.metrics.get("abandoned_calls", 0.0) for e in episodes)),
        "episodes": float(len(episodes)),
    }
    for key in sorted({k for e in episodes for k in e.metrics if k.startswith(WORKFLOW_PREFIX)}):
        out[key] = _mean([float(e.metrics[key]) for e in episodes if key in e.metrics])
    penalties = [e.metrics["overlong_penalty"] for e in episodes if "overlong_penalty" in e.metrics]
    if penalties:  # `algorithm.overlong_buffer` is on: the rewards above include these
        out["overlong_penalty_mean"] = _mean(penalties)
        out["overlong_penalized_episodes"] = float(sum(1 for p in penalties if p < 0))
    return {prefix + k: v for k, v in out.items()}
