"""The rollout/training boundary: task order, the staleness budget, dropping stale groups, versions."""

from __future__ import annotations

import asyncio

import pytest
import torch

from ajet.rollout.groups import EpisodeGroup, GroupProducer
from ajet.rollout.task_stream import TaskStream
from ajet.schema import EpisodeResult, Sample, Task
from ajet.testing.config import make_config
from ajet.training.batch import build_training_batch


def _tasks(n: int) -> list[Task]:
    return [Task(main_query=f"q{i}", task_id=f"t{i}") for i in range(n)]


def _episode(task: Task, reward: float, version: int, repeat: int = 0) -> EpisodeResult:
    sample = Sample(
        input_ids=[1, 2, 3, 4],
        loss_mask=[0, 0, 1, 1],
        rollout_logprobs=[0.0, 0.0, -0.5, -0.7],
        token_versions=[-1, -1, version, version],
        task_id=task.task_id,
        episode_id=f"{task.task_id}-{repeat}",
        reward=reward,
    )
    return EpisodeResult(task=task, episode_id=sample.episode_id, repeat_index=repeat, samples=[sample], reward=reward, is_success=reward > 0)


# -- TaskStream -------------------------------------------------------------------------------


def test_task_stream_is_reproducible_and_resumable():
    tasks = _tasks(5)
    full = TaskStream(tasks, seed=7).take(12)
    resumed = TaskStream(tasks, seed=7, position=7).take(5)
    assert [t.task_id for t in resumed] == [t.task_id for t in full[7:]]
    # every epoch is a permutation of all tasks, and epochs differ from each other
    first, second = full[:5], full[5:10]
    assert sorted(t.task_id for t in first) == sorted(t.task_id for t in tasks)
    assert [t.task_id for t in first] != [t.task_id for t in second]


def test_task_stream_without_shuffle_keeps_source_order():
    stream = TaskStream(_tasks(3), shuffle=False)
    assert [t.task_id for t in stream.take(4)] == ["t0", "t1", "t2", "t0"]


# -- GroupProducer ----------------------------------------------------------------------------


class _FakeRollouts:
    """Groups finish when the test says so; each carries the version it was told to stamp."""

    def __init__(self) -> None:
        self.launched: list[int] = []
        self.version = 0
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, task: Task, index: int) -> list[EpisodeResult]:
        self.launched.append(index)
        version = self.version
        await self.release.wait()
        return [_episode(task, float(i), version, i) for i in range(2)]


async def test_synchronous_budget_launches_only_the_current_step():
    rollouts = _FakeRollouts()
    producer = GroupProducer(rollouts, TaskStream(_tasks(10), shuffle=False), batch_size=3, max_staleness=0)
    taken = await producer.take()
    assert len(taken.groups) == 3
    await asyncio.sleep(0)
    assert rollouts.launched == [0, 1, 2], "nothing for the next step may start before the update"
    producer.step_done()
    await asyncio.sleep(0)
    assert rollouts.launched == [0, 1, 2, 3, 4, 5]
    await producer.close()


async def test_async_budget_runs_ahead_by_max_staleness_steps():
    rollouts = _FakeRollouts()
    producer = GroupProducer(rollouts, TaskStream(_tasks(20), shuffle=False), batch_size=2, max_staleness=2)
    await producer.take()
    await asyncio.sleep(0)
    assert len(rollouts.launched) == (0 + 1 + 2) * 2
    await producer.close()


@pytest.mark.parametrize("max_staleness", [0, 2])
async def test_nothing_launches_for_steps_past_total_steps(max_staleness):
    """The last step's update must not start rollouts no step will train (they would compete with the
    final validation and be cancelled half-way at shutdown); a run ahead stops at the last step too."""
    rollouts = _FakeRollouts()
    producer = GroupProducer(
        rollouts, TaskStream(_tasks(20), shuffle=False), batch_size=2, max_staleness=max_staleness, total_steps=2,
    )
    for _ in range(2):
        taken = await producer.take()
        assert len(taken.groups) == 2
        await asyncio.sleep(0)
        assert len(rollouts.launched) <= 2 * 2, "never a group for a third step"
        producer.step_done()
    await asyncio.sleep(0)
    assert rollouts.launched == [0, 1, 2, 3]
    assert producer.pending == 0 and await producer.close() == []


