"""LoRA through peft: wrapping a model from the `lora:` config and exporting merged weights."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from ajet.config.schema import LoraConfig as LoraSection


def lora_config_from(lora_cfg: LoraSection) -> LoraConfig | None:
    """The peft LoraConfig for an ajet `lora:` section, or None when `lora_rank` is 0 (full fine-tuning)."""
    if lora_cfg.lora_rank <= 0:
        return None
    targets = lora_cfg.target_modules
    return LoraConfig(
        r=lora_cfg.lora_rank,
        lora_alpha=lora_cfg.lora_alpha,
        lora_dropout=lora_cfg.lora_dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )


def apply_lora(model: nn.Module, lora_cfg: LoraSection) -> nn.Module:
    """Wrap `model` with fresh LoRA adapters (in place, as peft does); unchanged when rank is 0."""
    config = lora_config_from(lora_cfg)
    return model if config is None else get_peft_model(model, config)


@torch.no_grad()
def merged_base_weights(model: PeftModel) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights of W + scale * B @ A under the base model's state_dict names, one at a time.

    Unlike `merge_and_unload()` this never touches the training model: each merged tensor is a new
    tensor, so training continues with the adapters as they are. Yields lazily, so at most one merged
    matrix exists at a time beyond what the caller keeps.
    """
    base = model.get_base_model()
    deltas: dict[str, nn.Module] = {
        name: module
        for name, module in base.named_modules()
        if isinstance(module, LoraLayer) and not module.merged and not module.disable_adapters
    }
    active = model.active_adapter
    for name, tensor in base.state_dict().items():
        if ".lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".")
        if owner.endswith(".base_layer"):
            owner = owner[: -len(".base_layer")]
            out_name = f"{owner}.{leaf}"
        else:
            out_name = name
        module = deltas.get(owner)
        if module is not None and leaf == "weight" and active in module.lora_A:
            yield out_name, (tensor + module.get_delta_weight(active).to(tensor.dtype)).detach()
        else:
            yield out_name, tensor.detach()

