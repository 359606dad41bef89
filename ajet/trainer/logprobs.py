"""Per-token logprobs of a causal LM on given token ids, as the trainer needs them.

Two memory savings over `log_softmax(model(ids).logits)`:
- the lm_head runs chunk by chunk over the sequence and only the label logit and the logsumexp are
  kept; with grad enabled each chunk is recomputed in backward (activation checkpointing), so a
  full `[tokens, vocab]` logits tensor never lives for the whole backward pass;
- the micro-batch's sequences are packed into one row with `position_ids` restarting at 0 for each
  sequence. transformers (>= 4.5x, sdpa/eager on CPU too) turns restarting position_ids into a
  block-diagonal causal mask when no attention_mask is given, so packed sequences do not see each
  other and no compute is spent on padding. (`tests/test_trainer.py` checks packed == one by one.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ajet.algo.losses import entropy_from_logits

# One lm_head chunk's fp32 logits stay under this. A chunk's forward holds a few vocabulary-wide
# temporaries (logits, logsumexp's exp, softmax for the entropy) and its backward as many again, so
# with Qwen2.5's 151,936-token vocabulary a 1024-token chunk alone peaked near 3 GB on the CPU;
# 128 MiB is ~220 tokens there, still a large matmul.
LOGITS_CHUNK_BYTES = 128 << 20


def default_chunk_size(vocab_size: int) -> int:
    """Tokens per lm_head chunk whose fp32 logits fit in `LOGITS_CHUNK_BYTES` (at least 1)."""
    return max(1, LOGITS_CHUNK_BYTES // (4 * vocab_size))


def sequence_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    *,
    with_entropy: bool = False,
    entropy_grad: bool = True,
    pack: bool = True,
    chunk_size: int | None = None,
    only_where: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Logprob of each token given the tokens before it.

    Args:
        model: a transformers causal LM, optionally wrapped by peft.
        input_ids: `[B, T]`, each row's real tokens contiguous (right or left padded).
        attention_mask: `[B, T]` 1 on real tokens; None = all real.
        temperature: logits are divided by it, the engine's definition of a sampled token's logprob
            (`ajet.engine.base.SamplingParams`); 0 (greedy) means 1.
        with_entropy: also return the entropy of the next-token distribution predicting each token.
        entropy_grad: False computes that entropy without a graph (a metric, not a loss term), so
            backward neither keeps nor recomputes its softmax.
        pack: pack rows into one sequence (see module doc); False runs the padded batch as is.
        chunk_size: tokens per lm_head chunk; None = as many as keep one chunk's logits within
            `LOGITS_CHUNK_BYTES`.
        only_where: `[B, T]` bool; when given, logprobs (and entropy) are computed only at these
            positions (the loss mask) and are 0 elsewhere. The lm_head is the vocabulary-wide part of
            the cost, and prompt/tool tokens never enter the loss, so this skips most of it.

    Returns:
        logprobs `[B, T]` float32 with `logprobs[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`;
        0 at each row's first real token and on padding. With `with_entropy`, also entropy `[B, T]`
        aligned the same way (the entropy of the distribution that token t was drawn from).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    inv_temp = 1.0 / temperature if temperature and temperature > 0 else 1.0
    valid = attention_mask.bool()
    decoder, head = _decoder_and_head(model)
    if chunk_size is None:
        chunk_size = default_chunk_size(head.weight.shape[0])

    if pack:
        flat_ids = input_ids[valid]  # [N], row-major, so it scatters back with the same mask
        lengths = valid.sum(dim=-1)
        lengths = lengths[lengths > 0]
        position_ids = torch.cat([torch.arange(int(n), device=input_ids.device) for n in lengths])
        hidden = decoder(
            input_ids=flat_ids[None], position_ids=position_ids[None], attention_mask=None, use_cache=False
        ).last_hidden_state[0]  # [N, H]
        # Token j is predicted by hidden j-1; a sequence start has no prediction within its sequence.
        starts = position_ids == 0
        need = None if only_where is None else only_where[valid][1:] & ~starts[1:]
        lp_next, ent_next = _chunked_token_logprobs(
            head, hidden[:-1], flat_ids[1:], inv_temp, with_entropy, entropy_grad, chunk_size, need
        )
        lp_flat = torch.cat([lp_next.new_zeros(1), lp_next]).masked_fill(starts, 0.0)
        logprobs = lp_flat.new_zeros(input_ids.shape).masked_scatter(valid, lp_flat)
        if not with_entropy:
            return logprobs
        ent_flat = torch.cat([ent_next.new_zeros(1), ent_next]).masked_fill(starts, 0.0)
        return logprobs, ent_flat.new_zeros(input_ids.shape).masked_scatter(valid, ent_flat)

    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = decoder(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state  # [B, T, H]
    B, T, H = hidden.shape
    predicted_bool = valid[:, 1:] & valid[:, :-1]  # the previous token is real too
    need = None if only_where is None else (only_where[:, 1:] & predicted_bool).reshape(-1)
    lp_next, ent_next = _chunked_token_logprobs(
        head, hidden[:, :-1].reshape(-1, H), input_ids[:, 1:].reshape(-1), inv_temp, with_entropy, entropy_grad,
        chunk_size, need,
    )
    predicted = predicted_bool.to(lp_next.dtype)
    logprobs = torch.cat([lp_next.new_zeros(B, 1), lp_next.view(B, T - 1) * predicted], dim=1)
    if not with_entropy:
        return logprobs
    return logprobs, torch.cat([ent_next.new_zeros(B, 1), ent_next.view(B, T - 1) * predicted], dim=1)


def _decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body (ids -> hidden states) and the lm_head of a (peft-wrapped) causal LM."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(lm, "config", None)
    for unsupported in ("final_logit_softcapping", "logit_scale"):
        # Models that post-process logits (Gemma2 softcap, Cohere scale) would need that step here too.
        if getattr(config, unsupported, None) not in (None, 1.0):
            raise NotImplementedError(f"sequence_logprobs: models with config.{unsupported} are not supported")
    return lm.base_model, lm.get_output_embeddings()


def _chunked_token_logprobs(
    head: nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    inv_temp: float,
    with_entropy: bool,
    entropy_grad: bool,
    chunk_size: int,
    need: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`hidden [N, H]`, `targets [N]` -> (logprob of each target `[N]`, entropy `[N]` or None).

    With `need [N]` bool, only those rows go through the lm_head; the others come back as 0.
    """
    if need is not None:
        lp, ent = _chunked_token_logprobs(
            head, hidden[need], targets[need], inv_temp, with_entropy, entropy_grad, chunk_size
        )
        full_lp = lp.new_zeros(targets.shape[0]).masked_scatter(need, lp)
        full_ent = None if ent is None else ent.new_zeros(targets.shape[0]).masked_scatter(need, ent)
        return full_lp, full_ent
    fn = _chunk_fn(head, inv_temp, with_entropy, entropy_grad)
    lps, ents = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            lp, ent = checkpoint(fn, h, t, use_reentrant=False)
        else:
            lp, ent = fn(h, t)
        lps.append(lp)
        ents.append(ent)
    if not lps:  # a single-token input has nothing to predict
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    return torch.cat(lps), (torch.cat(ents) if with_entropy else None)


def _chunk_fn(head: nn.Module, inv_temp: float, with_entropy: bool, entropy_grad: bool) -> Callable:
    def fn(h: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = head(h).float()  # [n, V], fp32 even under bf16 autocast
        if inv_temp != 1.0:
            logits = logits * inv_temp
        lse = torch.logsumexp(logits, dim=-1)
        lp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
        if with_entropy and not entropy_grad:
            with torch.no_grad():
                ent = entropy_from_logits(logits, logsumexp=lse)
        elif with_entropy:
            ent = entropy_from_logits(logits, logsumexp=lse)
        else:
            ent = lp.new_zeros(0)
        return lp, ent

    return fn
