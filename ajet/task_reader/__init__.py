"""Where tasks come from: a Hugging Face dataset, a local data file, or an environment service.

reader = build_task_reader(cfg)
reader.train_tasks(), reader.val_tasks()   # -> list[ajet.schema.Task]
"""

from __future__ import annotations

from ajet.config import AjetConfig
from ajet.task_reader.base import TaskReader, limit_tasks
from ajet.task_reader.dataset_file import DatasetFileReader
from ajet.task_reader.env_service import EnvServiceReader
from ajet.task_reader.errors import TaskReaderError
from ajet.task_reader.huggingface import HuggingFaceRepoReader
from ajet.task_reader.rows import FieldMap, rows_to_tasks, solution_final_answer

READERS: dict[str, type[TaskReader]] = {
    "huggingface_dat_repo": HuggingFaceRepoReader,
    "dataset_file": DatasetFileReader,
    "env_service": EnvServiceReader,
}


def build_task_reader(cfg: AjetConfig) -> TaskReader:
    """The reader `cfg.task_reader.type` names, bound to `cfg` (nothing is read until asked).

    The config's schema admits only the names of READERS, so the lookup cannot miss.
    """
    return READERS[cfg.task_reader.type](cfg)


__all__ = [
    "DatasetFileReader",
    "EnvServiceReader",
    "FieldMap",
    "HuggingFaceRepoReader",
    "READERS",
    "TaskReader",
    "TaskReaderError",
    "build_task_reader",
    "limit_tasks",
    "rows_to_tasks",
    "solution_final_answer",
]
