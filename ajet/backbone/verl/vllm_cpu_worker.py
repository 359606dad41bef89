"""The worker extension verl's vLLM rollout servers use on the CPU (see ajet.backbone.verl.vllm_cpu).

vLLM imports this module by name inside its worker process. It is verl's own
`vLLMColocateWorkerExtension` with one method replaced: `update_weights_from_ipc` receives verl's
weight buckets exactly as verl does (ZMQ + shared memory), but loads them with vLLM's layerwise
reload (restore checkpoint layout, buffer each layer's parts until it is complete, reprocess into
the CPU kernels' layout) instead of `model.load_weights` into already-repacked weights followed by a
second `process_weights_after_loading`. Each bucket is copied out of verl's shared buffer first: the
buffer is reused for the next bucket while a layer split across two buckets still waits for its rest.
Full weights only (the CPU path refuses LoRA at launch).
"""

from __future__ import annotations

from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension


class AjetCpuWorkerExtension(vLLMColocateWorkerExtension):
    def update_weights_from_ipc(self, peft_config: dict | None = None, base_sync_done: bool = False, use_shm: bool = False):
        import torch
        from verl.workers.rollout.vllm_rollout.bucketed_weight_transfer import BucketedWeightReceiver
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

        if peft_config:
            raise NotImplementedError("verl's vLLM rollout on the CPU syncs full weights; LoRA adapters are not supported")
        model = self.model_runner.model
        receiver = BucketedWeightReceiver(zmq_handle=self._get_zmq_handle(), device=torch.device("cpu"), use_shm=use_shm)
        initialize_layerwise_reload(model)
        try:
            with set_current_vllm_config(self.vllm_config):

                def on_bucket_received(weights: list[tuple[str, torch.Tensor]], is_last: bool) -> None:
                    model.load_weights([(name, tensor.clone()) for name, tensor in weights])

                receiver.receive_weights(on_bucket_received=on_bucket_received)
        finally:
            with set_current_vllm_config(self.vllm_config):
                finalize_layerwise_reload(model, self.model_runner.model_config)
