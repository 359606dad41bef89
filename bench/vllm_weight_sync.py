"""What it costs to send a trainer's weights to ajet's vLLM engine, by way of sending them.

    python bench/vllm_weight_sync.py                                   # 0.5B shape, bf16 engine, CPU
    python bench/vllm_weight_sync.py --model ~/.cache/ajet/models/qwen2.5-coder-0.5b-instruct --engine-dtype float32

The trainer's copy is float32 (as ajet's trainer keeps it); the engine runs `--engine-dtype`. Ways:
- shm buckets (what VLLMEngine.update_weights does): tensors are cast into one shared-memory file
  bucket by bucket; the worker copies each bucket out and loads it with vLLM's layerwise reload;
  only names/shapes/offsets cross vLLM's RPC. Timed for several bucket sizes.
- file reload: the weights saved as safetensors in /dev/shm, then vLLM's own
  `reload_weights(weights_path=...)` reads them back (a disk checkpoint without the disk).
- msgpack: tensors as arguments of `collective_rpc` (what VLLMEngine did before): recorded as the
  error it raises.
vLLM's NCCL and CUDA-IPC weight-transfer backends need a GPU and are not measured here.

Every way is checked: after the update the engine's greedy tokens must equal HF `generate` on the
updated weights (the update multiplies every weight by -1 or 0.5, so a partial one would show).
Each way runs `--repeats` times; min/median/max seconds. Also reported: the host memory the way
needs beyond the two models (shared file / checkpoint size).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _common import environment, fmt_stats, print_table, summarize, write_results

from ajet.engine import SamplingParams
from ajet.engine.hf import default_stop_token_ids

PROMPT = "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning."


def edit(state: dict[str, torch.Tensor], sign: float) -> dict[str, torch.Tensor]:
    """A visibly different policy: matrices times `sign`, vectors (norms, biases) halved or doubled."""
    return {k: v * (sign if v.dim() > 1 else (0.5 if sign < 0 else 2.0)) for k, v in state.items()}


def greedy(engine, prompt: list[int], n: int) -> list[int]:
    return asyncio.run(engine.generate(prompt, SamplingParams(max_tokens=n, temperature=0.0))).token_ids


def hf_greedy(model, prompt: list[int], n: int, stop_ids: set[int]) -> list[int]:
    with torch.no_grad():
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                             eos_token_id=sorted(stop_ids), pad_token_id=0)[0, len(prompt):].tolist()
    for i, t in enumerate(out):
        if t in stop_ids:
            return out[: i + 1]
    return out


def file_reload(engine, state: dict[str, torch.Tensor], model_dir: str, dtype: torch.dtype) -> int:
    """Save `state` as a model directory in /dev/shm and let vLLM's reload_weights read it."""
    from safetensors.torch import save_file

    tmp = Path(tempfile.mkdtemp(prefix="ajet-reload-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        for name in ("config.json", "generation_config.json"):
            if (Path(model_dir) / name).exists():
                shutil.copy2(Path(model_dir) / name, tmp / name)
        tensors = {k: v.to(dtype).contiguous() for k, v in state.items()}
        save_file(tensors, str(tmp / "model.safetensors"))
        size = (tmp / "model.safetensors").stat().st_size
        with engine.pause():
            engine._call(engine._llm.collective_rpc("reload_weights", kwargs={"weights_path": str(tmp)}))
        return size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def msgpack_attempt(engine, state: dict[str, torch.Tensor]) -> str:
    """Tensors straight through collective_rpc's arguments: the error vLLM gives."""
    name, tensor = next(iter(state.items()))
    try:
        engine._rpc("ajet_begin_weight_update")
        try:
            engine._call(engine._llm.collective_rpc("ajet_load_shared_weights", args=("x", 0, [[name, tensor]])))
        finally:
            engine._rpc("ajet_finish_weight_update")
    except Exception as exc:  # noqa: BLE001 - the error is the result
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return "no error (unexpected)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:qwen2.5-0.5b-random")
    parser.add_argument("--engine-dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--bucket-mb", type=int, nargs="+", default=[64, 512, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from ajet.engine.vllm import VLLMEngine
    from ajet.models import load_model, load_tokenizer, resolve_model_path

    model_dir = str(resolve_model_path(args.model))
    tokenizer = load_tokenizer(model_dir)
    stop_ids = set(default_stop_token_ids(tokenizer))
    model = load_model(model_dir, dtype=torch.float32).eval()
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = sum(p.numel() for p in model.parameters())
    engine_dtype = getattr(torch, args.engine_dtype)
    # The engine computes in its dtype; compare against HF in the same dtype.
    reference = load_model(model_dir, dtype=engine_dtype).eval()
    prompt = tokenizer.encode(PROMPT, add_special_tokens=False)
    t0 = time.perf_counter()
    engine = VLLMEngine(model_dir, tokenizer, max_model_len=256, max_batch_size=2, dtype=args.engine_dtype)
    startup_s = time.perf_counter() - t0
    lazy = (Path(model_dir) / "ajet_random_init.json").exists()
    if lazy:  # a builtin whose weights exist only in memory: the engine starts on the checkpoint's files
        engine.update_weights(original.items(), version=0)

    ways: list[dict[str, Any]] = []
    sign = -1.0

    def run_way(name: str, apply, extra_mb: float) -> None:
        nonlocal sign
        times, ok = [], True
        for _ in range(args.repeats):
            state = edit(original, sign)
            t = time.perf_counter()
            apply(state)
            times.append(time.perf_counter() - t)
            reference.load_state_dict(state)
            got, want = greedy(engine, prompt, 12), hf_greedy(reference, prompt, 12, stop_ids)
            ok = ok and got == want
            sign = -sign
        ways.append({"way": name, "seconds": summarize(times), "outputs_match_hf": ok, "extra_host_mb": extra_mb})
        print(f"{name:<28} {fmt_stats(summarize(times), 3)} s  match={ok}", flush=True)

    # What one full update moves in the engine's dtype (a tied lm_head is sent too; see VLLMEngine).
    full_mb = sum(v.numel() for v in original.values()) * torch.empty((), dtype=engine_dtype).element_size() / 2**20
    version = [1]

    def via_shm(bucket_bytes: int):
        def apply(state):
            engine.bucket_bytes = bucket_bytes
            engine.update_weights(state.items(), version=version[0])
            version[0] += 1

        return apply

    for mb in args.bucket_mb:
        run_way(f"shm buckets of {mb} MiB", via_shm(mb << 20), float(min(mb, full_mb)))
    sizes: list[int] = []
    run_way("file reload (/dev/shm)", lambda state: sizes.append(file_reload(engine, state, model_dir, engine_dtype)), full_mb)
    msgpack = msgpack_attempt(engine, original)
    engine.shutdown()

    rows = [[w["way"], fmt_stats(w["seconds"], 3), f"{w['extra_host_mb']:.0f}", "yes" if w["outputs_match_hf"] else "NO"]
            for w in ways]
    rows.append(["tensors through msgpack RPC", msgpack, "-", "-"])
    print_table(
        f"weight sync to VLLMEngine: {args.model} ({params / 1e6:.0f}M params), trainer float32 -> engine "
        f"{args.engine_dtype}, {args.repeats} repeats, load {os.getloadavg()[0]:.1f}",
        ["way", "seconds", "extra host MiB", "outputs = HF"],
        rows,
    )
    payload = {"env": environment(), "settings": {k: str(v) for k, v in vars(args).items()},
               "parameters": params, "engine_startup_s": startup_s, "ways": ways, "msgpack": msgpack}
    print(f"wrote {write_results('vllm_weight_sync', payload, args.out_dir)}")


if __name__ == "__main__":
    main()
