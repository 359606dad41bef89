"""What the proxy adds to a rollout: the same episodes through HTTP, in each wire protocol, vs in-process.

    python bench/proxy_overhead.py                                   # CPU defaults, ~2-3 min on 2 cores
    python bench/proxy_overhead.py --episodes 16 --turns 4 --concurrency 1 8 16 --repeats 3
    python bench/proxy_overhead.py --protocols chat                  # Chat Completions only

Each episode is a multi-turn chat (system + user, then `--turns` model calls, a user message after
each reply), greedy, with a fixed reply budget. These paths produce the same rollouts:
- direct: the episode's EpisodeTracker builds each prompt (render + splice), then
  `await engine.generate(ids)`, then the reply is decoded and recorded: everything except HTTP.
- proxy, one per `--protocols` entry: the episode talks to ProxyServer over 127.0.0.1 through the
  client a workflow gets from its tuner (one client per episode): `chat` = `openai.AsyncOpenAI`
  `chat.completions.create`, `responses` = the same client's `responses.create` (system prompt as
  `instructions`, the history as input messages), `messages` = `anthropic.AsyncAnthropic`
  `messages.create` (`system`, the history as messages).
So proxy - direct is the cost of HTTP, JSON, the client, the protocol translation, tool-call parsing
and the hop to the server thread. Engines: `hf` (HFEngine on `--model`, the real rollout cost) and
`scripted` (a ScriptedEngine with no model, so the whole wall time is framework overhead).
Columns: wall seconds (median, min-max over repeats), calls, ms per call, proxy-minus-direct ms per
call and its share of the proxy path's wall time; `same` checks the path sampled the direct path's
tokens. The load average at the start is printed with the table and stored in the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _common import environment, fmt_stats, print_table, summarize, write_results  # noqa: E402

from ajet.engine.base import Engine, SamplingParams  # noqa: E402
from ajet.proxy import ProxyServer  # noqa: E402
from ajet.tracker import EpisodeTracker, LLMCall  # noqa: E402
from ajet.tracker.render import normalize_messages  # noqa: E402
from ajet.tuner import AjetTuner  # noqa: E402

SYSTEM = "You are a careful assistant. Answer briefly."
PROTOCOLS = {"chat": "Chat Completions", "responses": "Responses", "messages": "Anthropic Messages"}


def episode_messages(i: int) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Question {i}: what is {i} plus {i * 3}?"}]


async def run_direct(engine: Engine, tokenizer: Any, args, concurrency: int, params: SamplingParams) -> tuple[float, list[list[int]]]:
    sem = asyncio.Semaphore(concurrency)
    replies: list[list[int]] = [[] for _ in range(args.episodes)]

    async def episode(i: int) -> None:
        async with sem:
            tracker = EpisodeTracker(f"direct-{i}", tokenizer)
            messages = episode_messages(i)
            for turn in range(args.turns):
                msgs = normalize_messages(messages)
                plan = tracker.prepare_prompt(msgs, None)
                done = await engine.generate(plan.prompt_ids, params)
                text = tokenizer.decode(done.token_ids, skip_special_tokens=True)
                assistant = {"role": "assistant", "content": text}
                tracker.record(
                    LLMCall(plan.prompt_ids, done.token_ids, done.logprobs, done.policy_versions, done.finish_reason, msgs, None, assistant)
                )
                replies[i].extend(done.token_ids)
                messages += [assistant, {"role": "user", "content": f"Go on ({turn})."}]

    start = time.perf_counter()
    await asyncio.gather(*(episode(i) for i in range(args.episodes)))
    return time.perf_counter() - start, replies


Caller = Callable[[list[dict[str, Any]]], Awaitable[str]]


def make_caller(protocol: str, tuner: AjetTuner, max_tokens: int) -> Caller:
    """`await call(messages) -> reply text` for one episode, in `protocol`, through the tuner's client."""
    if protocol == "messages":
        claude = tuner.as_raw_anthropic_sdk_client(max_retries=0)

        async def messages_call(messages: list[dict[str, Any]]) -> str:
            reply = await claude.messages.create(model="ajet", max_tokens=max_tokens, system=messages[0]["content"], messages=messages[1:])
            return reply.content[0].text

        return messages_call
    client = tuner.as_raw_openai_sdk_client(max_retries=0)
    if protocol == "responses":

        async def responses_call(messages: list[dict[str, Any]]) -> str:
            reply = await client.responses.create(model="ajet", instructions=messages[0]["content"], input=messages[1:])
            return reply.output_text

        return responses_call

    async def chat_call(messages: list[dict[str, Any]]) -> str:
        reply = await client.chat.completions.create(model="ajet", messages=messages)
        return reply.choices[0].message.content

    return chat_call


