"""ajet's workflows inside Trinity-RFT's explorer (imports trinity-rft).

Trinity's WorkflowRunner (a Ray actor) builds `AjetTrinityWorkflow(task=..., model=...)` for each run
of a task and awaits `run_async()`. One run is one ajet episode, played exactly as on the debug
backbone: RolloutRunner -> the user's workflow -> AjetTuner -> ProxyServer -> tracker -> judge, with
the proxy generating through `TrinityServerEngine`, i.e. the runner's vLLM rollout engine, token ids
in and out. The tracker's merged samples become Experiences (see ajet.backbone.trinity.experiences).

Per process, not per run: the proxy, the engine, the user's classes and the episode runners live in
one `TrinityWorkerContext` per runner process and rollout server, created on first use.
"""

from __future__ import annotations

import functools
import threading
from collections import defaultdict
from typing import Any

from trinity.common.experience import Experience
from trinity.common.workflows.workflow import Task as TrinityTask
from trinity.common.workflows.workflow import Workflow

from ajet.backbone.trinity.config_translation import CONFIG_PATH_ARG
from ajet.backbone.trinity.experiences import episode_to_experiences
from ajet.backbone.trinity.server_engine import TrinityServerEngine
from ajet.backbone.trinity.taskset import task_from_row
from ajet.backbone.worker_contexts import WorkerContexts
from ajet.config import AjetConfig
from ajet.schema import EpisodeResult, Task


class AjetTrinityWorkflow(Workflow):
    """A Trinity workflow that plays one ajet episode per run (see the module docstring)."""

    is_async = True
    can_reset = False
    can_repeat = False  # Trinity makes one instance per run, so each run is one episode

    def __init__(self, *, task: TrinityTask, model: Any, auxiliary_models: Any = None) -> None:
        super().__init__(task=task, model=model, auxiliary_models=auxiliary_models)
        self.ajet_config = load_ajet_config((task.workflow_args or {}).get(CONFIG_PATH_ARG))

    async def run_async(self) -> list[Experience]:
        context = worker_context(self.ajet_config, self.model)
        context.engine.policy_version = int(await self.model.model_version_async)
        task = task_from_row(self.task.raw_task)
        repeat_index = context.next_repeat_index(f"{self.task.batch_id}/{self.task.task_id}")
        result = await context.run_episode(task, repeat_index, validation=bool(self.task.is_eval))
        return context.to_experiences(result)


class TrinityWorkerContext:
    """What one runner process shares across its episodes: proxy, engine, user classes, runners."""

    def __init__(self, cfg: AjetConfig, model: Any) -> None:
        from ajet.models import ensure_tool_template, load_tokenizer
        from ajet.proxy import ProxyServer
        from ajet.training.user_code import build_workflow_and_judge

        address = getattr(model, "api_address", None)
        if not address:
            raise RuntimeError(
                "Trinity's rollout model has no API address: the trinity backbone needs "
                "explorer.rollout_model.enable_openai_api: true (ajet's translation sets it)"
            )
        self.cfg = cfg
        self.tokenizer = load_tokenizer(model.model_path)
        ensure_tool_template(self.tokenizer, mode=cfg.model.chat_template)
        self.engine = TrinityServerEngine(
            address, self.tokenizer, model_name=model.model_path, api_key=model.api_key,
            max_model_len=cfg.rollout.max_model_len,
        )
        self.proxy = ProxyServer.from_config(self.engine, self.tokenizer, cfg.rollout, host=proxy_host(cfg.rollout.proxy_host))
        self.proxy.start()
        self.workflow_cls, self.judge = build_workflow_and_judge(cfg)
        self._runner: Any = None
        self._repeats: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    @property
    def runner(self) -> Any:
        from ajet.rollout import RolloutRunner

        with self._lock:
            if self._runner is None:
                self._runner = RolloutRunner(self.workflow_cls, self.judge, self.proxy, self.cfg)
            return self._runner

    async def run_episode(self, task: Task, repeat_index: int, *, validation: bool) -> EpisodeResult:
        return await self.runner.run_episode(task, repeat_index, validation=validation)

    def next_repeat_index(self, group: str) -> int:
        """Trinity numbers runs itself (eid.run) after the workflow returns; this count, per task of a
        batch in this process, only names the episode and seeds what a workflow keys on it."""
        with self._lock:
            index = self._repeats[group]
            self._repeats[group] += 1
            return index

    def to_experiences(self, result: EpisodeResult) -> list[Experience]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        return episode_to_experiences(result, fallback_prompt_ids=first_prompt_ids(result.task, self.tokenizer), pad_token_id=int(pad))

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
        self.proxy.stop()


_contexts: WorkerContexts[str, TrinityWorkerContext] = WorkerContexts()


def worker_context(cfg: AjetConfig, model: Any) -> TrinityWorkerContext:
    """The process's context for this rollout server, created on first use."""
    return _contexts.get(str(getattr(model, "api_address", "")), lambda: TrinityWorkerContext(cfg, model))


def close_worker_contexts() -> None:
    _contexts.close_all()


def load_ajet_config(source: Any) -> AjetConfig:
    """The run's AjetConfig from itself or from the path the taskset's workflow_args name."""
    if isinstance(source, AjetConfig):
        return source
    if not source:
        raise RuntimeError(
            f"AjetTrinityWorkflow needs the ajet config: the taskset's workflow_args.{CONFIG_PATH_ARG} "
            "(ajet's launcher writes it)"
        )
    return _config_from_file(str(source))


@functools.lru_cache(maxsize=4)
def _config_from_file(path: str) -> AjetConfig:
    # Trinity builds a workflow per run; the run's config file is parsed once per process.
    from ajet.config import load_config

    return load_config(path)


def proxy_host(setting: str) -> str:
    """`rollout.proxy_host`: `auto` = this node's IP, so agents running on other nodes reach it."""
    if setting != "auto":
        return setting
    try:
        import ray

        return str(ray.util.get_node_ip_address())
    except Exception:  # noqa: BLE001 - outside a Ray worker (tests), loopback is the reachable one
        return "127.0.0.1"


def first_prompt_ids(task: Task, tokenizer: Any) -> list[int]:
    """The task's first messages rendered with the generation prompt (for an episode with no sample)."""
    from ajet.tracker.render import ChatRenderer, normalize_messages

    try:
        return ChatRenderer(tokenizer).render_ids(normalize_messages(task.init_messages), None, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a row must exist even for a task the template rejects
        return list(tokenizer.encode(task.main_query or " ", add_special_tokens=False))


__all__ = ["AjetTrinityWorkflow", "TrinityWorkerContext", "close_worker_contexts", "worker_context"]
