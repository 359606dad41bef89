"""`task_reader.type: dataset_file` (alias `jsonl_dataset_file`): tasks from local .jsonl/.json/.parquet/.csv files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ajet.config.schema import FileSplitConfig
from ajet.schema import Task
from ajet.task_reader.base import TaskReader
from ajet.task_reader.errors import TaskReaderError
from ajet.task_reader.rows import rows_to_tasks

# File suffix -> the `datasets` builder that reads it.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_rows(path: Path, key: str = "") -> Any:
    """The rows of one data file as a `datasets.Dataset` (iterates as dicts)."""
    import datasets

    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise TaskReaderError(
            f"{key + ': ' if key else ''}cannot read {path}: unsupported suffix {path.suffix!r} "
            f"(supported: {', '.join(BUILDERS)})",
            key=key,
            value=str(path),
        )
    if not path.is_file():
        raise TaskReaderError(f"{key + ': ' if key else ''}file not found: {path}", key=key, value=str(path))
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file; say which
        raise TaskReaderError(
            f"{key + ': ' if key else ''}cannot read {path} as {builder}: {type(exc).__name__}: {exc}",
            key=key,
            value=str(path),
        ) from exc


class DatasetFileReader(TaskReader):
    """Training tasks from `dataset_file.training.file_path`, validation from `validation.file_path` (optional)."""

    def _read_train(self) -> list[Task]:
        return self._read(self.cfg.task_reader.dataset_file.training, "training", "train")

    def _read_val(self) -> list[Task]:
        return self._read(self.cfg.task_reader.dataset_file.validation, "validation", "validation")

    def _read(self, section: FileSplitConfig, which: str, split: str) -> list[Task]:
        file_path = section.file_path
        if not file_path:
            return []
        key = f"ajet.task_reader.dataset_file.{which}.file_path"
        path = Path(file_path).expanduser()
        return rows_to_tasks(load_rows(path, key), split=split, source=str(path), fields=self.fields)
