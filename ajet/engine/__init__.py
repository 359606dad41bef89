"""Inference engines behind one async `generate(prompt_ids, SamplingParams) -> Completion` interface.

    engine = build_engine("hf", model, tokenizer, max_batch_size=64, max_model_len=4096)

Backends are imported on demand so that `import ajet.engine` never needs vLLM.
"""

from __future__ import annotations

from typing import Any

from ajet.engine.base import (
    Completion,
    Engine,
    EngineClosedError,
    FinishReason,
    SamplingParams,
)

ENGINE_KINDS = ("hf", "vllm")


def build_engine(kind: str, model: Any, tokenizer: Any, **kwargs: Any) -> Engine:
    """Create the engine named by `rollout.engine`.

    kind "hf": `model` is a transformers causal LM; kwargs go to HFEngine (max_batch_size, max_model_len,
    device, max_prefill_tokens, seed).
    kind "vllm": `model` is a model path or hub id (vLLM loads its own copy); kwargs go to VLLMEngine.
    """
    if kind == "hf":
        from ajet.engine.hf import HFEngine

        return HFEngine(model, tokenizer, **kwargs)
    if kind == "vllm":
        from ajet.engine.vllm import VLLMEngine

        return VLLMEngine(model, tokenizer, **kwargs)
    raise ValueError(f"unknown engine kind {kind!r}; expected one of {ENGINE_KINDS}")


__all__ = ["ENGINE_KINDS", "Completion", "Engine", "EngineClosedError", "FinishReason", "SamplingParams", "build_engine"]
