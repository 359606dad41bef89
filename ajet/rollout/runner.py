"""Running episodes: one workflow + one judge call per episode, many episodes at once.

Each episode runs on a worker thread, on that thread's own event loop. User workflows are ordinary agent
code: the seed's raw-HTTP example calls blocking `requests.post`, LangChain agents may call `invoke`.
On a shared event loop one blocking episode would stall every other; on its own thread it stalls only
itself, and breakpoints set in a workflow or judge still stop just that episode under debugpy.

Failures never end the batch: a workflow or judge that raises, or an episode that runs past
`rollout.episode_timeout`, becomes an EpisodeResult with reward 0 and the error recorded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ajet.config import AjetConfig
from ajet.engine.base import SamplingParams
from ajet.judge.base import call_judge
from ajet.schema import EpisodeResult, Sample, Task, WorkflowOutput, WorkflowTask
from ajet.tracker.turns import Turn

if TYPE_CHECKING:
    from ajet.judge.base import BaseJudge
    from ajet.proxy import ProxyServer
    from ajet.rollout.ray_executor import RemoteExecutor
    from ajet.workflow import Workflow

logger = logging.getLogger(__name__)


# Extra seconds before giving up on an episode stuck in synchronous code past its timeout.
BLOCKED_GRACE_S = 30.0


@dataclass(frozen=True)
class RolloutSettings:
    """The slice of the config one runner needs, flattened; built only by `from_config`, so its
    values are always the config's (another backbone may `dataclasses.replace` the sampling fields)."""

    max_concurrency: int
    episode_timeout: float
    temperature: float
    top_p: float
    top_k: int
    max_tokens_per_turn: int
    max_turns: int
    max_prompt_tokens: int
    max_response_tokens: int
    max_total_tokens: int
    val_temperature: float
    val_top_p: float
    val_top_k: int

    @classmethod
    def from_config(cls, cfg: AjetConfig) -> RolloutSettings:
        r, d = cfg.rollout, cfg.data
        vk = r.val_kwargs
        return cls(
            max_concurrency=r.max_env_worker,
            episode_timeout=r.episode_timeout,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            max_tokens_per_turn=r.max_response_length_in_one_turn,
            max_turns=r.multi_turn.max_steps,
            max_prompt_tokens=d.max_prompt_length,
            max_response_tokens=d.max_response_length,
            max_total_tokens=r.max_model_len,
            val_temperature=vk.temperature if vk.do_sample else 0.0,
            val_top_p=vk.top_p,
            val_top_k=vk.top_k,
        )

    def sampling(self, validation: bool) -> SamplingParams:
        if validation:
            return SamplingParams(
                max_tokens=self.max_tokens_per_turn,
                temperature=self.val_temperature,
                top_p=self.val_top_p,
                top_k=self.val_top_k,
            )
        return SamplingParams(
            max_tokens=self.max_tokens_per_turn, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k
        )


