"""What every task reader provides, and the steps all of them share (shuffle, debug limit)."""

from __future__ import annotations

import abc
import random

from ajet.config import AjetConfig
from ajet.schema import Task
from ajet.task_reader.rows import FieldMap


class TaskReader(abc.ABC):
    """Reads the training and validation tasks a config points at.

    `train_tasks()` is shuffled with `data.seed` when `data.shuffle` is set and cut to
    `debug.debug_first_n_tasks` when that is set; `val_tasks()` keeps the source order and is never cut
    (`trainer_common.val_max_num_task_each_validation` limits validation). Each list is read once per
    reader and a fresh copy is returned on every call.
    """

    def __init__(self, cfg: AjetConfig) -> None:
        self.cfg = cfg
        self.fields = FieldMap.from_config(cfg.task_reader)
        self._cache: dict[str, list[Task]] = {}

    def train_tasks(self) -> list[Task]:
        if "train" not in self._cache:
            tasks = self._read_train()
            if self.cfg.data.shuffle:
                random.Random(self.cfg.data.seed).shuffle(tasks)
            self._cache["train"] = limit_tasks(tasks, self.cfg.debug.debug_first_n_tasks)
        return list(self._cache["train"])

    def val_tasks(self) -> list[Task]:
        if "val" not in self._cache:
            self._cache["val"] = self._read_val()
        return list(self._cache["val"])

    @abc.abstractmethod
    def _read_train(self) -> list[Task]:
        """The training tasks in source order."""

    @abc.abstractmethod
    def _read_val(self) -> list[Task]:
        """The validation tasks in source order ([] when none are configured)."""


def limit_tasks(tasks: list[Task], first_n: int | None) -> list[Task]:
    """The first `first_n` tasks (all of them when first_n is None)."""
    return tasks if first_n is None else tasks[:first_n]
