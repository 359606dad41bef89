"""An endless, reproducible order over the training tasks, addressable by position.

Position p is the p-th task handed out since the start of training, across epochs. Epoch e is the task
list shuffled with `Random(seed + e)`, so the order depends only on (tasks, seed, p): a run resumed at
position p sees exactly the tasks the killed run would have seen next.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ajet.schema import Task


class TaskStream:
    def __init__(self, tasks: Sequence[Task], *, seed: int = 42, shuffle: bool = True, position: int = 0) -> None:
        if not tasks:
            raise ValueError("the task reader returned no training tasks; check task_reader settings")
        self._tasks = list(tasks)
        self._seed = seed
        self._shuffle = shuffle
        self._epoch_orders: dict[int, list[int]] = {}
        self.position = position

    @property
    def epoch(self) -> int:
        return self.position // len(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def task_at(self, position: int) -> Task:
        epoch, offset = divmod(position, len(self._tasks))
        return self._tasks[self._order(epoch)[offset]]

    def next(self) -> Task:
        task = self.task_at(self.position)
        self.position += 1
        return task

    def take(self, n: int) -> list[Task]:
        return [self.next() for _ in range(n)]

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._epoch_orders:
            order = list(range(len(self._tasks)))
            if self._shuffle:
                random.Random(self._seed + epoch).shuffle(order)
            # Only the current and next epoch are ever asked for; keep the cache small.
            self._epoch_orders = {e: o for e, o in self._epoch_orders.items() if e >= epoch - 1}
            self._epoch_orders[epoch] = order
        return self._epoch_orders[epoch]
