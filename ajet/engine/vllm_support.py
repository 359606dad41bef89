"""`rollout.engine: auto`: which engine serves a run, and whether vLLM can serve a model at all.

    kind, reason = choose_engine("auto", model_dir, device="cpu")

The rule, from bench/engine_scaling.py and bench/grpo_vs_trl.py on a 2-core CPU (bench/RESULTS.md):
- `hf` when vLLM is not installed, or cannot run the model (an architecture it lacks; on the CPU, an
  attention head size its CPU kernels lack, e.g. 16);
- on the CPU, always `hf`: on Qwen2.5-Coder-0.5B (fp32, 2 cores) vLLM decoded no faster than the hf
  engine (1.2 vs 3.7 tok/s at one episode, 4.5 vs 4.7 at eight), started in 138 s against 2 s and
  synced weights in 7.4 s against 0.4 s (bench/RESULTS.md, section 9); `rollout.engine: vllm` still
  runs it there on request;
- `vllm` on a GPU whenever it is installed and can serve the model.
`hf` and `vllm` as `rollout.engine` are taken as given; an impossible `vllm` stops the run with why.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

    from ajet.config.schema import RolloutConfig

EngineKind = Literal["hf", "vllm"]

def vllm_installed() -> bool:
    """Whether a vLLM distribution is importable (found without importing it, which takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


def vllm_unsupported_reason(model_dir: str | Path, *, device: str) -> str | None:
    """Why vLLM cannot serve the model in `model_dir` on `device`, or None if it can (imports vLLM)."""
    from vllm import ModelRegistry

    config_path = Path(model_dir) / "config.json"
    if not config_path.exists():
        return f"{model_dir} has no config.json"
    config = json.loads(config_path.read_text())
    architectures = config.get("architectures") or []
    supported = set(ModelRegistry.get_supported_archs())
    if not any(arch in supported for arch in architectures):
        return f"vLLM has no implementation of {architectures or 'this model'}"
    if device == "cpu":
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        text = config.get("text_config") or config
        head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
        sizes = CPUAttentionBackend.get_supported_head_sizes()
        if head_dim not in sizes:
            return f"vLLM's CPU attention supports head sizes {sizes}; this model's is {head_dim}"
    return None


def choose_engine(kind: str, model_dir: str | Path, *, device: str) -> tuple[EngineKind, str]:
    """The engine to build for `rollout.engine = kind` and a one-line reason (logged at start-up).

    Raises ValueError for `vllm` where vLLM is missing or cannot serve the model.
    """
    if kind == "hf":
        return "hf", "rollout.engine=hf"
    if kind == "vllm":
        if not vllm_installed():
            from ajet.engine.vllm import INSTALL_HINT

            raise ValueError(f"ajet.rollout.engine=vllm: {INSTALL_HINT}")
        reason = vllm_unsupported_reason(model_dir, device=device)
        if reason is not None:
            raise ValueError(f"ajet.rollout.engine=vllm cannot serve this model: {reason}; use rollout.engine=hf")
        return "vllm", "rollout.engine=vllm"
    if kind != "auto":
        raise ValueError(f"unknown rollout.engine {kind!r}; expected auto, hf or vllm")
    if not vllm_installed():
        return "hf", "auto: vLLM is not installed"
    if device == "cpu":
        return "hf", "auto: on a CPU the hf engine decodes as fast and starts and syncs faster (rollout.engine=vllm to use vLLM)"
    reason = vllm_unsupported_reason(model_dir, device=device)
    if reason is not None:
        return "hf", f"auto: {reason}"
    return "vllm", "auto: vLLM installed and able to serve the model"


def vllm_engine_kwargs(rollout: RolloutConfig, model_dir: str | Path, dtype: torch.dtype, device: str) -> dict[str, Any]:
    """VLLMEngine keyword arguments for the debug backbone, from the `rollout` section.

    The dtype is the inference dtype the hf engine would use (float32 on the CPU, so the engine's
    logprobs match the trainer's). On a GPU the engine shares the device with the trainer, so it
    takes `gpu_memory_utilization` of it and spans `tensor_model_parallel_size` GPUs. A builtin
    whose weights exist only in memory (`lazy_weights`) starts from dummy weights; the caller then
    sends the policy's.
    """
    from ajet.models.builtin import LAZY_WEIGHTS_FILE

    kwargs: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch.")}
    if device != "cpu":
        kwargs["gpu_memory_utilization"] = rollout.gpu_memory_utilization
        kwargs["tensor_parallel_size"] = rollout.tensor_model_parallel_size
    if (Path(model_dir) / LAZY_WEIGHTS_FILE).exists():
        kwargs["load_format"] = "dummy"
    return kwargs
