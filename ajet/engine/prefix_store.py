"""Keys/values of finished requests, kept so that the next turn of the same conversation skips them.

An agent's call t+1 sends call t's prompt + sampled reply + new messages (the proxy splices the sampled
ids back in), so its prompt starts with a sequence whose keys/values the engine computed moments
ago. vLLM and SGLang find such prefixes with a block hash table / radix tree over a paged cache; our
cache is one padded tensor per layer, so we keep whole sequences instead: a small LRU store, looked
up by exact token prefix, valid only for the policy version that computed it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class PrefixEntry:
    """tokens: the ids whose keys/values are stored. keys[i] / values[i]: layer i, [H, len(tokens), D]."""

    tokens: tuple[int, ...]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    version: int


class PrefixStore:
    """LRU store of up to `max_tokens` cached tokens in total (0 disables it)."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple[int, ...], PrefixEntry] = OrderedDict()
        self._tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def num_tokens(self) -> int:
        return self._tokens

    def put(self, entry: PrefixEntry) -> None:
        n = len(entry.tokens)
        if n == 0 or n > self.max_tokens:
            return
        old = self._entries.pop(entry.tokens, None)
        if old is not None:
            self._tokens -= len(old.tokens)
        self._entries[entry.tokens] = entry
        self._tokens += n
        while self._tokens > self.max_tokens:
            _, evicted = self._entries.popitem(last=False)
            self._tokens -= len(evicted.tokens)

    def lookup(self, prompt: list[int], version: int) -> PrefixEntry | None:
        """The longest entry of this version that is a proper prefix of `prompt` (one token must remain
        to compute the next-token logits), or None."""
        best: PrefixEntry | None = None
        for length in sorted({len(t) for t in self._entries}, reverse=True):
            if length >= len(prompt):
                continue
            entry = self._entries.get(tuple(prompt[:length]))
            if entry is not None and entry.version == version:
                best = entry
                break
        if best is not None:
            self._entries.move_to_end(best.tokens)
        return best

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0
