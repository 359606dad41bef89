"""The judge interface: score a finished episode from its task, the workflow's output and its turns."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from ajet.config import AjetConfig, default_config
from ajet.schema import WorkflowOutput, WorkflowTask
from ajet.tracker.turns import Turn

# The old AgentScope-tuner name for the episode's turns in a one-argument judge's dictionary.
LEGACY_TURNS_KEY = "grouped_steps"


class BaseJudge:
    """Subclass and implement `compute_reward`; may be sync or `async def`.

    Returns `(raw_reward, is_success)`. Called only for episodes whose workflow returned `reward=None`.
    `config` is the validated `ajet` config, so a judge can read its own settings from
    `config.task_judge` (extra keys under `task_judge` are kept for it); a judge built by hand without
    one gets the packaged defaults.

    What the runner passes depends on the signature (see `call_judge`):
      - `compute_reward(self, workflow_task, workflow_output)`;
      - `compute_reward(self, workflow_task, workflow_output, turns)` (or a keyword-only `turns`): also
        the episode's model turns, a tuple of `ajet.tracker.Turn` (messages in, reply, tool calls,
        token counts, finish reason), oldest first;
      - `compute_reward(self, judge_input_dictionary)`: one dict, the older AgentScope-tuner style, with
        `workflow_task`, `workflow_output`, `env`, `grouped_steps` (the turns) and every key of
        `workflow_output.metadata` (e.g. `final_answer`, set by the workflow or by
        `tuner.update_judge_input_dictionary(final_answer=...)`).
    """

    def __init__(self, config: AjetConfig | None = None, **kwargs: Any) -> None:
        self.config: AjetConfig = config if config is not None else default_config()
        for key, value in kwargs.items():
            setattr(self, key, value)

    def compute_reward(
        self, workflow_task: WorkflowTask, workflow_output: WorkflowOutput
    ) -> tuple[float, bool] | Awaitable[tuple[float, bool]]:
        raise NotImplementedError(f"{type(self).__name__} must implement compute_reward(workflow_task, workflow_output)")


def judge_input_dictionary(
    workflow_task: WorkflowTask, workflow_output: WorkflowOutput, turns: tuple[Turn, ...]
) -> dict[str, Any]:
    """The one argument of a one-argument judge (see BaseJudge): metadata keys first, so the fixed
    keys below cannot be shadowed by a workflow's metadata."""
    return {
        **workflow_output.metadata,
        "workflow_task": workflow_task,
        "workflow_output": workflow_output,
        "env": workflow_task.env,
        LEGACY_TURNS_KEY: turns,
    }


def call_judge(
    judge: BaseJudge, workflow_task: WorkflowTask, workflow_output: WorkflowOutput, turns: tuple[Turn, ...]
) -> Any:
    """`judge.compute_reward(...)` with the arguments its signature asks for (see BaseJudge); returns
    what it returns (a tuple, or an awaitable of one)."""
    # Typed loosely on purpose: the signature is read at run time, and may differ from BaseJudge's.
    compute: Callable[..., Any] = judge.compute_reward
    style = _call_style(compute)
    if style == "dictionary":
        return compute(judge_input_dictionary(workflow_task, workflow_output, turns))
    if style == "turns_keyword":
        return compute(workflow_task, workflow_output, turns=turns)
    if style == "turns_positional":
        return compute(workflow_task, workflow_output, turns)
    return compute(workflow_task, workflow_output)


def _call_style(compute: Callable[..., Any]) -> str:
    """How to call a bound `compute_reward`, read from its parameters (self is already bound):
    a parameter named `turns`, or a third positional one, gets the turns; a single positional
    parameter gets the dictionary; anything else the two classic arguments."""
    try:
        params = list(inspect.signature(compute).parameters.values())
    except (TypeError, ValueError):  # a C callable without a signature: the classic call
        return "classic"
    kinds = inspect.Parameter
    positional = [p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    named = {p.name: p for p in params}
    if "turns" in named:
        return "turns_positional" if named["turns"].kind == inspect.Parameter.POSITIONAL_ONLY else "turns_keyword"
    if len(positional) >= 3:
        return "turns_positional"
    if len(positional) == 1 and not any(p.kind == kinds.VAR_POSITIONAL for p in params):
        return "dictionary"
    return "classic"
