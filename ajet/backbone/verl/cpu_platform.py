"""verl 0.9.1 on a machine without GPUs: a "cpu" platform for verl's platform registry.

Loaded in every process of a CPU run (the launcher puts it in `VERL_USE_EXTERNAL_MODULES`, which
`import verl` honours, and selects it with `VERL_PLATFORM=cpu`). verl has no CPU platform of its own:
without one it falls back to NVIDIA and its FSDP workers ask CUDA for devices, streams and NCCL.

What it changes, each because verl stops there otherwise:
- the platform: device "cpu", collective backend gloo, and `torch.cuda`-shaped device module whose
  memory statistics are 0 and whose stream/cache calls do nothing. Ray still schedules on the
  resource "GPU": the launcher declares one logical GPU per node, so verl's placement groups (which
  ask for GPU bundles) are met without a real device.
- the process group: verl initialises "cpu:gloo,<device>:<backend>", which is "cpu:gloo,cpu:gloo"
  here and torch rejects as a duplicate device; on the CPU one gloo group is the whole story.
- FSDP2 CPU offload (the reference model of `use_kl_loss`) pins host memory, which needs an
  accelerator; here nothing is pinned.

Nothing in this module runs on a GPU machine: the launcher loads it only for n_gpus_per_node = 0.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

PLATFORM_NAME = "cpu"

# Host memory verl's memory logging and KV-cache sizing read; the values only feed log lines and
# the (unused) vLLM sizing on the CPU.
_REPORTED_FREE_BYTES = 16 << 30


class _CpuDeviceModule(types.ModuleType):
    """What verl calls on `torch.cuda` (through `get_torch_device()`), answered for the CPU.

    verl reaches for many device-module functions on its hot paths (empty_cache, synchronize,
    memory_allocated, reset_peak_memory_stats, Stream, ...); on the CPU each is a no-op returning 0,
    so unknown attributes resolve to such a no-op instead of each being listed here.
    """

    def __init__(self) -> None:
        super().__init__("ajet_cpu_device")

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 1

    def current_device(self) -> str:
        return "cpu"

    def get_device_name(self, *args: Any, **kwargs: Any) -> str:
        return "CPU"  # verl's flops counter looks the device name up in a table

    def mem_get_info(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        return (_REPORTED_FREE_BYTES, _REPORTED_FREE_BYTES)

    def get_rng_state(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, state: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        torch.set_rng_state(state)

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _zero


def _zero(*args: Any, **kwargs: Any) -> int:
    return 0


_DEVICE_MODULE = _CpuDeviceModule()


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """verl's platform interface for a machine whose only device is the CPU."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def current_device(self) -> str:
        # verl does `.to(get_device_id())` and `torch.device(get_device_id())`: "cpu" serves both.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: Any) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[None, None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str) -> Iterator[None]:
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"  # the logical GPUs the launcher declares; see the module docstring

    def ray_noset_envvars(self) -> list[str]:
        return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> None:
        return None


def _use_one_gloo_group() -> None:
    import verl.utils.distributed as distributed

    original = distributed.initialize_global_process_group_ray

    def initialize_global_process_group_ray(timeout_second: Any = None, backend: str | None = None) -> Any:
        return original(timeout_second=timeout_second, backend=backend or "cpu:gloo")

    distributed.initialize_global_process_group_ray = initialize_global_process_group_ray
    # Modules that imported the function by name before this one loaded keep the old binding.
    for module_name in ("verl.workers.engine_workers", "verl.checkpoint_engine.base"):
        module = sys.modules.get(module_name)
        if module is not None:
            module.initialize_global_process_group_ray = initialize_global_process_group_ray


def _never_pin_offloaded_memory() -> None:
    import verl.utils.fsdp_utils as fsdp_utils

    base = getattr(fsdp_utils, "CPUOffloadPolicy", None)
    if base is None:
        return

    class CPUOffloadPolicyUnpinned(base):
        def __init__(self, pin_memory: bool = True) -> None:
            super().__init__(pin_memory=False)

    fsdp_utils.CPUOffloadPolicy = CPUOffloadPolicyUnpinned
    module = sys.modules.get("verl.workers.engine.fsdp.transformer_impl")
    if module is not None:
        module.CPUOffloadPolicy = CPUOffloadPolicyUnpinned


_use_one_gloo_group()
_never_pin_offloaded_memory()
