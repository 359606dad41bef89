"""`model.path` -> a model directory: a local directory, a hub id, or `builtin:<name>`.

The one place that knows where models come from; everything else (engines, trainer, proxy) gets
a directory, a tokenizer and a model from here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ajet.models.builtin import (
    LAZY_WEIGHTS_FILE,
    RANDOM_QWEN2,
    SMOLLM2_NAME,
    build_random_qwen2,
    init_random_model,
    list_builtins,
)
from ajet.models.cache import build_once, models_dir
from ajet.models.errors import ModelResolutionError

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
HUB_PROBE_TIMEOUT_S = 5.0


def resolve_model_path(path: str | os.PathLike[str]) -> Path:
    """The local directory holding `path`'s config, tokenizer and (usually) weights.

    - an existing directory is returned as is;
    - `builtin:<name>` is built once into the ajet cache (see `ajet.models.cache`);
    - anything else that looks like `owner/name` is a hub id, fetched with huggingface_hub.
    Raises ModelResolutionError with the reason when none applies.
    """
    text = str(path).strip()
    if text.startswith(BUILTIN_PREFIX):
        return _resolve_builtin(text[len(BUILTIN_PREFIX):])
    local = Path(text).expanduser()
    if local.is_dir():
        return local.resolve()
    if local.exists() or _looks_like_filesystem_path(text):
        what = "is a file, not a model directory" if local.exists() else "does not exist"
        raise ModelResolutionError(f"model directory {text!r} {what}")
    return hub_snapshot(text)


def _looks_like_filesystem_path(text: str) -> bool:
    # Hub ids are `name` or `owner/name`; anything with more parts or a path prefix is a directory.
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text or text == ""


def _resolve_builtin(name: str) -> Path:
    root = models_dir()
    if name in RANDOM_QWEN2:
        root.mkdir(parents=True, exist_ok=True)
        return build_once(root / name, lambda tmp: build_random_qwen2(name, tmp, root))
    if name == SMOLLM2_NAME:
        from ajet.models.smollm2 import resolve_smollm2

        return resolve_smollm2(root)
    known = ", ".join(f"builtin:{n}" for n in list_builtins())
    raise ModelResolutionError(f"unknown built-in model 'builtin:{name}'; known built-ins: {known}")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_snapshot(repo_id: str, allow_patterns: list[str] | None = None) -> Path:
    """A hub model's local snapshot: from the local HF cache first, else downloaded when reachable."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - transformers depends on it
        raise ModelResolutionError(f"{repo_id!r} is not a local directory and huggingface_hub is missing") from exc
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises several types for "not cached"
        logger.debug("%s is not in the Hugging Face cache: %s", repo_id, exc)
    if hub_offline():
        raise ModelResolutionError(
            f"{repo_id!r} is not a local directory, not in the Hugging Face cache, and HF_HUB_OFFLINE is set"
        )
    if not hub_reachable():
        raise ModelResolutionError(
            f"{repo_id!r} is not a local directory and the model hub "
            f"({_hub_endpoint()}) did not answer within {HUB_PROBE_TIMEOUT_S:.0f} s; "
            f"use a local directory or a builtin: name ({', '.join(list_builtins())})"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, endpoint=_hub_endpoint()))
    except Exception as exc:
        raise ModelResolutionError(f"downloading {repo_id!r} from the hub failed: {exc}") from exc


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the hub answers at all, probed once with a short timeout.

    huggingface_hub's own retries take minutes to give up on a firewalled machine; one HEAD request
    tells us quickly whether to fall back to the package index.
    """
    if hub_offline():
        return False
    import httpx

    try:
        httpx.head(_hub_endpoint() + "/api/models", timeout=timeout, follow_redirects=True)
        return True
    except httpx.HTTPError:
        return False


def load_tokenizer(path: str | os.PathLike[str]):
    """The tokenizer of `path` (any form `resolve_model_path` accepts)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_model_path(path)))


def pick_device() -> str:
    """Where a run trains and generates: the GPU when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: Any, device: str, *, for_training: bool = False):
    """`model.dtype` as a torch.dtype. None/"auto": the weights a trainer updates stay fp32 (AdamW
    steps of ~1e-6 round away in bf16; the trainer autocasts its forward to bf16 on a GPU); a copy
    that only generates is bf16 on a GPU that supports it, else fp32."""
    import torch

    if dtype is None or dtype == "auto":
        if for_training or not str(device).startswith("cuda"):
            return torch.float32
        # Only a GPU that is present can say it lacks bf16 (pre-Ampere); assume one that does.
        supported = not torch.cuda.is_available() or torch.cuda.is_bf16_supported()
        return torch.bfloat16 if supported else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")  # noqa: TRY004
    return value


def load_model(path: str | os.PathLike[str], dtype: Any = None, device: str = "cpu", *, for_training: bool = False):
    """A causal LM from `path` in eval mode on `device`, in `resolve_dtype(dtype, device, for_training=...)`.

    Builtins with lazily created weights (the 1.5B/3B/7B random shapes) are initialised here from
    their stored seed, directly on `device`.
    """
    import json

    from transformers import AutoConfig, AutoModelForCausalLM

    directory = resolve_model_path(path)
    torch_dtype = resolve_dtype(dtype, device, for_training=for_training)
    lazy = directory / LAZY_WEIGHTS_FILE
    if lazy.exists():
        seed = json.loads(lazy.read_text())["seed"]
        config = AutoConfig.from_pretrained(str(directory))
        return init_random_model(config, seed=seed, dtype=torch_dtype, device=device)
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch_dtype)
    return model.to(device).eval()
