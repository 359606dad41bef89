"""The proxy under load: N concurrent agents, each a 3-call tool loop, against one ProxyServer.

    python bench/proxy_load.py                                        # 16 .. 1024 episodes, plain + streaming
    python bench/proxy_load.py --concurrency 16 512 --clients plain --min-calls 1500
    python bench/proxy_load.py --concurrency 512 --py-spy /tmp/prof  # also record a py-spy profile per level

The proxy runs in a child process (a ProxyServer on 127.0.0.1 over a ScriptedEngine, so the engine
costs next to nothing and what is measured is the proxy); this process is the load generator, so the
client's CPU is not charged to the proxy. Each episode is the tool loop an agent runs: system + user
message with the `add` tool, the model calls `add` twice (the client answers each with a tool
message) and then answers; the client sends the whole conversation back each turn, as agents do, so
calls 2 and 3 are spliced onto the sampled tokens. `concurrency` episodes are in flight at every
moment (a closed loop: each slot starts its next episode when one ends) until `--min-calls` calls
have been made (at least one episode per slot).

Clients: `plain` (aiohttp, one keep-alive connection per concurrent episode: an agent's client),
`stream` (the same with `stream: true`, reading the SSE events), `openai` (the official
`openai.AsyncOpenAI`, one per episode, as `AjetTuner` gives a workflow; its own CPU is high, so
at high concurrency it measures the client, not the proxy), `responses` and `messages` (the same
loop over the OpenAI Responses and Anthropic Messages endpoints, aiohttp, non-streaming). A 429/503 with Retry-After is waited
out and retried (counted in `retried`), as the official clients do.

Columns: calls/s over the run's wall time; p50/p99 of each call's latency minus `--engine-delay-ms`
(the proxy's added latency; under a closed loop it includes the time queued behind the other
episodes' calls, so it grows as concurrency / throughput); proxy CPU ms per call: user + system
CPU seconds of the proxy process (all its threads, read from /proc by psutil) over the run, divided
by the calls: the figure a shared machine disturbs least; "of it engine": the scripted engine's own
share (decoding the prompt, building the completion), timed apart after the warm-up by re-running
the engine on requests it kept (the same for every row of a run); client
CPU ms per call likewise for this process (when it nears a core, the client is the limit); errors
(non-2xx after retries, exceptions, replies of the wrong shape); retried: 429/503 answers waited
out; routing: after each level every episode's tracker is checked to hold exactly its own 3
calls, in order, each prompt holding only its own episode's marker, calls 2 and 3 spliced, merging
into one sample (`ok` or the number of episodes that failed it). The JSON also has the proxy's
full garbage collections per level and their CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _common import environment, print_table, write_results  # noqa: E402

ADD_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
SYSTEM = "You add numbers with the add tool, then answer."
CALLS_PER_EPISODE = 3
MARKER = re.compile(r"EPI(\d+)x(\d+)Q")  # tokenises to a few plain tokens in the Qwen2.5 vocabulary


def marker(level: int, index: int) -> str:
    return f"EPI{level}x{index}Q"


# -- the proxy process ------------------------------------------------------------------------------


def serve_proxy(conn, model: str, engine_delay_ms: float, proxy_kwargs: dict[str, Any]) -> None:
    """Child process: a ProxyServer over a scripted 3-call tool loop; answers control messages on `conn`."""
    sys.path.insert(0, str(REPO))
    from ajet.engine.base import SamplingParams
    from ajet.engine.scripted import ScriptedEngine
    from ajet.models import load_tokenizer
    from ajet.proxy import ProxyServer

    tokenizer = load_tokenizer(model)
    # Replies are tokenised once: the engine's cost stays a prompt decode and a count.
    replies = [
        tokenizer.encode(
            f"Step {k}.\n<tool_call>\n" + json.dumps({"name": "add", "arguments": {"a": k, "b": 2}}) + "\n</tool_call>",
            add_special_tokens=False,
        )
        for k in range(CALLS_PER_EPISODE - 1)
    ] + [tokenizer.encode("The answer is 42.", add_special_tokens=False)]
    delay = engine_delay_ms / 1000.0

    class SampledEngine(ScriptedEngine):
        """The scripted engine, keeping the first requests it sees so that its own cost can be
        timed apart (`engine_cpu_ms`); timing every call in the server would add clock reads to
        the path being measured (py-spy showed them costing more than the engine)."""

        kept: list = []

        async def generate(self, prompt_ids, params):
            if delay:
                await asyncio.sleep(delay)
            if len(SampledEngine.kept) < 60:
                SampledEngine.kept.append((list(prompt_ids), params))
            return await super().generate(prompt_ids, params)

    def engine_cpu_ms() -> float:
        """CPU ms of one ScriptedEngine.generate over the kept requests (run while the proxy idles)."""
        loop = asyncio.new_event_loop()
        plain = ScriptedEngine(tokenizer, reply)
        plain.requests = _Discard()
        t0 = time.thread_time()
        for i in range(600):
            loop.run_until_complete(plain.generate(*SampledEngine.kept[i % len(SampledEngine.kept)]))
        spent = time.thread_time() - t0
        loop.close()
        return spent / 600 * 1000

    def reply(prompt_text: str) -> list[int]:
        return replies[min(prompt_text.count("<tool_response>"), CALLS_PER_EPISODE - 1)]

    # Full collections (the ones that scan the whole heap) and their CPU seconds: thread CPU time,
    # as a collection runs on the thread that triggered it, holding the GIL. Younger generations
    # are not timed: they are frequent and cheap, and clock reads would add to what is measured.
    gc_time = [0, 0.0, 0.0]  # full collections, their CPU seconds, start of the current one

    def on_gc(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            gc_time[2] = time.thread_time()
            return
        gc_time[0] += 1
        gc_time[1] += time.thread_time() - gc_time[2]

    gc.callbacks.append(on_gc)
    engine = SampledEngine(tokenizer, reply)
    engine.requests = _Discard()  # the engine's request log would grow for the whole run
    if "freeze_gc" in inspect.signature(ProxyServer).parameters:
        proxy_kwargs = {"freeze_gc": True, **proxy_kwargs}  # as the backbones start it (from_config)
    proxy = ProxyServer(engine, tokenizer, **proxy_kwargs)
    base_url = proxy.start()
    http_impl = proxy._server.config.http_protocol_class.__module__.rsplit(".", 1)[-1]
    loop_impl = type(proxy._server.servers[0].get_loop()).__module__
    conn.send({"base_url": base_url, "pid": os.getpid(), "http": http_impl, "loop": loop_impl})
    handles: dict[str, Any] = {}
    while True:
        cmd, arg = conn.recv()
        if cmd == "open":
            level, n = arg
            keys = []
            for i in range(n):
                h = proxy.open_episode(f"{level}-{i}", SamplingParams(max_tokens=64, temperature=1.0))
                handles[h.api_key] = (level, i)
                keys.append(h.api_key)
            conn.send(keys)
        elif cmd == "stats":
            conn.send({"gc_full": gc_time[0], "gc_full_s": gc_time[1],
                       "gc_tracked_objects": len(gc.get_objects())})
        elif cmd == "engine_cost":
            conn.send(engine_cpu_ms())
        elif cmd == "close":
            conn.send(_check_routing(proxy, tokenizer, handles, arg))
        elif cmd == "stop":
            proxy.stop()
            conn.send("stopped")
            return


class _Discard(list):
    def append(self, item: Any) -> None:  # noqa: D401 - a list that keeps nothing
        pass


def _check_routing(proxy: Any, tokenizer: Any, handles: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """Close the episodes and check each tracker holds exactly its own calls (module docstring)."""
    bad: list[str] = []
    calls_seen = 0
    for key in keys:
        level, index = handles.pop(key)
        tracker = proxy.close_episode(key)
        calls = tracker.calls
        calls_seen += len(calls)
        problems = []
        if len(calls) != CALLS_PER_EPISODE or [c.turn for c in calls] != list(range(CALLS_PER_EPISODE)):
            problems.append(f"{len(calls)} calls, turns {[c.turn for c in calls]}")
        for c in calls:
            found = set(MARKER.findall(tokenizer.decode(c.prompt_ids)))
            if found != {(str(level), str(index))}:
                problems.append(f"turn {c.turn} prompt markers {sorted(found)}")
        if [c.spliced for c in calls] != [False] + [True] * (len(calls) - 1):
            problems.append(f"spliced {[c.spliced for c in calls]}")
        if calls and len(tracker.samples()) != 1:
            problems.append(f"{len(tracker.samples())} samples")
        if problems:
            bad.append(f"{level}-{index}: " + "; ".join(problems))
    return {"episodes": len(keys), "calls": calls_seen, "bad": bad}


class ProxyProcess:
    def __init__(self, model: str, engine_delay_ms: float, proxy_kwargs: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve_proxy, args=(child, model, engine_delay_ms, proxy_kwargs), daemon=True)
        self.process.start()
        info = self.conn.recv()
        self.base_url, self.pid, self.info = info["base_url"], info["pid"], info
        self.engine_cpu_ms = float("nan")

    def call(self, cmd: str, arg: Any = None) -> Any:
        self.conn.send((cmd, arg))
        return self.conn.recv()

    def cpu_seconds(self) -> float:
        import psutil

        t = psutil.Process(self.pid).cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        try:
            self.call("stop")
        finally:
            self.process.join(timeout=10)


# -- the load generator -----------------------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.retried = 0


def _first_messages(level: int, index: int) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"{marker(level, index)}: what is 0 + 2 + 1 + 2?"},
    ]


async def _post_aiohttp(session, url: str, key: str, body: dict[str, Any], stats: Stats, *, anthropic: bool = False) -> tuple[int, Any]:
    """POST; a 429/503 with Retry-After is waited out and re-sent (what the official clients do)."""
    headers = {"x-api-key": key} if anthropic else {"Authorization": f"Bearer {key}"}
    for _attempt in range(50):
        async with session.post(url, json=body, headers=headers) as resp:
            if resp.status in (429, 503) and "retry-after" in resp.headers:
                await resp.read()
                stats.retried += 1
                wait_ms = resp.headers.get("retry-after-ms")
                await asyncio.sleep(float(wait_ms) / 1000 if wait_ms else float(resp.headers["retry-after"]))
                continue
            if resp.status != 200:
                return resp.status, await resp.text()
            if not body.get("stream"):
                return 200, await resp.json(content_type=None)
            return 200, await _read_sse(resp)
    return 429, "still rejected after 50 retries"


async def _read_sse(resp) -> dict[str, Any]:
    """Accumulate chat.completion.chunk deltas into one assistant message (as SDKs do)."""
    content, calls, finish, done = "", {}, None, False
    async for raw in resp.content:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        chunk = json.loads(data)
        for ch in chunk.get("choices", []):
            delta = ch.get("delta", {})
            content += delta.get("content") or ""
            for tc in delta.get("tool_calls") or []:
                slot = calls.setdefault(tc["index"], {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                slot["id"] = tc.get("id") or slot["id"]
                fn = tc.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            finish = ch.get("finish_reason") or finish
    if not done:
        raise RuntimeError("stream ended without [DONE]")
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {"choices": [{"message": message, "finish_reason": finish}]}


async def _episode_responses(session, base_url: str, key: str, level: int, index: int, delay: float, stats: Stats) -> None:
    """The same tool loop over OpenAI Responses (`/v1/responses`): function_call items answered
    with function_call_output items, the whole input sent back each turn."""
    fn = ADD_TOOL["function"]
    tools = [{"type": "function", "name": fn["name"], "description": fn["description"], "parameters": fn["parameters"]}]
    first = _first_messages(level, index)
    items: list[dict[str, Any]] = [{"role": "user", "content": first[1]["content"]}]
    for turn in range(CALLS_PER_EPISODE):
        body = {"model": "ajet", "instructions": first[0]["content"], "input": items, "tools": tools, "store": False}
        t0 = time.perf_counter()
        status, reply = await _post_aiohttp(session, f"{base_url}/responses", key, body, stats)
        stats.latencies.append(time.perf_counter() - t0 - delay)
        if status != 200:
            stats.errors.append(f"HTTP {status}: {str(reply)[:200]}")
            return
        output = reply["output"]
        calls = [o for o in output if o["type"] == "function_call"]
        text = "".join(part.get("text", "") for o in output if o["type"] == "message" for part in o["content"])
        if (turn < CALLS_PER_EPISODE - 1) != bool(calls) or (not calls and text != "The answer is 42."):
            stats.errors.append(f"turn {turn}: unexpected reply {json.dumps(output)[:200]}")
            return
        items += output
        for call in calls:
            args = json.loads(call["arguments"])
            items.append({"type": "function_call_output", "call_id": call["call_id"], "output": str(args["a"] + args["b"])})


async def _episode_messages(session, base_url: str, key: str, level: int, index: int, delay: float, stats: Stats) -> None:
    """The same tool loop over Anthropic Messages (`/v1/messages`, key in x-api-key): tool_use blocks
    answered with tool_result blocks."""
    fn = ADD_TOOL["function"]
    tools = [{"name": fn["name"], "description": fn["description"], "input_schema": fn["parameters"]}]
    first = _first_messages(level, index)
    messages: list[dict[str, Any]] = [{"role": "user", "content": first[1]["content"]}]
    for turn in range(CALLS_PER_EPISODE):
        body = {"model": "ajet", "max_tokens": 64, "system": first[0]["content"], "messages": messages, "tools": tools}
        t0 = time.perf_counter()
        status, reply = await _post_aiohttp(session, f"{base_url.removesuffix('/v1')}/v1/messages", key, body, stats, anthropic=True)
        stats.latencies.append(time.perf_counter() - t0 - delay)
        if status != 200:
            stats.errors.append(f"HTTP {status}: {str(reply)[:200]}")
            return
        content = reply["content"]
        uses = [b for b in content if b["type"] == "tool_use"]
        text = "".join(b.get("text", "") for b in content if b["type"] == "text")
        if (turn < CALLS_PER_EPISODE - 1) != bool(uses) or (not uses and text != "The answer is 42."):
            stats.errors.append(f"turn {turn}: unexpected reply {json.dumps(content)[:200]}")
            return
        messages.append({"role": "assistant", "content": content})
        if uses:
            results = [{"type": "tool_result", "tool_use_id": b["id"], "content": str(b["input"]["a"] + b["input"]["b"])} for b in uses]
            messages.append({"role": "user", "content": results})


async def _episode_aiohttp(session, base_url: str, key: str, level: int, index: int, stream: bool, delay: float, stats: Stats) -> None:
    url = f"{base_url}/chat/completions"
    messages = _first_messages(level, index)
    for turn in range(CALLS_PER_EPISODE):
        body: dict[str, Any] = {"model": "ajet", "messages": messages, "tools": [ADD_TOOL]}
        if stream:
            body["stream"] = True
        t0 = time.perf_counter()
        status, reply = await _post_aiohttp(session, url, key, body, stats)
        stats.latencies.append(time.perf_counter() - t0 - delay)
        if status != 200:
            stats.errors.append(f"HTTP {status}: {str(reply)[:200]}")
            return
        message = reply["choices"][0]["message"]
        if not _advance(messages, message, turn, stats):
            return


def _advance(messages: list[dict[str, Any]], message: dict[str, Any], turn: int, stats: Stats) -> bool:
    """Append the reply (and a tool result) to the conversation; False (and an error) on a wrong shape."""
    calls = message.get("tool_calls") or []
    want_call = turn < CALLS_PER_EPISODE - 1
    if want_call != bool(calls) or (not want_call and message.get("content") != "The answer is 42."):
        stats.errors.append(f"turn {turn}: unexpected reply {json.dumps(message)[:200]}")
        return False
    messages.append({k: v for k, v in message.items() if v is not None})
    for call in calls:
        args = json.loads(call["function"]["arguments"])
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": str(args["a"] + args["b"])})
    return True


async def _episode_openai(base_url: str, key: str, level: int, index: int, delay: float, stats: Stats) -> None:
    import openai

    # What AjetTuner.as_raw_openai_sdk_client() builds: one client per episode, no CA bundle for http.
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=10, http_client=openai.DefaultAsyncHttpxClient(verify=False))
    messages = _first_messages(level, index)
    try:
        for turn in range(CALLS_PER_EPISODE):
            t0 = time.perf_counter()
            try:
                resp = await client.chat.completions.with_raw_response.create(model="ajet", messages=messages, tools=[ADD_TOOL])
            except openai.APIError as exc:
                stats.latencies.append(time.perf_counter() - t0 - delay)
                stats.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                return
            stats.latencies.append(time.perf_counter() - t0 - delay)
            stats.retried += resp.retries_taken
            message = resp.parse().choices[0].message.model_dump(exclude_none=True)
            if not _advance(messages, message, turn, stats):
                return
    finally:
        await client.close()


async def run_level(proxy: ProxyProcess, client: str, level: int, concurrency: int, min_calls: int, delay_ms: float) -> dict[str, Any]:
    import aiohttp

    n_episodes = max(concurrency, -(-min_calls // CALLS_PER_EPISODE))
    keys = proxy.call("open", (level, n_episodes))
    stats = Stats()
    delay = delay_ms / 1000.0
    queue = list(range(n_episodes))[::-1]
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def slot() -> None:
            while queue:
                i = queue.pop()
                try:
                    if client == "openai":
                        await _episode_openai(proxy.base_url, keys[i], level, i, delay, stats)
                    elif client == "responses":
                        await _episode_responses(session, proxy.base_url, keys[i], level, i, delay, stats)
                    elif client == "messages":
                        await _episode_messages(session, proxy.base_url, keys[i], level, i, delay, stats)
                    else:
                        await _episode_aiohttp(session, proxy.base_url, keys[i], level, i, client == "stream", delay, stats)
                except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                    stats.errors.append(f"{type(exc).__name__}: {exc}")

        stats0 = proxy.call("stats")
        cpu0, client_cpu0, t0 = proxy.cpu_seconds(), time.process_time(), time.perf_counter()
        await asyncio.gather(*(slot() for _ in range(concurrency)))
        wall, cpu1, client_cpu1 = time.perf_counter() - t0, proxy.cpu_seconds(), time.process_time()
        stats1 = proxy.call("stats")
    routing = proxy.call("close", keys)
    calls = len(stats.latencies)
    lat = sorted(stats.latencies)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")  # noqa: E731
    return {
        "client": client,
        "concurrency": concurrency,
        "episodes": n_episodes,
        "calls": calls,
        "wall_s": wall,
        "calls_per_s": calls / wall,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "proxy_cpu_s": cpu1 - cpu0,
        "proxy_cpu_ms_per_call": (cpu1 - cpu0) / max(calls, 1) * 1000,
        "engine_cpu_ms_per_call": proxy.engine_cpu_ms,
        "proxy_gc_full_collections": stats1["gc_full"] - stats0["gc_full"],
        "proxy_gc_full_s": stats1["gc_full_s"] - stats0["gc_full_s"],
        "proxy_gc_tracked_objects": stats1["gc_tracked_objects"],
        "client_cpu_ms_per_call": (client_cpu1 - client_cpu0) / max(calls, 1) * 1000,
        "errors": len(stats.errors),
        "error_examples": stats.errors[:5],
        "retried": stats.retried,
        "routing_bad": len(routing["bad"]) + (n_episodes - routing["episodes"]),
        "routing_examples": routing["bad"][:5],
        "tracked_calls": routing["calls"],
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:tiny-qwen2-random", help="whose tokenizer and chat template (no weights are loaded)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 128, 256, 512, 1024])
    parser.add_argument("--clients", nargs="+", default=["plain", "stream"], choices=["plain", "stream", "openai", "responses", "messages"])
    parser.add_argument("--min-calls", type=int, default=1536, help="calls per level at least (one episode per slot at least)")
    parser.add_argument("--engine-delay-ms", type=float, default=0.0, help="scripted engine's wait per call (a GPU's time)")
    parser.add_argument("--proxy-arg", action="append", default=[], metavar="KEY=JSON", help="extra ProxyServer keyword, e.g. max_inflight=256")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR", help="record a py-spy profile of the proxy per level into DIR")
    parser.add_argument("--py-spy-mode", default="gil", choices=["gil", "threads"],
                        help="gil: only the thread holding the GIL (where Python CPU goes); threads: every non-idle thread")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the JSON goes (default bench/results)")
    args = parser.parse_args()
    proxy_kwargs = {k: json.loads(v) for k, v in (a.split("=", 1) for a in args.proxy_arg)}

    proxy = ProxyProcess(args.model, args.engine_delay_ms, proxy_kwargs)
    print(f"proxy pid {proxy.pid}: uvicorn http={proxy.info['http']}, loop={proxy.info['loop']}", flush=True)
    results = []
    try:
        asyncio.run(run_level(proxy, "plain", 0, 4, 12, args.engine_delay_ms))  # warm-up: imports, first renders
        proxy.engine_cpu_ms = proxy.call("engine_cost")
        level = 0
        for client in args.clients:
            for conc in args.concurrency:
                level += 1
                spy = None
                if args.py_spy is not None:
                    args.py_spy.mkdir(parents=True, exist_ok=True)
                    out = args.py_spy / f"proxy-{client}-{conc}.txt"  # collapsed stacks: speedscope / flamegraph.pl read them
                    spy = subprocess.Popen(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(proxy.pid), "--threads",
                         *(["--gil"] if args.py_spy_mode == "gil" else []), "--nonblocking", "--format", "raw", "--rate", "200", "--output", str(out)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )
                    time.sleep(1.0)
                row = asyncio.run(run_level(proxy, client, level, conc, args.min_calls, args.engine_delay_ms))
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(timeout=60)
                results.append(row)
                print(
                    f"{client:6s} conc {conc:5d}: {row['calls_per_s']:7.1f} calls/s  p50 {row['p50_ms']:8.1f} ms  "
                    f"p99 {row['p99_ms']:8.1f} ms  proxy {row['proxy_cpu_ms_per_call']:5.2f} ms CPU/call "
                    f"(engine {row['engine_cpu_ms_per_call']:4.2f}, {row['proxy_gc_full_collections']} full gc "
                    f"{row['proxy_gc_full_s']:.2f} s, {row['proxy_gc_tracked_objects']} objects)  client {row['client_cpu_ms_per_call']:4.2f}  "
                    f"errors {row['errors']}  retried {row['retried']}  routing_bad {row['routing_bad']}  "
                    f"load {row['load_average'][0]:.2f}",
                    flush=True,
                )
                for example in row["error_examples"] + row["routing_examples"]:
                    print("    ", example, flush=True)
    finally:
        proxy.stop()

    os.environ.setdefault("COLUMNS", "180")
    print_table(
        f"proxy load: {CALLS_PER_EPISODE}-call tool loop, scripted engine (+{args.engine_delay_ms:g} ms), client in another process, "
        f"uvicorn http={proxy.info['http']} loop={proxy.info['loop']}",
        ["client", "episodes at once", "calls", "calls/s", "p50 ms", "p99 ms", "proxy CPU ms/call", "of it engine",
         "client CPU ms/call", "errors", "retried", "routing", "load avg"],
        [
            [r["client"], r["concurrency"], r["calls"], f"{r['calls_per_s']:.0f}", f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}",
             f"{r['proxy_cpu_ms_per_call']:.2f}", f"{r['engine_cpu_ms_per_call']:.2f}", f"{r['client_cpu_ms_per_call']:.2f}",
             r["errors"], r["retried"],
             "ok" if r["routing_bad"] == 0 else f"{r['routing_bad']} bad", f"{r['load_average'][0]:.1f}"]
            for r in results
        ],
    )
    server = {"http": proxy.info["http"], "loop": proxy.info["loop"]}
    payload = {"env": environment(), "server": server, "args": {k: str(v) for k, v in vars(args).items()}, "results": results}
    path = write_results("proxy_load", payload, args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
