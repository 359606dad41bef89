"""Algorithms by name: `trainer_common.algorithm.adv_estimator` looks its estimator up here.

    @register_advantage("grpo")
    def grpo(rewards, group_ids, algorithm): ...

    advantage_estimator("grpo")(rewards, group_ids, cfg.trainer_common.algorithm)   # -> [B]

An estimator maps `rewards [B]` (one scalar per episode), `group_ids` (length B; equal ids are the
episodes of one task) and the `algorithm` config section to `[B]` advantages. Names follow verl's
`adv_estimator` values where verl has the same estimator, so one YAML means the same on both backbones.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import torch

from ajet.config.schema import AlgorithmConfig

AdvantageEstimator = Callable[[torch.Tensor, Sequence[Hashable], AlgorithmConfig], torch.Tensor]
F = TypeVar("F", bound=AdvantageEstimator)

_ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


class UnknownAlgorithmError(KeyError):
    """A name that no registered algorithm has; the message lists the registered ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def register_advantage(name: str) -> Callable[[F], F]:
    """Register an advantage estimator under `name` (a name may be registered once)."""

    def decorate(fn: F) -> F:
        if name in _ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        _ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return decorate


def advantage_estimator(name: str) -> AdvantageEstimator:
    """The estimator registered as `name`."""
    try:
        return _ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise UnknownAlgorithmError(
            f"no advantage estimator {name!r}; registered: {', '.join(advantage_estimator_names())}"
        ) from None


def advantage_estimator_names() -> list[str]:
    return sorted(_ADVANTAGE_ESTIMATORS)
