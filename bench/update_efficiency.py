"""Throughput of the policy update: `PolicyTrainer.train_step` on synthetic samples of realistic lengths.

    python bench/update_efficiency.py                      # CPU: a reduced Qwen2 shape, < 10 min on 2 cores
    python bench/update_efficiency.py --shape qwen2.5-0.5b --samples 32   # GPU: the real 0.5B shape, bf16 autocast

Reports tokens/s of the update phase and achieved model FLOP/s, counted as 6 x params x tokens
(forward + backward; embedding lookups excluded, lm_head included) plus causal attention, against a
reference rate: on CPU a plain fp32 matmul measured in the same run with the same threads (so the
ratio says how much of what this CPU can do the update gets); on CUDA the H100 dense bf16 peak
(~790 TFLOP/s as given for this project) and a measured bf16 matmul. The update's extra work
(the no-grad pre-update pass when needed, recomputing the lm_head chunks in backward) is not counted
as useful FLOPs, so it shows up as a lower ratio. Weights are random: speed does not depend on them.
Writes bench/results/update_efficiency-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ajet.config.schema import LoraConfig, TrainerCommonConfig
from ajet.schema import Sample
from ajet.testing.config import make_config
from ajet.trainer import PolicyTrainer
from bench._common import environment, fmt_stats, print_table, summarize, write_results

H100_BF16_PEAK = 790e12
SHAPES: dict[str, dict[str, Any]] = {
    # Qwen2.5-0.5B's config (hidden 896, 24 layers, 14 heads / 2 KV heads, 151936 vocab, tied).
    "qwen2.5-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                     "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True},
    # The same architecture scaled down to run on two CPU cores in minutes.
    "qwen2-small": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "vocab_size": 32000, "tie_word_embeddings": True},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 1024, "tie_word_embeddings": True},
}


def build_model(shape: str) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(max_position_embeddings=32768, **SHAPES[shape])
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config)


def synthetic_samples(n: int, vocab: int, prompt_len: int, response_len: int, seed: int) -> list[Sample]:
    """Prompts of about `prompt_len`, responses spread over [response_len / 4, response_len] tokens."""
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        p = max(8, int(prompt_len * rng.uniform(0.8, 1.2)))
        r = rng.randint(max(1, response_len // 4), response_len)
        mask = [0] * p + [1] * r
        samples.append(
            Sample(
                input_ids=[rng.randrange(vocab) for _ in range(p + r)],
                loss_mask=mask,
                rollout_logprobs=[-rng.uniform(0.0, 3.0) * m for m in mask],
                token_versions=[0 if m else -1 for m in mask],
                task_id=f"t{i // 4}",
                episode_id=f"e{i}",
            )
        )
    return samples


def flops_per_update(model: torch.nn.Module, samples: list[Sample], ppo_epochs: int) -> float:
    """6 N T (N: parameters that do matmuls: all but the input embedding, lm_head counted even when
    tied) + causal attention 6 * n_layers * hidden * L^2 per sequence (QK^T and AV, fwd + bwd, halved for causality)."""
    cfg = model.config
    embed = model.get_input_embeddings().weight.numel()
    matmul_params = sum(p.numel() for p in model.parameters()) - embed + cfg.vocab_size * cfg.hidden_size
    tokens = sum(len(s.input_ids) for s in samples)
    attention = sum(6 * cfg.num_hidden_layers * cfg.hidden_size * len(s.input_ids) ** 2 for s in samples)
    return ppo_epochs * (6 * matmul_params * tokens + attention)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of an n x n @ n x n matmul: what this device reaches on dense GEMM."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        t = time.perf_counter()
        (a @ b).sum().item()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_config(name: str, base: torch.nn.Module, samples: list[Sample], tc: TrainerCommonConfig, lora: LoraConfig | None,
               device: torch.device, steps: int, pack: bool) -> dict[str, Any]:
    model = copy.deepcopy(base)
    trainer = PolicyTrainer(model, None, tc, lora, device=device, pack=pack)
    advantages = [random.Random(i).choice([-1.0, 1.0]) for i in range(len(samples))]
    trainer.train_step(samples, advantages, temperature=1.0)  # warm-up: allocator, kernels, optimizer state
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, rates = [], []
    for _ in range(steps):
        _sync(device)
        metrics = trainer.train_step(samples, advantages, temperature=1.0)
        _sync(device)
        times.append(metrics["update_time"])
        rates.append(metrics["tokens_per_s"])
    flops = flops_per_update(trainer.model.get_base_model() if lora else trainer.model, samples, tc.ppo_epochs)
    result = {
        "name": name,
        "micro_batch_size": tc.micro_batch_size,
        "packed": pack,
        "lora_rank": (lora or {}).get("lora_rank", 0),
        "update_time_s": summarize(times),
        "tokens_per_s": summarize(rates),
        "model_flops_per_update": flops,
        "achieved_flops_per_s": summarize([flops / t for t in times]),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del trainer, model
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: qwen2-small on CPU, qwen2.5-0.5b on CUDA")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=8, help="sequences per train_step (tasks x num_repeat)")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--response-len", type=int, default=256, help="longest response; they spread over [1/4, 1] of it")
    parser.add_argument("--steps", type=int, default=2, help="measured train_steps per configuration (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--micro-batch-sizes", default="4", help="comma list; each runs padded and packed")
    parser.add_argument("--lora-rank", type=int, default=32, help="0 skips the LoRA row")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = args.shape or ("qwen2.5-0.5b" if device.type == "cuda" else "qwen2-small")
    base = build_model(shape)
    samples = synthetic_samples(args.samples, base.config.vocab_size, args.prompt_len, args.response_len, seed=0)

    def sections(micro: int, lora_rank: int = 0) -> tuple[Any, Any]:
        cfg = make_config(
            "trainer_common.optim.lr=1e-6", f"trainer_common.micro_batch_size={micro}",
            f"lora.lora_rank={lora_rank}", f"lora.lora_alpha={2 * lora_rank or 16}",
        )
        return cfg.trainer_common, (cfg.lora if lora_rank else None)

    configs = [
        (f"full, micro {m}, {'packed' if pack else 'padded'}", *sections(int(m)), pack)
        for m in args.micro_batch_sizes.split(",")
        for pack in (False, True)
    ]
    if args.lora_rank > 0:
        micro = int(args.micro_batch_sizes.split(",")[-1])
        configs.append((f"lora r{args.lora_rank}, micro {micro}, padded", *sections(micro, args.lora_rank), False))

    if device.type == "cuda":
        reference = {"kind": "H100 dense bf16 peak (given)", "flops_per_s": H100_BF16_PEAK,
                     "measured_bf16_matmul_flops_per_s": matmul_rate(device, torch.bfloat16, 8192)}
    else:
        reference = {"kind": f"fp32 matmul 2048^3, {args.threads} threads, measured", "flops_per_s": matmul_rate(device, torch.float32, 2048)}

    results = []
    for name, cfg, lora, pack in configs:
        started = time.perf_counter()
        results.append(run_config(name, base, samples, cfg, lora, device, args.steps, pack))
        print(f"{name}: done in {time.perf_counter() - started:.0f} s", flush=True)
    for r in results:
        r["flops_ratio_vs_reference"] = r["achieved_flops_per_s"]["median"] / reference["flops_per_s"]

    tokens = sum(len(s.input_ids) for s in samples)
    trained = sum(s.num_trained_tokens for s in samples)
    columns = ["config", "update s", "tokens/s", "achieved GFLOP/s", "vs reference"]
    rows = [
        [r["name"], fmt_stats(r["update_time_s"], 2), fmt_stats(r["tokens_per_s"], 0),
         f"{r['achieved_flops_per_s']['median'] / 1e9:.1f}", f"{r['flops_ratio_vs_reference']:.1%}"]
        + ([f"{r['peak_memory_gib']:.1f}"] if "peak_memory_gib" in r else [])
        for r in results
    ]
    if device.type == "cuda":
        columns.append("peak GiB")
    n_params = sum(p.numel() for p in base.parameters())
    title = (f"update efficiency: {shape} ({n_params / 1e6:.0f}M params), {len(samples)} seqs, {tokens} tokens "
             f"({trained} trained), {device.type}; reference {reference['flops_per_s'] / 1e9:.1f} GFLOP/s")
    print_table(title, columns, rows)
    payload = {"env": environment(), "shape": shape, "params": n_params, "samples": len(samples), "tokens": tokens,
               "trained_tokens": trained, "reference": reference, "results": results, "args": vars(args)}
    print(f"wrote {write_results('update_efficiency', payload, args.out_dir)}")


if __name__ == "__main__":
    main()