class RolloutRunner:
    """Runs workflow episodes through the proxy and scores them with the judge.

    workflow_cls: a `Workflow` subclass, instantiated once per episode as `workflow_cls(config=config)`.
    judge: an object with `compute_reward(workflow_task, workflow_output)` (sync or async), or None when
        every workflow returns its own reward.
    proxy: a started `ajet.proxy.ProxyServer`.
    config: the run's config; `settings` (default: `RolloutSettings.from_config(config)`) is what the
        runner reads of it.
    """

    def __init__(
        self,
        workflow_cls: type[Workflow],
        judge: BaseJudge | None,
        proxy: ProxyServer,
        config: AjetConfig,
        *,
        settings: RolloutSettings | None = None,
        remote: RemoteExecutor | None = None,
        blocked_grace: float = BLOCKED_GRACE_S,
    ) -> None:
        """`remote`: an executor with `async execute(config, workflow_task, tuner, timeout)` that runs
        the workflow elsewhere (e.g. `RayWorkflowExecutor`); None runs it on the episode's thread.
        `blocked_grace`: seconds past `episode_timeout` before an episode stuck in synchronous code
        is abandoned."""
        self.remote = remote
        self.blocked_grace = blocked_grace
        self.workflow_cls = workflow_cls
        self.judge = judge
        self.proxy = proxy
        self.config = config
        self.settings = settings or RolloutSettings.from_config(config)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.settings.max_concurrency, thread_name_prefix="ajet-episode"
        )
        self._thread_state = threading.local()
        # Set by close(): episodes still running on their threads then fail as the proxy goes away;
        # they were cancelled, so their failures are not worth a warning each.
        self._closed = False

    # -- public API -----------------------------------------------------------------------------

    async def run_batch(
        self,
        tasks: Sequence[Task],
        num_repeat: int,
        *,
        validation: bool = False,
    ) -> list[EpisodeResult]:
        """Run `num_repeat` episodes of every task concurrently; results in (task, repeat) order."""
        jobs = [self.run_episode(task, i, validation=validation) for task in tasks for i in range(num_repeat)]
        return list(await asyncio.gather(*jobs))

    async def run_episode(
        self, task: Task, repeat_index: int = 0, *, validation: bool = False, episode_id: str | None = None
    ) -> EpisodeResult:
        """Run one episode on a worker thread; never raises for workflow/judge failures."""
        episode_id = episode_id or f"{task.task_id or 'task'}-r{repeat_index}-{uuid.uuid4().hex[:8]}"
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()

        def mark_started() -> None:
            loop.call_soon_threadsafe(_resolve, started)

        future = loop.run_in_executor(
            self._pool, self._run_episode_in_thread, task, repeat_index, episode_id, validation, mark_started
        )
        # Waiting for a free worker thread is not part of the episode's time.
        first: list[asyncio.Future[Any]] = [started, future]
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        # The thread enforces the timeout itself; this outer bound only catches workflows that block
        # in synchronous code where cancellation cannot reach them. Such a thread is abandoned.
        grace = self.settings.episode_timeout + self.blocked_grace
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=grace)
        except asyncio.TimeoutError:
            logger.error("episode %s blocked past its timeout in synchronous code; abandoning its thread", episode_id)
            return self._failed(task, repeat_index, episode_id, [], None, error="timeout (blocked in synchronous code)")

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- one episode ----------------------------------------------------------------------------

    def _run_episode_in_thread(
        self, task: Task, repeat_index: int, episode_id: str, validation: bool, mark_started: Callable[[], None]
    ) -> EpisodeResult:
        mark_started()
        # One long-lived loop per worker thread, not asyncio.run per episode: HTTP clients that user
        # code never closes schedule their cleanup on the loop they were made on when collected,
        # which fails noisily on a loop that asyncio.run has already closed.
        loop = getattr(self._thread_state, "loop", None)
        if loop is None:
            loop = self._thread_state.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(self._episode(task, repeat_index, episode_id, validation))

    async def _episode(self, task: Task, repeat_index: int, episode_id: str, validation: bool) -> EpisodeResult:
        from ajet.env_service import bind_env
        from ajet.proxy import EpisodeLimits
        from ajet.tuner import AjetTuner

        s = self.settings
        limits = EpisodeLimits(
            max_turns=s.max_turns,
            max_prompt_tokens=s.max_prompt_tokens,
            max_response_tokens_per_turn=s.max_tokens_per_turn,
            max_total_tokens=s.max_total_tokens,
            max_response_tokens=s.max_response_tokens,
        )
        handle = self.proxy.open_episode(episode_id, s.sampling(validation), limits, task_id=task.task_id)
        tuner = AjetTuner(self.proxy.base_url, handle.api_key, episode_id, request_timeout=s.episode_timeout)
        workflow_task = WorkflowTask(task=task, episode_id=episode_id, repeat_index=repeat_index)
        bind_env(workflow_task)  # tasks from an env service get their environment handle
        try:
            return await self._run_and_score(workflow_task, tuner, handle)
        finally:
            if workflow_task.env is not None:
                await _close_quietly(workflow_task.env, "close")

    async def _run_and_score(self, workflow_task: WorkflowTask, tuner: Any, handle: Any) -> EpisodeResult:
        s = self.settings
        task, repeat_index, episode_id = workflow_task.task, workflow_task.repeat_index, workflow_task.episode_id
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        output: WorkflowOutput | None = None
        error: str | None = None
        try:
            if self.remote is not None:
                output = await self.remote.execute(self.config, workflow_task, tuner, s.episode_timeout)
            else:
                workflow = self.workflow_cls(config=self.config)
                output = await asyncio.wait_for(workflow.execute(workflow_task, tuner), timeout=s.episode_timeout)
                tuner.add_judge_inputs_to(output)
            if not isinstance(output, WorkflowOutput):
                raise TypeError(
                    f"{self.workflow_cls.__name__}.execute returned {type(output).__name__}; "
                    "it must return ajet.WorkflowOutput(reward=..., metadata=...)"
                )
        except asyncio.TimeoutError:
            error = f"timeout: episode ran past rollout.episode_timeout={s.episode_timeout:g}s"
        except Exception as exc:  # noqa: BLE001 - any user failure becomes a recorded zero reward
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        finally:
            await _close_quietly(tuner)
            tracker = self.proxy.close_episode(handle.api_key)
        timings["workflow_s"] = time.perf_counter() - t0

        samples = tracker.samples(handle.limits)
        stats = tracker.metrics()
        if error is not None:
            level = logging.DEBUG if self._closed else logging.WARNING
            logger.log(level, "episode %s failed: %s", episode_id, error.splitlines()[0])
            return self._failed(task, repeat_index, episode_id, samples, output, error=error, stats=stats, timings=timings)

        assert output is not None
        output.metadata.setdefault("episode_stats", stats)
        t1 = time.perf_counter()
        judge_error = None
        try:
            reward, is_success = await self._score(workflow_task, output, tracker.turns())
        except Exception as exc:  # noqa: BLE001
            judge_error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            logger.warning("judge failed on episode %s: %s", episode_id, judge_error.splitlines()[0])
            reward, is_success = 0.0, False
        timings["judge_s"] = time.perf_counter() - t1

        rewards = _per_sample_rewards(reward, len(samples))
        for sample, r in zip(samples, rewards):
            sample.reward, sample.is_success = r, bool(is_success)
        episode_reward = float(reward if not isinstance(reward, list) else (reward[-1] if reward else 0.0))
        return EpisodeResult(
            task=task,
            episode_id=episode_id,
            repeat_index=repeat_index,
            samples=samples,
            reward=episode_reward,
            is_success=bool(is_success),
            output=output,
            judge_error=judge_error,
            num_turns=int(stats.get("turns", 0)),
            metrics={**stats, **timings, **{f"workflow/{k}": float(v) for k, v in output.log_metrics.items()}},
        )

    async def _score(
        self, workflow_task: WorkflowTask, output: WorkflowOutput, turns: tuple[Turn, ...] = ()
    ) -> tuple[float | list[float], bool]:
        if output.reward is not None:
            reward = output.reward
            if output.is_success is not None:
                return reward, output.is_success
            if isinstance(reward, list):
                return reward, bool(reward) and float(reward[-1]) > 0
            return reward, float(reward) > 0
        if self.judge is None:
            raise RuntimeError("the workflow returned reward=None but no task_judge.judge_protocol is configured")
        # The judge's signature says whether it also reads the turns (see ajet.judge.base.call_judge).
        result = call_judge(self.judge, workflow_task, output, turns)
        if inspect.isawaitable(result):
            result = await result
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(
                f"{type(self.judge).__name__}.compute_reward must return (raw_reward, is_success), got {result!r}"
            )
        raw_reward, is_success = result
        return float(raw_reward), bool(is_success)

    def _failed(
        self,
        task: Task,
        repeat_index: int,
        episode_id: str,
        samples: list[Sample],
        output: WorkflowOutput | None,
        *,
        error: str,
        stats: dict[str, float] | None = None,
        timings: dict[str, float] | None = None,
    ) -> EpisodeResult:
        for sample in samples:
            sample.reward, sample.is_success = 0.0, False
            sample.metadata["error"] = error.splitlines()[0]
        stats = stats or {}
        return EpisodeResult(
            task=task,
            episode_id=episode_id,
            repeat_index=repeat_index,
            samples=samples,
            reward=0.0,
            is_success=False,
            output=output,
            error=error,
            num_turns=int(stats.get("turns", 0)),
            metrics={**stats, **(timings or {}), "failed": 1.0},
        )


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _per_sample_rewards(reward: float | list[float], n_samples: int) -> list[float]:
    """A scalar applies to every sample; a list gives one per sample (the last value fills any rest)."""
    if not isinstance(reward, list):
        return [float(reward)] * n_samples
    if not reward:
        return [0.0] * n_samples
    if len(reward) != n_samples:
        logger.warning("workflow returned %d rewards for %d samples; padding with the last", len(reward), n_samples)
    padded = list(reward[:n_samples]) + [reward[-1]] * max(0, n_samples - len(reward))
    return [float(r) for r in padded]


async def _close_quietly(resource: Any, method: str = "aclose") -> None:
    close = getattr(resource, method, None)
    if close is None:
        return
    try:
        result = close()
        if inspect.isawaitable(result):
            await result
    except Exception:  # noqa: BLE001 - closing a client must not turn a good episode into a failure
        logger.debug("closing %r failed", resource, exc_info=True)
