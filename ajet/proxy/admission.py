"""Back-pressure: a bound on the requests the proxy holds at once, and when to come back.

A request is in flight from admission to its reply, including its time queued in the engine. Past
`limit`, new requests are refused at once with 429 and a Retry-After, instead of queueing without
bound: an overloaded proxy keeps answering within its latency, and the OpenAI SDK (what AjetTuner's
clients, LangChain and AgentScope use) waits the given time and re-sends, so nothing is lost.

The wait is one recent request latency (exponential moving average) with ±50 % jitter, so the
refused clients do not come back in one wave; clamped to [min_retry_s, max_retry_s].

Not thread-safe: used only on the proxy's event loop, where the endpoints run.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

EWMA_WEIGHT = 0.05  # weight of the newest latency: averages over the last ~20 requests


@dataclass(frozen=True)
class RetryAfter:
    """How long a refused client should wait; the two header forms the OpenAI SDK reads."""

    seconds: float

    def headers(self) -> list[tuple[bytes, bytes]]:
        # `retry-after` must be whole seconds (RFC 9110); the OpenAI SDKs read `retry-after-ms` first.
        return [
            (b"retry-after", str(max(1, math.ceil(self.seconds))).encode()),
            (b"retry-after-ms", str(int(self.seconds * 1000)).encode()),
            (b"x-should-retry", b"true"),
        ]


class InflightLimit:
    """Counts requests between `try_enter()` and `exit(started)`; refuses entries past `limit`.

    limit None: unbounded (only the count and latency are kept).
    """

    def __init__(self, limit: int | None, *, min_retry_s: float = 0.05, max_retry_s: float = 30.0) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"in-flight limit must be >= 1 or None, got {limit}")
        self.limit = limit
        self.min_retry_s = min_retry_s
        self.max_retry_s = max_retry_s
        self.inflight = 0
        self.refused = 0
        self._latency_s = min_retry_s
        self._rng = random.Random()

    def try_enter(self) -> float | None:
        """Admit a request: its start time, or None when the limit is reached (counted in `refused`)."""
        if self.limit is not None and self.inflight >= self.limit:
            self.refused += 1
            return None
        self.inflight += 1
        return time.perf_counter()

    def exit(self, started: float) -> None:
        self.inflight -= 1
        self._latency_s += EWMA_WEIGHT * (time.perf_counter() - started - self._latency_s)

    def retry_after(self) -> RetryAfter:
        wait = self._latency_s * self._rng.uniform(0.5, 1.5)
        return RetryAfter(min(self.max_retry_s, max(self.min_retry_s, wait)))
