"""One context per key in a worker process, built on first use and closed together at shutdown.

A backbone's worker process (a verl agent-loop worker, a Trinity runner) hosts many episodes; each
needs the same proxy, runner and tokenizer, so the process keeps one context per rollout server and
closes them all when the worker ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar


class _Closable(Protocol):
    def close(self) -> None: ...


K = TypeVar("K", bound=Hashable)
C = TypeVar("C", bound=_Closable)


class WorkerContexts(Generic[K, C]):
    def __init__(self) -> None:
        self._contexts: dict[K, C] = {}
        self._lock = threading.Lock()

    def get(self, key: K, build: Callable[[], C]) -> C:
        """The context for `key`; `build()` makes it the first time (under the lock: built once)."""
        with self._lock:
            context = self._contexts.get(key)
            if context is None:
                context = self._contexts[key] = build()
            return context

    def close_all(self) -> None:
        with self._lock:
            contexts = list(self._contexts.values())
            self._contexts.clear()
        for context in contexts:
            context.close()
