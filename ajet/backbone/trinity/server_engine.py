"""An ajet Engine over Trinity's rollout model server: token ids in, sampled ids and logprobs out.

Trinity starts vLLM's OpenAI-compatible server beside each rollout engine
(`explorer.rollout_model.enable_openai_api: true`) and hands workflows a ModelWrapper whose
`api_address` points at it. ajet's proxy has already rendered and spliced the prompt into token ids,
so this engine sends them as they are, through vLLM's completions endpoint:

    POST {api_address}/v1/completions
    {"model": ..., "prompt": [ids...], "max_tokens": ..., "temperature": ..., "logprobs": 0,
     "return_token_ids": true, "skip_special_tokens": false, "stop_token_ids": [...]}
    -> choices[0].token_ids (the sampled ids, stop token included), choices[0].logprobs.token_logprobs
       (one per sampled id), choices[0].finish_reason

No chat template runs on the server and no text is re-tokenised, so the tracker records exactly what
vLLM sampled. Weights never pass through here: Trinity's synchronizer updates its rollout engines
itself; `policy_version` is the model version the workflow read from Trinity at episode start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, cast

import httpx
import torch

from ajet.engine.base import Completion, FinishReason, GatedEngine, SamplingParams

# Seconds one completion may take; a stuck server fails the request (and so the episode) instead of
# hanging it past the episode timeout.
REQUEST_TIMEOUT_S = 600.0


class TrinityServerEngine(GatedEngine):
    """`Engine.generate` through the completions endpoint of Trinity's vLLM server.

    api_address: the server's base address without `/v1` (`ModelWrapper.api_address`).
    model_name: the served model name (Trinity serves the model under its `model_path`).
    api_key: Trinity's `explorer.rollout_model.api_key` ("EMPTY" by default).
    """

    def __init__(
        self,
        api_address: str,
        tokenizer: Any,
        *,
        model_name: str,
        api_key: str = "EMPTY",
        max_model_len: int = 32768,
        timeout: float = REQUEST_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__()
        self.base_url = api_address.rstrip("/")
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.api_key = api_key
        self.policy_version = 0
        self._max_model_len = max_model_len
        self._timeout = timeout
        self._transport = transport
        # One client per event loop: the proxy calls from its server thread's loop, a test may call
        # from its own; an httpx.AsyncClient must stay on the loop that opened it.
        self._clients: dict[int, httpx.AsyncClient] = {}

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        async with self.admitted():
            response = await self._client().post("/v1/completions", json=completion_request(self.model_name, prompt_ids, params))
        if response.status_code != 200:
            raise RuntimeError(
                f"Trinity's model server at {self.base_url} answered {response.status_code} to a "
                f"completions request: {response.text[:500]}"
            )
        return parse_completion(response.json(), params, self.policy_version, getattr(self.tokenizer, "eos_token_id", None))

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        # Trinity's synchronizer updates the vLLM engines; only the version tokens are stamped with moves.
        for _ in named_tensors:
            pass
        self.policy_version = version

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(id(loop))
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                base_url=self.base_url,
                headers={"Authorization": f"Bearer {self.api_key}"},
                timeout=self._timeout,
                transport=self._transport,
            )
            self._clients[id(loop)] = client
        return client

    async def aclose(self) -> None:
        """Close the client of the running loop (others close with their loops)."""
        client = self._clients.pop(id(asyncio.get_running_loop()), None)
        if client is not None:
            await client.aclose()


def completion_request(model_name: str, prompt_ids: list[int], params: SamplingParams) -> dict[str, Any]:
    """The JSON body of vLLM's completions call for `prompt_ids` sampled with `params`.

    `logprobs: 0` asks for the sampled token's logprob only; `return_token_ids` for the sampled ids
    (vLLM >= 0.10.2); `skip_special_tokens: false` keeps the stop token's text in `text`, which is
    only informational here.
    """
    body: dict[str, Any] = {
        "model": model_name,
        "prompt": [int(t) for t in prompt_ids],
        "max_tokens": int(params.max_tokens),
        "temperature": float(params.temperature),
        "top_p": float(params.top_p),
        "top_k": int(params.top_k),
        "logprobs": 0,
        "return_token_ids": True,
        "skip_special_tokens": False,
        "n": 1,
    }
    if params.stop_token_ids:
        body["stop_token_ids"] = [int(t) for t in params.stop_token_ids]
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = int(params.seed)
    return body


def parse_completion(body: dict[str, Any], params: SamplingParams, policy_version: int, eos_token_id: int | None = None) -> Completion:
    """An ajet Completion from vLLM's completions response (see `completion_request`)."""
    try:
        choice = body["choices"][0]
        token_ids = [int(t) for t in choice["token_ids"]]
        logprobs = [float(x) for x in (choice.get("logprobs") or {})["token_logprobs"]]
    except (KeyError, IndexError, TypeError) as exc:
        raise RuntimeError(
            "Trinity's model server returned a completion without sampled token ids and logprobs "
            f"({type(exc).__name__}: {exc}); it must be vLLM >= 0.10.2 (return_token_ids)"
        ) from None
    if len(logprobs) != len(token_ids):
        raise RuntimeError(f"Trinity's model server returned {len(token_ids)} token ids but {len(logprobs)} logprobs")
    return Completion(
        token_ids=token_ids,
        logprobs=logprobs,
        finish_reason=finish_reason(choice.get("finish_reason"), token_ids, params, eos_token_id),
        policy_versions=[int(policy_version)] * len(token_ids),
    )


def finish_reason(reported: str | None, token_ids: list[int], params: SamplingParams, eos_token_id: int | None) -> FinishReason:
    """vLLM's "stop" / "length" / "abort"; anything else is read from the tokens (a stop id last = stop)."""
    if reported in ("stop", "length", "abort"):
        return cast(FinishReason, reported)
    stop_ids = set(params.stop_token_ids) | ({eos_token_id} if eos_token_id is not None else set())
    if token_ids and token_ids[-1] in stop_ids:
        return "stop"
    return "length" if len(token_ids) >= params.max_tokens else "stop"
