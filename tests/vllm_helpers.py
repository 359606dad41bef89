"""Shared by the vLLM tests: a small random Qwen2 that vLLM's CPU attention accepts, built on the spot.

vLLM's CPU backend supports head sizes 32, 64, 80, ... only, so `builtin:tiny-qwen2-random` (head_dim
16) cannot serve. This one has head_dim 32 (hidden 128, 4 heads, 2 KV heads, 2 layers), the exact
Qwen2.5 tokenizer and chat template (copied from the tiny builtin), and a large initializer_range:
its next-token distributions are peaked and varied, so greedy ids do not hinge on rounding (a
default-initialised random model has near-uniform logits over 151,936 tokens and repeats one token).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ajet.judge.base import BaseJudge
from ajet.testing.reply_hash import reply_hash_reward

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json", "generation_config.json")


def build_vllm_test_model(target: Path, *, seed: int = 0) -> Path:
    """Write the model (float32 safetensors, config, tokenizer) into `target` and return it."""
    from transformers import Qwen2Config

    from ajet.models import resolve_model_path
    from ajet.models.builtin import RANDOM_QWEN2, init_random_model

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    source = Path(resolve_model_path("builtin:tiny-qwen2-random"))
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, target / name)
    config = RANDOM_QWEN2["tiny-qwen2-random"].config_dict()
    config.update(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, initializer_range=0.3, dtype="float32",
    )
    model = init_random_model(Qwen2Config(**config), seed=seed, dtype=torch.float32)
    model.save_pretrained(str(target))
    return target


def greedy_reference(model, prompt: list[int], max_tokens: int, stop_ids: set[int]) -> list[int]:
    """HF `generate` greedy continuation of one prompt, ending after the first of `stop_ids` (included)."""
    with torch.no_grad():
        ids = torch.tensor([prompt])
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_tokens,
            eos_token_id=sorted(stop_ids), pad_token_id=0,
        )[0, len(prompt) :].tolist()
    for i, t in enumerate(out):
        if t in stop_ids:
            return out[: i + 1]
    return out


def token_logprobs(model, prompt: list[int], continuation: list[int], temperature: float = 1.0) -> list[float]:
    """log_softmax(logits / T) of each continuation token given everything before it (one forward)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + continuation])).logits[0].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(continuation)]


class ReplyShapeJudge(BaseJudge):
    """A judge for random models: the final answer's `reply_hash_reward` (the math judge would give a
    random model 0 everywhere, so nothing would train)."""

    def compute_reward(self, workflow_task, workflow_output):
        reward = reply_hash_reward(str(workflow_output.metadata.get("final_answer") or ""))
        return reward, reward > 0.5
