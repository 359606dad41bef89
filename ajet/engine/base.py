"""The inference-engine interface every backend implements (`hf`, `vllm`).

An engine turns prompt token ids into sampled token ids plus the logprob of each sampled token.
It never sees text: rendering chat templates and parsing tool calls belong to the proxy, so what the
trainer learns from is exactly what the engine sampled.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch


@dataclass
class SamplingParams:
    """Per-request sampling settings. `temperature == 0` means greedy decoding.

    Logprobs are always returned: log_softmax(logits / T) at the sampled token, with T = temperature
    (T = 1 when greedy), before top-p/top-k truncation. That is the distribution the trainer
    recomputes, so the PPO ratio is 1 for an unchanged policy.
    """

    max_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


FinishReason = Literal["stop", "length", "abort"]


class EngineClosedError(RuntimeError):
    """Raised by generate() for requests that were waiting or running when the engine shut down."""


@dataclass
class Completion:
    """What one generate() call returns.

    token_ids includes the stop token when generation ended on one (it is part of what the policy
    sampled and is trained on). `policy_versions[i]` is the weights version that sampled token i:
    an update may land between two decode steps of one request.
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    policy_versions: list[int]

    @property
    def policy_version(self) -> int:
        return min(self.policy_versions) if self.policy_versions else -1


class Engine(abc.ABC):
    """Async generation over token ids, batched across concurrent callers by the engine itself.

    The whole contract: `generate`, `update_weights`, `pause`/`resume`, `start`/`shutdown`,
    `policy_version` and `max_model_len`. The training loop calls nothing else.
    """

    tokenizer: Any
    policy_version: int = 0

    @abc.abstractmethod
    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        """Sample a continuation of `prompt_ids`. Safe to call from many coroutines at once."""

    @abc.abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load new policy weights (names as in the base model's state_dict) and set the version.

        Applied between two decode steps: in-flight requests continue with the new weights and their
        later tokens carry the new version.
        """

    @abc.abstractmethod
    def pause(self) -> contextlib.AbstractContextManager[None]:
        """Let the running decode step finish, then start no new one until `resume()`.

        Returns a context manager whose exit resumes: `with engine.pause(): train(shared_weights)`.
        Pauses nest (each needs its resume). Blocks the calling thread, which must not be one the
        engine decodes on. The synchronous schedule updates weights the engine reads inside it.
        """

    @abc.abstractmethod
    def resume(self) -> None:
        """Undo one `pause()`."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Start background workers, if the engine has any."""

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Stop background workers and free memory."""

    @property
    def max_model_len(self) -> int:
        return 32768


class Resume:
    """What `Engine.pause()` returns: exiting the `with` block resumes the engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        self._engine.resume()


class GatedEngine(Engine):
    """`pause`/`resume` for engines that decode elsewhere (a server, a script): a gate on `generate`.

    While paused, new requests wait before reaching the backend, and `pause()` returns once the
    requests already through the gate have finished. Subclasses wrap their backend call in
    `async with self.admitted():`.
    """

    def __init__(self) -> None:
        self._gate = threading.Condition()
        self._pauses = 0
        self._in_flight = 0

    def pause(self) -> Resume:
        with self._gate:
            self._pauses += 1
            self._gate.wait_for(lambda: self._in_flight == 0)
        return Resume(self)

    def resume(self) -> None:
        with self._gate:
            if self._pauses == 0:
                raise RuntimeError(f"{type(self).__name__}.resume() without a matching pause()")
            self._pauses -= 1
            self._gate.notify_all()

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        while True:
            with self._gate:
                if self._pauses == 0:
                    self._in_flight += 1
                    break
            # Callers come from many event loops on many threads (one per episode), so no asyncio
            # primitive can wake them all; a short poll while paused costs nothing when not paused.
            await asyncio.sleep(0.005)
        try:
            yield
        finally:
            with self._gate:
                self._in_flight -= 1
                self._gate.notify_all()