async def test_stale_group_is_dropped_counted_and_replaced():
    rollouts = _FakeRollouts()
    version = {"now": 0}
    producer = GroupProducer(
        rollouts, TaskStream(_tasks(10), shuffle=False), batch_size=2, max_staleness=1,
        current_version=lambda: version["now"],
    )
    # First batch: sampled at version 0, trainer still at 0 -> fresh.
    first = await producer.take()
    assert [g.launch_index for g in first.groups] == [0, 1] and not first.dropped
    # Groups 2 and 3 were launched ahead (budget 2 steps) and sampled at version 0. The trainer
    # now jumps to version 3 (as if two updates landed meanwhile): they are 3 > 1 versions old.
    rollouts.version = 3
    version["now"] = 3
    producer.step_done()
    second = await producer.take()
    assert {g.launch_index for g in second.dropped} == {2, 3}
    assert producer.dropped_total == 2
    assert all(g.oldest_version == 3 for g in second.groups), "replacements are sampled by the new policy"
    assert second.staleness[3] == 2 and second.staleness[0] == 2
    await producer.close()


async def test_close_returns_finished_untrained_groups():
    rollouts = _FakeRollouts()
    producer = GroupProducer(rollouts, TaskStream(_tasks(10), shuffle=False), batch_size=1, max_staleness=2)
    await producer.take()
    await asyncio.sleep(0.01)  # the two groups launched ahead finish but are never taken
    leftover = await producer.close()
    assert len(leftover) == 2


async def test_consumed_position_excludes_pending_groups():
    rollouts = _FakeRollouts()
    stream = TaskStream(_tasks(10), shuffle=False, position=4)
    producer = GroupProducer(rollouts, stream, batch_size=2, max_staleness=0)
    await producer.take()
    producer.step_done()  # launches the next step's 2 groups, still pending
    assert producer.consumed_position == 4 + 2
    await producer.close()


def test_group_versions_report_spanning_episodes():
    task = Task(main_query="q", task_id="t")
    episode = _episode(task, 1.0, 4)
    episode.samples[0].token_versions = [-1, -1, 4, 5]
    group = EpisodeGroup(task=task, episodes=[episode], launch_index=0, launch_version=4)
    assert group.oldest_version == 4
    assert group.spans_versions
    assert episode.samples[0].versions == [4, 5]


# -- advantages -------------------------------------------------------------------------------


def test_training_batch_normalises_within_each_group_and_skips_untrainable_samples():
    a, b = Task(main_query="a", task_id="a"), Task(main_query="b", task_id="b")
    group_a = EpisodeGroup(a, [_episode(a, 1.0, 0, 0), _episode(a, 0.0, 0, 1)], launch_index=0, launch_version=0)
    group_b = EpisodeGroup(b, [_episode(b, 5.0, 0, 0), _episode(b, 5.0, 0, 1)], launch_index=1, launch_version=0)
    empty = _episode(b, 5.0, 0, 2)
    empty.samples[0].loss_mask = [0, 0, 0, 0]
    group_b.episodes.append(empty)
    algorithm = make_config().trainer_common.algorithm
    batch = build_training_batch([group_a, group_b], algorithm)
    adv = torch.tensor(batch.advantages)
    assert len(batch.samples) == 4, "a sample with no sampled tokens is not trained"
    assert adv[0] > 0 > adv[1] and adv[0] == pytest.approx(-adv[1])
    assert adv[2:].abs().max() == 0, "equal rewards in a group carry no signal"
    flipped = build_training_batch([group_a], algorithm, advantage_sign=-1.0)
    assert flipped.advantages == pytest.approx([-a for a in batch.advantages[:2]])


async def test_wait_policy_trains_a_long_group_instead_of_dropping_it():
    """A group still running when the next update would make it too stale is waited for."""
    version = {"now": 0}
    gates: dict[int, asyncio.Event] = {}

    async def run_group(task: Task, index: int) -> list[EpisodeResult]:
        launched_at = version["now"]
        gates[index] = asyncio.Event()
        if index != 2:  # group 2 is the long episode
            gates[index].set()
        await gates[index].wait()
        return [_episode(task, float(i), launched_at, i) for i in range(2)]

    producer = GroupProducer(
        run_group, TaskStream(_tasks(20), shuffle=False), batch_size=2, max_staleness=1,
        stale_policy="wait", current_version=lambda: version["now"],
    )
    first = await producer.take()  # groups 0, 1; groups 2, 3 (version 0) run ahead
    assert [g.launch_index for g in first.groups] == [0, 1]
    version["now"] = 1
    producer.step_done()
    # At version 1, the coming update (-> 2) would make group 2 (version 0) stale: take() must wait.
    waiting = asyncio.ensure_future(producer.take())
    await asyncio.sleep(0.05)
    assert not waiting.done(), "the trainer went ahead without the long group"
    gates[2].set()
    second = await waiting
    assert 2 in [g.launch_index for g in second.groups]
    assert not second.dropped and producer.dropped_total == 0
    await producer.close()


def test_stale_policy_is_validated():
    with pytest.raises(ValueError, match="stale_policy"):
        GroupProducer(lambda t, i: None, TaskStream(_tasks(2)), batch_size=1, stale_policy="maybe")


# -- dynamic sampling (filter_groups) ---------------------------------------------------------------


