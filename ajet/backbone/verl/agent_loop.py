"""ajet's workflows inside verl's agent-loop machinery.

verl's AgentLoopWorker (a Ray actor) calls `AjetAgentLoop.run(sampling_params, **row)` once per
trajectory: `row` is one dataset row (its `extra_info.ajet_task` carries the ajet Task). `run()`
plays one episode exactly as the debug backbone does (RolloutRunner -> workflow -> AjetTuner ->
ProxyServer -> tracker -> judge), with the proxy generating through `VerlServerEngine`, i.e.
verl's vLLM replicas, token in / token out. The tracker's sample becomes the AgentLoopOutput.

When the tracker split an episode into several samples (the agent rewrote its context, so no
single token sequence holds every turn), what verl can take depends on its trainer:
  - v0 (`RayPPOTrainer`, synchronous) takes one trajectory per call: the LAST sample is returned,
    since it holds the final answer the judge scored; the number dropped is recorded in
    `extra_fields["ajet_dropped_samples"]` (a column of verl's batch) so it shows in the data.
  - v1 (`trainer.use_v1`, what ajet's asynchronous mode selects) stores every AgentLoopOutput of a
    call as its own trajectory, so every sample is returned and none is dropped.
Each output carries `min_global_steps` / `max_global_steps`, the oldest and newest policy version
among its sampled tokens: v1 reads them for its staleness metrics and breaks without them.

Per process, not per call: verl instantiates an agent loop for every trajectory, so the proxy,
engine, workflow class, judge and runners live in one `WorkerContext` per worker process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import os
import threading
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopOutput,
    register,
)

from ajet.backbone.verl.batch import pad_token_id, split_sample
from ajet.backbone.verl.config_translation import AGENT_LOOP_NAME
from ajet.backbone.verl.server_engine import VerlServerEngine
from ajet.backbone.worker_contexts import WorkerContexts
from ajet.config import AjetConfig
from ajet.schema import EpisodeResult, Task
from ajet.training.overlong import apply_overlong_penalty, is_truncated_completion

logger = logging.getLogger(__name__)

# extra_info key of a dataset row holding the Task as JSON (see launch.write_tasks_parquet).
TASK_KEY = "ajet_task"
# Where a worker process finds the ajet config when the agent-loop YAML does not name it.
CONFIG_PATH_ENV = "AJET_CONFIG_PATH"
# Set by the launcher for --with-logview: each worker process keeps a page of its latest episodes
# there (rollout-<pid>.html). Advantages are verl's, computed after the rollout, so pages show none.
LOGVIEW_DIR_ENV = "AJET_LOGVIEW_DIR"

def task_to_extra_info(task: Task, index: int) -> dict[str, Any]:
    """The `extra_info` of a dataset row: verl's `index` plus the Task as JSON (nested metadata
    of varying shape does not fit one parquet struct type)."""
    return {"index": index, TASK_KEY: json.dumps(dataclasses.asdict(task), ensure_ascii=False)}


def task_from_extra_info(extra_info: Any) -> Task:
    if not extra_info or TASK_KEY not in extra_info:
        raise KeyError(
            f"dataset row has no extra_info.{TASK_KEY}; ajet's verl backbone reads tasks from the "
            "parquet files its launcher writes (ajet.backbone.verl.launch.write_tasks_parquet)"
        )
    return Task(**json.loads(extra_info[TASK_KEY]))


def resolve_proxy_host(setting: str) -> str:
    """`rollout.proxy_host`: `auto` = this node's IP, so agents running on other nodes reach it."""
    if setting != "auto":
        return setting
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside a Ray worker (tests), loopback is the reachable one
        return "127.0.0.1"


