"""Algorithms by name: the `trainer_common.algorithm` section looks its estimator and policy loss up here.

    @register_advantage("grpo")
    def grpo(rewards, group_ids, algorithm): ...

    advantage_estimator("grpo")(rewards, group_ids, cfg.trainer_common.algorithm)   # -> [B]

    @register_policy_loss("vanilla")
    def vanilla(logprobs, old_logprobs, advantages, mask, trainer, *, tis_weights, num_tokens, num_seqs): ...

    policy_loss_fn("vanilla")(logprobs, old, adv, mask, cfg.trainer_common, tis_weights=None,
                              num_tokens=None, num_seqs=None)                  # -> (loss, metrics)

An estimator maps `rewards [B]` (one scalar per episode), `group_ids` (length B; equal ids are the
episodes of one task) and the `algorithm` config section to `[B]` advantages. A policy loss maps the
`[B, T]` token tensors of a micro-batch (see ajet.algo.losses) and the `trainer_common` section (its
clip ranges and aggregation) to a scalar loss and detached scalar metrics `clipfrac`, `approx_kl`,
`ratio_mean`, `ratio_max`. Names follow verl's `algorithm.adv_estimator` and
`actor.policy_loss.loss_mode` values where verl has the same algorithm, so one YAML means the same on
both backbones.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import torch

from ajet.config.errors import ConfigError
from ajet.config.schema import AlgorithmConfig

AdvantageEstimator = Callable[[torch.Tensor, Sequence[Hashable], AlgorithmConfig], torch.Tensor]
# (logprobs, old_logprobs, advantages, mask, trainer, *, tis_weights, num_tokens, num_seqs) -> (loss, metrics)
PolicyLoss = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
F = TypeVar("F", bound=Callable[..., Any])

_ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}
_POLICY_LOSSES: dict[str, PolicyLoss] = {}


class UnknownAlgorithmError(KeyError):
    """A name that no registered algorithm has; the message lists the registered ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def _register(table: dict[str, Any], kind: str, name: str) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        if name in table:
            raise ValueError(f"{kind} {name!r} is already registered")
        table[name] = fn
        return fn

    return decorate


def _lookup(table: dict[str, Any], kind: str, name: str) -> Any:
    try:
        return table[name]
    except KeyError:
        raise UnknownAlgorithmError(f"no {kind} {name!r}; registered: {', '.join(sorted(table))}") from None


def register_advantage(name: str) -> Callable[[F], F]:
    """Register an advantage estimator under `name` (a name may be registered once)."""
    return _register(_ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def advantage_estimator(name: str) -> AdvantageEstimator:
    """The estimator registered as `name`."""
    return _lookup(_ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def advantage_estimator_names() -> list[str]:
    return sorted(_ADVANTAGE_ESTIMATORS)


def register_policy_loss(name: str) -> Callable[[F], F]:
    """Register a policy loss under `name` (a name may be registered once)."""
    return _register(_POLICY_LOSSES, "policy loss", name)


def policy_loss_fn(name: str) -> PolicyLoss:
    """The policy loss registered as `name`."""
    return _lookup(_POLICY_LOSSES, "policy loss", name)


def policy_loss_names() -> list[str]:
    return sorted(_POLICY_LOSSES)


def check_algorithm_names(algorithm: AlgorithmConfig) -> None:
    """Raise ConfigError (key path, value, the registered names) for an estimator or loss no one registered."""
    import ajet.algo  # noqa: F401 - importing the package registers the built-in algorithms

    lookups = (
        ("ajet.trainer_common.algorithm.adv_estimator", algorithm.adv_estimator, advantage_estimator),
        ("ajet.trainer_common.algorithm.policy_loss.loss_mode", algorithm.policy_loss.loss_mode, policy_loss_fn),
    )
    for key, value, lookup in lookups:
        try:
            lookup(value)
        except UnknownAlgorithmError as exc:
            raise ConfigError(f"{key} = {value!r}: {exc}", key=key, value=value) from None
