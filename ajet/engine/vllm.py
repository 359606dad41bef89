"""The `vllm` engine: vLLM's AsyncLLM in this process, token ids in, token ids and logprobs out.

    engine = VLLMEngine("Qwen/Qwen2.5-1.5B-Instruct", tokenizer, gpu_memory_utilization=0.5)
    completion = await engine.generate(prompt_ids, SamplingParams(max_tokens=512, temperature=1.0))

vLLM is an optional dependency (`pip install "ajet[verl]"`) and is imported only when this engine is
built. UNTESTED HERE: the development machines have no GPU and no vLLM, so this module is checked only
by a test that is skipped without vLLM; the CPU path is covered by the `hf` engine's tests.

Threading: AsyncLLM belongs to the event loop it was created on, so the engine owns one loop on a
dedicated thread and generate() hands coroutines to it with run_coroutine_threadsafe; callers on any
thread's loop can await it, as with HFEngine.

Logprobs: the engine is created with logprobs_mode="processed_logprobs" and each request asks for
logprobs=0 (the sampled token's only). vLLM's processed logprobs are log_softmax(logits / T) after
top-k/top-p, so they equal our contract (before truncation) exactly when top_k=-1 and top_p=1,
ajet's defaults; with truncation they are the truncated distribution's. Greedy requests get T=1.

Policy versions: tokens are tagged with `policy_version` when their output chunk reaches us. A token
computed in the step just before an update but delivered after it can carry the newer version; the
staleness bound that matters for off-policy training is on the oldest version, which this errs above
by at most one step. update_weights resets vLLM's prefix cache so no later request reuses KV built
with older weights.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterable
from typing import Any

import torch

from ajet.engine.base import Completion, EngineClosedError, GatedEngine, SamplingParams

INSTALL_HINT = 'the vllm engine needs vLLM: pip install "ajet[verl]" (on a machine with a CUDA GPU)'
_WORKER_EXTENSION = "ajet.engine.vllm_worker.AjetWeightLoader"
# Weights cross to vLLM's worker processes in buckets of about this many bytes (host memory bound).
_UPDATE_BUCKET_BYTES = 512 * 1024 * 1024


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ImportError(INSTALL_HINT) from exc
    return vllm


class VLLMEngine(GatedEngine):
    """vLLM's AsyncLLM behind ajet's Engine interface.

    Args:
        model: a local directory or hub id vLLM can load (vLLM keeps its own copy of the weights).
        tokenizer: only kept for callers (the proxy); vLLM is given token ids and skips detokenizing.
        max_model_len: vLLM's context length.
        max_batch_size: vLLM's max_num_seqs.
        engine_kwargs: anything else for vllm.AsyncEngineArgs (gpu_memory_utilization, dtype,
            tensor_parallel_size, enforce_eager, ...).
    """

    def __init__(
        self,
        model: str,
        tokenizer: Any,
        max_model_len: int = 4096,
        max_batch_size: int = 64,
        **engine_kwargs: Any,
    ) -> None:
        vllm = _import_vllm()
        from vllm.v1.engine.async_llm import AsyncLLM

        super().__init__()
        self.tokenizer = tokenizer
        self.policy_version = 0
        self._max_model_len = max_model_len
        self._ids = itertools.count()
        args = vllm.AsyncEngineArgs(
            model=model,
            max_model_len=max_model_len,
            max_num_seqs=max_batch_size,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=_WORKER_EXTENSION,
            **engine_kwargs,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ajet-vllm-engine", daemon=True)
        self._thread.start()
        self._closed = False

        async def _create() -> Any:
            return AsyncLLM.from_engine_args(args)

        self._llm = self._call(_create())

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def _call(self, coro: Any) -> Any:
        """Run a coroutine on the engine loop from a thread that is not that loop, and wait."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        if self._closed:
            raise EngineClosedError("VLLMEngine was shut down")
        if len(prompt_ids) >= self._max_model_len:
            raise ValueError(f"prompt has {len(prompt_ids)} tokens; max_model_len is {self._max_model_len}")
        async with self.admitted():
            future = asyncio.run_coroutine_threadsafe(self._generate(list(prompt_ids), params), self._loop)
            return await asyncio.wrap_future(future)

    async def _generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        max_tokens = min(params.max_tokens, self._max_model_len - len(prompt_ids))
        sampling = VSamplingParams(
            max_tokens=max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            stop_token_ids=list(params.stop_token_ids) or None,
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            seed=params.seed,
            logprobs=0,
            detokenize=bool(params.stop),  # stop strings need text
            output_kind=RequestOutputKind.DELTA,
        )
        token_ids: list[int] = []
        logprobs: list[float] = []
        versions: list[int] = []
        finish = "abort"
        async for out in self._llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), sampling, str(next(self._ids))):
            chunk = out.outputs[0]
            version = self.policy_version
            for token, entry in zip(chunk.token_ids, chunk.logprobs or []):
                token_ids.append(int(token))
                logprobs.append(float(entry[token].logprob))
                versions.append(version)
            if chunk.finish_reason is not None:
                finish = "stop" if chunk.finish_reason == "stop" else chunk.finish_reason
        if finish not in ("stop", "length", "abort"):
            finish = "abort"
        return Completion(token_ids, logprobs, finish, versions)  # type: ignore[arg-type]

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Send weights to vLLM's workers in buckets, then drop prefix-cached KV from older weights.

        Tensors go through host memory (collective_rpc pickles its arguments): simple and correct,
        not fast. A multi-GPU deployment should use the verl backbone's weight sync instead.
        """
        bucket: list[tuple[str, torch.Tensor]] = []
        size = 0
        for name, tensor in named_tensors:
            cpu = tensor.detach().to("cpu", copy=True).contiguous()
            bucket.append((name, cpu))
            size += cpu.numel() * cpu.element_size()
            if size >= _UPDATE_BUCKET_BYTES:
                self._call(self._llm.collective_rpc("ajet_load_weights", args=(bucket,)))
                bucket, size = [], 0
        if bucket:
            self._call(self._llm.collective_rpc("ajet_load_weights", args=(bucket,)))
        self._call(self._llm.reset_prefix_cache())
        self.policy_version = version

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._llm.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
