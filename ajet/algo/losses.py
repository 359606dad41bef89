"""Policy-gradient losses (PPO clip, GSPO, CISPO), KL estimators and entropy. Pure tensor functions.

Shapes: B sequences, T token positions, V vocabulary. Every per-token tensor is `[B, T]` and `mask`
marks the tokens that carry loss (the policy's sampled tokens). Each policy loss returns the scalar
loss and detached scalar metrics: `clipfrac` (share of masked tokens whose term was clipped),
`clipfrac_lower` (the dual clip's share; 0 where there is none), `approx_kl` (mean old - new logprob),
`ratio_mean` and `ratio_max` (of the ratio the loss clips, over masked tokens).

The registered forms at the end (`vanilla`, `gspo`, `cispo`, verl's `policy_loss.loss_mode` names)
read their clip ranges and aggregation from the `trainer_common` config section.
"""

from __future__ import annotations

import torch

from ajet.algo.masking import agg_loss, masked_mean
from ajet.algo.registry import register_policy_loss
from ajet.config.schema import TrainerCommonConfig

# exp() of a log-ratio beyond this overflows float32 gradients; verl and TRL clamp at the same bound.
_MAX_LOG_RATIO = 20.0
# GSPO's sequence log-ratio bound, verl's: a mean over tokens this far from 0 is already absurd.
_MAX_SEQ_LOG_RATIO = 10.0


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
    scale_factor: float | None = None,
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
        scale_factor: the constant of `seq-mean-token-sum-norm` (see `agg_loss`).

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

    loss = agg_loss(per_token, mask, agg_mode, num_tokens=num_tokens, num_seqs=num_seqs, scale_factor=scale_factor)
    return loss, _metrics(ratio, log_ratio, clip_active, mask, clip_lower_active)