class WorkerContext:
    """What one agent-loop worker process shares across its episodes."""

    def __init__(self, cfg: AjetConfig, server_manager: Any, tokenizer: Any, loop: asyncio.AbstractEventLoop) -> None:
        from ajet.models import ensure_tool_template
        from ajet.proxy import ProxyServer
        from ajet.rollout import RolloutSettings
        from ajet.training.user_code import build_workflow_and_judge

        self.cfg = cfg
        self.tokenizer = tokenizer
        if cfg.model.chat_template != "model":
            ensure_tool_template(tokenizer)
        self.engine = VerlServerEngine(server_manager, tokenizer, loop=loop, max_model_len=cfg.rollout.max_model_len)
        self.proxy = ProxyServer.from_config(self.engine, tokenizer, cfg.rollout, host=resolve_proxy_host(cfg.rollout.proxy_host))
        self.proxy.start()
        self.workflow_cls, self.judge = build_workflow_and_judge(cfg)
        self.base_settings = RolloutSettings.from_config(cfg)
        self._runners: dict[tuple[float, float, int], Any] = {}
        self._repeats: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self.logview_dir = os.environ.get(LOGVIEW_DIR_ENV) or None
        self._recent: deque[EpisodeResult] = deque(maxlen=max(1, cfg.trainer_common.logview_episodes))
        self._finished = 0

    def runner_for(self, sampling_params: dict[str, Any]) -> Any:
        """A runner sampling as verl asks: its training or its validation settings."""
        from ajet.rollout import RolloutRunner

        key = (
            float(sampling_params.get("temperature", self.base_settings.temperature)),
            float(sampling_params.get("top_p", self.base_settings.top_p)),
            int(sampling_params.get("top_k", self.base_settings.top_k)),
        )
        with self._lock:
            if key not in self._runners:
                settings = dataclasses.replace(self.base_settings, temperature=key[0], top_p=key[1], top_k=key[2])
                self._runners[key] = RolloutRunner(
                    self.workflow_cls, self.judge, self.proxy, self.cfg, settings=settings
                )
            return self._runners[key]

    def next_repeat_index(self, group_id: str) -> int:
        """Best effort: verl does not pass the repeat number, so count this group's episodes seen by
        this process (a group split across workers restarts the count in each)."""
        with self._lock:
            index = self._repeats[group_id]
            self._repeats[group_id] += 1
            return index

    async def record(self, result: EpisodeResult) -> Path | None:
        """Keep `result` for the logview; rewrite this worker's page once per `logview_episodes`
        finished episodes. Returns the page written, if any."""
        if self.logview_dir is None:
            return None
        with self._lock:
            self._recent.append(result)
            self._finished += 1
            if self._finished % self._recent.maxlen:
                return None
            episodes = list(self._recent)
        from ajet.logging.logview import write_logview

        step = max((v for e in episodes for s in e.samples for v in s.versions), default=None)
        path = Path(self.logview_dir) / f"rollout-{os.getpid()}.html"
        return await asyncio.to_thread(
            write_logview, path, episodes, self.tokenizer, None, step, f"ajet logview (verl worker {os.getpid()})"
        )

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()
        self.proxy.stop()


_contexts: WorkerContexts[int, WorkerContext] = WorkerContexts()


def worker_context(cfg: AjetConfig, server_manager: Any, tokenizer: Any) -> WorkerContext:
    """The process's context for this server manager (one per verl worker), created on first use."""
    return _contexts.get(id(server_manager), lambda: WorkerContext(cfg, server_manager, tokenizer, asyncio.get_running_loop()))


def close_worker_contexts() -> None:
    _contexts.close_all()


def load_ajet_config(source: Any) -> Any:
    """An AjetConfig from itself, a path to its YAML, or the AJET_CONFIG_PATH environment variable."""
    from ajet.config import AjetConfig

    if isinstance(source, AjetConfig):
        return source
    path = source or os.environ.get(CONFIG_PATH_ENV)
    if not path:
        raise RuntimeError(
            f"AjetAgentLoop needs the ajet config: set `ajet_config_path` in the agent-loop YAML "
            f"or the {CONFIG_PATH_ENV} environment variable"
        )
    return _config_from_file(str(path))


@functools.lru_cache(maxsize=4)
def _config_from_file(path: str) -> Any:
    # verl builds an agent loop per trajectory; the run's config file is parsed once per process.
    from ajet.config import load_config

    return load_config(path)


@register(AGENT_LOOP_NAME)
class AjetAgentLoop(AgentLoopBase):
    """verl agent loop running one ajet episode per call (see the module docstring)."""

    def __init__(self, *args: Any, ajet_config_path: Any = None, **kwargs: Any) -> None:
        kwargs.pop("name", None)  # the registry entry's name arrives as a kwarg via hydra.instantiate
        super().__init__(*args, **kwargs)
        self.ajet_config = load_ajet_config(ajet_config_path)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput | list[AgentLoopOutput]:
        context = worker_context(self.ajet_config, self.server_manager, self.tokenizer)
        task = task_from_extra_info(kwargs.get("extra_info"))
        group_id = str(kwargs.get("uid", task.task_id))
        # v1 passes the repeat number (`session_id`); v0 does not, so count this group's episodes.
        repeat_index = kwargs.get("session_id")
        if repeat_index is None:
            repeat_index = context.next_repeat_index(group_id)
        runner = context.runner_for(sampling_params)
        result = await runner.run_episode(task, repeat_index=int(repeat_index))
        algorithm = self.ajet_config.trainer_common.algorithm
        # verl does not tell an agent loop whether it serves validation, so (as with verl's own DAPO
        # reward manager) validation episodes get the penalty too; the debug backbone's do not.
        apply_overlong_penalty([result], algorithm.overlong_buffer, self.ajet_config.data.max_response_length)
        await context.record(result)
        outputs = episode_to_agent_loop_outputs(
            result,
            self.tokenizer,
            prompt_length=self.rollout_config.prompt_length,
            response_length=self.rollout_config.response_length,
            keep_all=bool(self.config.trainer.get("use_v1", False)),
            policy_version=context.engine.policy_version,
            mask_truncated=algorithm.mask_truncated_completions,
        )
        return outputs if len(outputs) > 1 else outputs[0]


