"""Group-relative advantages (GRPO): each episode's reward against the other episodes of its task."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

import torch

from ajet.algo.registry import register_advantage
from ajet.config.schema import AlgorithmConfig


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
    A group of one sample gets advantage 0: it has no baseline to compare with. (verl instead keeps the
    raw reward for a singleton, which trains on reward level rather than relative quality.)
    """
    if rewards.dim() != 1 or rewards.shape[0] != len(group_ids):
        raise ValueError(f"rewards must be [B] with B == len(group_ids); got {tuple(rewards.shape)} and {len(group_ids)}")
    rewards = rewards.float()
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, gid in enumerate(group_ids):
        members[gid].append(i)

    advantages = torch.zeros_like(rewards)
    for idx in members.values():
        if len(idx) < 2:
            continue
        index = torch.tensor(idx, device=rewards.device)
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
