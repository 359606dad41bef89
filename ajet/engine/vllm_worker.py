"""Methods vLLM mixes into its GPU workers (`worker_extension_cls`) so VLLMEngine can push weights.

vLLM imports this module by name inside each worker process, so it must not import vLLM at module
level and must hold no state of its own. Called through `AsyncLLM.collective_rpc`.
"""

from __future__ import annotations

import torch


class AjetWeightLoader:
    """vLLM adds these methods to its Worker; `self.model_runner` is the worker's."""

    def ajet_load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        """Load a bucket of (HF state_dict name, tensor) pairs; returns how many were given.

        `model.load_weights` maps HF names onto vLLM's fused/sharded parameters (qkv_proj, gate_up_proj,
        tensor-parallel slices), which is why we pass names as in the HF state_dict.
        """
        device = next(self.model_runner.model.parameters()).device  # type: ignore[attr-defined]
        self.model_runner.model.load_weights(  # type: ignore[attr-defined]
            weights=[(name, tensor.to(device, non_blocking=True)) for name, tensor in named_tensors]
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return len(named_tensors)
