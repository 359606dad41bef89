"""Methods vLLM mixes into its workers (`worker_extension_cls`) so VLLMEngine can swap weights.

vLLM imports this module by name inside each worker process (GPU or CPU worker alike), so it must not
import vLLM at module level and holds no state of its own. VLLMEngine calls the methods through
`AsyncLLM.collective_rpc`, always while the scheduler is paused (no step runs in between):

    ajet_begin_weight_update()                          # vLLM's layerwise reload: layers go back to checkpoint layout
    ajet_load_shared_weights(path, nbytes, slots) ...   # one call per bucket (see ajet.engine.vllm_weight_sync)
    ajet_finish_weight_update() -> {request id: tokens sampled so far}

Why layerwise reload and not `model.load_weights` alone: after loading, vLLM post-processes weights
into kernel layouts (fused q/k/v, gate/up; on the CPU, oneDNN-prepacked linears), and loading HF
tensors straight into those fails or is silently ignored. `initialize_layerwise_reload` restores the
checkpoint layout, buffers each layer's incoming parts until the layer is complete (so q/k/v or
gate/up may arrive in different buckets), then reprocesses it; `finalize_layerwise_reload` finishes
the rest. This is the sequence `GPUModelRunner.reload_weights` and vLLM's own weight-transfer
engines run, split so the tensors can arrive in several buckets.
"""

from __future__ import annotations

from typing import Any


class AjetWeightLoader:
    """vLLM adds these methods to its Worker; `self.model_runner` and `self.vllm_config` are the worker's."""

    def ajet_begin_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model_runner.get_model())  # type: ignore[attr-defined]

    def ajet_load_shared_weights(self, path: str, nbytes: int, slots: list[list[Any]]) -> int:
        """Load one bucket (HF state_dict names) from the shared file; returns the tensor count.

        Each tensor is copied out of the file first: layerwise reload keeps the parts of a layer
        until its last part arrives, possibly in a later bucket, and by then the file holds that
        bucket instead (loading views directly corrupted every layer split across two buckets).
        """
        import torch
        from vllm.config import set_current_vllm_config

        from ajet.engine.vllm_weight_sync import TensorSlot, slot_views

        views = slot_views(path, int(nbytes), [TensorSlot.from_wire(s) for s in slots])
        weights = [(name, view.clone()) for name, view in views]
        del views
        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            self.model_runner.get_model().load_weights(weights=weights)  # type: ignore[attr-defined]
        device = getattr(self.model_runner, "device", None)  # type: ignore[attr-defined]
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)  # the host buffer must not be overwritten under a pending copy
        return len(weights)

    def ajet_finish_weight_update(self) -> dict[str, int]:
        """Reprocess the reloaded layers; report how many tokens each running request has sampled.

        Those counts are the version boundary: a request's tokens before its count were sampled with
        the old weights, the rest will be sampled with the new ones.
        """
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        runner = self.model_runner  # type: ignore[attr-defined]
        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            finalize_layerwise_reload(runner.get_model(), runner.model_config)
        return {req_id: len(state.output_token_ids) for req_id, state in runner.requests.items()}
