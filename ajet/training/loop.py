"""The training loop, the same for every in-process run: one GRPO step, as it reads in `TrainingLoop.step`:

    groups  = await producer.take()                  # num_repeat episodes per task, judged
    batch   = build_training_batch(groups, ...)      # advantages per episode -> per sample
    metrics = trainer.train_step(batch.samples, batch.advantages)
    serve the new weights to the engine; producer.step_done()
    log, logview, checkpoint, validate

The engine batches generation on its own thread, the proxy serves HTTP on another and each episode
runs on a worker thread (see ajet.rollout.runner), so a breakpoint in a workflow or judge stops just
that episode. With `trainer_common.async.max_staleness > 0` the producer keeps rolling out later steps
while the trainer updates (the engine then holds its own copy of the weights).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

from ajet.config import AjetConfig
from ajet.logging.summary import StepProgress, run_report
from ajet.rollout.dynamic_sampling import GroupFilter, dynamic_sampling_metrics
from ajet.rollout.groups import GroupProducer
from ajet.rollout.metrics import summarize_episodes
from ajet.rollout.task_stream import TaskStream
from ajet.schema import EpisodeResult, Task
from ajet.training.batch import build_training_batch
from ajet.training.evaluate import evaluate, write_eval_report
from ajet.training.overlong import apply_overlong_penalty
from ajet.training.records import append_rollout_log, write_logview_page
from ajet.training.stack import build_rollout_stack

logger = logging.getLogger(__name__)


class TrainingLoop:
    """Policy-gradient training in this process (what the debug backbone runs).

    `advantage_sign=-1` flips every advantage: the learning-proof control only, never set by a config.
    """

    def __init__(
        self,
        cfg: AjetConfig,
        run_dir: Path,
        *,
        with_logview: bool = False,
        with_ray: bool = False,
        advantage_sign: float = 1.0,
    ) -> None:
        self.cfg = cfg
        self.with_ray = with_ray
        self.run_dir = Path(run_dir)
        self.with_logview = with_logview
        self.advantage_sign = advantage_sign
        self.max_staleness = cfg.trainer_common.async_.max_staleness
        self.history: list[dict[str, float]] = []

    async def run(self) -> int:
        from ajet.logging import MetricsLogger
        from ajet.models import pick_device
        from ajet.task_reader import build_task_reader
        from ajet.trainer import PolicyTrainer

        cfg, tc = self.cfg, self.cfg.trainer_common
        reader = build_task_reader(cfg)
        train_tasks = reader.train_tasks()  # shuffled with data.seed, cut to debug.debug_first_n_tasks
        val_tasks = reader.val_tasks() if (tc.test_freq or tc.val_before_train) else []
        if tc.val_max_num_task_each_validation:
            val_tasks = val_tasks[: tc.val_max_num_task_each_validation]

        self.stack = stack = build_rollout_stack(
            cfg, separate_engine_weights=self.max_staleness > 0, with_ray=self.with_ray
        )
        self.trainer = PolicyTrainer(stack.policy, stack.tokenizer, tc, cfg.lora, device=pick_device())
        step, position, version = 0, 0, 0
        ckpt = self._resume_from()
        if ckpt is not None:
            state = self.trainer.load_checkpoint(ckpt)
            step, position, version = state["step"], state["stream_position"], state["policy_version"]
            logger.info("resumed from %s at step %d (task position %d)", ckpt, step, position)
            print(f"resumed from {ckpt} at step {step}")
            if not stack.shares_weights:
                stack.engine.update_weights(self.trainer.engine_weights(), version)
        stack.engine.policy_version = version

        batch_size = cfg.data.train_batch_size
        stream = TaskStream(train_tasks, seed=cfg.data.seed, shuffle=cfg.data.shuffle, position=position)
        total_steps = tc.total_training_steps or tc.total_epochs * math.ceil(len(train_tasks) / batch_size)
        self.producer = GroupProducer(
            self._run_group,
            stream,
            batch_size=batch_size,
            max_staleness=self.max_staleness,
            stale_policy=tc.async_.stale_policy,
            current_version=lambda: stack.engine.policy_version,
            group_filter=GroupFilter.from_config(tc.algorithm.filter_groups, batch_size),
            total_steps=total_steps,
        )
        self.metrics_logger = MetricsLogger.from_config(self.run_dir, cfg)
        last_saved, finished = step, False
        try:
            if tc.val_before_train and val_tasks:
                await self._validate(val_tasks, step)
            progress = StepProgress(total_steps, initial=step)
            while step < total_steps:
                metrics = await self.step(step)
                step += 1
                self.metrics_logger.log(metrics, step)
                self.history.append(metrics)
                progress.step_done(metrics)
                # The last step is saved before its validation: a run killed while it evaluates
                # (which may take longer than a step) keeps everything it trained.
                if (tc.save_freq and step % tc.save_freq == 0) or step == total_steps:
                    self._save(step)
                    last_saved = step
                if tc.test_freq and val_tasks and step % tc.test_freq == 0:
                    await self._validate(val_tasks, step)
            progress.close()
            finished = True
        except (KeyboardInterrupt, asyncio.CancelledError):
            logger.warning("interrupted at step %d", step)
            if step != last_saved:
                self._save(step)
            raise
        finally:
            leftover = await self.producer.close()
            if leftover:
                # Finished groups that were never trained: counted, so nothing vanishes silently.
                logger.warning("%d finished group(s) were not trained (run ended) and are dropped", len(leftover))
                self.metrics_logger.log({"async/dropped_at_shutdown": float(len(leftover))}, step)
            self.metrics_logger.close()
            stack.close()
        if finished:
            print(run_report(self.run_dir))  # first vs last step, the plot, where SwanLab and logview are
        return 0

    async def step(self, step: int) -> dict[str, float]:
        """One GRPO step: take judged groups, compute advantages, update, serve the new weights."""
        stack, tc = self.stack, self.cfg.trainer_common
        t0 = time.perf_counter()
        taken = await self.producer.take()
        t_rollout = time.perf_counter() - t0
        episodes = [e for g in taken.groups for e in g.episodes]
        # Dynamic sampling's dropped groups are fresh rollouts of this policy: they count in the
        # rollout metrics (what the policy scores), not in the batch.
        filtered = [e for g in taken.filtered for e in g.episodes]
        batch = build_training_batch(taken.groups, tc.algorithm, advantage_sign=self.advantage_sign)

        t1 = time.perf_counter()
        train_metrics: dict[str, float] = {}
        new_version = step + 1
        with self._engine_paused():
            if batch.samples:
                train_metrics = await asyncio.to_thread(
                    self.trainer.train_step, batch.samples, batch.advantages, self.cfg.rollout.temperature
                )
            elif taken.filtered and not taken.groups:
                logger.warning("step %d: no group had a reward spread within filter_groups.max_num_gen_batches; no update", step)
            elif batch.masked_truncated:
                logger.warning("step %d: every sample was cut by a length limit (mask_truncated_completions); no update", step)
            else:
                logger.warning("step %d: no trainable tokens in the batch (all episodes failed before sampling?)", step)
            if stack.shares_weights:
                # Inside the pause: a request admitted after it already reads the new weights.
                stack.engine.policy_version = new_version
        if not stack.shares_weights:
            stack.engine.update_weights(self.trainer.engine_weights(), new_version)
        t_train = time.perf_counter() - t1
        self.producer.step_done()

        metrics = summarize_episodes(episodes + filtered)
        metrics.update(dynamic_sampling_metrics(taken))
        metrics.update({f"train/{k}": float(v) for k, v in train_metrics.items()})
        judge_s = sum(e.metrics.get("judge_s", 0.0) for e in episodes + filtered)
        metrics.update(
            {
                "timing/rollout_s": t_rollout,
                "timing/judge_s_sum": judge_s,
                "timing/train_s": t_train,
                "timing/step_s": time.perf_counter() - t0,
                "train/samples": float(len(batch.samples)),
                "train/tokens": float(batch.num_tokens),
                "train/masked_truncated_samples": float(batch.masked_truncated),
                "async/policy_version": float(new_version),
                "async/dropped_groups": float(len(taken.dropped)),
                "async/dropped_groups_total": float(self.producer.dropped_total),
                "async/staleness_max": float(max(taken.staleness) if taken.staleness else 0),
                "async/groups_spanning_versions": float(sum(g.spans_versions for g in taken.groups)),
            }
        )
        for staleness, count in taken.staleness.items():
            metrics[f"async/staleness_hist/{staleness}"] = float(count)
        append_rollout_log(self.run_dir / "rollouts" / f"step_{step + 1:05d}.jsonl", episodes, taken.dropped, taken.filtered)
        if self.with_logview:
            advantages = {id(s): a for s, a in zip(batch.samples, batch.advantages)}
            write_logview_page(
                self.run_dir / "logview" / f"step_{step + 1:05d}.html", episodes, stack.tokenizer, advantages,
                step=step + 1, title=self.cfg.experiment_name, max_episodes=tc.logview_episodes,
            )
        return metrics

    async def _run_group(self, task: Task, launch_index: int) -> list[EpisodeResult]:
        episodes = await self.stack.runner.run_batch([task], self.cfg.rollout.num_repeat)
        # Before the producer sees the group: dynamic sampling judges the shaped rewards.
        apply_overlong_penalty(episodes, self.cfg.trainer_common.algorithm.overlong_buffer, self.cfg.data.max_response_length)
        return episodes

    async def _validate(self, val_tasks: list[Task], step: int) -> None:
        metrics, episodes = await evaluate(self.stack.runner, val_tasks, num_repeat=self.cfg.rollout.val_kwargs.num_repeat)
        self.metrics_logger.log(metrics, step)
        write_eval_report(self.run_dir / "validation" / f"step_{step:05d}.json", metrics, episodes, {"step": step})

    def _save(self, step: int) -> None:
        state = {
            "step": step,
            "stream_position": self.producer.consumed_position,
            "policy_version": self.stack.engine.policy_version,
            "dropped_groups_total": self.producer.dropped_total,
        }
        path = self.trainer.save_checkpoint(self.run_dir / "checkpoints", step=step, extra_state=state)
        logger.info("saved checkpoint %s", path)

    def _resume_from(self) -> Path | None:
        from ajet.trainer import latest_checkpoint

        resume = self.cfg.trainer_common.resume
        if resume == "never":
            return None
        if resume == "auto":
            return latest_checkpoint(self.run_dir / "checkpoints")
        path = Path(resume)
        if not path.exists():
            raise FileNotFoundError(f"ajet.trainer_common.resume={resume!r}: no such checkpoint directory")
        return latest_checkpoint(path) or path

    @contextlib.contextmanager
    def _engine_paused(self) -> Iterator[None]:
        """With shared weights the engine must not decode mid-update; with its own copy it may."""
        if self.stack.shares_weights:
            with self.stack.engine.pause():
                yield
        else:
            yield
