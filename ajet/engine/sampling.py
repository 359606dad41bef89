"""Next-token selection for a batch whose rows each have their own sampling settings.

Pure tensor functions, no engine state. Written by hand because the field's samplers do not fit:
transformers' logits warpers take one scalar temperature/top-p/top-k for the whole batch, and
vLLM's sampler is not importable without vLLM. Our contract (ajet.engine.base.SamplingParams) also
needs the logprob of the sampled token *before* top-p/top-k truncation, which neither returns.
"""

from __future__ import annotations

import torch


def truncate_top_k_top_p(scaled_logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask logits outside each row's top-k, then outside its top-p nucleus, with -inf.

    Args:
        scaled_logits: [B, V] float, logits already divided by the row's temperature.
        top_k: [B] long; a value <= 0 (or >= V) disables top-k for that row.
        top_p: [B] float in (0, 1]; 1.0 disables top-p for that row.

    Returns:
        [B, V] float: same logits with truncated entries set to -inf. The most likely token is always kept.

    As in transformers' TopK then TopP warpers (and vLLM), top-p is measured on the distribution
    renormalised after top-k.
    """
    vocab = scaled_logits.shape[-1]
    sorted_logits, order = scaled_logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=scaled_logits.device)
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, torch.full_like(top_k, vocab))
    sorted_logits = sorted_logits.masked_fill(ranks[None, :] >= k[:, None], float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    # Probability mass strictly before each token: the first token has 0 < top_p, so it always stays.
    mass_before = probs.cumsum(dim=-1) - probs
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_p[:, None], float("-inf"))
    return torch.full_like(scaled_logits, float("-inf")).scatter(-1, order, sorted_logits)


def sample_next_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    top_k: torch.Tensor,
    generators: list[torch.Generator | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row and return it with its behaviour logprob.

    Args:
        logits: [B, V] raw logits at the last position (any float dtype; computed in float32).
        temperature: [B] float; 0 means greedy (argmax of the raw logits, as `generate(do_sample=False)`).
        top_p: [B] float, top_k: [B] long: see `truncate_top_k_top_p`.
        generators: B entries; row i draws from generators[i] (None: torch's default generator).

    Returns:
        tokens: [B] long.
        logprobs: [B] float32, log_softmax(logits / T)[token] with T = temperature (1 for greedy rows),
            taken before truncation: the distribution the trainer recomputes.
    """
    logits = logits.float()
    greedy = temperature <= 0
    if bool(greedy.all()):
        scaled = logits
    else:
        temp = torch.where(greedy, torch.ones_like(temperature), temperature).to(logits.dtype)
        scaled = logits / temp[:, None]

    tokens = logits.argmax(dim=-1)
    sampled_rows = (~greedy).nonzero().flatten().tolist()
    if sampled_rows:
        rows = torch.tensor(sampled_rows, device=logits.device)
        candidates = scaled[rows]
        needs_truncation = bool(((top_k[rows] > 0) | (top_p[rows] < 1.0)).any())
        if needs_truncation:
            candidates = truncate_top_k_top_p(candidates, top_k[rows], top_p[rows])
        probs = candidates.softmax(dim=-1)
        # One draw per row so that a seeded request's tokens do not depend on its batch neighbours.
        for j, row in enumerate(sampled_rows):
            tokens[row] = torch.multinomial(probs[j], 1, generator=generators[row])[0]
    # log_softmax at one index = logit - logsumexp; avoids writing a [B, V] logprob tensor per step.
    logprobs = scaled.gather(-1, tokens[:, None]).squeeze(-1) - torch.logsumexp(scaled, dim=-1)
    return tokens, logprobs
