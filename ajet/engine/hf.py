"""The `hf` engine: continuous batching over a transformers causal LM, on one worker thread.

    engine = HFEngine(model, tokenizer, max_batch_size=64)
    completion = await engine.generate(prompt_ids, SamplingParams(max_tokens=256, temperature=0.9))

Callers on any thread's event loop submit requests; the worker thread runs one step at a time:
admit waiting requests (prefill them together, sample their first token, merge their KV cache into
the running batch), then one decode forward for every running row, then retire finished rows. A
request that arrives while others are decoding joins at the next step, which is what multi-turn
agents need: their calls arrive at different times. A finished request's keys/values stay in a small
prefix store, so the same agent's next call (previous prompt + reply + new messages) prefills only
its new tokens.

Why not transformers' `generation.continuous_batching` (5.10): its per-request temperature/top-k/
top-p are opt-in, but greedy vs sampling is one batch-wide flag and all requests share one random
generator (no per-request seed); its logprobs are log(softmax(processed scores)), i.e. after top-k/
top-p; and it has no hook to swap weights between two steps. Our contract (ajet.engine.base) needs
all of these, so the batching below is ours, built on transformers' DynamicCache.

Weights and versions: every sampled token records `policy_version` as it was at the forward pass
that produced it. Two ways to change the policy:
- `update_weights(named_tensors, version)` copies tensors into the engine's model between two steps.
- Shared model (the one-process debug backbone): the trainer and the engine hold the SAME model
  object. Thread-safety is then the caller's job: hold `with engine.pause():` around everything that
  touches the model (train mode, forward/backward, optimizer step) and bump `engine.policy_version`
  before leaving it. `pause()` waits for the current step to finish and holds later steps.
In-flight requests keep the keys/values already cached under the old weights (as vLLM does); only
the tokens fed after the change go through the new ones.

Limits: full-attention models only (no sliding-window or linear-attention caches); no preemption, so
a KV cache that outgrows memory fails the running requests of that step (they get the exception).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import secrets
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

from ajet.engine.base import (
    Completion,
    Engine,
    EngineClosedError,
    FinishReason,
    Resume,
    SamplingParams,
)
from ajet.engine.kv_batch import PaddedKV, check_full_attention, merge, select
from ajet.engine.prefix_store import PrefixEntry, PrefixStore
from ajet.engine.sampling import sample_next_tokens

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

logger = logging.getLogger(__name__)

# Extra tokens decoded beyond the longest stop string: byte-level tokens can decode to nothing or to
# a partial character, so the window is measured in tokens with some slack.
_STOP_STRING_SLACK_TOKENS = 4


def default_stop_token_ids(tokenizer: Any) -> list[int]:
    """eos_token_id plus `<|im_end|>` and `<|endoftext|>` when the vocabulary has them."""
    ids: list[int] = []
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.append(eos)
    elif isinstance(eos, (list, tuple)):
        ids.extend(int(i) for i in eos)
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for token in ("<|im_end|>", "<|endoftext|>"):
        if token in vocab:
            ids.append(int(vocab[token]))
    return sorted(set(ids))


@dataclass
class _Request:
    """One generate() call while the worker owns it."""

    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int  # clamped to max_model_len
    stop_token_ids: frozenset[int]
    future: concurrent.futures.Future
    generator: torch.Generator | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    # Tokens whose keys/values are in the cache (prompt + fed sampled tokens); the next position id.
    cached_len: int = 0
    # Policy version when the prompt was prefilled; the cached keys/values are reusable only if it
    # still holds when the request finishes (versions only grow).
    kv_version: int = -1

    def completion(self, finish_reason: FinishReason) -> Completion:
        return Completion(list(self.token_ids), list(self.logprobs), finish_reason, list(self.versions))


class HFEngine(Engine):
    """Continuous-batching generation over a transformers causal LM (KV cache, left padding).

    Args:
        model: a transformers causal LM with a full-attention DynamicCache (Llama, Qwen2, SmolLM2, ...).
            Put in eval mode; used under torch.inference_mode on the worker thread. Its dtype is kept.
        tokenizer: gives the default stop tokens and decodes tails for stop strings.
        max_batch_size: most requests decoded together; later ones wait for a free row.
        max_model_len: prompt + generated tokens per request (also capped by the model's
            max_position_embeddings).
        device: where inputs go; defaults to the model's device (the model is moved if it differs).
        max_prefill_tokens: admission stops when the padded prefill group (rows x longest prompt)
            would exceed this; one request is always admitted.
        seed: seeds the engine's generator used by requests that have no seed of their own.
        prefix_cache_tokens: keys/values of up to this many tokens of finished requests are kept
            (ajet.engine.prefix_store) so that a prompt extending one of them, an agent's next turn,
            prefills only its new tokens. Dropped whenever the policy version changes. 0 disables.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch_size: int = 64,
        max_model_len: int = 4096,
        device: str | torch.device | None = None,
        *,
        max_prefill_tokens: int = 16384,
        seed: int | None = None,
        prefix_cache_tokens: int = 16384,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.policy_version = 0
        self._device = torch.device(device) if device is not None else next(model.parameters()).device
        self._bind(model)
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self._max_model_len = min(max_model_len, positions) if positions else max_model_len
        self._default_stop_ids = default_stop_token_ids(tokenizer)
        self._generator = torch.Generator(device=self._device)
        # Not torch.seed(): that would reseed the global generator the trainer also draws from.
        self._generator.manual_seed(seed if seed is not None else secrets.randbits(63))

        self._inbox: deque[_Request] = deque()
        self._running: list[_Request] = []  # row i of self._kv is self._running[i]
        self._kv: PaddedKV | None = None
        self._prefixes = PrefixStore(prefix_cache_tokens)
        # Guards the inbox, the closed flag, pause counting and the "a step is running" flag.
        self._cond = threading.Condition()
        self._closed = False
        self._pause_requests = 0
        self._in_step = False
        self._thread: threading.Thread | None = None
        self._stats = {
            "requests": 0,
            "generated_tokens": 0,
            "decode_steps": 0,
            "decode_rows": 0,
            "prefill_steps": 0,
            "prefill_tokens": 0,  # prompt tokens run through the model
            "prefix_hit_tokens": 0,  # prompt tokens whose keys/values came from the prefix store
        }

    # ------------------------------------------------------------------ public API

    @property
    def model(self) -> Any:
        return self._model

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def start(self) -> None:
        """Start the worker thread (generate() calls this on first use)."""
        with self._cond:
            if self._closed:
                raise EngineClosedError("HFEngine was shut down")
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="ajet-hf-engine", daemon=True)
            self._thread.start()

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        """Sample a continuation; safe to await from any number of coroutines on any threads' loops."""
        request = self._make_request(prompt_ids, params)
        self.start()
        with self._cond:
            if self._closed:
                raise EngineClosedError("HFEngine was shut down")
            self._inbox.append(request)
            self._cond.notify_all()
        # Cancelling the awaiting task cancels the concurrent future; the worker then drops the row.
        return await asyncio.wrap_future(request.future)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Copy tensors (names as in model.state_dict()) into the model between two steps; set the version.

        Runs on the calling thread while the worker is held by pause(), so a generator that gathers
        weights lazily (e.g. with collectives) is consumed where it was made.
        """
        with self.pause():
            state = self._model.state_dict(keep_vars=True)
            with torch.no_grad():
                for name, tensor in named_tensors:
                    if name not in state:
                        raise KeyError(f"update_weights: {name!r} is not in the engine model's state_dict")
                    target = state[name]
                    if target.shape != tensor.shape:
                        raise ValueError(
                            f"update_weights: {name!r} has shape {tuple(tensor.shape)}, "
                            f"the engine model has {tuple(target.shape)}"
                        )
                    target.copy_(tensor)
            self.policy_version = version
            self._prefixes.clear()

    def set_model(self, model: Any, version: int | None = None) -> None:
        """Generate with `model` from the next step on (in-flight requests continue with it)."""
        with self.pause():
            self._bind(model)
            self._prefixes.clear()
            if version is not None:
                self.policy_version = version

    def _bind(self, model: Any) -> None:
        if next(model.parameters()).device != self._device:
            model.to(self._device)
        model.eval()
        self._model = model
        self._vocab_size = model.get_input_embeddings().num_embeddings
        forward_params = inspect.signature(model.forward).parameters.values()
        # Prefill needs only the last position's logits; a model whose forward lacks the argument gets all.
        self._prefill_kwargs = (
            {"logits_to_keep": 1}
            if any(p.name == "logits_to_keep" or p.kind is p.VAR_KEYWORD for p in forward_params)
            else {}
        )

    def pause(self) -> Resume:
        """Wait for the running step to finish and hold further steps until resume().

        Usable as `with engine.pause(): ...`. Pauses nest (each needs its resume). Blocks the calling
        thread for at most one step; do not call it from the worker thread.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("HFEngine.pause() called from the engine's own worker thread")
        with self._cond:
            self._pause_requests += 1
            while self._in_step:
                self._cond.wait()
        return Resume(self)

    def resume(self) -> None:
        """Undo one pause()."""
        with self._cond:
            if self._pause_requests == 0:
                raise RuntimeError("HFEngine.resume() without a matching pause()")
            self._pause_requests -= 1
            self._cond.notify_all()

    def shutdown(self, timeout: float | None = 60.0) -> None:
        """Stop the worker after its current step; waiting and running requests fail with EngineClosedError."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("HFEngine worker did not stop within %s s", timeout)
        # Without a worker (never started), fail what is queued here.
        self._fail_all(EngineClosedError("HFEngine was shut down"))

    def stats(self) -> dict[str, float]:
        """Counters since construction: requests, generated tokens, decode/prefill forward passes, mean batch size."""
        s = dict(self._stats)
        s["mean_batch_size"] = s["decode_rows"] / s["decode_steps"] if s["decode_steps"] else 0.0
        s["running"] = len(self._running)
        s["waiting"] = len(self._inbox)
        return s

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ request intake

    def _make_request(self, prompt_ids: list[int], params: SamplingParams) -> _Request:
        prompt_ids = [int(t) for t in prompt_ids]
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        if len(prompt_ids) >= self._max_model_len:
            raise ValueError(
                f"prompt has {len(prompt_ids)} tokens; max_model_len is {self._max_model_len}, "
                "which leaves no room to generate"
            )
        if min(prompt_ids) < 0 or max(prompt_ids) >= self._vocab_size:
            raise ValueError(f"prompt_ids must lie in [0, {self._vocab_size}), the model's vocabulary")
        if params.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {params.max_tokens}")
        if params.temperature < 0 or not (0 < params.top_p <= 1):
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {params.temperature}, {params.top_p}")
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self._device)
            generator.manual_seed(params.seed)
        return _Request(
            prompt_ids=prompt_ids,
            params=params,
            max_tokens=min(params.max_tokens, self._max_model_len - len(prompt_ids)),
            stop_token_ids=frozenset(self._default_stop_ids) | frozenset(params.stop_token_ids),
            future=concurrent.futures.Future(),
            generator=generator,
        )

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._enter_step():
                    try:
                        self._step()
                    except Exception as exc:  # a failed forward fails its requests, not the engine
                        logger.exception("HFEngine step failed")
                        self._fail_running(exc)
                    finally:
                        self._leave_step()
        finally:
            with self._cond:
                self._closed = True
            self._fail_all(EngineClosedError("HFEngine was shut down"))

    def _enter_step(self) -> bool:
        """Block until there is work and no pause; False when shutting down."""
        with self._cond:
            while not self._closed and (self._pause_requests > 0 or not (self._inbox or self._running)):
                self._cond.wait()
            if self._closed:
                return False
            self._in_step = True
            return True

    def _leave_step(self) -> None:
        with self._cond:
            self._in_step = False
            self._cond.notify_all()

    def _step(self) -> None:
        if self._model.training:
            # A trainer sharing this model may have left it in train mode (dropout) after a pause.
            self._model.eval()
        self._retire([i for i, r in enumerate(self._running) if r.future.done()])
        newcomers = self._admit()
        if newcomers:
            self._prefill(newcomers)
        # Every running row now holds one sampled token not yet in the cache (newcomers whose first
        # token finished them were already retired): feed them all.
        if self._running:
            self._decode()

    def _admit(self) -> list[_Request]:
        admitted: list[_Request] = []
        longest = 0
        with self._cond:
            while self._inbox and len(self._running) + len(admitted) < self.max_batch_size:
                request = self._inbox[0]
                if request.future.done():  # cancelled while waiting
                    self._inbox.popleft()
                    continue
                new_longest = max(longest, len(request.prompt_ids))
                if admitted and new_longest * (len(admitted) + 1) > self.max_prefill_tokens:
                    break
                longest = new_longest
                admitted.append(self._inbox.popleft())
        self._stats["requests"] += len(admitted)
        return admitted

    def _prefill(self, newcomers: list[_Request]) -> None:
        """One forward over the newcomers' prompts; sample their first tokens; join the running batch.

        A prompt that extends a stored sequence (see PrefixStore) feeds only its new tokens, after the
        stored keys/values. Row i of the group is laid out as [pad, stored past, pad, new tokens]:
        both parts left-padded to the group's longest, the mask and explicit position ids make the
        padding invisible.
        """
        version = self.policy_version
        hits = [self._prefixes.lookup(r.prompt_ids, version) if self._prefixes.max_tokens else None for r in newcomers]
        past_lens = [len(h.tokens) if h is not None else 0 for h in hits]
        suffixes = [r.prompt_ids[p:] for r, p in zip(newcomers, past_lens)]
        rows, past, longest = len(newcomers), max(past_lens), max(len(x) for x in suffixes)
        input_ids = torch.zeros((rows, longest), dtype=torch.long)
        mask = torch.zeros((rows, past + longest), dtype=torch.long)
        for i, (p, suffix) in enumerate(zip(past_lens, suffixes)):
            input_ids[i, longest - len(suffix) :] = torch.tensor(suffix)
            mask[i, past - p : past] = 1
            mask[i, past + longest - len(suffix) :] = 1
        input_ids, mask = input_ids.to(self._device), mask.to(self._device)
        offsets = torch.tensor(past_lens, dtype=torch.long, device=self._device)[:, None]
        position_ids = offsets + (mask[:, past:].cumsum(-1) - 1).clamp(min=0)
        cache = self._past_cache(hits, past) if past else DynamicCache()
        out = self._model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            **self._prefill_kwargs,
        )
        check_full_attention(cache)
        for r in newcomers:
            r.cached_len = len(r.prompt_ids)
            r.kv_version = version
        self._stats["prefill_steps"] += 1
        self._stats["prefill_tokens"] += sum(len(x) for x in suffixes)
        self._stats["prefix_hit_tokens"] += sum(past_lens)
        first = len(self._running)
        self._kv = merge(self._kv, PaddedKV(cache, mask))
        self._running.extend(newcomers)
        self._sample_and_retire(out.logits[:, -1, :], rows=range(first, first + len(newcomers)), version=version)

    def _past_cache(self, hits: list[PrefixEntry | None], past: int) -> DynamicCache:
        """A DynamicCache holding each hit's keys/values, left-padded to `past` tokens (zeros elsewhere)."""
        sample = next(h for h in hits if h is not None)
        layers = []
        for layer in range(len(sample.keys)):
            heads, _, dim = sample.keys[layer].shape
            shape = (len(hits), heads, past, dim)
            keys = sample.keys[layer].new_zeros(shape)
            values = sample.values[layer].new_zeros(shape)
            for i, h in enumerate(hits):
                if h is not None:
                    keys[i, :, past - len(h.tokens) :] = h.keys[layer]
                    values[i, :, past - len(h.tokens) :] = h.values[layer]
            layers.append((keys, values))
        return DynamicCache(ddp_cache_data=layers)

    def _remember_prefix(self, row: int) -> None:
        """Store a finishing row's cached keys/values (prompt + all sampled tokens but the last, never fed)."""
        r = self._running[row]
        if not self._prefixes.max_tokens or r.kv_version != self.policy_version or self._kv is None:
            return
        tokens = tuple(r.prompt_ids + r.token_ids[:-1])
        used = self._kv.attention_mask[row].bool()
        if int(used.sum()) != len(tokens):  # defensive: never store keys/values we cannot vouch for
            return
        layers = self._kv.cache.layers
        self._prefixes.put(
            PrefixEntry(
                tokens=tokens,
                keys=[layer.keys[row][:, used] for layer in layers],
                values=[layer.values[row][:, used] for layer in layers],
                version=r.kv_version,
            )
        )

    def _decode(self) -> None:
        """One forward of every running row's last sampled token."""
        assert self._kv is not None
        rows = self._running
        last = torch.tensor([r.token_ids[-1] for r in rows], dtype=torch.long, device=self._device)[:, None]
        positions = torch.tensor([r.cached_len for r in rows], dtype=torch.long, device=self._device)[:, None]
        mask = torch.cat([self._kv.attention_mask, torch.ones_like(last)], dim=1)
        version = self.policy_version
        out = self._model(
            input_ids=last,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=self._kv.cache,
            use_cache=True,
        )
        self._kv = PaddedKV(self._kv.cache, mask)
        for r in rows:
            r.cached_len += 1
        self._stats["decode_steps"] += 1
        self._stats["decode_rows"] += len(rows)
        self._sample_and_retire(out.logits[:, -1, :], rows=range(len(rows)), version=version)

    def _sample_and_retire(self, logits: torch.Tensor, rows: range, version: int) -> None:
        """Sample a token for running rows `rows` (logits row j is running row rows[j]); retire finished ones."""
        requests = [self._running[i] for i in rows]
        params = [r.params for r in requests]
        tokens, logprobs = sample_next_tokens(
            logits,
            temperature=torch.tensor([p.temperature for p in params], dtype=torch.float32, device=self._device),
            top_p=torch.tensor([p.top_p for p in params], dtype=torch.float32, device=self._device),
            top_k=torch.tensor([p.top_k for p in params], dtype=torch.long, device=self._device),
            generators=[r.generator or self._generator for r in requests],
        )
        finished: dict[int, FinishReason] = {}
        for i, r, token, logprob in zip(rows, requests, tokens.tolist(), logprobs.tolist()):
            r.token_ids.append(token)
            r.logprobs.append(logprob)
            r.versions.append(version)
            reason = self._finish_reason(r)
            if reason is not None:
                finished[i] = reason
        self._stats["generated_tokens"] += len(requests)
        for i, reason in finished.items():
            self._remember_prefix(i)
            request = self._running[i]
            if not request.future.done():
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    request.future.set_result(request.completion(reason))
        self._retire(sorted(finished))

    def _finish_reason(self, r: _Request) -> FinishReason | None:
        if r.token_ids[-1] in r.stop_token_ids:
            return "stop"
        if r.params.stop and self._hits_stop_string(r):
            return "stop"
        if len(r.token_ids) >= r.max_tokens:
            return "length"
        return None

    def _hits_stop_string(self, r: _Request) -> bool:
        # Checked after every token, so a stop string is found at the token that completes it.
        window = max(len(s) for s in r.params.stop) + _STOP_STRING_SLACK_TOKENS
        tail = self.tokenizer.decode(r.token_ids[-window:], skip_special_tokens=False)
        return any(s and s in tail for s in r.params.stop)

    def _retire(self, indices: list[int]) -> None:
        """Remove running rows `indices` (their futures are already resolved or cancelled)."""
        if not indices:
            return
        gone = set(indices)
        keep = [i for i in range(len(self._running)) if i not in gone]
        self._running = [self._running[i] for i in keep]
        self._kv = select(self._kv, keep) if self._kv is not None else None

    def _fail_running(self, exc: BaseException) -> None:
        for r in self._running:
            if not r.future.done():
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    r.future.set_exception(exc)
        self._running = []
        self._kv = None

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            waiting = list(self._inbox)
            self._inbox.clear()
        if self._thread is None or not self._thread.is_alive() or threading.current_thread() is self._thread:
            self._fail_running(exc)
        for r in waiting:
            if not r.future.done():
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    r.future.set_exception(exc)

