"""Building the parts a run needs from the config: model, engine, proxy, workflow, judge, runner.

Shared by training, validation and evaluation so that all three run the agent the same way.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass
class RolloutStack:
    tokenizer: Any
    policy: Any  # the model the trainer updates
    engine: Any
    proxy: Any
    runner: Any
    workflow_cls: type
    judge: Any
    shares_weights: bool  # True: engine generates with `policy` itself (synchronous schedule)

    def close(self) -> None:
        self.runner.close()
        self.proxy.stop()
        self.engine.shutdown()


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(name: str, device: str, *, for_training: bool) -> torch.dtype:
    """`auto`: the trained weights stay fp32 (AdamW steps of ~1e-6 round away in bf16; the trainer
    autocasts to bf16 on GPU); an inference-only copy is bf16 on a GPU that supports it."""
    if name == "auto":
        if for_training:
            return torch.float32
        return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_workflow_and_judge(cfg: Any) -> tuple[type, Any]:
    """The workflow class and a judge instance (None when no judge_protocol is set)."""
    from ajet.backbone import resolve_user_classes

    workflow_cls, judge_cls = resolve_user_classes(cfg)
    return workflow_cls, (judge_cls(config=cfg) if judge_cls is not None else None)


def build_rollout_stack(cfg: Any, *, separate_engine_weights: bool = False, with_ray: bool = False) -> RolloutStack:
    """Load the model once and put an engine and the OpenAI-compatible proxy in front of it.

    With `separate_engine_weights`, the engine gets its own copy of the weights and is refreshed by
    `engine.update_weights` after each step: the asynchronous schedule trains while the engine samples.
    Otherwise the engine reads the trainer's model directly (no copy, no transfer); the loop pauses
    the engine during updates. `with_ray` runs workflows in Ray workers (Ray must be running).
    """
    from ajet.engine import build_engine
    from ajet.engine.vllm_support import choose_engine, vllm_engine_kwargs
    from ajet.models import ensure_tool_template, load_model, load_tokenizer, resolve_model_path
    from ajet.proxy import ProxyServer
    from ajet.rollout import RolloutRunner

    device = pick_device()
    # Resolve once: for a hub id or a builtin this may probe the hub or build a cache entry.
    model_dir = resolve_model_path(cfg.model.path)
    tokenizer = load_tokenizer(model_dir)
    template = ensure_tool_template(tokenizer, mode=cfg.model.chat_template)
    logger.info("chat template: %s", template)
    policy = load_model(model_dir, dtype=pick_dtype(cfg.model.dtype, device, for_training=True), device=device)
    engine_kind, why = choose_engine(cfg.rollout.engine, model_dir, device=device, num_parameters=policy.num_parameters())
    logger.info("rollout engine: %s (%s)", engine_kind, why)
    engine_model: Any = policy
    engine_kwargs: dict[str, Any] = {}
    if engine_kind == "vllm":
        # vLLM loads its own copy from disk and gets new weights through update_weights.
        engine_model = str(model_dir)
        separate_engine_weights = True
        engine_kwargs = vllm_engine_kwargs(cfg.rollout, model_dir, pick_dtype(cfg.model.dtype, device, for_training=False), device)
    elif separate_engine_weights:
        engine_dtype = pick_dtype(cfg.model.dtype, device, for_training=False)
        engine_model = copy.deepcopy(policy).to(engine_dtype).eval()
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
    proxy = ProxyServer(engine, tokenizer, disable_tool_calls=cfg.rollout.force_disable_toolcalls)
    proxy.start()
    workflow_cls, judge = load_workflow_and_judge(cfg)
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
