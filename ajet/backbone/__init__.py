"""Backbones wire every part together: `debug` (one process) and `verl` (Ray + vLLM + verl)."""

from __future__ import annotations

from typing import Any


def resolve_user_classes(cfg: Any) -> tuple[type, type | None]:
    """Import the configured workflow and judge classes (the launcher calls this early, so a bad spec
    fails before any model loads; the backbones call it again to build them)."""
    from ajet.imports import import_object
    from ajet.judge.base import BaseJudge
    from ajet.workflow import Workflow

    workflow_cls = import_object(cfg.rollout.user_workflow, Workflow, key="ajet.rollout.user_workflow")
    judge_cls = None
    if cfg.task_judge.judge_protocol:
        judge_cls = import_object(cfg.task_judge.judge_protocol, BaseJudge, key="ajet.task_judge.judge_protocol")
    return workflow_cls, judge_cls


def run(cfg: Any, launch_args: Any) -> int:
    """Run the experiment described by `cfg` on the backbone chosen by --backbone (or `ajet.backbone`)."""
    backbone = getattr(launch_args, "backbone", None) or cfg.backbone
    if backbone == "debug":
        from ajet.backbone.debug import run_debug

        return run_debug(cfg, launch_args)
    if backbone == "verl":
        from ajet.backbone.verl.launch import run as run_verl

        return run_verl(cfg, launch_args)
    raise ValueError(f"unknown backbone {backbone!r}: choose debug or verl")