class _SpreadRollouts:
    """Groups of two episodes; a group of a task in `flat` scores (0, 0), any other (0, 1)."""

    def __init__(self, flat: set[str], version=lambda: 0) -> None:
        self.flat = flat
        self.launched: list[int] = []
        self.version = version

    async def __call__(self, task: Task, index: int) -> list[EpisodeResult]:
        self.launched.append(index)
        version = self.version()
        await asyncio.sleep(0)
        rewards = (0.0, 0.0) if task.task_id in self.flat else (0.0, 1.0)
        return [_episode(task, r, version, i) for i, r in enumerate(rewards)]


def _filter(max_refills):
    from ajet.rollout.dynamic_sampling import GroupFilter

    return GroupFilter(max_refills=max_refills)


def test_group_filter_from_config_counts_generation_batches_like_verl():
    from ajet.rollout.dynamic_sampling import GroupFilter

    algorithm = make_config("trainer_common.algorithm.filter_groups.enable=true").trainer_common.algorithm
    assert GroupFilter.from_config(algorithm.filter_groups, batch_size=2) == GroupFilter(max_refills=(4 - 1) * 2)
    for n, refills in [(1, 0), (0, None), (-1, None)]:
        algorithm.filter_groups.max_num_gen_batches = n
        assert GroupFilter.from_config(algorithm.filter_groups, batch_size=2).max_refills == refills
    assert GroupFilter.from_config(make_config().trainer_common.algorithm.filter_groups, batch_size=2) is None


async def test_filter_drops_groups_without_a_reward_spread_and_refills_from_the_stream():
    rollouts = _SpreadRollouts(flat={"t0", "t2"})
    stream = TaskStream(_tasks(10), shuffle=False)
    producer = GroupProducer(rollouts, stream, batch_size=3, max_staleness=0, group_filter=_filter(None))
    taken = await producer.take()
    assert sorted(g.task.task_id for g in taken.groups) == ["t1", "t3", "t4"]
    assert sorted(g.task.task_id for g in taken.filtered) == ["t0", "t2"]
    assert taken.refilled == 2 and not taken.cap_reached and not taken.dropped
    assert producer.pending == 0 and producer.consumed_position == 5 and producer.filtered_total == 2
    producer.step_done()
    await asyncio.sleep(0)
    assert rollouts.launched == [0, 1, 2, 3, 4, 5, 6, 7], "the next step launches a full batch after the refills"
    await producer.close()


async def test_filter_cap_ends_the_step_with_a_short_batch_instead_of_waiting_forever():
    rollouts = _SpreadRollouts(flat={"t0", "t1", "t2", "t3"})
    producer = GroupProducer(rollouts, TaskStream(_tasks(10), shuffle=False), batch_size=2, group_filter=_filter(1))
    taken = await asyncio.wait_for(producer.take(), timeout=5)
    # t0, t1 flat -> one refill (t2), flat as well -> cap reached with nothing left in flight
    assert taken.groups == [] and len(taken.filtered) == 3 and taken.refilled == 1 and taken.cap_reached
    assert producer.consumed_position == 3
    producer.step_done()
    second = await asyncio.wait_for(producer.take(), timeout=5)
    # a fresh step: t3 (flat) is replaced by t5; t4 and t5 have a spread
    assert [g.task.task_id for g in second.groups] == ["t4", "t5"] and taken.refilled == 1
    await producer.close()


async def test_filter_without_refills_only_drops():
    rollouts = _SpreadRollouts(flat={"t1"})
    producer = GroupProducer(rollouts, TaskStream(_tasks(10), shuffle=False), batch_size=3, group_filter=_filter(0))
    taken = await producer.take()
    assert [g.task.task_id for g in taken.groups] == ["t0", "t2"] and taken.refilled == 0 and taken.cap_reached
    assert rollouts.launched == [0, 1, 2]
    await producer.close()


async def test_filter_with_async_budget_and_staleness_counts_each_drop_once():
    version = {"now": 0}
    rollouts = _SpreadRollouts(flat={"t1", "t5"}, version=lambda: version["now"])
    stream = TaskStream(_tasks(20), shuffle=False)
    producer = GroupProducer(
        rollouts, stream, batch_size=2, max_staleness=1,
        current_version=lambda: version["now"], group_filter=_filter(None),
    )
    first = await producer.take()
    await asyncio.sleep(0)
    # budget (0 + 1 + 1) * 2 = 4, plus one refill for t1
    assert [g.task.task_id for g in first.filtered] == ["t1"] and len(first.groups) == 2
    assert len(rollouts.launched) == 5
    # The trainer jumps 2 versions: every group sampled at version 0 and not yet taken is now stale.
    version["now"] = 2
    producer.step_done()
    second = await producer.take()
    assert second.dropped and all(g.oldest_version == 0 for g in second.dropped)
    assert all(g.oldest_version == 2 for g in second.groups), "replacements are the new policy's"
    assert all(g.task.task_id != "t5" for g in second.groups)
    assert producer.dropped_total == len(second.dropped)
    # every launched group is accounted for exactly once: trained, stale, filtered or still pending
    accounted = len(first.groups) + len(second.groups) + producer.dropped_total + producer.filtered_total + producer.pending
    assert accounted == stream.position
    await producer.close()


