"""What a run writes besides metrics and checkpoints: per-step rollout logs, logview pages, tables."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ajet.rollout.groups import EpisodeGroup
from ajet.schema import EpisodeResult

logger = logging.getLogger(__name__)


def append_rollout_log(path: Path, episodes: Sequence[EpisodeResult], dropped_groups: Sequence[EpisodeGroup]) -> None:
    """One JSON line per episode of the step (and per dropped one): what ran, what it scored, what failed.

    Written before the update, so a crash in training still leaves the step's rollouts on disk.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    dropped = [(e, True) for g in dropped_groups for e in g.episodes]
    with path.open("a", encoding="utf-8") as f:
        for episode, was_dropped in [(e, False) for e in episodes] + dropped:
            output = episode.output
            record = {
                "task_id": episode.task_id,
                "episode_id": episode.episode_id,
                "repeat_index": episode.repeat_index,
                "reward": episode.reward,
                "is_success": episode.is_success,
                "turns": episode.num_turns,
                "final_answer": output.metadata.get("final_answer") if output else None,
                "error": episode.error,
                "judge_error": episode.judge_error,
                "policy_versions": sorted({v for s in episode.samples for v in s.versions}),
                "dropped_as_stale": was_dropped,
            }
            f.write(json.dumps(record, default=str) + "\n")


def write_logview_page(
    path: Path,
    episodes: Sequence[EpisodeResult],
    tokenizer: Any,
    advantages: dict[int, float] | None,
    *,
    step: int,
    title: str,
    max_episodes: int | None,
) -> None:
    """`ajet.logging.write_logview`, except that a failure is logged instead of raised."""
    from ajet.logging import write_logview

    try:
        write_logview(path, list(episodes), tokenizer, advantages, step=step, title=title, max_episodes=max_episodes)
    except Exception:  # noqa: BLE001 - a visualisation failure must never stop training
        logger.exception("writing the logview page %s failed", path)


def print_metrics_table(title: str, metrics: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(metrics.items()):
        table.add_row(key, f"{value:.4g}")
    Console().print(table)
