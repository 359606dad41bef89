#!/usr/bin/env python
"""Peak memory of one policy update of the tutorial's model: lm_head chunk size and gradient checkpointing.

    python bench/update_memory.py                                   # the tutorial's model and LoRA
    python bench/update_memory.py --lengths 800 1600 2400 --threads 1
    python bench/update_memory.py --model builtin:qwen2.5-cpu-small-random   # a quick look

Each configuration runs in a fresh child process, so its high-water mark (VmHWM) is its own: the
process loads the model as the main job does (fp32, the `lora:` section of the tutorial YAML), then
runs one `PolicyTrainer.train_step` on `--samples` episodes of `--lengths` tokens each, laid out like
a three-call code-interpreter episode (prompt, then three replies with a tool result after each of
the first two; only the replies are trained). Three configurations per length: 1024-token lm_head
chunks without checkpointing (the trainer before chunks were sized by `LOGITS_CHUNK_BYTES`), the
default chunks without checkpointing, and the default chunks with
`trainer_common.gradient_checkpointing`. Reported: resident memory after loading, the peak during the
update and the update's seconds. Token ids are random: memory and time do not depend on
them. Writes bench/results/update_memory-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._common import environment, print_table, write_results  # noqa: E402

TUTORIAL_YAML = REPO / "tutorial" / "example_math_agent" / "math_agent.yaml"


def _status_mb(field: str) -> float:
    """A `VmRSS`/`VmHWM` line of /proc/self/status in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def episode_layout(length: int, prompt: int) -> list[int]:
    """Loss mask of a three-call episode of `length` tokens: prompt, reply, tool result, reply, tool
    result, reply. Replies take 3/4 of what follows the prompt, tool results the rest; the last reply
    takes what rounding left over."""
    rest = length - prompt
    reply, tool = rest * 3 // 4 // 3, rest // 4 // 2
    mask = [0] * prompt + [1] * reply + [0] * tool + [1] * reply + [0] * tool
    return mask + [1] * (length - len(mask))


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    import time

    import torch

    from ajet.config import load_config
    from ajet.models.resolve import load_model
    from ajet.schema import Sample
    from ajet.trainer import PolicyTrainer, logprobs

    torch.set_num_threads(spec["threads"])
    cfg = load_config(
        spec["conf"],
        [f"trainer_common.gradient_checkpointing={str(spec['checkpointing']).lower()}", f"model.path={spec['model']}"],
    )
    model = load_model(cfg.model.path, dtype=cfg.model.dtype, device="cpu", for_training=True)
    vocab = model.config.vocab_size
    if spec["chunk_tokens"] is not None:
        logprobs.LOGITS_CHUNK_BYTES = spec["chunk_tokens"] * 4 * vocab
    chunk_tokens = logprobs.default_chunk_size(vocab)
    trainer = PolicyTrainer(model, None, cfg.trainer_common, cfg.lora)
    loaded_mb = _status_mb("VmRSS")

    rng = random.Random(0)
    samples = []
    for i in range(spec["samples"]):
        mask = episode_layout(spec["length"], spec["prompt"])
        samples.append(
            Sample(
                input_ids=[rng.randrange(vocab) for _ in mask],
                loss_mask=mask,
                rollout_logprobs=[-rng.uniform(0.0, 3.0) * m for m in mask],
                token_versions=[0 if m else -1 for m in mask],
                task_id="t0",
                episode_id=f"e{i}",
            )
        )
    advantages = [1.0 if i % 2 == 0 else -1.0 for i in range(len(samples))]
    started = time.perf_counter()
    trainer.train_step(samples, advantages, temperature=1.0)
    return {
        **spec,
        "lm_head_chunk_tokens": chunk_tokens,
        "vocab": vocab,
        "loaded_rss_mb": loaded_mb,
        "peak_rss_mb": _status_mb("VmHWM"),
        "update_s": time.perf_counter() - started,
        "trained_tokens": sum(sum(s.loss_mask) for s in samples),
        "micro_batch_size": cfg.trainer_common.micro_batch_size,
        "lora_rank": cfg.lora.lora_rank,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conf", default=str(TUTORIAL_YAML))
    parser.add_argument("--model", default=None, help="default: the YAML's model.path")
    parser.add_argument("--lengths", type=int, nargs="+", default=[800, 1600, 2400], help="tokens per episode")
    parser.add_argument("--prompt", type=int, default=300, help="prompt tokens of each episode")
    parser.add_argument("--samples", type=int, default=2, help="episodes per update")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        print(json.dumps(run_child(json.loads(args.child))), flush=True)
        return

    if args.model is None:
        from ajet.config import load_config

        args.model = load_config(args.conf, []).model.path
    results = []
    for length in args.lengths:
        for chunk_tokens, checkpointing in ((1024, False), (None, False), (None, True)):
            spec = {"conf": args.conf, "model": args.model, "length": length, "prompt": args.prompt,
                    "samples": args.samples, "threads": args.threads, "checkpointing": checkpointing,
                    "chunk_tokens": chunk_tokens}
            done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"child failed ({spec}):\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"{length} tokens, chunks of {r['lm_head_chunk_tokens']}, checkpointing {checkpointing}: "
                  f"peak {r['peak_rss_mb']:.0f} MiB, "
                  f"{r['update_s']:.1f} s", flush=True)

    rows = [
        [r["length"], r["lm_head_chunk_tokens"], "on" if r["checkpointing"] else "off", f"{r['loaded_rss_mb'] / 1024:.2f}",
         f"{r['peak_rss_mb'] / 1024:.2f}", f"{(r['peak_rss_mb'] - r['loaded_rss_mb']) / 1024:.2f}", f"{r['update_s']:.1f}"]
        for r in results
    ]
    print_table(
        f"one update of {args.samples} episodes, {args.model} (micro-batch {results[0]['micro_batch_size']}, "
        f"LoRA rank {results[0]['lora_rank']})",
        ["tokens/episode", "lm_head chunk", "checkpointing", "after load GiB", "peak GiB", "update adds GiB", "update s"],
        rows,
    )
    path = write_results("update_memory", {"env": environment(), "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
