"""From judged groups to the trainer's input: samples paired with their advantages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ajet.algo import advantage_estimator
from ajet.config.schema import AlgorithmConfig
from ajet.rollout.groups import EpisodeGroup
from ajet.schema import Sample


@dataclass
class TrainingBatch:
    samples: list[Sample]
    advantages: list[float]  # one per sample: its episode's advantage

    @property
    def num_tokens(self) -> int:
        return sum(len(s.input_ids) for s in self.samples)


def build_training_batch(
    groups: Sequence[EpisodeGroup], algorithm: AlgorithmConfig, *, advantage_sign: float = 1.0
) -> TrainingBatch:
    """Each episode gets an advantage from `algorithm.adv_estimator` over the groups' rewards (GRPO:
    its reward normalised within its group); every sample of the episode shares it.

    `advantage_sign=-1` flips every advantage; it exists for the learning-proof control run (a policy
    trained on flipped advantages must not learn) and is never set by the config.
    """
    rewards, group_ids, owners = [], [], []
    for group in groups:
        for episode in group.episodes:
            rewards.append(float(episode.reward))
            group_ids.append(group.launch_index)
            owners.append(episode)
    if not rewards:
        return TrainingBatch(samples=[], advantages=[])
    estimate = advantage_estimator(algorithm.adv_estimator)
    advantages = estimate(torch.tensor(rewards, dtype=torch.float32), group_ids, algorithm)
    samples, sample_advantages = [], []
    for episode, advantage in zip(owners, advantages.tolist()):
        for sample in episode.samples:
            if sample.num_trained_tokens == 0:
                continue  # nothing sampled (e.g. the prompt alone overflowed): nothing to train
            samples.append(sample)
            sample_advantages.append(advantage_sign * advantage)
    return TrainingBatch(samples=samples, advantages=sample_advantages)
