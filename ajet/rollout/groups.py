"""The boundary between rollout and training: a bounded supply of finished, judged groups.

A group is the `num_repeat` episodes of one task (what GRPO normalises over). The producer launches
groups ahead of the trainer within a staleness budget and the trainer takes finished ones:

    trainer has done k steps  ->  groups with launch index < min(k + 1 + max_staleness, total_steps) * batch_size
                                  + dropped + refilled  may be in flight

`total_steps` (the run's length, when known) keeps the producer from rolling out groups for steps
that will never train: they would compete with the final validation for the engine, and be
cancelled half-way at shutdown.

With `max_staleness = 0` only the current step's groups are ever in flight, which is the synchronous
loop; with s > 0 rollouts for up to s later steps run while the trainer updates. A group whose oldest
sampled token is more than `max_staleness` policy versions behind the trainer when it is taken is
dropped and counted (never silently), and its slot goes back to the budget so batches stay full;
or, with `stale_policy="wait"`, the trainer waits for such groups before updating (verl's `drop` /
`wait` off-policy strategies).

With a `GroupFilter` (dynamic sampling, see ajet.rollout.dynamic_sampling) a fresh group whose
rewards are all equal is dropped too, and its slot goes back to the budget up to the filter's cap of
refills per step; past the cap the step ends with the groups it has once nothing more is coming.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ajet.rollout.dynamic_sampling import GroupFilter
from ajet.rollout.task_stream import TaskStream
from ajet.schema import EpisodeResult, Task

logger = logging.getLogger(__name__)


@dataclass
class EpisodeGroup:
    task: Task
    episodes: list[EpisodeResult]
    launch_index: int
    launch_version: int

    @property
    def oldest_version(self) -> int:
        """Oldest policy version among the group's sampled tokens (launch version if none sampled)."""
        versions = [s.oldest_version for e in self.episodes for s in e.samples if s.oldest_version >= 0]
        return min(versions) if versions else self.launch_version

    @property
    def spans_versions(self) -> bool:
        return any(len(s.versions) > 1 for e in self.episodes for s in e.samples)


@dataclass
class TakeResult:
    """One step's groups: `groups` to train; `dropped` as stale; `filtered` for a zero reward spread
    (dynamic sampling), of which `refilled` were replaced; `cap_reached` when one could not be."""

    groups: list[EpisodeGroup]
    dropped: list[EpisodeGroup] = field(default_factory=list)
    staleness: Counter = field(default_factory=Counter)
    filtered: list[EpisodeGroup] = field(default_factory=list)
    refilled: int = 0
    cap_reached: bool = False


