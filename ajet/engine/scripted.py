"""A deterministic test engine: replies come from a Python function instead of a model.

A random tiny model emits garbage, so tests of tool-call paths, multi-turn merging and judges use
this engine: `reply_fn` decides the reply text, the engine tokenises it exactly as a model's output
would be laid out (reply tokens, then the stop token) and reports deterministic logprobs.

    engine = ScriptedEngine(tokenizer, lambda prompt_text: '<tool_call>\\n{"name": "f", ...}\\n</tool_call>')

Logprobs: token i of a reply (0-based, stop token included) gets `scripted_logprob(i)`
= -0.01 * (i % 50 + 1), i.e. -0.01, -0.02, ... -0.50, -0.01, ... Distinct neighbouring values let
tests check that every logprob lands on the right token position after merging.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ajet.engine.base import Completion, FinishReason, GatedEngine, SamplingParams

ReplyValue = str | list[int]
ReplyFn = Callable[..., ReplyValue | Awaitable[ReplyValue]]

DEFAULT_STOP_TOKEN = "<|im_end|>"


def scripted_logprob(position: int) -> float:
    """The logprob the scripted engine reports for the reply token at `position`."""
    return -0.01 * (position % 50 + 1)


@dataclass
class ScriptedRequest:
    """One generate() call as the scripted engine saw it (for test assertions)."""

    prompt_ids: list[int]
    prompt_text: str
    params: SamplingParams
    completion: Completion


class ScriptedEngine(GatedEngine):
    """Engine whose reply is `reply_fn(prompt_text)` or `reply_fn(prompt_text, prompt_ids)`.

    reply_fn may be sync or async and may return text (tokenised here, without special-token
    parsing surprises: `add_special_tokens=False`) or a list of token ids (used verbatim, for tests
    that need exact ids). The stop token is appended unless the reply already ends with it.
    `params.max_tokens` truncates the reply, with finish_reason "length" and no stop token, as a real
    engine would.
    """

    def __init__(self, tokenizer: Any, reply_fn: ReplyFn, *, stop_token: str = DEFAULT_STOP_TOKEN) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.reply_fn = reply_fn
        self.policy_version = 0
        stop_id = tokenizer.convert_tokens_to_ids(stop_token)
        if stop_id is None or stop_id == getattr(tokenizer, "unk_token_id", object()):
            stop_id = tokenizer.eos_token_id
        self.stop_token_id: int = stop_id
        self.requests: list[ScriptedRequest] = []
        self._fn_takes_ids = _accepts_two_args(reply_fn)

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        async with self.admitted():
            return await self._reply(prompt_ids, params)

    async def _reply(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        prompt_text = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        reply = self.reply_fn(prompt_text, list(prompt_ids)) if self._fn_takes_ids else self.reply_fn(prompt_text)
        if inspect.isawaitable(reply):
            reply = await reply
        if isinstance(reply, str):
            ids = list(self.tokenizer.encode(reply, add_special_tokens=False))
        else:
            ids = [int(t) for t in reply]
        if not ids or ids[-1] != self.stop_token_id:
            ids.append(self.stop_token_id)
        finish_reason: FinishReason = "stop"
        if len(ids) > params.max_tokens:
            ids = ids[: params.max_tokens]
            finish_reason = "length"
        completion = Completion(
            token_ids=ids,
            logprobs=[scripted_logprob(i) for i in range(len(ids))],
            finish_reason=finish_reason,
            policy_versions=[self.policy_version] * len(ids),
        )
        self.requests.append(ScriptedRequest(list(prompt_ids), prompt_text, params, completion))
        return completion

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        # No weights: consume the iterator (a caller may stream tensors) and only bump the version.
        for _ in named_tensors:
            pass
        self.policy_version = version


def _accepts_two_args(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
