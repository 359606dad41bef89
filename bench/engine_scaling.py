"""Rollout throughput of the hf engine as concurrent episodes grow, against plain `model.generate`.

    python bench/engine_scaling.py                      # CPU defaults: 1, 4, 16 episodes, ~5 min on 2 busy cores
    python bench/engine_scaling.py --turns 3            # multi-turn episodes (agent-like)
    python bench/engine_scaling.py --model builtin:tiny-qwen2-random --repeats 2
    python bench/engine_scaling.py --concurrency 1 8 32 128 --max-new-tokens 256   # GPU defaults

Three ways to produce the same greedy replies to the same prompts (GSM8K test questions rendered with
the model's chat template):
- engine:     HFEngine; every episode is a coroutine awaiting `engine.generate(...)` turn after turn
              (continuous batching: an episode's next turn joins while others are still decoding).
- sequential: one `model.generate` per model call, episode after episode.
- padded:     per turn, one left-padded `model.generate` over all episodes (batch-synchronous rollout:
              every episode waits for the slowest one before its next turn).

Reply lengths differ, as agent turns do: each (episode, turn) may generate up to a budget drawn
uniformly from [max_new_tokens/4, max_new_tokens] with a fixed seed (`--equal-lengths`: all equal).
`padded` can only stop the whole batch, so it decodes to the longest budget; tokens past a call's own
budget are not counted. With `--turns` > 1, the next turn's prompt is the previous prompt + reply + a
fixed user message. Throughput = counted generated tokens / wall seconds (and per CPU-second of this
process, steadier on a shared machine), min/median/max over `--repeats`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from ajet.engine import SamplingParams
from ajet.engine.hf import HFEngine, default_stop_token_ids

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


def run_engine(engine: HFEngine, prompts, budgets, suffix) -> int:
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


def main() -> None:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default="builtin:qwen2.5-cpu-small-random",
        help="builtin:<name>, a local model directory or a hub id (ajet.models.load_model)",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128] if gpu else [1, 4, 16])
    parser.add_argument("--max-new-tokens", type=int, default=256 if gpu else 32)
    parser.add_argument("--turns", type=int, default=1, help="model calls per episode")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--methods", nargs="+", default=["engine", "sequential", "padded"], choices=["engine", "sequential", "padded"]
    )
    parser.add_argument("--equal-lengths", action="store_true", help="same token budget for every call")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from ajet.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, device="cuda" if gpu else "cpu").eval()
    stop_ids = set(default_stop_token_ids(tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompts_all = load_prompts(tokenizer, args.data, max(args.concurrency))
    suffix = next_turn_suffix(tokenizer)

    results: list[dict[str, Any]] = []
    with torch.inference_mode():
        # Warm-up: first calls pay for lazy initialisation (allocator, kernels), not for the method.
        run_sequential(model, prompts_all[:1], [[2]], suffix, stop_ids, pad_id)
    for n in args.concurrency:
        prompts = prompts_all[:n]
        budgets = make_budgets(n, args.turns, args.max_new_tokens, args.equal_lengths)
        engine = HFEngine(model, tokenizer, max_batch_size=n, seed=0) if "engine" in args.methods else None
        rates: dict[str, list[float]] = {m: [] for m in args.methods}
        # Tokens per CPU-second of this process (all its threads): steadier than wall time when
        # other processes share the cores, though it hides time spent waiting on a GPU.
        cpu_rates: dict[str, list[float]] = {m: [] for m in args.methods}
        tokens: dict[str, int] = {}
        # Repeats interleave the methods, so load from other processes on a shared machine hits all alike.
        for _ in range(args.repeats):
            for method in args.methods:
                start, cpu_start = time.perf_counter(), time.process_time()
                if method == "engine":
                    tokens[method] = run_engine(engine, prompts, budgets, suffix)
                else:
                    with torch.inference_mode():
                        fn = run_sequential if method == "sequential" else run_padded
                        tokens[method] = fn(model, prompts, budgets, suffix, stop_ids, pad_id)
                rates[method].append(tokens[method] / (time.perf_counter() - start))
                cpu_rates[method].append(tokens[method] / max(time.process_time() - cpu_start, 1e-9))
        for method in args.methods:
            extra = {}
            if method == "engine":
                keys = ("mean_batch_size", "decode_steps", "prefill_steps", "prefill_tokens", "prefix_hit_tokens")
                extra = {k: engine.stats()[k] for k in keys}
            record = {
                "episodes": n,
                "method": method,
                "tokens": tokens[method],
                "tokens_per_s": summarize(rates[method]),
                "tokens_per_cpu_s": summarize(cpu_rates[method]),
            }
            results.append({**record, **extra})
            print(
                f"episodes={n:<4} {method:<10} {fmt_stats(record['tokens_per_s'])} tok/s, "
                f"{fmt_stats(record['tokens_per_cpu_s'])} tok/cpu-s",
                flush=True,
            )
        if engine is not None:
            engine.shutdown()

    by_key = {(r["episodes"], r["method"]): r for r in results}
    rows = []
    for r in results:
        base = by_key.get((r["episodes"], "sequential"))
        speedup = r["tokens_per_s"]["median"] / base["tokens_per_s"]["median"] if base else float("nan")
        rows.append(
            [
                r["episodes"],
                r["method"],
                fmt_stats(r["tokens_per_s"]),
                fmt_stats(r["tokens_per_cpu_s"]),
                r["tokens"],
                f"{speedup:.2f}x",
                f"{r['mean_batch_size']:.1f}" if "mean_batch_size" in r else "-",
            ]
        )
    print_table(
        f"rollout tokens/s: {args.model}, {args.turns} turn(s), max_new_tokens={args.max_new_tokens}, "
        f"{'equal' if args.equal_lengths else 'varied'} lengths, {args.repeats} repeats",
        ["episodes", "method", "tok/s", "tok/cpu-s", "tokens", "wall vs seq", "engine batch"],
        rows,
    )
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"env": environment(), "settings": settings, "results": results}
    print(f"wrote {write_results('engine_scaling', payload, args.out_dir)}")


if __name__ == "__main__":
    main()