async def run_proxy(proxy: ProxyServer, args, concurrency: int, params: SamplingParams, protocol: str) -> tuple[float, list[list[int]]]:
    sem = asyncio.Semaphore(concurrency)
    handles = [proxy.open_episode(f"proxy-{i}", params) for i in range(args.episodes)]

    async def episode(i: int) -> None:
        async with sem:
            tuner = AjetTuner(handles[i].base_url, handles[i].api_key, handles[i].episode_id)
            call = make_caller(protocol, tuner, params.max_tokens)
            messages = episode_messages(i)
            for turn in range(args.turns):
                text = await call(messages)
                messages += [{"role": "assistant", "content": text}, {"role": "user", "content": f"Go on ({turn})."}]
            await tuner.aclose()

    start = time.perf_counter()
    await asyncio.gather(*(episode(i) for i in range(args.episodes)))
    wall = time.perf_counter() - start
    replies = [[t for c in proxy.close_episode(h.api_key).calls for t in c.response_ids] for h in handles]
    return wall, replies


def build_engine(kind: str, tokenizer: Any, args) -> Engine:
    if kind == "scripted":
        from ajet.engine.scripted import ScriptedEngine

        return ScriptedEngine(tokenizer, lambda prompt: "The answer is " + str(len(prompt) % 97) + ".")
    from ajet.engine.hf import HFEngine
    from ajet.models import load_model

    return HFEngine(load_model(args.model), tokenizer, max_batch_size=max(args.concurrency), seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:tiny-qwen2-random")
    parser.add_argument("--engines", nargs="+", default=["scripted", "hf"], choices=["scripted", "hf"])
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=None, help="where the JSON goes (default bench/results)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from ajet.models import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    params = SamplingParams(max_tokens=args.max_new_tokens, temperature=0.0)
    load_at_start = os.getloadavg()
    rows, results = [], []
    for kind in args.engines:
        engine = build_engine(kind, tokenizer, args)
        proxy = ProxyServer(engine, tokenizer)
        proxy.start()
        try:
            one = argparse.Namespace(episodes=1, turns=1)
            asyncio.run(run_direct(engine, tokenizer, one, 1, params))  # warm-up
            for name in args.protocols:  # each path's first call imports and builds its client (anthropic: ~1 s)
                asyncio.run(run_proxy(proxy, one, 1, params, name))
            for conc in args.concurrency:
                direct: list[float] = []
                via_proxy: dict[str, list[float]] = {name: [] for name in args.protocols}
                same = dict.fromkeys(args.protocols, True)
                for _ in range(args.repeats):  # the paths alternate, so a load spike hits them alike
                    d_wall, d_replies = asyncio.run(run_direct(engine, tokenizer, args, conc, params))
                    direct.append(d_wall)
                    for name in args.protocols:
                        p_wall, p_replies = asyncio.run(run_proxy(proxy, args, conc, params, name))
                        via_proxy[name].append(p_wall)
                        same[name] = same[name] and d_replies == p_replies
                calls = args.episodes * args.turns
                d = summarize(direct)
                for name in args.protocols:
                    p = summarize(via_proxy[name])
                    added_ms = (p["median"] - d["median"]) / calls * 1000
                    share = (p["median"] - d["median"]) / p["median"]
                    rows.append(
                        [kind, PROTOCOLS[name], conc, fmt_stats(d, 2), fmt_stats(p, 2), calls, f"{d['median'] / calls * 1000:.1f}",
                         f"{p['median'] / calls * 1000:.1f}", f"{added_ms:.1f}", f"{share:.1%}", same[name]]
                    )
                    results.append(
                        {"engine": kind, "protocol": name, "concurrency": conc, "direct_s": d, "proxy_s": p, "calls": calls,
                         "added_ms_per_call": added_ms, "added_share_of_rollout": share, "same_tokens": same[name]}
                    )
        finally:
            proxy.stop()
            engine.shutdown()

    os.environ.setdefault("COLUMNS", "200")  # rich wraps the table to 80 columns when not on a terminal
    print_table(
        f"proxy overhead: {args.episodes} episodes x {args.turns} turns, {args.max_new_tokens} new tokens, greedy; "
        f"load average at start {load_at_start[0]:.2f}",
        ["engine", "protocol", "conc", "direct s", "proxy s", "calls", "direct ms/call", "proxy ms/call", "added ms/call", "share", "same"],
        rows,
    )
    env = {**environment(), "load_average_at_start": load_at_start}
    path = write_results("proxy_overhead", {"env": env, "args": vars(args), "results": results}, args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
