"""Dynamic sampling (DAPO, Yu et al., 2025): train only on groups whose episodes' rewards differ.

Under a group baseline (GRPO, Dr. GRPO, RLOO) a group whose episodes all got the same reward has
advantage 0 everywhere: the update spends forward and backward passes on it and learns nothing. With
`trainer_common.algorithm.filter_groups.enable`, `GroupProducer.take` drops such a group when it is
taken and launches the next task of the stream in its place, until the batch holds `batch_size`
groups with a reward spread. Refills per step are capped (`max_num_gen_batches`, counted in
batches of `batch_size` groups including the first); at the cap the step trains on what it has.

The rule is verl's (`algorithm.filter_groups` with metric `reward`): a group of two or more episodes
whose rewards are all equal is dropped; a group of one is kept (it has no spread to measure).
Dropped groups are consumed from the task stream like trained ones, so a resumed run continues at
the same position; they appear in the rollout log and in the `filter_groups/*` metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ajet.config.schema import FilterGroupsConfig
from ajet.schema import EpisodeResult

if TYPE_CHECKING:
    from ajet.rollout.groups import EpisodeGroup, TakeResult


def has_reward_spread(episodes: Sequence[EpisodeResult]) -> bool:
    """False for two or more episodes with identical rewards (the group teaches nothing); True otherwise."""
    if len(episodes) < 2:
        return True
    rewards = [float(e.reward) for e in episodes]
    return max(rewards) != min(rewards)


@dataclass(frozen=True)
class GroupFilter:
    """What `GroupProducer` needs to do dynamic sampling.

    max_refills: groups launched per step to replace dropped ones; None = no cap.
    """

    max_refills: int | None = None

    @classmethod
    def from_config(cls, filter_groups: FilterGroupsConfig, batch_size: int) -> GroupFilter | None:
        """None when `filter_groups.enable` is off. `max_num_gen_batches` n > 0 allows (n - 1) * batch_size
        refills per step (verl counts generation batches including the first); n <= 0 allows any number."""
        if not filter_groups.enable:
            return None
        n = filter_groups.max_num_gen_batches
        return cls(max_refills=None if n <= 0 else (n - 1) * batch_size)

    def keeps(self, group: EpisodeGroup) -> bool:
        return has_reward_spread(group.episodes)


def dynamic_sampling_metrics(taken: TakeResult) -> dict[str, float]:
    """`filter_groups/*` metrics of one step; the zero-variance figures are reported with filtering off too.

    kept_groups / dropped_groups / refilled_groups: groups trained, dropped for a zero reward spread,
    and launched to replace them during the step; cap_reached: 1 when a dropped group could not be
    replaced. zero_variance_share: share of the step's fresh groups (trained + dropped) without a
    reward spread. trained_zero_variance_token_share: share of the trained tokens (prompt + response of
    every trained sample) that belong to such groups, i.e. the part of the update's forward and
    backward passes that carries no policy gradient (0 when filtering dropped them all).
    """
    trained_flat = [g for g in taken.groups if not has_reward_spread(g.episodes)]
    fresh = len(taken.groups) + len(taken.filtered)
    all_tokens = _tokens(taken.groups)
    return {
        "filter_groups/kept_groups": float(len(taken.groups)),
        "filter_groups/dropped_groups": float(len(taken.filtered)),
        "filter_groups/refilled_groups": float(taken.refilled),
        "filter_groups/cap_reached": float(taken.cap_reached),
        "filter_groups/zero_variance_share": (len(taken.filtered) + len(trained_flat)) / fresh if fresh else 0.0,
        "filter_groups/trained_zero_variance_token_share": _tokens(trained_flat) / all_tokens if all_tokens else 0.0,
    }


def _tokens(groups: Sequence[EpisodeGroup]) -> int:
    return sum(len(s.input_ids) for g in groups for e in g.episodes for s in e.samples if s.num_trained_tokens)
