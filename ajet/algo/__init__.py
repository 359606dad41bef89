"""GRPO algorithm pieces as pure tensor functions: advantages, masking, losses, off-policy correction."""

from ajet.algo.advantages import grpo_advantages
from ajet.algo.losses import entropy_from_logits, kl_penalty, policy_loss
from ajet.algo.masking import AGG_MODES, agg_loss, masked_mean, masked_sum
from ajet.algo.registry import (
    UnknownAlgorithmError,
    advantage_estimator,
    advantage_estimator_names,
    register_advantage,
)
from ajet.algo.rollout_correction import (
    logprob_gap_metrics,
    ratio_band_mask,
    truncated_is_weights,
)

__all__ = [
    "AGG_MODES",
    "UnknownAlgorithmError",
    "advantage_estimator",
    "advantage_estimator_names",
    "agg_loss",
    "entropy_from_logits",
    "grpo_advantages",
    "kl_penalty",
    "logprob_gap_metrics",
    "masked_mean",
    "masked_sum",
    "policy_loss",
    "ratio_band_mask",
    "register_advantage",
    "truncated_is_weights",
]
