"""RL algorithm pieces as pure tensor functions: advantages, losses, masking, off-policy correction,
overlong shaping; and the registry that finds estimators and policy losses by their config names."""

from ajet.algo.advantages import (
    batch_whitened_advantages,
    grpo_advantages,
    rloo_advantages,
)
from ajet.algo.losses import (
    cispo_policy_loss,
    entropy_from_logits,
    gspo_policy_loss,
    kl_penalty,
    policy_loss,
)
from ajet.algo.masking import AGG_MODES, agg_loss, masked_mean, masked_sum
from ajet.algo.overlong import overlong_penalty
from ajet.algo.registry import (
    UnknownAlgorithmError,
    advantage_estimator,
    advantage_estimator_names,
    check_algorithm_names,
    policy_loss_fn,
    policy_loss_names,
    register_advantage,
    register_policy_loss,
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
    "batch_whitened_advantages",
    "check_algorithm_names",
    "cispo_policy_loss",
    "entropy_from_logits",
    "grpo_advantages",
    "gspo_policy_loss",
    "kl_penalty",
    "logprob_gap_metrics",
    "masked_mean",
    "masked_sum",
    "overlong_penalty",
    "policy_loss",
    "policy_loss_fn",
    "policy_loss_names",
    "ratio_band_mask",
    "register_advantage",
    "register_policy_loss",
    "rloo_advantages",
    "truncated_is_weights",
]
