"""A verl rollout backend named "hf": ajet's `HFEngine` where verl would start vLLM servers.

verl 0.9.1 generates only through rollout *servers* (vLLM, SGLang, TensorRT-LLM replicas); its agent
loops call them token in / token out. Where none of those can run (a machine without a GPU), this
backend serves the same interface with ajet's continuous-batching `HFEngine`, so the rest of verl
(agent-loop workers, reward, GRPO advantages, FSDP update, weight sync) runs unchanged. Selected
with `actor_rollout_ref.rollout.name: hf`; the launcher sets it for `n_gpus_per_node: 0`.

Three pieces, registered with verl when this module is imported (the launcher lists it in
`VERL_USE_EXTERNAL_MODULES`, so every verl process imports it):
- `HFRolloutServer`, a Ray actor: `generate(request_id, *, prompt_ids, sampling_params)` ->
  `TokenOutput` with the sampled ids, their logprobs and the weight version (`global_steps`);
- `HFReplica`, verl's `RolloutReplica` for it: starts one server actor per replica;
- `HFWeightSender`, the `BaseRollout` verl builds inside each FSDP worker: after an update verl
  hands it the new weights (`checkpoint_engine.backend: naive`), and it ships them to the server,
  which swaps them in between decode steps (in-flight requests continue on the new weights, and
  their tokens record the version that sampled them).

The server runs on the CPU. LoRA adapters are not synced (verl sends adapter tensors with a
`peft_config`), so the launcher refuses LoRA with this backend.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import ray
import torch
from verl.workers.rollout.base import _ROLLOUT_REGISTRY, BaseRollout
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput

from ajet.backbone.verl.server_engine import from_verl_sampling_params
from ajet.processes import RUN_ID_ENV

logger = logging.getLogger(__name__)

ROLLOUT_NAME = "hf"
# Makes the server actors' names unique per run when several runs share one Ray cluster.


def server_actor_name(replica_rank: int) -> str:
    return f"ajet_hf_rollout_{os.environ.get(RUN_ID_ENV, 'run')}_{replica_rank}"


class HFRolloutServer:
    """verl's rollout-server interface over ajet's HFEngine (runs as a Ray actor)."""

    def __init__(self, model_path: str, max_model_len: int, max_batch_size: int = 16, seed: int = 0) -> None:
        from ajet.engine.hf import HFEngine
        from ajet.models import load_model, load_tokenizer

        self.model = load_model(model_path)
        self.engine = HFEngine(
            self.model, load_tokenizer(model_path), max_batch_size=max_batch_size, max_model_len=max_model_len, seed=seed
        )
        self.engine.start()
        self.global_steps = 0
        self.weight_updates: list[dict[str, Any]] = []

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs: Any
    ) -> TokenOutput:
        if kwargs.get("image_data") or kwargs.get("video_data"):
            raise ValueError("the hf rollout backend serves text models only")
        completion = await self.engine.generate(list(prompt_ids), from_verl_sampling_params(sampling_params))
        return TokenOutput(
            token_ids=completion.token_ids,
            log_probs=completion.logprobs if sampling_params.get("logprobs") else None,
            stop_reason="aborted" if completion.finish_reason == "abort" else "completed",
            extra_fields={"global_steps": self.global_steps},
        )

    def update_weights(self, named_tensors: list[tuple[str, torch.Tensor]], global_steps: int | None) -> dict[str, Any]:
        """Swap in the trainer's weights (HF parameter names) and serve them as `global_steps`."""
        state = self.model.state_dict()
        unknown = [name for name, tensor in named_tensors if name not in state or state[name].shape != tensor.shape]
        if unknown:
            raise ValueError(
                f"weights from verl's trainer that this model does not have: {unknown[:5]} "
                f"({len(unknown)} of {len(named_tensors)}); the hf rollout backend syncs full weights only"
            )
        version = int(global_steps or 0)
        self.engine.update_weights(((name, t.to(state[name].dtype)) for name, t in named_tensors), version)
        self.global_steps = version
        record = {"tensors": len(named_tensors), "global_steps": version}
        self.weight_updates.append(record)
        return record

    def get_weight_updates(self) -> list[dict[str, Any]]:
        return list(self.weight_updates)

    # Lifecycle calls verl's replica and checkpoint manager make on a vLLM server. The HF engine
    # keeps its weights and cache resident, so none has anything to do.
    async def wake_up(self) -> None: ...

    async def sleep(self) -> None: ...

    async def abort_all_requests(self, reject_request: bool = False) -> None: ...

    async def resume_generation(self) -> None: ...

    async def clear_kv_cache(self) -> None: ...

    async def release_kv_cache(self) -> None: ...

    async def resume_kv_cache(self) -> None: ...

    async def start_profile(self, **kwargs: Any) -> None: ...

    async def stop_profile(self) -> None: ...


class HFReplica(RolloutReplica):
    """One HFRolloutServer actor per replica. It takes no GPU: it runs beside the FSDP workers."""

    async def launch_servers(self) -> None:
        name = server_actor_name(self.replica_rank)
        server = (
            ray.remote(HFRolloutServer)
            .options(name=name, num_cpus=0, max_concurrency=self.max_concurrency)
            .remote(str(self.model_config.path), int(self.config.max_model_len or 4096))
        )
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"ray-actor://{name}"


class HFWeightSender(BaseRollout):
    """Built by verl inside each FSDP worker for rollout "hf": sends updated weights to the server."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, model_config, device_mesh)
        self.tp_size = max(1, int(self.config.tensor_model_parallel_size))
        self.rank = int(os.environ.get("RANK", "0"))
        self.sleep_level = 2

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None

    async def update_weights(
        self, weights: Iterable[tuple[str, torch.Tensor]], peft_config: Any = None, global_steps: int | None = None, **kwargs: Any
    ) -> None:
        if peft_config is not None:
            raise NotImplementedError("the hf rollout backend syncs full weights; LoRA adapters are not supported")
        # Every rank must drain the generator (it may gather shards collectively); one rank per replica sends.
        tensors = [(name, tensor.detach().to("cpu").clone()) for name, tensor in weights]
        if self.rank % self.tp_size:
            return None
        server = ray.get_actor(server_actor_name(self.rank // self.tp_size))
        record = await server.update_weights.remote(tensors, global_steps)
        logger.info("hf rollout: %d tensors sent, serving version %d", record["tensors"], record["global_steps"])
        return None


_ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = f"{__name__}.HFWeightSender"
RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: HFReplica)
