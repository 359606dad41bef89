"""The Engine contract every backend implements, and the request gate of engines that decode elsewhere."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from ajet.engine import Engine, SamplingParams
from ajet.engine.scripted import ScriptedEngine
from ajet.models import load_tokenizer


def test_an_engine_without_pause_and_resume_cannot_be_built():
    class NoPause(Engine):
        async def generate(self, prompt_ids, params):
            raise NotImplementedError

        def update_weights(self, named_tensors, version):
            pass

    with pytest.raises(TypeError, match="pause"):
        NoPause()


async def test_a_paused_gated_engine_holds_new_requests_until_resumed():
    engine = ScriptedEngine(load_tokenizer("builtin:tiny-qwen2-random"), lambda prompt: "ok")
    params = SamplingParams(max_tokens=8)
    resumed_at: list[float] = []

    engine.pause()
    release = threading.Timer(0.3, lambda: (resumed_at.append(time.perf_counter()), engine.resume()))
    release.start()
    started = time.perf_counter()
    completion = await asyncio.wait_for(engine.generate([1, 2, 3], params), timeout=10)
    finished = time.perf_counter()
    release.join()
    assert completion.finish_reason == "stop"
    assert resumed_at and finished >= resumed_at[0] >= started  # it was answered only after resume()
    with engine.pause():  # the context form resumes on exit
        pass
    await asyncio.wait_for(engine.generate([1, 2, 3], params), timeout=10)
    with pytest.raises(RuntimeError, match="without a matching pause"):
        engine.resume()


async def test_pause_waits_for_requests_already_through_the_gate():
    gate_open = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def slow_reply(prompt):
        loop.call_soon_threadsafe(gate_open.set)
        await asyncio.sleep(0.3)
        return "done"

    engine = ScriptedEngine(load_tokenizer("builtin:tiny-qwen2-random"), slow_reply)
    request = asyncio.ensure_future(engine.generate([1, 2], SamplingParams(max_tokens=8)))
    await gate_open.wait()
    paused_at = await asyncio.to_thread(lambda: (engine.pause(), time.perf_counter())[1])
    assert request.done(), "pause() returned while a request was still being answered"
    engine.resume()
    assert (await request).finish_reason == "stop" and paused_at > 0
