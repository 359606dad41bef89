"""Policy-gradient losses: the clipped surrogate, KL estimators and entropy. Pure tensor functions.

Shapes: B sequences, T token positions, V vocabulary. Every per-token tensor is `[B, T]` and `mask`
marks the tokens that carry loss (the policy's sampled tokens).
"""

from __future__ import annotations

import torch

from ajet.algo.masking import agg_loss, masked_mean

# exp() of a log-ratio beyond this overflows float32 gradients; verl and TRL clamp at the same bound.
_MAX_LOG_RATIO = 20.0


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    agg_mode: str = "token-mean",
    tis_weights: torch.Tensor | None = None,
    *,
    clip_ratio_c: float | None = None,
    num_tokens: float | torch.Tensor | None = None,
    num_seqs: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate: -min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A), r = exp(logp - old).

    Args:
        logprobs: `[B, T]` current policy logprobs of the sampled tokens (with grad).
        old_logprobs: `[B, T]` behaviour-policy logprobs (no grad needed).
        advantages: `[B, T]` per-token advantage (GRPO: the sequence advantage broadcast over tokens).
        mask: `[B, T]` 1 on tokens that carry loss.
        clip_low / clip_high: asymmetric clip range ("clip-higher" from DAPO when clip_high > clip_low).
        agg_mode: see `agg_loss`.
        tis_weights: optional `[B, T]` truncated importance weights, multiplied into the per-token loss
            (treated as constants).
        clip_ratio_c: dual-clip bound (> 1): for negative advantages the loss is at most -A * c, so a
            huge ratio on a bad token cannot dominate the update. None disables it.
        num_tokens / num_seqs: aggregation denominators of the whole mini-batch (gradient accumulation).

    Returns:
        loss: scalar.
        metrics (detached scalars): clipfrac (share of tokens where clipping was active), approx_kl
        (mean of old - new logprob, an estimate of KL(old || new)), ratio_mean, ratio_max, and
        clipfrac_lower (share hit by the dual clip; 0 when it is off).
    """
    mask = mask.to(logprobs.dtype)
    log_ratio = torch.clamp(logprobs - old_logprobs, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)

    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    clip_active = (clipped > unclipped).to(logprobs.dtype)

    clip_lower_active = torch.zeros_like(per_token)
    if clip_ratio_c is not None:
        if clip_ratio_c <= 1.0:
            raise ValueError(f"clip_ratio_c must be > 1 for dual-clip PPO, got {clip_ratio_c}")
        bound = -advantages * clip_ratio_c
        negative = advantages < 0
        clip_lower_active = ((per_token > bound) & negative).to(logprobs.dtype)
        per_token = torch.where(negative, torch.minimum(per_token, bound), per_token)

    if tis_weights is not None:
        per_token = per_token * tis_weights.detach()

    loss = agg_loss(per_token, mask, agg_mode, num_tokens=num_tokens, num_seqs=num_seqs)

    with torch.no_grad():
        valid = mask > 0
        ratio_valid = ratio.detach()[valid]
        metrics = {
            "clipfrac": masked_mean(clip_active, mask),
            "clipfrac_lower": masked_mean(clip_lower_active, mask),
            "approx_kl": masked_mean(-log_ratio.detach(), mask),
            "ratio_mean": ratio_valid.mean() if ratio_valid.numel() else ratio.new_tensor(1.0),
            "ratio_max": ratio_valid.max() if ratio_valid.numel() else ratio.new_tensor(1.0),
        }
    return loss, metrics


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "low_var_kl") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token logprobs (Schulman's k1/k2/k3).

    Args:
        logprobs, ref_logprobs: `[B, T]`.
        kind: `kl` (k1: logp - ref), `abs` (|logp - ref|), `mse` (k2: 0.5 (logp - ref)^2),
            `low_var_kl` (k3: exp(ref - logp) - (ref - logp) - 1, non-negative, log-ratio clamped to
            [-20, 20] and the result to [-10, 10] as verl does, so one outlier token cannot blow up).

    Returns:
        `[B, T]` per-token penalty; aggregate it with `agg_loss`.
    """
    diff = logprobs - ref_logprobs
    if kind in ("kl", "k1"):
        return diff
    if kind == "abs":
        return diff.abs()
    if kind in ("mse", "k2"):
        return 0.5 * diff.square()
    if kind in ("low_var_kl", "k3"):
        log_ratio = torch.clamp(-diff, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        return torch.clamp(torch.exp(log_ratio) - log_ratio - 1.0, -10.0, 10.0)
    raise ValueError(f"unknown kl kind {kind!r}; expected kl | abs | mse | low_var_kl")


def entropy_from_logits(logits: torch.Tensor, logsumexp: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim: `[..., V] -> [...]`.

    Uses H = logsumexp(z) - sum(softmax(z) * z), which needs no log_softmax tensor of its own.
    `logsumexp` (`[...]`, of these same logits) skips recomputing it when the caller already has it.
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1) if logsumexp is None else logsumexp
    return lse - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)
