"""Where tasks come from: a Hugging Face dataset, a local data file, or an environment service.

reader = build_task_reader(cfg)
reader.train_tasks(), reader.val_tasks()   # -> list[ajet.schema.Task]
"""

from __future__ import annotations

from typing import Any

from ajet.task_reader.base import TaskReader, limit_tasks
from ajet.task_reader.dataset_file import DatasetFileReader
from ajet.task_reader.env_service import (
    EnvServiceClient,
    EnvServiceError,
    EnvServiceJudge,
    EnvServiceReader,
    bind_env,
)
from ajet.task_reader.errors import TaskReaderError
from ajet.task_reader.huggingface import HuggingFaceRepoReader
from ajet.task_reader.rows import FieldMap, reference_answer, rows_to_tasks

READERS: dict[str, type[TaskReader]] = {
    "huggingface_dat_repo": HuggingFaceRepoReader,
    "dataset_file": DatasetFileReader,
    "jsonl_dataset_file": DatasetFileReader,
    "env_service": EnvServiceReader,
}


def build_task_reader(cfg: Any) -> TaskReader:
    """The reader `cfg.task_reader.type` names, bound to `cfg` (nothing is read until asked)."""
    kind = cfg.task_reader.type
    if kind not in READERS:
        raise TaskReaderError(
            f"ajet.task_reader.type = {kind!r}: expected one of {', '.join(READERS)}",
            key="ajet.task_reader.type",
            value=kind,
        )
    return READERS[kind](cfg)


__all__ = [
    "DatasetFileReader",
    "EnvServiceClient",
    "EnvServiceError",
    "EnvServiceJudge",
    "EnvServiceReader",
    "FieldMap",
    "HuggingFaceRepoReader",
    "READERS",
    "TaskReader",
    "TaskReaderError",
    "bind_env",
    "build_task_reader",
    "limit_tasks",
    "reference_answer",
    "rows_to_tasks",
]
