"""Weights from the trainer to vLLM's worker processes through one shared-memory file.

    buffer = SharedWeightBuffer(bucket_bytes=512 << 20)
    for bucket in buffer.fill(named_tensors, dtype=torch.bfloat16):   # list[TensorSlot], bucket by bucket
        rpc("ajet_load_shared_weights", buffer.path, buffer.nbytes, [s.as_wire() for s in bucket])
    buffer.close()

Why a file and not vLLM's RPC: `AsyncLLM.collective_rpc` serialises its arguments with msgpack, which
turns tensors into nested lists (or refuses small ones), so weights cannot travel as arguments. vLLM's
own weight-transfer backends (`nccl`, `ipc`) need CUDA. A file in `/dev/shm` (tmpfs: RAM, no disk) is
mapped by both processes: the trainer copies each tensor into it once, the worker reads views of it
(`torch.UntypedStorage.from_file`), and only names, dtypes, shapes and offsets cross the RPC. It
works the same on a GPU machine (the worker's `load_weights` copies host to device); there, NCCL or
CUDA IPC would avoid the host round trip (not done here: no GPU to test it on).

The buffer is one bucket long and reused: a bucket is filled, loaded by the worker (the RPC returns
only when the worker has copied it into the model), then overwritten by the next. Its size is
`bucket_bytes`, grown once to the largest single tensor if that is bigger.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

# Offsets are rounded up to this, so every view of the buffer is aligned for any dtype (and SIMD loads).
_ALIGN = 64
_SHM_DIR = Path("/dev/shm")

_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float64: "float64",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.bool: "bool",
}
_DTYPES = {v: k for k, v in _DTYPE_NAMES.items()}


@dataclass(frozen=True)
class TensorSlot:
    """Where one tensor lies in the buffer: `nbytes` bytes from `offset`, C-contiguous."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    def as_wire(self) -> list:
        """Plain lists and scalars: what msgpack carries through vLLM's RPC unchanged."""
        return [self.name, self.dtype, list(self.shape), self.offset, self.nbytes]

    @classmethod
    def from_wire(cls, item: list) -> TensorSlot:
        name, dtype, shape, offset, nbytes = item
        return cls(str(name), str(dtype), tuple(int(d) for d in shape), int(offset), int(nbytes))


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def map_file(path: str, nbytes: int) -> torch.Tensor:
    """The first `nbytes` of file `path` as a shared uint8 tensor (writes reach the file)."""
    storage = torch.UntypedStorage.from_file(path, shared=True, nbytes=nbytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (nbytes,), (1,))


def slot_views(path: str, nbytes: int, slots: Iterable[TensorSlot]) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs viewing the file's bytes: no copy; valid while the caller holds them."""
    flat = map_file(path, nbytes)
    out = []
    for s in slots:
        if s.offset + s.nbytes > nbytes:
            raise ValueError(f"tensor {s.name!r} lies outside the {nbytes}-byte weight buffer")
        view = flat[s.offset : s.offset + s.nbytes].view(_DTYPES[s.dtype]).view(s.shape)
        out.append((s.name, view))
    return out


class SharedWeightBuffer:
    """A reusable file in /dev/shm (or the temp dir where there is none) that buckets of tensors pass through."""

    def __init__(self, bucket_bytes: int = 512 << 20, directory: str | os.PathLike | None = None) -> None:
        if bucket_bytes < _ALIGN:
            raise ValueError(f"bucket_bytes must be at least {_ALIGN}, got {bucket_bytes}")
        self.bucket_bytes = int(bucket_bytes)
        where = directory if directory is not None else (_SHM_DIR if _SHM_DIR.is_dir() else None)
        fd, self.path = tempfile.mkstemp(prefix="ajet-weights-", suffix=".bin", dir=where)
        os.close(fd)
        self.nbytes = 0
        self._flat: torch.Tensor | None = None

    def _ensure(self, nbytes: int) -> torch.Tensor:
        if self._flat is None or nbytes > self.nbytes:
            self._flat = None
            os.truncate(self.path, nbytes)
            self.nbytes = nbytes
            self._flat = map_file(self.path, nbytes)
        return self._flat

    def fill(self, named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None = None) -> Iterator[list[TensorSlot]]:
        """Copy tensors into the buffer, yielding each full bucket's slots; the consumer must load a
        bucket before asking for the next (the next overwrites it).

        Floating-point tensors are cast to `dtype` on the way (the engine's dtype: a bf16 engine
        needs half the bytes of the trainer's fp32 weights); others keep theirs.
        """
        bucket: list[TensorSlot] = []
        used = 0
        for name, tensor in named_tensors:
            target = dtype if (dtype is not None and tensor.is_floating_point()) else tensor.dtype
            size = tensor.numel() * torch.empty((), dtype=target).element_size()
            if bucket and used + size > self.bucket_bytes:
                yield bucket
                bucket, used = [], 0
            flat = self._ensure(max(self.bucket_bytes, _aligned(size)))
            view = flat[used : used + size].view(target).view(tensor.shape)
            view.copy_(tensor.detach())  # casts and moves device -> host in one copy
            bucket.append(TensorSlot(name, _DTYPE_NAMES[target], tuple(tensor.shape), used, size))
            used = _aligned(used + size)
        if bucket:
            yield bucket

    def close(self) -> None:
        self._flat = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __del__(self) -> None:  # a buffer left open would hold RAM in /dev/shm until reboot
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()


__all__ = ["SharedWeightBuffer", "TensorSlot", "map_file", "slot_views"]
