"""Validation and stand-alone evaluation: run the agent greedily over held-out tasks and report."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ajet.config import AjetConfig
from ajet.rollout import RolloutRunner
from ajet.rollout.metrics import summarize_episodes
from ajet.schema import EpisodeResult, Task

logger = logging.getLogger(__name__)


async def run_evaluation(cfg: AjetConfig, run_dir: Path, *, with_logview: bool = False, with_ray: bool = False) -> int:
    """`ajet.trainer_common.val_only=true`: evaluate the model on the validation split and write eval.json."""
    from ajet.task_reader import build_task_reader
    from ajet.training.records import print_metrics_table, write_logview_page
    from ajet.training.stack import build_rollout_stack

    tasks = build_task_reader(cfg).val_tasks()
    limit = cfg.trainer_common.val_max_num_task_each_validation
    tasks = tasks[:limit] if limit else tasks
    stack = build_rollout_stack(cfg, with_ray=with_ray)
    try:
        metrics, episodes = await evaluate(stack.runner, tasks, num_repeat=cfg.rollout.val_kwargs.num_repeat)
    finally:
        stack.close()
    report_path = run_dir / "eval.json"
    settings = {"model": cfg.model.path, "tasks": len(tasks), "workflow": cfg.rollout.user_workflow}
    write_eval_report(report_path, metrics, episodes, settings)
    if with_logview:
        write_logview_page(
            run_dir / "logview" / "eval.html", episodes, stack.tokenizer, None, step=0, title="evaluation",
            max_episodes=cfg.trainer_common.logview_episodes,
        )
    print_metrics_table("evaluation", metrics)
    print(f"wrote {report_path}")
    return 0


async def evaluate(
    runner: RolloutRunner, tasks: Sequence[Task], *, num_repeat: int
) -> tuple[dict[str, float], list[EpisodeResult]]:
    """Run `num_repeat` validation episodes per task (val sampling settings); return metrics and episodes."""
    t0 = time.perf_counter()
    episodes = await runner.run_batch(list(tasks), num_repeat, validation=True)
    metrics = summarize_episodes(episodes, prefix="val/")
    metrics["val/accuracy"] = metrics.get("val/success_rate", 0.0)
    metrics["val/time_s"] = time.perf_counter() - t0
    return metrics, episodes


def write_eval_report(path: Path, metrics: dict[str, float], episodes: Sequence[EpisodeResult], settings: dict[str, Any]) -> None:
    """The evaluation JSON: aggregate metrics, the settings that produced them and one line per episode."""
    report = {
        "settings": settings,
        "metrics": metrics,
        "episodes": [
            {
                "task_id": e.task_id,
                "reward": e.reward,
                "is_success": e.is_success,
                "turns": e.num_turns,
                "tool_calls": e.metrics.get("tool_calls", 0),
                "response_tokens": sum(s.num_trained_tokens for s in e.samples),
                "final_answer": (e.output.metadata.get("final_answer") if e.output else None),
                "reference": e.task.metadata.get("reference_answer"),
                "error": (e.error or e.judge_error or "").splitlines()[0] if (e.error or e.judge_error) else None,
            }
            for e in episodes
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
