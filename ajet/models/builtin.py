"""Built-in models (`model.path: builtin:<name>`): random-weight Qwen2.5 shapes and SmolLM2.

Random models carry the exact Qwen2.5 tokenizer and real Qwen2.5 config shapes, so plumbing tests,
drift tests and benchmarks run at real vocabulary and layer sizes without a model hub. Small ones
are written once as ordinary HF model directories; big ones (`lazy_weights`) store only config and
tokenizer, and `ajet.models.load_model` initialises their seeded weights at load time (a random 7B
checkpoint is 15 GB of noise not worth writing to disk).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ajet.models.qwen_tokenizer import ENDOFTEXT_ID, IM_END_ID, QWEN25_VOCAB_SIZE

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

logger = logging.getLogger(__name__)

LAZY_WEIGHTS_FILE = "ajet_random_init.json"  # marks a directory whose weights load_model creates


@dataclass(frozen=True)
class RandomQwen2Spec:
    """A Qwen2ForCausalLM shape. Real Qwen2.5 values come from each checkpoint's config.json."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool
    max_position_embeddings: int = 32768
    max_window_layers: int | None = None
    rope_theta: float = 1_000_000.0
    torch_dtype: str = "bfloat16"  # dtype the weights are saved in
    lazy_weights: bool = False
    seed: int = 0

    def config_dict(self) -> dict[str, Any]:
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": QWEN25_VOCAB_SIZE,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "max_window_layers": self.max_window_layers or self.num_hidden_layers,
            "rms_norm_eps": 1e-6,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_sliding_window": False,
            "sliding_window": None,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "bos_token_id": ENDOFTEXT_ID,
            "eos_token_id": IM_END_ID,
            "pad_token_id": ENDOFTEXT_ID,
            "use_cache": True,
            "dtype": self.torch_dtype,
        }


RANDOM_QWEN2: dict[str, RandomQwen2Spec] = {
    # The tests' model: real vocabulary and tokenizer, a few MB of layers; loads in about a second.
    "tiny-qwen2-random": RandomQwen2Spec(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=8192, torch_dtype="float32",
    ),
    # CPU benchmarks: Qwen2.5's vocabulary and template at a shape a laptop trains in seconds per step.
    "qwen2.5-cpu-small-random": RandomQwen2Spec(
        hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, torch_dtype="float32",
    ),
    "qwen2.5-0.5b-random": RandomQwen2Spec(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, tie_word_embeddings=True, max_window_layers=21,
    ),
    "qwen2.5-1.5b-random": RandomQwen2Spec(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, tie_word_embeddings=True, max_window_layers=21, lazy_weights=True,
    ),
    "qwen2.5-3b-random": RandomQwen2Spec(
        hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=2, tie_word_embeddings=True, max_window_layers=70, lazy_weights=True,
    ),
    "qwen2.5-7b-random": RandomQwen2Spec(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, tie_word_embeddings=False, max_window_layers=28, lazy_weights=True,
    ),
}

SMOLLM2_NAME = "smollm2-135m-instruct"
QWEN25_TOKENIZER_NAME = "qwen2.5-tokenizer"  # cache entry only, not a model


def list_builtins() -> list[str]:
    """Names accepted after `builtin:`."""
    return sorted([*RANDOM_QWEN2, SMOLLM2_NAME])


def qwen25_tokenizer_dir(models_root: Path) -> Path:
    """The exact Qwen2.5 tokenizer saved once under the cache (about 5 s to build)."""
    from ajet.models.cache import build_once, sources_dir
    from ajet.models.qwen_tokenizer import save_qwen25_tokenizer

    return build_once(
        models_root / QWEN25_TOKENIZER_NAME,
        lambda tmp: save_qwen25_tokenizer(tmp, cache_dir=sources_dir()),
    )


def _generation_config(spec_config: dict[str, Any]):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=spec_config["bos_token_id"],
        eos_token_id=[IM_END_ID, ENDOFTEXT_ID],
        pad_token_id=ENDOFTEXT_ID,
    )


def build_random_qwen2(name: str, target: Path, models_root: Path) -> None:
    """Write builtin `name` (config, tokenizer, and seeded weights unless lazy) into `target`."""
    import shutil

    import torch
    from transformers import Qwen2Config

    spec = RANDOM_QWEN2[name]
    tok_dir = qwen25_tokenizer_dir(models_root)
    for item in tok_dir.iterdir():
        shutil.copy2(item, target / item.name)
    config = Qwen2Config(**spec.config_dict())
    _generation_config(spec.config_dict()).save_pretrained(str(target))
    if spec.lazy_weights:
        config.save_pretrained(str(target))
        (target / LAZY_WEIGHTS_FILE).write_text(json.dumps({"seed": spec.seed, "builtin": name}) + "\n")
        return
    model = init_random_model(config, seed=spec.seed, dtype=getattr(torch, spec.torch_dtype), device="cpu")
    model.save_pretrained(str(target))
    logger.info("built builtin:%s (%.1fM parameters, seed %d)", name, model.num_parameters() / 1e6, spec.seed)


def init_random_model(config: PretrainedConfig, seed: int, dtype: torch.dtype, device: str = "cpu") -> PreTrainedModel:
    """A Qwen2ForCausalLM with weights drawn from `seed` (same seed -> same weights on CPU).

    Built directly on `device` in `dtype`, so a 7B shape on a GPU never passes through CPU memory.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
