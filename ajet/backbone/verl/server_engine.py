"""An ajet Engine over verl's rollout servers: the proxy's token ids go to verl's vLLM replicas.

On the verl backbone the workflow, tuner, proxy and tracker run inside verl's agent-loop worker, and
this engine is what the proxy generates with. It forwards token ids to the worker's server manager
(`verl.workers.rollout.llm_server.LLMServerClient`, whose `generate(request_id, prompt_ids=...,
sampling_params=...)` returns a `TokenOutput(token_ids, log_probs, stop_reason, extra_fields)`), so
the tracker records exactly the ids and behaviour logprobs vLLM sampled. Weights are never pushed
through here: verl syncs its rollout servers itself after each update.

    engine = VerlServerEngine(server_manager, tokenizer, loop=asyncio.get_running_loop())
    proxy = ProxyServer(engine, tokenizer, host=node_ip)
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from typing import Any

import torch

from ajet.engine.base import Completion, FinishReason, GatedEngine, SamplingParams

# Turns of one episode (and the GRPO siblings of one task) share their first tokens, the system
# prompt and task; keying the sticky-session id on them sends them to the same vLLM replica, where
# the prefix is already cached. Short enough that a first turn usually covers it.
STICKY_PREFIX_TOKENS = 64


class VerlServerEngine(GatedEngine):
    """`Engine.generate` through a verl server manager (token in, token out, logprobs returned).

    server_manager: anything with `async generate(request_id, *, prompt_ids, sampling_params)`
        returning an object with `token_ids`, `log_probs`, `stop_reason`, `extra_fields`
        (verl's LLMServerClient; a fake with the same interface in tests).
    loop: the event loop the server manager belongs to (the agent-loop worker's). The proxy
        serves from its own thread and loop; calls hop onto `loop` because Ray actor handles and
        verl's client state are used from the loop that owns them.
    """

    def __init__(
        self,
        server_manager: Any,
        tokenizer: Any,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        max_model_len: int = 32768,
    ) -> None:
        super().__init__()
        self.server_manager = server_manager
        self.tokenizer = tokenizer
        self.loop = loop
        self.policy_version = 0
        self._max_model_len = max_model_len

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        running = asyncio.get_running_loop()
        if self.loop is None or self.loop is running:
            return await self._generate(prompt_ids, params)
        if self.loop.is_closed():
            raise RuntimeError("the verl agent-loop event loop this engine was bound to is closed")
        future = asyncio.run_coroutine_threadsafe(self._generate(prompt_ids, params), self.loop)
        return await asyncio.wrap_future(future)

    async def _generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        async with self.admitted():
            output = await self.server_manager.generate(
                request_id=sticky_request_id(prompt_ids),
                prompt_ids=list(prompt_ids),
                sampling_params=to_verl_sampling_params(params),
            )
        token_ids = [int(t) for t in output.token_ids]
        if output.log_probs is None:
            raise RuntimeError(
                "verl's rollout server returned no logprobs; ajet needs them for the tracker "
                "(actor_rollout_ref.rollout.calculate_log_probs must stay true)"
            )
        logprobs = [float(x) for x in output.log_probs]
        version = _global_steps(output, default=self.policy_version)
        return Completion(
            token_ids=token_ids,
            logprobs=logprobs,
            finish_reason=finish_reason(
                token_ids, output.stop_reason, params, getattr(self.tokenizer, "eos_token_id", None)
            ),
            policy_versions=[version] * len(token_ids),
        )

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        # verl's trainer syncs the vLLM replicas itself (checkpoint engine); here only the version
        # that tokens are stamped with when the server does not report one moves on.
        for _ in named_tensors:
            pass
        self.policy_version = version


def to_verl_sampling_params(params: SamplingParams) -> dict[str, Any]:
    """The dict verl's vLLM server turns into `vllm.SamplingParams` (`logprobs=True` asks for the
    sampled token's logprob)."""
    sampling: dict[str, Any] = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "max_tokens": params.max_tokens,
        "logprobs": True,
    }
    if params.stop_token_ids:
        sampling["stop_token_ids"] = list(params.stop_token_ids)
    if params.stop:
        sampling["stop"] = list(params.stop)
    if params.seed is not None:
        sampling["seed"] = params.seed
    return sampling


def from_verl_sampling_params(sampling_params: dict[str, Any]) -> SamplingParams:
    """The inverse of `to_verl_sampling_params`: ajet SamplingParams from the dict verl's server
    client sends a rollout server (vLLM's names)."""
    sp = dict(sampling_params)
    return SamplingParams(
        max_tokens=int(sp.get("max_tokens") or sp.get("max_new_tokens") or 64),
        temperature=float(sp.get("temperature", 1.0)),
        top_p=float(sp.get("top_p", 1.0)),
        top_k=int(sp.get("top_k", -1)),
        stop_token_ids=list(sp.get("stop_token_ids") or []),
        stop=list(sp.get("stop") or []),
        seed=sp.get("seed"),
    )


def finish_reason(
    token_ids: list[int], stop_reason: str | None, params: SamplingParams, eos_token_id: int | None = None
) -> FinishReason:
    """verl reports "completed" for both a stop and the length limit; tell them apart by length."""
    if stop_reason == "aborted":
        return "abort"
    stop_ids = set(params.stop_token_ids) | ({eos_token_id} if eos_token_id is not None else set())
    if len(token_ids) >= params.max_tokens and not (token_ids and token_ids[-1] in stop_ids):
        return "length"
    return "stop"


def sticky_request_id(prompt_ids: list[int]) -> str:
    """A request id equal for prompts that share their first STICKY_PREFIX_TOKENS tokens."""
    prefix = ",".join(str(int(t)) for t in prompt_ids[:STICKY_PREFIX_TOKENS])
    return "ajet-" + hashlib.blake2b(prefix.encode(), digest_size=8).hexdigest()


def _global_steps(output: Any, default: int) -> int:
    # verl's vLLM server stamps each output with the trainer step its weights came from.
    steps = (getattr(output, "extra_fields", None) or {}).get("global_steps")
    return default if steps is None else int(steps)
