"""ajet Tasks as a Trinity taskset: JSONL rows that Trinity's own file reader loads, one per task.

Trinity's `TaskFileReader` reads `<dir>/<split>.jsonl` with `datasets.load_dataset` and hands each
row to the workflow as `task.raw_task`. A row carries the whole Task as JSON (nested metadata of any
shape would not fit one dataset schema), plus its id and question for Trinity's own displays.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ajet.backbone.trinity.config_translation import TASK_COLUMN
from ajet.schema import Task


def task_to_row(task: Task) -> dict[str, Any]:
    return {
        TASK_COLUMN: json.dumps(dataclasses.asdict(task), ensure_ascii=False),
        "task_id": task.task_id,
        "question": task.main_query,
    }


def task_from_row(row: Mapping[str, Any] | None) -> Task:
    if not row or TASK_COLUMN not in row:
        raise KeyError(
            f"Trinity task row has no {TASK_COLUMN!r} column; the trinity backbone reads the taskset "
            "its launcher writes (ajet.backbone.trinity.taskset.write_taskset)"
        )
    return Task(**json.loads(row[TASK_COLUMN]))


def write_taskset(tasks: Sequence[Task], path: str | Path) -> Path:
    """Write `tasks` as JSONL at `path` (`<tasks_dir>/<split>.jsonl`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for task in tasks:
            f.write(json.dumps(task_to_row(task), ensure_ascii=False) + "\n")
    return path
