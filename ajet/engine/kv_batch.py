"""A left-padded KV cache whose rows can join and leave between decode steps.

transformers' DynamicCache holds, per layer, keys/values of shape [B, H, L, D]; with a 2-D attention
mask [B, L] whose zeros mark padding it serves a batch of sequences of different lengths, the way
`generate` does with left padding. Continuous batching needs two operations on it that `generate`
never performs: merge a freshly prefilled group into the running batch (pad the shorter one on the
left, concatenate on B) and drop finished rows (index B, then cut the columns that became padding in
every row). Because padding always stays on the left and every row keeps its own position ids, a
row's keys/values are the ones it would have alone; only the amount of padding changes.

transformers' own continuous batching (generation.continuous_batching) uses a paged cache instead,
but it samples with one batch-wide config, returns logprobs after top-p/top-k truncation and has no
per-request seed; see ajet.engine.hf for why we do not build on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache


@dataclass
class PaddedKV:
    """The running batch's cache.

    cache: DynamicCache with per-layer keys/values [B, H, L, D].
    attention_mask: [B, L] long, 1 for real tokens, 0 for left padding.
    """

    cache: DynamicCache
    attention_mask: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.attention_mask.shape[0]

    @property
    def length(self) -> int:
        return self.attention_mask.shape[1]


def check_full_attention(cache: DynamicCache) -> None:
    """Raise if the cache has layers we cannot merge by left padding (sliding windows, linear attention)."""
    for i, layer in enumerate(cache.layers):
        if type(layer).__name__ != "DynamicLayer":
            raise NotImplementedError(
                f"HFEngine supports full-attention KV caches only; layer {i} uses {type(layer).__name__}"
            )


def _left_pad(t: torch.Tensor, new_len: int, dim: int) -> torch.Tensor:
    extra = new_len - t.shape[dim]
    if extra == 0:
        return t
    # F.pad lists (left, right) pairs from the last dimension backwards.
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [extra, 0]
    return F.pad(t, pad)


def merge(running: PaddedKV | None, newcomers: PaddedKV) -> PaddedKV:
    """Append `newcomers`' rows after `running`'s rows, left-padding both to the longer length."""
    if running is None or running.batch_size == 0:
        return newcomers
    check_full_attention(newcomers.cache)
    length = max(running.length, newcomers.length)
    for layer, new_layer in zip(running.cache.layers, newcomers.cache.layers):
        layer.keys = torch.cat([_left_pad(layer.keys, length, -2), _left_pad(new_layer.keys, length, -2)], dim=0)
        layer.values = torch.cat(
            [_left_pad(layer.values, length, -2), _left_pad(new_layer.values, length, -2)], dim=0
        )
    mask = torch.cat(
        [_left_pad(running.attention_mask, length, -1), _left_pad(newcomers.attention_mask, length, -1)], dim=0
    )
    return PaddedKV(running.cache, mask)


def select(running: PaddedKV, keep: list[int]) -> PaddedKV | None:
    """Keep only rows `keep` (in that order); trim leading columns that are padding in every kept row."""
    if not keep:
        return None
    if keep == list(range(running.batch_size)):
        return running
    index = torch.tensor(keep, device=running.attention_mask.device)
    mask = running.attention_mask[index]
    # Rows only ever grow on the right, so the first column any row uses bounds the useful cache.
    start = int((mask.sum(dim=0) > 0).int().argmax())
    for layer in running.cache.layers:
        layer.keys = layer.keys[index, :, start:]
        layer.values = layer.values[index, :, start:]
    return PaddedKV(running.cache, mask[:, start:])
