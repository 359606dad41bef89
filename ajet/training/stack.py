"""The rollout stack: the model, an engine in front of it, the proxy, the workflow, the judge, the runner.

Built once per run and shared by training, validation and evaluation, so all three run the agent the
same way.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

from torch import nn

from ajet.config import AjetConfig
from ajet.engine import Engine
from ajet.judge.base import BaseJudge
from ajet.proxy import ProxyServer
from ajet.rollout import RolloutRunner
from ajet.workflow import Workflow

logger = logging.getLogger(__name__)


@dataclass
class RolloutStack:
    tokenizer: Any
    policy: nn.Module  # the model the trainer updates
    engine: Engine
    proxy: ProxyServer
    runner: RolloutRunner
    workflow_cls: type[Workflow]
    judge: BaseJudge | None
    shares_weights: bool  # True: the engine generates with `policy` itself (synchronous schedule)

    def close(self) -> None:
        self.runner.close()
        self.proxy.stop()
        self.engine.shutdown()


def build_rollout_stack(cfg: AjetConfig, *, separate_engine_weights: bool = False, with_ray: bool = False) -> RolloutStack:
    """Load the model once and put an engine and the OpenAI-compatible proxy in front of it.

    With `separate_engine_weights`, the engine gets its own copy of the weights and is refreshed by
    `engine.update_weights` after each step: the asynchronous schedule trains while the engine samples.
    Otherwise the engine reads the trainer's model directly (no copy, no transfer); the loop pauses
    the engine during updates. `with_ray` runs workflows in Ray workers (Ray must be running).
    """
    from ajet.engine import build_engine
    from ajet.engine.vllm_support import choose_engine, vllm_engine_kwargs
    from ajet.models import (
        ensure_tool_template,
        load_model,
        load_tokenizer,
        pick_device,
        resolve_dtype,
        resolve_model_path,
    )
    from ajet.training.user_code import build_workflow_and_judge

    device = pick_device()
    # Resolve once: for a hub id or a builtin this may probe the hub or build a cache entry.
    model_dir = resolve_model_path(cfg.model.path)
    tokenizer = load_tokenizer(model_dir)
    template = ensure_tool_template(tokenizer, mode=cfg.model.chat_template)
    logger.info("chat template: %s", template)
    policy = load_model(model_dir, dtype=cfg.model.dtype, device=device, for_training=True)
    engine_kind, why = choose_engine(cfg.rollout.engine, model_dir, device=device)
    logger.info("rollout engine: %s (%s)", engine_kind, why)
    engine_model: Any = policy
    engine_kwargs: dict[str, Any] = {}
    if engine_kind == "vllm":
        # vLLM loads its own copy from disk and gets new weights through update_weights.
        engine_model = str(model_dir)
        separate_engine_weights = True
        engine_kwargs = vllm_engine_kwargs(cfg.rollout, model_dir, resolve_dtype(cfg.model.dtype, device), device)
    elif separate_engine_weights:
        engine_model = copy.deepcopy(policy).to(resolve_dtype(cfg.model.dtype, device)).eval()
        engine_model.requires_grad_(False)
    engine = build_engine(
        engine_kind,
        engine_model,
        tokenizer,
        max_batch_size=cfg.rollout.max_batch_size,
        max_model_len=cfg.rollout.max_model_len,
        **engine_kwargs,
    )
    engine.start()
    if engine_kind == "vllm" and engine_kwargs.get("load_format") == "dummy":
        engine.update_weights(policy.state_dict().items(), version=0)  # weights that exist only in memory
    proxy = ProxyServer.from_config(engine, tokenizer, cfg.rollout)
    proxy.start()
    workflow_cls, judge = build_workflow_and_judge(cfg)
    remote = None
    if with_ray:
        from ajet.rollout.ray_executor import RayWorkflowExecutor

        remote = RayWorkflowExecutor(cfg.rollout.user_workflow)
    runner = RolloutRunner(workflow_cls, judge, proxy, cfg, remote=remote)
    return RolloutStack(
        tokenizer=tokenizer,
        policy=policy,
        engine=engine,
        proxy=proxy,
        runner=runner,
        workflow_cls=workflow_cls,
        judge=judge,
        shares_weights=not separate_engine_weights,
    )