class GroupProducer:
    """Launches groups from a TaskStream on the running loop and hands finished groups to the trainer.

    run_group: coroutine function (task, launch_index) -> list[EpisodeResult] (usually
        `lambda t, i: runner.run_batch([t], num_repeat)`).
    current_version: callable giving the policy version the engine serves now.
    group_filter: dynamic sampling (None: every fresh group is trained).
    total_steps: the trainer's last step (None: unbounded); no group launches for a step past it.
    """

    def __init__(
        self,
        run_group: Callable[[Task, int], Any],
        stream: TaskStream,
        *,
        batch_size: int,
        max_staleness: int = 0,
        stale_policy: str = "drop",
        current_version: Callable[[], int] = lambda: 0,
        group_filter: GroupFilter | None = None,
        total_steps: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if max_staleness < 0:
            raise ValueError("max_staleness must be >= 0")
        if stale_policy not in ("drop", "wait"):
            raise ValueError(f"stale_policy must be 'drop' or 'wait', got {stale_policy!r}")
        self.stale_policy = stale_policy
        self._in_flight_versions: dict[int, int] = {}  # launch index -> launch version, until finished
        self._run_group = run_group
        self._stream = stream
        self.batch_size = batch_size
        self.max_staleness = max_staleness
        self._current_version = current_version
        self._finished: asyncio.Queue[EpisodeGroup] = asyncio.Queue()
        self._in_flight: set[asyncio.Task] = set()
        self._launched = 0
        self._taken = 0  # groups handed to the trainer
        self._dropped_total = 0
        self._filter = group_filter
        self._filtered_total = 0  # groups dropped by the filter
        self._refilled_total = 0  # of those, replaced by a new launch
        self._steps_done = 0
        self._total_steps = total_steps
        self._start_position = stream.position

    # -- trainer side -----------------------------------------------------------------------------

    async def take(self) -> TakeResult:
        """Wait for `batch_size` fresh finished groups; drop (and count) stale ones on the way.

        With `stale_policy="wait"`, also wait for every in-flight group that the coming update would
        push past the bound, and train it now: the batch may exceed `batch_size`, but long episodes
        are not dropped for being long (dropping them biases training towards short episodes).

        With a group filter, a fresh group without a reward spread goes to `filtered` and is replaced
        while the step's refills last; the batch is short only when they ran out and every launched
        group has arrived.
        """
        result = TakeResult(groups=[])
        refills_left = self._filter.max_refills if self._filter is not None else 0
        self._fill()
        while len(result.groups) < self.batch_size or self._must_wait_for_in_flight():
            if self.pending == 0:
                break  # nothing launched is still to come: only after the filter's refills ran out
            group = await self._finished.get()
            staleness = self._current_version() - group.oldest_version
            result.staleness[staleness] += 1
            if staleness > self.max_staleness:
                result.dropped.append(group)
                self._dropped_total += 1
                logger.info(
                    "dropped group of task %s: oldest token version %d, trainer at %d (max_staleness=%d)",
                    group.task.task_id, group.oldest_version, self._current_version(), self.max_staleness,
                )
                self._fill()  # the dropped slot goes back to the budget
                continue
            if self._filter is not None and not self._filter.keeps(group):
                result.filtered.append(group)
                self._filtered_total += 1
                if refills_left is None or refills_left > 0:
                    refills_left = None if refills_left is None else refills_left - 1
                    result.refilled += 1
                    self._refilled_total += 1
                    self._fill()  # one more task in its place
                else:
                    result.cap_reached = True
                continue
            result.groups.append(group)
            self._taken += 1
        return result

    def _must_wait_for_in_flight(self) -> bool:
        """wait policy: is a group still running that would be too stale after the coming update?"""
        if self.stale_policy != "wait" or not self._in_flight_versions:
            return False
        after_update = self._current_version() + 1
        return min(self._in_flight_versions.values()) < after_update - self.max_staleness

    def step_done(self) -> None:
        """The trainer finished a step (weights updated): more groups may launch."""
        self._steps_done += 1
        self._fill()

    @property
    def pending(self) -> int:
        """Groups launched but neither taken nor dropped (in flight, or finished and waiting)."""
        return self._launched - self._taken - self._dropped_total - self._filtered_total

    @property
    def consumed_position(self) -> int:
        """Stream position to resume from: everything launched minus what is still pending.

        Groups dropped by the group filter count as consumed: a resumed run does not roll them out again.
        Exact for the synchronous schedule (nothing is pending at a checkpoint). In the asynchronous one,
        groups still pending are re-launched after a resume rather than restored: a resumed run starts
        with an empty queue, as it must, since their tokens came from an older policy.
        """
        return self._start_position + self._launched - self.pending

    @property
    def dropped_total(self) -> int:
        return self._dropped_total

    @property
    def filtered_total(self) -> int:
        """Groups the group filter dropped since this producer started."""
        return self._filtered_total

    async def close(self) -> list[EpisodeGroup]:
        """Stop launching; cancel in-flight groups; return finished-but-untrained groups (to be counted)."""
        for task in list(self._in_flight):
            task.cancel()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        leftover = []
        while not self._finished.empty():
            leftover.append(self._finished.get_nowait())
        return leftover

    # -- producer side ----------------------------------------------------------------------------

    def _budget(self) -> int:
        steps_ahead = self._steps_done + 1 + self.max_staleness
        if self._total_steps is not None:
            steps_ahead = min(steps_ahead, self._total_steps)
        return steps_ahead * self.batch_size + self._dropped_total + self._refilled_total

    def _fill(self) -> None:
        while self._launched < self._budget():
            task = self._stream.next()
            index = self._launched
            self._launched += 1
            version = self._current_version()
            self._in_flight_versions[index] = version
            job = asyncio.ensure_future(self._run(task, index, version))
            self._in_flight.add(job)
            job.add_done_callback(self._in_flight.discard)

    async def _run(self, task: Task, index: int, version: int) -> None:
        try:
            episodes = await self._run_group(task, index)
        finally:
            self._in_flight_versions.pop(index, None)
        self._finished.put_nowait(EpisodeGroup(task=task, episodes=list(episodes), launch_index=index, launch_version=version))