async def test_filter_with_the_wait_policy_waits_for_a_long_group_then_judges_its_spread():
    version = {"now": 0}
    gates: dict[int, asyncio.Event] = {}

    async def run_group(task: Task, index: int) -> list[EpisodeResult]:
        launched_at = version["now"]
        gates[index] = asyncio.Event()
        if index != 2:  # group 2 is the long episode, and all its episodes score 0
            gates[index].set()
        await gates[index].wait()
        rewards = (0.0, 0.0) if index == 2 else (0.0, 1.0)
        return [_episode(task, r, launched_at, i) for i, r in enumerate(rewards)]

    producer = GroupProducer(
        run_group, TaskStream(_tasks(20), shuffle=False), batch_size=2, max_staleness=1,
        stale_policy="wait", current_version=lambda: version["now"], group_filter=_filter(None),
    )
    await producer.take()
    version["now"] = 1
    producer.step_done()
    waiting = asyncio.ensure_future(producer.take())
    await asyncio.sleep(0.05)
    assert not waiting.done(), "the trainer went ahead without the long group"
    gates[2].set()
    second = await asyncio.wait_for(waiting, timeout=5)
    assert [g.launch_index for g in second.filtered] == [2] and not second.dropped
    assert len(second.groups) >= 2 and 2 not in [g.launch_index for g in second.groups]
    await producer.close()


async def _trained_ids(producer: GroupProducer, steps: int) -> list[list[str]]:
    out = []
    for _ in range(steps):
        taken = await producer.take()
        out.append(sorted(g.task.task_id for g in taken.groups))
        producer.step_done()
    return out


async def test_filter_keeps_the_resume_position_exact():
    """A run resumed at the saved position trains what the uninterrupted run trained, step for step."""
    tasks = _tasks(7)
    flat = {"t0", "t3", "t4"}

    def producer_at(position: int) -> GroupProducer:
        stream = TaskStream(tasks, seed=3, position=position)
        return GroupProducer(_SpreadRollouts(flat), stream, batch_size=2, group_filter=_filter(None))

    reference = producer_at(0)
    full = await _trained_ids(reference, 5)
    reference_end = reference.consumed_position
    await reference.close()

    first = producer_at(0)
    head = await _trained_ids(first, 2)
    saved = first.consumed_position  # what the loop's checkpoint stores
    await first.close()
    resumed = producer_at(saved)
    tail = await _trained_ids(resumed, 3)
    await resumed.close()
    assert head + tail == full
    assert resumed.consumed_position == reference_end, "no task is rolled out twice (nor skipped) across the resume"
    assert all(not set(step) & flat for step in full)


def test_dynamic_sampling_metrics_report_zero_variance_with_filtering_off():
    from ajet.rollout.dynamic_sampling import dynamic_sampling_metrics
    from ajet.rollout.groups import TakeResult

    a, b = Task(main_query="a", task_id="a"), Task(main_query="b", task_id="b")
    spread = EpisodeGroup(a, [_episode(a, 0.0, 0, 0), _episode(a, 1.0, 0, 1)], launch_index=0, launch_version=0)
    flat = EpisodeGroup(b, [_episode(b, 1.0, 0, 0), _episode(b, 1.0, 0, 1), _episode(b, 1.0, 0, 2)], 1, 0)
    off = dynamic_sampling_metrics(TakeResult(groups=[spread, flat]))
    assert off["filter_groups/zero_variance_share"] == 0.5
    assert off["filter_groups/trained_zero_variance_token_share"] == pytest.approx(3 / 5)  # 4-token samples
    assert off["filter_groups/dropped_groups"] == 0
    on = dynamic_sampling_metrics(TakeResult(groups=[spread], filtered=[flat], refilled=1))
    assert on["filter_groups/zero_variance_share"] == 0.5 and on["filter_groups/trained_zero_variance_token_share"] == 0
    assert on["filter_groups/dropped_groups"] == 1 and on["filter_groups/refilled_groups"] == 1


def test_a_group_of_one_is_never_filtered():
    from ajet.rollout.dynamic_sampling import has_reward_spread

    task = Task(main_query="q", task_id="t")
    assert has_reward_spread([_episode(task, 1.0, 0)])
    assert not has_reward_spread([_episode(task, 0.3, 0), _episode(task, 0.3, 0, 1)])