def gspo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    agg_mode: str = "seq-mean-token-mean",
    tis_weights: torch.Tensor | None = None,
    *,
    num_tokens: float | torch.Tensor | None = None,
    num_seqs: float | torch.Tensor | None = None,
    scale_factor: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO (Zheng et al., 2025, arXiv:2507.18071): the PPO surrogate on one ratio per sequence.

    s_i = exp(mean over sequence i's masked tokens of (logp - old)), the length-normalised sequence
    importance ratio, replaces the token ratio in -min(s_i * A, clip(s_i, 1 - clip_low, 1 + clip_high) * A).
    Per token it is written sg(s_i) * exp(logp - sg(logp)): equal to s_i in value, with gradient
    s_i * A on each of the sequence's logprobs, so `seq-mean-token-mean` (the default here) gives the
    paper's gradient s_i * A * mean_t grad log pi. Because s_i averages many tokens it stays near 1,
    hence a clip range hundreds of times narrower than the token-level one (the paper's 3e-4 / 4e-4).

    Args: as `policy_loss` (no dual clip). `tis_weights` multiply the per-token loss as constants.
    Returns: as `policy_loss`; the ratio metrics describe the sequence ratios (one value per token).
    """
    mask = mask.to(logprobs.dtype)
    log_ratio = logprobs - old_logprobs
    # where(), not a product: a non-finite value under the mask (padding) must not reach the mean
    seq_log_ratio = torch.where(mask > 0, log_ratio, 0.0).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)  # [B]
    token_log_ratio = logprobs - logprobs.detach() + seq_log_ratio.detach().unsqueeze(-1)
    ratio = torch.exp(torch.clamp(token_log_ratio, max=_MAX_SEQ_LOG_RATIO))

    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    clip_active = (clipped > unclipped).to(logprobs.dtype)
    if tis_weights is not None:
        per_token = per_token * tis_weights.detach()
    loss = agg_loss(per_token, mask, agg_mode, num_tokens=num_tokens, num_seqs=num_seqs, scale_factor=scale_factor)
    return loss, _metrics(ratio, log_ratio, clip_active, mask)


def cispo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 1.0,
    clip_high: float = 0.28,
    agg_mode: str = "token-mean",
    tis_weights: torch.Tensor | None = None,
    *,
    num_tokens: float | torch.Tensor | None = None,
    num_seqs: float | torch.Tensor | None = None,
    scale_factor: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO (MiniMax, 2025, arXiv:2506.13585): -sg(clip(r, 1 - clip_low, 1 + clip_high)) * A * logp.

    The importance weight r = exp(logp - old) is clipped and detached, and multiplies a REINFORCE term,
    so every token keeps a gradient (-clip(r) * A on its logprob); the PPO clip instead zeroes the
    gradient of tokens whose ratio left the range, which removes rare tokens after a first update.
    `clip_low = 1.0` (the default) puts the lower bound at 0: no lower bound, as in the paper.

    Args: as `policy_loss` (no dual clip). Returns: as `policy_loss`; `clipfrac` is the share of tokens
    whose weight was clipped. The loss value itself is not a surrogate objective (it contains logp);
    only its gradient is meaningful.
    """
    mask = mask.to(logprobs.dtype)
    log_ratio = torch.clamp(logprobs - old_logprobs, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    weight = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high).detach()
    per_token = -weight * advantages * logprobs
    clip_active = (weight != ratio.detach()).to(logprobs.dtype)
    if tis_weights is not None:
        per_token = per_token * tis_weights.detach()
    loss = agg_loss(per_token, mask, agg_mode, num_tokens=num_tokens, num_seqs=num_seqs, scale_factor=scale_factor)
    return loss, _metrics(ratio, log_ratio, clip_active, mask)


@torch.no_grad()
def _metrics(
    ratio: torch.Tensor,
    log_ratio: torch.Tensor,
    clip_active: torch.Tensor,
    mask: torch.Tensor,
    clip_lower_active: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    valid = mask > 0
    ratio_valid = ratio.detach()[valid]
    return {
        "clipfrac": masked_mean(clip_active, mask),
        "clipfrac_lower": masked_mean(clip_lower_active, mask) if clip_lower_active is not None else mask.new_tensor(0.0),
        "approx_kl": masked_mean(-log_ratio.detach(), mask),
        "ratio_mean": ratio_valid.mean() if ratio_valid.numel() else ratio.new_tensor(1.0),
        "ratio_max": ratio_valid.max() if ratio_valid.numel() else ratio.new_tensor(1.0),
    }


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


# ---------------------------------------------------------------- by name (trainer_common.algorithm.policy_loss)
# Each reads its clip range from the config and the aggregation from `algorithm.loss_agg_mode`.
Tensor = torch.Tensor
Denominator = float | torch.Tensor | None
LossAndMetrics = tuple[torch.Tensor, dict[str, torch.Tensor]]


def _common(trainer: TrainerCommonConfig, num_tokens: Denominator, num_seqs: Denominator, tis_weights: Tensor | None) -> dict:
    algorithm = trainer.algorithm
    return {
        "agg_mode": algorithm.loss_agg_mode,
        "tis_weights": tis_weights,
        "num_tokens": num_tokens,
        "num_seqs": num_seqs,
        "scale_factor": algorithm.loss_scale_factor,
    }


@register_policy_loss("vanilla")
def vanilla_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, trainer: TrainerCommonConfig, *,
    tis_weights: Tensor | None = None, num_tokens: Denominator = None, num_seqs: Denominator = None,
) -> LossAndMetrics:
    """`loss_mode: vanilla`: the PPO clip with `clip_ratio_low` / `clip_ratio_high` (clip-higher when
    high > low, as DAPO) and the dual clip `clip_ratio_c`."""
    return policy_loss(
        logprobs, old_logprobs, advantages, mask, trainer.clip_ratio_low, trainer.clip_ratio_high,
        clip_ratio_c=trainer.clip_ratio_c, **_common(trainer, num_tokens, num_seqs, tis_weights),
    )


@register_policy_loss("gspo")
def gspo_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, trainer: TrainerCommonConfig, *,
    tis_weights: Tensor | None = None, num_tokens: Denominator = None, num_seqs: Denominator = None,
) -> LossAndMetrics:
    """`loss_mode: gspo` with `policy_loss.gspo_clip_ratio_low` / `_high`."""
    cfg = trainer.algorithm.policy_loss
    return gspo_policy_loss(
        logprobs, old_logprobs, advantages, mask, cfg.gspo_clip_ratio_low, cfg.gspo_clip_ratio_high,
        **_common(trainer, num_tokens, num_seqs, tis_weights),
    )


@register_policy_loss("cispo")
def cispo_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, trainer: TrainerCommonConfig, *,
    tis_weights: Tensor | None = None, num_tokens: Denominator = None, num_seqs: Denominator = None,
) -> LossAndMetrics:
    """`loss_mode: cispo` with `policy_loss.cispo_clip_ratio_low` / `_high`."""
    cfg = trainer.algorithm.policy_loss
    return cispo_policy_loss(
        logprobs, old_logprobs, advantages, mask, cfg.cispo_clip_ratio_low, cfg.cispo_clip_ratio_high,
        **_common(trainer, num_tokens, num_seqs, tis_weights),
    )