def episode_to_agent_loop_outputs(
    result: EpisodeResult,
    tokenizer: Any,
    *,
    prompt_length: int,
    response_length: int,
    keep_all: bool,
    policy_version: int = 0,
    mask_truncated: bool = False,
) -> list[AgentLoopOutput]:
    """The episode's samples as verl AgentLoopOutputs, each with the episode's reward as `reward_score`:
    all of them with `keep_all` (verl's v1 worker), else only the last (v0; see the module docstring).
    `mask_truncated` (`algorithm.mask_truncated_completions`): a sample cut by a length limit, here or
    by verl's response length, gets response_mask 0 (no loss; its reward stays in the group).

    An episode without a trained token (the workflow failed before its first model call, or every
    call overflowed) still has to fill its row: its first prompt and one padding token with
    response_mask 0, so it adds nothing to the loss but keeps its reward (0) in the GRPO group. Its
    versions (like those of a sample without sampled tokens) are `policy_version`, the engine's
    current one.
    """
    samples = result.samples if keep_all else result.samples[-1:]
    error = result.error or result.judge_error or ""
    # Every output carries all of these keys: verl concatenates its workers' batches and needs the
    # same non-tensor columns in each. turn_scores / tool_rewards are verl's own loops' columns.
    common: dict[str, Any] = {
        "turn_scores": [],
        "tool_rewards": [],
        "ajet_episode_id": result.episode_id,
        "ajet_task_id": result.task_id,
        "ajet_num_samples": len(result.samples),
        "ajet_dropped_samples": len(result.samples) - len(samples),
        "ajet_is_success": bool(result.is_success),
        "ajet_error": error.splitlines()[0] if error else "",
    }
    if keep_all:
        # v1 copies the last output's reward_extra_info onto the others of the call.
        common["reward_extra_info"] = {}
    outputs = [
        _sample_output(sample, result, common, tokenizer, prompt_length=prompt_length,
                       response_length=response_length, policy_version=policy_version, mask_truncated=mask_truncated)
        for sample in samples
    ]
    if not outputs:
        prompt_ids = _render_first_prompt(result.task, tokenizer)[-prompt_length:]
        extra = dict(common, ajet_prompt_truncated=False, ajet_response_truncated=False,
                     min_global_steps=int(policy_version), max_global_steps=int(policy_version))
        outputs = [_agent_loop_output(result, prompt_ids, [pad_token_id(tokenizer)], [0], [0.0], float(result.reward), extra)]
    return outputs


def _sample_output(
    sample: Any,
    result: EpisodeResult,
    common: dict[str, Any],
    tokenizer: Any,
    *,
    prompt_length: int,
    response_length: int,
    policy_version: int,
    mask_truncated: bool = False,
) -> AgentLoopOutput:
    traj = split_sample(sample, prompt_length, response_length)
    extra = dict(
        common,
        ajet_prompt_truncated=traj.prompt_truncated,
        ajet_response_truncated=traj.response_truncated,
        min_global_steps=min(sample.versions, default=int(policy_version)),
        max_global_steps=max(sample.versions, default=int(policy_version)),
    )
    response_ids, response_mask, response_logprobs = traj.response_ids, traj.response_mask, traj.response_logprobs
    if mask_truncated and (is_truncated_completion(sample) or traj.response_truncated):
        response_mask = [0] * len(response_mask)
    if not response_ids:
        response_ids, response_mask, response_logprobs = [pad_token_id(tokenizer)], [0], [0.0]
    return _agent_loop_output(result, traj.prompt_ids, response_ids, response_mask, response_logprobs, float(sample.reward), extra)


def _agent_loop_output(
    result: EpisodeResult,
    prompt_ids: list[int],
    response_ids: list[int],
    response_mask: list[int],
    response_logprobs: list[float],
    reward: float,
    extra: dict[str, Any],
) -> AgentLoopOutput:
    return AgentLoopOutput(
        prompt_ids=prompt_ids,
        response_ids=response_ids,
        response_mask=response_mask,
        response_logprobs=response_logprobs,
        reward_score=reward,
        num_turns=int(result.num_turns),
        metrics={"generate_sequences": float(result.metrics.get("workflow_s", 0.0))},
        extra_fields=extra,
    )


def _render_first_prompt(task: Task, tokenizer: Any) -> list[int]:
    try:
        ids = tokenizer.apply_chat_template(task.init_messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    except Exception:  # noqa: BLE001 - a row must be produced even for a task the template rejects
        return list(tokenizer.encode(task.main_query or " ", add_special_tokens=False))

