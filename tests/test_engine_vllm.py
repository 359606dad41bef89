"""VLLMEngine: the missing-dependency message always; real generation only where vLLM and a GPU exist.

The CPU path of the engine contract is tested by tests/test_engine_hf.py.
"""

from __future__ import annotations

import asyncio
import importlib.util

import pytest
import torch

from ajet.engine import SamplingParams, build_engine

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed: the missing-dependency path cannot be exercised")
def test_missing_vllm_says_how_to_install():
    with pytest.raises(ImportError, match=r'pip install "ajet\[verl\]"'):
        build_engine("vllm", "some/model", tokenizer=None)


@pytest.mark.skipif(not (HAS_VLLM and torch.cuda.is_available()), reason="needs vLLM and a CUDA GPU")
def test_vllm_greedy_logprobs_and_weight_update(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        AutoTokenizer,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    # A tiny random Qwen2 and a byte-level BPE tokenizer saved to a directory vLLM can load.
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        ["Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning."] * 20,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, initializer_range=0.3,
    )
    model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)

    engine = build_engine(
        "vllm", str(tmp_path), tok, max_model_len=256, gpu_memory_utilization=0.2, enforce_eager=True, dtype="float32"
    )
    try:
        prompt = tok.encode("Janet's ducks lay 16 eggs")
        out = asyncio.run(engine.generate(prompt, SamplingParams(max_tokens=8, temperature=0.0)))
        with torch.no_grad():
            logits = model(torch.tensor([prompt + out.token_ids])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        expected = [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(out.token_ids)]
        assert out.token_ids == logits[len(prompt) - 1 : -1].argmax(-1).tolist()
        assert out.logprobs == pytest.approx(expected, abs=1e-3)
        assert out.policy_versions == [0] * len(out.token_ids)

        model.lm_head.weight.data.mul_(-1.0)
        engine.update_weights(model.state_dict().items(), version=1)
        after = asyncio.run(engine.generate(prompt, SamplingParams(max_tokens=8, temperature=0.0)))
        assert after.policy_versions == [1] * len(after.token_ids)
        assert after.token_ids != out.token_ids
    finally:
        engine.shutdown()
