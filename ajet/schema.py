"""The data that crosses package boundaries: tasks in, episodes out, samples to the trainer.

Everything here is plain data (dataclasses / pydantic) so that it pickles across Ray workers and
prints readably in a debugger. No module in this file imports anything else from ajet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


@dataclass
class Task:
    """One problem from a task reader.

    `metadata` carries everything the judge needs (for GSM8K: `answer`, the reference solution with
    `#### N` at its end, and `reference_answer`, the bare N).
    """

    main_query: str
    init_messages: list[dict[str, Any]] = field(default_factory=list)
    task_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.init_messages and self.main_query:
            self.init_messages = [{"role": "user", "content": self.main_query}]


@dataclass
class WorkflowTask:
    """What a workflow receives for one episode: the task plus which repeat of it this is."""

    task: Task
    episode_id: str = ""
    repeat_index: int = 0
    # Set by the env_service reader: a handle on the remote environment instance (see task_reader).
    env: Any = None

    @property
    def task_id(self) -> str:
        return self.task.task_id


class WorkflowOutput(BaseModel):
    """What a workflow returns. `reward=None` asks the configured judge to score the episode.

    A list of rewards gives one reward per training sample of the episode, in order (for agents whose
    episode splits into several samples); a single float applies to every sample.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reward: float | list[float] | None = None
    is_success: bool | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    log_metrics: dict[str, float] = Field(default_factory=dict)


@dataclass
class Sample:
    """One training sequence, built by the tracker from an episode's model calls.

    All per-token lists have the same length T = len(input_ids).
    - loss_mask[t] == 1 where token t was sampled by the policy (trained), 0 for prompt/tool/user tokens.
    - rollout_logprobs[t] is the behaviour logprob the engine reported for a sampled token; 0.0 where
      loss_mask is 0.
    - token_versions[t] is the policy version that sampled token t, -1 where loss_mask is 0.
    """

    input_ids: list[int]
    loss_mask: list[int]
    rollout_logprobs: list[float]
    token_versions: list[int]
    task_id: str
    episode_id: str
    reward: float = 0.0
    is_success: bool = False
    truncated: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.input_ids)
        if not (len(self.loss_mask) == len(self.rollout_logprobs) == len(self.token_versions) == n):
            raise ValueError(
                "Sample lists must have equal length: "
                f"input_ids={n} loss_mask={len(self.loss_mask)} "
                f"rollout_logprobs={len(self.rollout_logprobs)} token_versions={len(self.token_versions)}"
            )

    @property
    def num_trained_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def oldest_version(self) -> int:
        """Smallest policy version among sampled tokens (-1 if nothing was sampled)."""
        versions = [v for v in self.token_versions if v >= 0]
        return min(versions) if versions else -1

    @property
    def versions(self) -> list[int]:
        """Distinct policy versions that produced this sample's tokens, ascending."""
        return sorted({v for v in self.token_versions if v >= 0})


@dataclass
class EpisodeResult:
    """A finished episode, judged: its samples, its reward and what went wrong (if anything)."""

    task: Task
    episode_id: str
    repeat_index: int
    samples: list[Sample]
    reward: float
    is_success: bool
    output: WorkflowOutput | None = None
    error: str | None = None
    judge_error: str | None = None
    num_turns: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def task_id(self) -> str:
        return self.task.task_id
