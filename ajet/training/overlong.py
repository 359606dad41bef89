"""Overlong episodes: DAPO's soft length penalty on the reward, and samples cut by a length limit.

    apply_overlong_penalty(episodes, algorithm.overlong_buffer, cfg.data.max_response_length)
    is_truncated_completion(sample)   # mask_truncated_completions: such samples carry no loss

Both backbones call these on judged episodes before advantages (and dynamic sampling) see the
rewards: the debug loop as each group finishes, the verl agent loop for each episode it returns.
"""

from __future__ import annotations

from collections.abc import Iterable

from ajet.algo.overlong import overlong_penalty
from ajet.config.schema import OverlongBufferConfig
from ajet.schema import EpisodeResult, Sample


def response_length(sample: Sample) -> int:
    """Tokens after the sample's first prompt (replies, tool results, user turns): what
    `data.max_response_length` limits, as verl's multi-turn layout counts its response."""
    return len(sample.input_ids) - int(sample.metadata.get("prompt_length", 0))


def is_truncated_completion(sample: Sample) -> bool:
    """The sample's reply did not end on its own: it was cut to a token budget, or its last model call
    stopped at max tokens (finish_reason "length")."""
    return sample.truncated or sample.metadata.get("finish_reason") == "length"


def apply_overlong_penalty(episodes: Iterable[EpisodeResult], overlong: OverlongBufferConfig, max_response_length: int) -> None:
    """Add DAPO's overlong penalty (ajet.algo.overlong) to each episode's reward and its samples' rewards.

    An episode takes the penalty of its longest sample (the one nearest the limit) and records it as
    `metrics["overlong_penalty"]` (0.0 when none applied). Does nothing unless `overlong.enable`.
    """
    if not overlong.enable:
        return
    for episode in episodes:
        penalty = min(
            (overlong_penalty(response_length(s), max_response_length, overlong.len, overlong.penalty_factor) for s in episode.samples),
            default=0.0,
        )
        episode.metrics["overlong_penalty"] = penalty
        if penalty:
            episode.reward += penalty
            for sample in episode.samples:
                sample.reward += penalty
