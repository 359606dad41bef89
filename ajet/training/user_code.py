"""The user's code a run needs: the workflow class and the judge, imported from the config's specs."""

from __future__ import annotations

from ajet.config import AjetConfig
from ajet.imports import import_object
from ajet.judge.base import BaseJudge
from ajet.workflow import Workflow


def resolve_user_classes(cfg: AjetConfig) -> tuple[type[Workflow], type[BaseJudge] | None]:
    """Import the configured workflow and judge classes.

    The launcher calls this before anything heavy starts, so a bad spec fails in a second with the
    key and the fix; the backbones call it again where they build the instances.
    """
    workflow_cls = import_object(cfg.rollout.user_workflow, Workflow, key="ajet.rollout.user_workflow")
    judge_cls = None
    if cfg.task_judge.judge_protocol:
        judge_cls = import_object(cfg.task_judge.judge_protocol, BaseJudge, key="ajet.task_judge.judge_protocol")
    return workflow_cls, judge_cls


def build_workflow_and_judge(cfg: AjetConfig) -> tuple[type[Workflow], BaseJudge | None]:
    """The workflow class (one instance per episode, made by the runner) and the run's judge instance
    (None when no judge_protocol is set: every workflow returns its own reward)."""
    workflow_cls, judge_cls = resolve_user_classes(cfg)
    return workflow_cls, (judge_cls(config=cfg) if judge_cls is not None else None)
