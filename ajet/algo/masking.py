"""Masked reductions and loss aggregation over a [B, T] token matrix (verl's `agg_loss` modes)."""

from __future__ import annotations

from typing import Literal

import torch

AggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` where `mask` is 1. `values`, `mask`: same shape; reduces `dim` (all if None)."""
    masked = values * mask
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` over positions where `mask` is 1; 0 where the mask is empty (not NaN)."""
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def agg_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    num_tokens: float | torch.Tensor | None = None,
    num_seqs: float | torch.Tensor | None = None,
    scale_factor: float | None = None,
) -> torch.Tensor:
    """Aggregate a per-token loss `[B, T]` into a scalar.

    Modes (verl's names):
      - `token-mean`: sum over all unmasked tokens / number of unmasked tokens. Long responses weigh more.
      - `seq-mean-token-sum`: per sequence the token sum, then the mean over sequences.
      - `seq-mean-token-mean`: per sequence the token mean, then the mean over sequences.
      - `seq-mean-token-sum-norm`: `seq-mean-token-sum` divided by the constant `scale_factor` (Dr. GRPO:
        the generation budget), so no sequence's tokens are down-weighted for its length and the
        loss scale does not depend on the batch's lengths.
    Fully masked sequences do not count as sequences.

    Gradient accumulation: pass the whole mini-batch's `num_tokens` (token-mean) or `num_seqs` (seq-*)
    when `loss_mat` is one micro-batch; the micro-batch losses then sum to the full-batch loss.
    """
    mask = mask.to(loss_mat.dtype)
    if mode == "token-mean":
        denom = mask.sum() if num_tokens is None else num_tokens
        return masked_sum(loss_mat, mask) / _at_least_one(denom, loss_mat)
    seq_tokens = mask.sum(dim=-1)  # [B]
    seq_valid = (seq_tokens > 0).to(loss_mat.dtype)
    if mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        seq_loss = masked_sum(loss_mat, mask, dim=-1)
        if mode == "seq-mean-token-sum-norm":
            if scale_factor is None or scale_factor <= 0:
                raise ValueError(f"loss_agg_mode {mode!r} needs a positive scale_factor, got {scale_factor!r}")
            seq_loss = seq_loss / scale_factor
    elif mode == "seq-mean-token-mean":
        seq_loss = masked_sum(loss_mat, mask, dim=-1) / seq_tokens.clamp(min=1)
    else:
        raise ValueError(f"unknown loss_agg_mode {mode!r}; expected one of {AGG_MODES}")
    denom = seq_valid.sum() if num_seqs is None else num_seqs
    return (seq_loss * seq_valid).sum() / _at_least_one(denom, loss_mat)


def _at_least_one(denom: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # An all-masked batch yields loss 0 (with zero gradient) instead of 0/0.
    return torch.as_tensor(denom, dtype=like.dtype, device=like.device).clamp(min=1)
