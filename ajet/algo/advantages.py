"""Outcome advantages: each episode's reward against a baseline (its task's other episodes, the batch).

Every estimator takes `rewards [B]` (one scalar per episode) and `group_ids` (length B; equal ids are
the `num_repeat` episodes of one task) and returns `[B]` float32 advantages on the rewards' device.
A group of one episode has no baseline to compare with and gets advantage 0 from the group-relative
estimators (verl instead keeps the raw reward for a singleton, which trains on the reward level
rather than on relative quality).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

import torch

from ajet.algo.registry import register_advantage
from ajet.config.schema import AlgorithmConfig


def _groups(group_ids: Sequence[Hashable], rewards: torch.Tensor) -> list[torch.Tensor]:
    """Index tensors of the groups, in order of first appearance."""
    if rewards.dim() != 1 or rewards.shape[0] != len(group_ids):
        raise ValueError(f"rewards must be [B] with B == len(group_ids); got {tuple(rewards.shape)} and {len(group_ids)}")
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, gid in enumerate(group_ids):
        members[gid].append(i)
    return [torch.tensor(idx, device=rewards.device) for idx in members.values()]


def grpo_advantages(
    rewards: torch.Tensor,
    group_ids: Sequence[Hashable],
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO outcome advantages: (r_i - mean(group)) / (std(group) + eps).

    Args:
        rewards: `[B]` one scalar reward per sample.
        group_ids: length B; samples with equal ids form one group (the `num_repeat` episodes of a task).
        norm_by_std: divide by the group std (GRPO); False gives Dr. GRPO's mean-centred advantage.
        eps: added to the std, so a group with identical rewards gets advantage 0, not NaN.

    Returns:
        `[B]` advantages (float32, same device as `rewards`).

    The std is the unbiased (Bessel-corrected, n-1) sample std, as verl's `torch.std` call computes it.
    """
    rewards = rewards.float()
    advantages = torch.zeros_like(rewards)
    for index in _groups(group_ids, rewards):
        if index.numel() < 2:
            continue
        group = rewards[index]
        centred = group - group.mean()
        if norm_by_std:
            centred = centred / (group.std(unbiased=True) + eps)
        advantages[index] = centred
    return advantages


@register_advantage("grpo")
def grpo_estimator(rewards: torch.Tensor, group_ids: Sequence[Hashable], algorithm: AlgorithmConfig) -> torch.Tensor:
    """`adv_estimator: grpo`; `norm_adv_by_std_in_grpo: false` leaves the advantages mean-centred only."""
    return grpo_advantages(rewards, group_ids, norm_by_std=algorithm.norm_adv_by_std_in_grpo)


def rloo_advantages(rewards: torch.Tensor, group_ids: Sequence[Hashable]) -> torch.Tensor:
    """RLOO (REINFORCE leave-one-out): r_i - mean of the *other* episodes of its group.

    Args / Returns: as `grpo_advantages`. Equal to n / (n - 1) * (r_i - mean(group)) for a group of n,
    so it is the Dr. GRPO advantage scaled per group size; unbiased, since r_i is not in its own baseline.
    """
    rewards = rewards.float()
    advantages = torch.zeros_like(rewards)
    for index in _groups(group_ids, rewards):
        n = index.numel()
        if n < 2:
            continue
        group = rewards[index]
        advantages[index] = group - (group.sum() - group) / (n - 1)
    return advantages


def batch_whitened_advantages(rewards: torch.Tensor, group_ids: Sequence[Hashable], eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++ with a group baseline: r_i - mean(group), then whitened over the whole batch.

    Args / Returns: as `grpo_advantages`; `eps` is added to the batch variance before the square root.

    The group mean removes each task's difficulty; normalising by the *batch* std (not each group's)
    keeps a group whose rewards barely differ from being blown up to unit scale (Hu et al., 2025,
    arXiv:2501.03262). A group of one contributes 0 before whitening. Every episode counts once
    here; verl's `reinforce_plus_plus_baseline` whitens over response tokens, so longer responses
    weigh more in its batch mean and std.
    """
    rewards = rewards.float()
    centred = torch.zeros_like(rewards)
    for index in _groups(group_ids, rewards):
        if index.numel() >= 2:
            group = rewards[index]
            centred[index] = group - group.mean()
    if centred.numel() < 2:
        return torch.zeros_like(centred)
    mean, var = centred.mean(), centred.var(unbiased=True)
    return (centred - mean) * torch.rsqrt(var + eps)


@register_advantage("dr_grpo")
def dr_grpo_estimator(rewards: torch.Tensor, group_ids: Sequence[Hashable], algorithm: AlgorithmConfig) -> torch.Tensor:
    """`adv_estimator: dr_grpo` (Liu et al., 2025, arXiv:2503.20783): r_i - mean(group), never divided by
    the std; the config check pairs it with `loss_agg_mode: seq-mean-token-sum-norm`, the paper's
    length-independent aggregation. verl has no such name: there it is `grpo` with
    `norm_adv_by_std_in_grpo: false` and the same aggregation."""
    return grpo_advantages(rewards, group_ids, norm_by_std=False)


@register_advantage("rloo")
def rloo_estimator(rewards: torch.Tensor, group_ids: Sequence[Hashable], algorithm: AlgorithmConfig) -> torch.Tensor:
    """`adv_estimator: rloo`, verl's name."""
    return rloo_advantages(rewards, group_ids)


@register_advantage("reinforce_plus_plus_baseline")
def reinforce_plus_plus_baseline_estimator(
    rewards: torch.Tensor, group_ids: Sequence[Hashable], algorithm: AlgorithmConfig
) -> torch.Tensor:
    """`adv_estimator: reinforce_plus_plus_baseline`, verl's name."""
    return batch_whitened_advantages(rewards, group_ids)
