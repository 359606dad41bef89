"""Off-policy correction between the rollout engine's logprobs and the trainer's.

The engine (sampling kernels, another dtype, weights one or more versions old in async training)
does not reproduce the trainer's distribution exactly. These functions measure that gap and correct
for it: truncated importance sampling (TIS) reweights tokens by pi_trainer / pi_rollout capped at
`cap`; the ratio band mask drops tokens whose ratio leaves [low, high] entirely.
All inputs are `[B, T]`; outputs carry no gradient.
"""

from __future__ import annotations

import torch

_MAX_LOG_RATIO = 20.0


def _ratio(trainer_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor) -> torch.Tensor:
    log_ratio = (trainer_logprobs.detach() - rollout_logprobs.detach()).float()
    return torch.exp(torch.clamp(log_ratio, -_MAX_LOG_RATIO, _MAX_LOG_RATIO))


@torch.no_grad()
def truncated_is_weights(
    trainer_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    mask: torch.Tensor,
    cap: float,
) -> torch.Tensor:
    """`[B, T]` weights min(pi_trainer / pi_rollout, cap) on masked tokens, 0 elsewhere."""
    if cap <= 0:
        raise ValueError(f"TIS cap must be positive, got {cap}")
    return torch.clamp(_ratio(trainer_logprobs, rollout_logprobs), max=cap) * mask.float()


@torch.no_grad()
def ratio_band_mask(
    trainer_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    mask: torch.Tensor,
    low: float | None,
    high: float | None,
) -> tuple[torch.Tensor, float]:
    """Keep only tokens whose pi_trainer / pi_rollout lies in [low, high] (either bound may be None).

    Returns:
        new_mask: `[B, T]` same dtype as `mask`, a subset of it.
        frac_masked: share of the originally masked tokens that were dropped (0.0 for an empty mask).
    """
    ratio = _ratio(trainer_logprobs, rollout_logprobs)
    keep = torch.ones_like(ratio, dtype=torch.bool)
    if low is not None:
        keep &= ratio >= low
    if high is not None:
        keep &= ratio <= high
    valid = mask > 0
    new_mask = (valid & keep).to(mask.dtype)
    total = int(valid.sum())
    dropped = total - int((valid & keep).sum())
    return new_mask, (dropped / total if total else 0.0)


@torch.no_grad()
def logprob_gap_metrics(
    trainer_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    mask: torch.Tensor,
) -> dict[str, float]:
    """How far the trainer's logprobs are from the engine's on the trained tokens.

    Keys: `rollout_trainer_logprob_diff` (mean |diff|), `rollout_trainer_logprob_diff_max`,
    `rollout_trainer_ratio_max` and `rollout_trainer_ratio_min` (of pi_trainer / pi_rollout).
    All 0 / 1 for an empty mask.
    """
    valid = mask > 0
    if not bool(valid.any()):
        return {
            "rollout_trainer_logprob_diff": 0.0,
            "rollout_trainer_logprob_diff_max": 0.0,
            "rollout_trainer_ratio_max": 1.0,
            "rollout_trainer_ratio_min": 1.0,
        }
    diff = (trainer_logprobs.detach() - rollout_logprobs.detach()).float()[valid]
    ratio = _ratio(trainer_logprobs, rollout_logprobs)[valid]
    return {
        "rollout_trainer_logprob_diff": float(diff.abs().mean()),
        "rollout_trainer_logprob_diff_max": float(diff.abs().max()),
        "rollout_trainer_ratio_max": float(ratio.max()),
        "rollout_trainer_ratio_min": float(ratio.min()),
    }
