"""The pieces of the vllm engine that need no vLLM: the shared-memory weight buffer, version fences,
and the `rollout.engine: auto` rule."""

from __future__ import annotations

import pytest
import torch

from ajet.engine import vllm_support
from ajet.engine.vllm import _Live
from ajet.engine.vllm_weight_sync import SharedWeightBuffer, TensorSlot, slot_views


def _tensors() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        ("a.weight", torch.randn(64, 32, generator=g)),
        ("a.bias", torch.randn(32, generator=g)),
        ("b.weight", torch.randn(16, 16, generator=g)),
        ("steps", torch.arange(5)),  # not floating point: keeps its dtype
    ]


def _read_back(buffer: SharedWeightBuffer, buckets) -> dict[str, torch.Tensor]:
    out = {}
    for bucket in buckets:  # a bucket must be read before the next is written
        wire = [TensorSlot.from_wire(s.as_wire()) for s in bucket]
        out.update({n: t.clone() for n, t in slot_views(buffer.path, buffer.nbytes, wire)})
    return out


@pytest.mark.parametrize("bucket_bytes", [64, 4096, 1 << 20])
def test_buckets_carry_every_tensor_exactly_whatever_the_bucket_size(bucket_bytes):
    buffer = SharedWeightBuffer(bucket_bytes=bucket_bytes)
    try:
        buckets = buffer.fill(_tensors())
        got = _read_back(buffer, buckets)
    finally:
        buffer.close()
    expected = dict(_tensors())
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor)


def test_small_buckets_split_and_one_big_tensor_grows_the_file():
    buffer = SharedWeightBuffer(bucket_bytes=4096)
    try:
        sizes = [len(b) for b in buffer.fill(_tensors())]
        # 8 KiB, then 128 B + 1 KiB + 40 B fit one 4 KiB bucket; the first needed a bigger file
        assert sizes == [1, 3] and buffer.nbytes >= 64 * 32 * 4
    finally:
        buffer.close()


def test_floats_are_cast_to_the_engine_dtype_on_the_way():
    buffer = SharedWeightBuffer()
    try:
        (bucket,) = list(buffer.fill(_tensors(), dtype=torch.bfloat16))
        views = dict(slot_views(buffer.path, buffer.nbytes, bucket))
        assert views["a.weight"].dtype == torch.bfloat16 and views["steps"].dtype == torch.int64
        assert torch.equal(views["a.weight"], dict(_tensors())["a.weight"].to(torch.bfloat16))
        assert all(s.offset % 64 == 0 for s in bucket)
    finally:
        buffer.close()


def test_close_removes_the_shared_file():
    import os

    buffer = SharedWeightBuffer()
    list(buffer.fill(_tensors()))
    assert os.path.exists(buffer.path)
    buffer.close()
    assert not os.path.exists(buffer.path)


def test_a_slot_outside_the_buffer_is_refused(tmp_path):
    buffer = SharedWeightBuffer(directory=tmp_path)
    try:
        (bucket,) = list(buffer.fill(_tensors()))
        bad = TensorSlot("x", "float32", (1024,), buffer.nbytes - 16, 4096)
        with pytest.raises(ValueError, match="outside"):
            slot_views(buffer.path, buffer.nbytes, [bad])
    finally:
        buffer.close()


def test_version_fences_tag_tokens_sampled_before_each_update_with_the_old_version():
    live = _Live()
    live.fences = [(3, 0), (5, 1)]  # update 0->1 after 3 tokens, 1->2 after 5
    assert [live.version_of(i, arrival_version=2) for i in range(7)] == [0, 0, 0, 1, 1, 2, 2]
    assert _Live().version_of(0, arrival_version=4) == 4


def test_auto_picks_hf_without_vllm_and_on_a_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(vllm_support, "vllm_installed", lambda: False)
    assert vllm_support.choose_engine("auto", tmp_path, device="cuda")[0] == "hf"
    with pytest.raises(ValueError, match="needs vLLM"):
        vllm_support.choose_engine("vllm", tmp_path, device="cpu")
    assert vllm_support.choose_engine("hf", tmp_path, device="cuda")[0] == "hf"

    monkeypatch.setattr(vllm_support, "vllm_installed", lambda: True)
    monkeypatch.setattr(vllm_support, "vllm_unsupported_reason", lambda *a, **k: None)
    kind, reason = vllm_support.choose_engine("auto", tmp_path, device="cpu")
    assert kind == "hf" and "CPU" in reason
    assert vllm_support.choose_engine("vllm", tmp_path, device="cpu")[0] == "vllm"
    assert vllm_support.choose_engine("auto", tmp_path, device="cuda")[0] == "vllm"
    monkeypatch.setattr(vllm_support, "vllm_unsupported_reason", lambda *a, **k: "head size 16")
    assert vllm_support.choose_engine("auto", tmp_path, device="cuda") == ("hf", "auto: head size 16")
    with pytest.raises(ValueError, match="head size 16"):
        vllm_support.choose_engine("vllm", tmp_path, device="cpu")
