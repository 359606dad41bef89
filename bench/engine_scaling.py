"""Rollout throughput of the hf engine as concurrent episodes grow, against plain `model.generate`.

    python bench/engine_scaling.py                      # CPU defaults: 1, 4, 16 episodes, ~5 min on 2 cores
    python bench/engine_scaling.py --model builtin:tiny-qwen2-random --repeats 2
    python bench/engine_scaling.py --concurrency 1 8 32 128 --max-new-tokens 256   # GPU defaults

Three ways to produce the same greedy replies to the same prompts (GSM8K test questions rendered with
the model's chat template):
- engine:     HFEngine, every episode calls `await engine.generate(...)` at once (continuous batching).
- sequential: one `model.generate` per episode, one after another.
- padded:     one left-padded `model.generate` over all episodes together.

Reply lengths differ between episodes, as agent turns do: episode i may generate up to
max_new_tokens * (1/4 + 3/4 * i/(n-1)) tokens (`--equal-lengths` turns this off). `padded` can only
stop the whole batch, so it decodes to the longest budget; tokens past an episode's own budget are not
counted. Throughput = counted generated tokens / wall seconds, min/median/max over `--repeats`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _common import environment, fmt_stats, print_table, summarize, write_results

from ajet.engine import SamplingParams
from ajet.engine.hf import HFEngine, default_stop_token_ids

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "gsm8k" / "test.jsonl"


def load_prompts(tokenizer: Any, path: Path, n: int) -> list[list[int]]:
    prompts = []
    with open(path) as f:
        for line in f:
            question = json.loads(line)["question"]
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
            )
            prompts.append(list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids))
            if len(prompts) == n:
                break
    return prompts


def budgets(n: int, max_new: int, equal: bool) -> list[int]:
    if equal or n == 1:
        return [max_new] * n
    return [max(1, round(max_new * (0.25 + 0.75 * i / (n - 1)))) for i in range(n)]


def counted(tokens: list[int], budget: int, stop_ids: set[int]) -> int:
    """Tokens an episode really produced: up to its budget, up to and including its first stop token."""
    for i, t in enumerate(tokens[:budget]):
        if t in stop_ids:
            return i + 1
    return min(len(tokens), budget)


def run_sequential(model, prompts, limits, stop_ids, pad_id) -> int:
    total = 0
    for prompt, limit in zip(prompts, limits):
        ids = torch.tensor([prompt], device=model.device)
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=limit,
            eos_token_id=sorted(stop_ids), pad_token_id=pad_id,
        )
        total += counted(out[0, len(prompt):].tolist(), limit, stop_ids)
    return total


def run_padded(model, prompts, limits, stop_ids, pad_id) -> int:
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p)
        mask[i, longest - len(p):] = 1
    out = model.generate(
        ids.to(model.device), attention_mask=mask.to(model.device), do_sample=False,
        max_new_tokens=max(limits), eos_token_id=sorted(stop_ids), pad_token_id=pad_id,
    )
    return sum(counted(row[longest:].tolist(), limit, stop_ids) for row, limit in zip(out, limits))


def run_engine(engine: HFEngine, prompts, limits) -> int:
    async def episodes():
        return await asyncio.gather(
            *[engine.generate(p, SamplingParams(max_tokens=m, temperature=0.0)) for p, m in zip(prompts, limits)]
        )

    return sum(len(c.token_ids) for c in asyncio.run(episodes()))


def main() -> None:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:qwen2.5-cpu-small-random",
                        help="builtin:<name>, a local model directory or a hub id (ajet.models.load_model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128] if gpu else [1, 4, 16])
    parser.add_argument("--max-new-tokens", type=int, default=256 if gpu else 32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--methods", nargs="+", default=["engine", "sequential", "padded"],
                        choices=["engine", "sequential", "padded"])
    parser.add_argument("--equal-lengths", action="store_true", help="same token budget for every episode")
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

    results: list[dict[str, Any]] = []
    with torch.inference_mode():
        # Warm-up: first calls pay for lazy initialisation (allocator, kernels), not for the method.
        run_sequential(model, prompts_all[:1], [2], stop_ids, pad_id)
    for n in args.concurrency:
        prompts = prompts_all[:n]
        limits = budgets(n, args.max_new_tokens, args.equal_lengths)
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
                    tokens[method] = run_engine(engine, prompts, limits)
                else:
                    with torch.inference_mode():
                        fn = run_sequential if method == "sequential" else run_padded
                        tokens[method] = fn(model, prompts, limits, stop_ids, pad_id)
                rates[method].append(tokens[method] / (time.perf_counter() - start))
                cpu_rates[method].append(tokens[method] / max(time.process_time() - cpu_start, 1e-9))
        for method in args.methods:
            extra = {}
            if method == "engine":
                extra = {k: engine.stats()[k] for k in ("mean_batch_size", "decode_steps", "prefill_steps")}
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
        rows.append([
            r["episodes"], r["method"], fmt_stats(r["tokens_per_s"]), fmt_stats(r["tokens_per_cpu_s"]),
            r["tokens"], f"{speedup:.2f}x", f"{r['mean_batch_size']:.1f}" if "mean_batch_size" in r else "-",
        ])
    print_table(
        f"rollout tokens/s, {args.model}, max_new_tokens={args.max_new_tokens}, "
        f"{'equal' if args.equal_lengths else 'varied'} lengths, {args.repeats} repeats",
        ["episodes", "method", "tok/s median (min–max)", "tok/cpu-s", "tokens", "wall vs sequential", "engine batch"],
        rows,
    )
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path = write_results("engine_scaling", {"env": environment(), "settings": settings, "results": results},
                         args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
