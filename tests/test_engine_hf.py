"""HFEngine against the model it wraps: same greedy tokens as `generate`, same logprobs as a fresh forward.

The model is a tiny random Qwen2 (2 layers, hidden 64) built here, with a byte-level BPE tokenizer trained
in memory, so the tests need no download. A larger initializer_range keeps greedy outputs varied (a
default-initialised random model repeats one token, which would hide position/caching bugs).
"""

from __future__ import annotations

import asyncio
import copy
import threading

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from ajet.engine import EngineClosedError, SamplingParams, build_engine
from ajet.engine.hf import HFEngine
from ajet.engine.prefix_store import PrefixEntry, PrefixStore
from ajet.engine.sampling import sample_next_tokens, truncate_top_k_top_p

torch.set_num_threads(1)

CORPUS = [
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning.",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total?",
    "Josh decides to try flipping a house. He buys a house for $80,000 and puts in $50,000 in repairs.",
    "The answer is 42. Let me compute 3 * 14 = 42 with python.",
]
PROMPTS = [
    "Janet",
    "How many bolts in total does it take?",
    "He buys a house for $80,000",
    "The answer is",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. Josh decides",
]


@pytest.fixture(scope="module")
def tokenizer():
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _tiny_model(vocab_size: int, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        initializer_range=0.3,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return _tiny_model(len(tokenizer), seed=0)


@pytest.fixture
def engine(model, tokenizer):
    eng = HFEngine(copy.deepcopy(model), tokenizer, max_batch_size=16, seed=1234)
    yield eng
    eng.shutdown()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text)


def _reference_greedy(model, prompt: list[int], max_new: int, stop_ids: list[int]) -> list[int]:
    """`generate(do_sample=False)` on the prompt alone, cut after the first stop token."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new,
            eos_token_id=stop_ids,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
    for i, token in enumerate(out):
        if token in stop_ids:
            return out[: i + 1]
    return out


def _full_forward_logprobs(model, prompt: list[int], completion: list[int], temperature: float) -> list[float]:
    """log_softmax(logits / T) of each completion token from one uncached, unpadded forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return [logp[len(prompt) - 1 + i, token].item() for i, token in enumerate(completion)]


async def _wait_for(predicate, timeout: float = 60.0) -> None:
    """Poll a condition on engine state (a hang guard, not a speed assertion)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.001)


# ---------------------------------------------------------------- correctness of batched decoding


async def test_greedy_matches_generate_for_concurrent_prompts_of_different_lengths(engine, model, tokenizer):
    prompts = [_ids(tokenizer, p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == len(prompts)
    params = SamplingParams(max_tokens=24, temperature=0.0)
    outs = await asyncio.gather(*[engine.generate(p, params) for p in prompts])
    stop_ids = engine._default_stop_ids
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == _reference_greedy(model, prompt, 24, stop_ids)
        assert out.policy_versions == [0] * len(out.token_ids)
        expected = _full_forward_logprobs(model, prompt, out.token_ids, temperature=1.0)
        assert out.logprobs == pytest.approx(expected, abs=1e-4)
    # Varied outputs: a degenerate model repeating one token would not test positions.
    assert len({t for out in outs for t in out.token_ids}) > 10


async def test_sampled_logprobs_are_untruncated_tempered_logsoftmax(engine, model, tokenizer):
    prompts = [_ids(tokenizer, p) for p in PROMPTS[:4]]
    settings = [
        SamplingParams(max_tokens=16, temperature=0.7, seed=1),
        SamplingParams(max_tokens=16, temperature=1.3, top_p=0.8, seed=2),
        SamplingParams(max_tokens=16, temperature=0.9, top_k=5, seed=3),
        SamplingParams(max_tokens=16, temperature=0.0),
    ]
    outs = await asyncio.gather(*[engine.generate(p, s) for p, s in zip(prompts, settings)])
    for prompt, params, out in zip(prompts, settings, outs):
        temperature = params.temperature or 1.0
        expected = _full_forward_logprobs(model, prompt, out.token_ids, temperature)
        assert out.logprobs == pytest.approx(expected, abs=1e-4)


async def test_requests_submitted_together_share_decode_steps(engine, tokenizer):
    prompts = [_ids(tokenizer, PROMPTS[i % len(PROMPTS)]) for i in range(8)]
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=7)
    with engine.pause():  # hold the worker so all 8 are waiting when it next looks
        tasks = [asyncio.ensure_future(engine.generate(p, params)) for p in prompts]
        await _wait_for(lambda: engine.stats()["waiting"] == 8)
    outs = await asyncio.gather(*tasks)
    stats = engine.stats()
    assert stats["requests"] == 8
    assert stats["prefill_steps"] == 1
    assert stats["generated_tokens"] == sum(len(o.token_ids) for o in outs)
    assert stats["decode_steps"] < stats["generated_tokens"]
    assert stats["mean_batch_size"] > 1


@pytest.mark.parametrize("first, late_index", [(4, 0), (0, 4)], ids=["newcomer-shorter", "newcomer-longer"])
async def test_late_request_joins_running_batch_and_finishes_first(engine, model, tokenizer, first, late_index):
    # Both orders: the merge pads the newcomers' cache, or the running batch's, on the left.
    running_prompt, late_prompt = _ids(tokenizer, PROMPTS[first]), _ids(tokenizer, PROMPTS[late_index])
    running = asyncio.ensure_future(engine.generate(running_prompt, SamplingParams(max_tokens=300, temperature=0.0)))
    await _wait_for(lambda: engine.stats()["generated_tokens"] >= 3)
    late = await engine.generate(late_prompt, SamplingParams(max_tokens=5, temperature=0.0))
    assert not running.done(), "the late request should have been decoded alongside the running one"
    first_out = await running
    assert engine.stats()["prefill_steps"] == 2
    assert engine.stats()["mean_batch_size"] > 1
    assert late.token_ids == _reference_greedy(model, late_prompt, 5, engine._default_stop_ids)
    assert first_out.token_ids == _reference_greedy(model, running_prompt, 300, engine._default_stop_ids)


async def test_callers_on_two_threads_event_loops_both_complete(engine, model, tokenizer):
    prompt_a, prompt_b = _ids(tokenizer, PROMPTS[1]), _ids(tokenizer, PROMPTS[2])
    params = SamplingParams(max_tokens=10, temperature=0.0)
    results = {}

    def other_thread():
        results["b"] = asyncio.run(engine.generate(prompt_b, params))

    thread = threading.Thread(target=other_thread)
    thread.start()
    results["a"] = await engine.generate(prompt_a, params)
    await asyncio.get_running_loop().run_in_executor(None, thread.join, 60)
    assert results["a"].token_ids == _reference_greedy(model, prompt_a, 10, engine._default_stop_ids)
    assert results["b"].token_ids == _reference_greedy(model, prompt_b, 10, engine._default_stop_ids)


# ---------------------------------------------------------------- finish reasons and limits


async def test_stop_token_is_included_and_finishes_with_stop(engine, model, tokenizer):
    prompt = _ids(tokenizer, PROMPTS[1])
    free = await engine.generate(prompt, SamplingParams(max_tokens=20, temperature=0.0))
    stop_token = free.token_ids[5]
    first = free.token_ids.index(stop_token)
    out = await engine.generate(prompt, SamplingParams(max_tokens=20, temperature=0.0, stop_token_ids=[stop_token]))
    assert out.finish_reason == "stop"
    assert out.token_ids == free.token_ids[: first + 1]
    assert len(out.logprobs) == len(out.policy_versions) == len(out.token_ids)


async def test_stop_string_ends_generation_at_the_completing_token(engine, tokenizer):
    prompt = _ids(tokenizer, PROMPTS[3])
    free = await engine.generate(prompt, SamplingParams(max_tokens=30, temperature=0.0))
    text = tokenizer.decode(free.token_ids)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert len(stop) == 3
    out = await engine.generate(prompt, SamplingParams(max_tokens=30, temperature=0.0, stop=[stop]))
    assert out.finish_reason == "stop"
    assert out.token_ids == free.token_ids[: len(out.token_ids)]
    assert stop in tokenizer.decode(out.token_ids)
    assert stop not in tokenizer.decode(out.token_ids[:-1])


async def test_max_tokens_and_max_model_len_give_length(model, tokenizer):
    prompt = _ids(tokenizer, PROMPTS[4])
    eng = HFEngine(copy.deepcopy(model), tokenizer, max_model_len=len(prompt) + 4)
    try:
        out = await eng.generate(prompt, SamplingParams(max_tokens=3, temperature=0.0))
        assert (out.finish_reason, len(out.token_ids)) == ("length", 3)
        clamped = await eng.generate(prompt, SamplingParams(max_tokens=100, temperature=0.0))
        assert (clamped.finish_reason, len(clamped.token_ids)) == ("length", 4)
        with pytest.raises(ValueError, match="max_model_len"):
            await eng.generate(prompt + prompt, SamplingParams(max_tokens=1))
    finally:
        eng.shutdown()


async def test_invalid_requests_raise_before_queueing(engine, tokenizer):
    with pytest.raises(ValueError, match="vocabulary"):
        await engine.generate([1, 10_000], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="max_tokens"):
        await engine.generate([1, 2], SamplingParams(max_tokens=0))
    with pytest.raises(ValueError, match="empty"):
        await engine.generate([], SamplingParams(max_tokens=2))
    assert engine.stats()["requests"] == 0


async def test_seeded_sampling_is_reproducible_and_independent_of_batch(engine, tokenizer):
    prompt = _ids(tokenizer, PROMPTS[0])
    params = SamplingParams(max_tokens=30, temperature=1.0, seed=42)
    alone = await engine.generate(prompt, params)
    again = await engine.generate(prompt, params)
    crowd = await asyncio.gather(
        engine.generate(_ids(tokenizer, PROMPTS[2]), SamplingParams(max_tokens=30, temperature=1.0)),
        engine.generate(prompt, params),
        engine.generate(_ids(tokenizer, PROMPTS[4]), SamplingParams(max_tokens=30, temperature=0.8, seed=3)),
    )
    other_seed = await engine.generate(prompt, SamplingParams(max_tokens=30, temperature=1.0, seed=43))
    assert again.token_ids == alone.token_ids
    assert crowd[1].token_ids == alone.token_ids
    assert other_seed.token_ids != alone.token_ids


# ---------------------------------------------------------------- policy versions and weights


async def test_update_weights_mid_generation_switches_versions_and_weights(engine, model, tokenizer):
    prompt = _ids(tokenizer, PROMPTS[2])
    # New weights differ in lm_head only, so the KV cache built under the old weights is also the new
    # weights' cache and a fresh forward of the new model is an exact reference for later tokens.
    new_model = copy.deepcopy(model)
    torch.manual_seed(99)
    new_model.lm_head.weight.data.normal_(0.0, 0.3)
    task = asyncio.ensure_future(engine.generate(prompt, SamplingParams(max_tokens=300, temperature=0.0)))
    await _wait_for(lambda: engine.stats()["generated_tokens"] >= 3)
    engine.update_weights([("lm_head.weight", new_model.lm_head.weight.detach().clone())], version=1)
    assert engine.policy_version == 1
    out = await task

    switch = out.policy_versions.index(1)
    assert switch >= 3 and out.policy_versions == [0] * switch + [1] * (len(out.token_ids) - switch)
    old_lp = _full_forward_logprobs(model, prompt, out.token_ids, 1.0)
    new_lp = _full_forward_logprobs(new_model, prompt, out.token_ids, 1.0)
    assert out.logprobs[:switch] == pytest.approx(old_lp[:switch], abs=1e-4)
    assert out.logprobs[switch:] == pytest.approx(new_lp[switch:], abs=1e-4)
    # Greedy: each token after the switch is the new model's argmax at its position.
    with torch.no_grad():
        logits = new_model(torch.tensor([prompt + out.token_ids])).logits[0]
    argmax = logits[len(prompt) - 1 : -1].argmax(-1).tolist()
    assert out.token_ids[switch:] == argmax[switch:]


async def test_update_weights_full_state_dict_between_requests(engine, tokenizer):
    other = _tiny_model(len(tokenizer), seed=7)
    engine.update_weights(other.state_dict().items(), version=3)
    prompt = _ids(tokenizer, PROMPTS[1])
    out = await engine.generate(prompt, SamplingParams(max_tokens=8, temperature=0.0))
    assert out.policy_versions == [3] * len(out.token_ids)
    assert out.token_ids == _reference_greedy(other, prompt, 8, engine._default_stop_ids)
    assert engine.model is not other  # weights were copied in, not the object swapped


async def test_update_weights_rejects_unknown_names_and_shapes(engine):
    with pytest.raises(KeyError):
        engine.update_weights([("no.such.weight", torch.zeros(1))], version=1)
    with pytest.raises(ValueError, match="shape"):
        engine.update_weights([("lm_head.weight", torch.zeros(3, 3))], version=1)


async def test_pause_holds_decoding_until_resume(engine, tokenizer):
    task = asyncio.ensure_future(
        engine.generate(_ids(tokenizer, PROMPTS[0]), SamplingParams(max_tokens=200, temperature=0.0))
    )
    await _wait_for(lambda: engine.stats()["generated_tokens"] >= 2)
    engine.pause()
    held = engine.stats()["generated_tokens"]
    await asyncio.sleep(0.2)  # the worker would decode several tokens in this time if it were not held
    assert engine.stats()["generated_tokens"] == held and not task.done()
    engine.resume()
    assert len((await task).token_ids) > held


async def test_shared_model_mode_pause_edit_bump_version(model, tokenizer):
    shared = copy.deepcopy(model)
    eng = HFEngine(shared, tokenizer)
    try:
        prompt = _ids(tokenizer, PROMPTS[0])
        params = SamplingParams(max_tokens=8, temperature=0.0)
        before = await eng.generate(prompt, params)
        with eng.pause():  # what a trainer sharing the model does around its optimizer step
            shared.train()
            with torch.no_grad():
                shared.lm_head.weight.mul_(-1.0)
            eng.policy_version += 1
        after = await eng.generate(prompt, params)
        assert before.policy_versions == [0] * 8 and after.policy_versions == [1] * 8
        assert after.token_ids == _reference_greedy(shared.eval(), prompt, 8, eng._default_stop_ids)
        assert after.token_ids != before.token_ids
    finally:
        eng.shutdown()


async def test_set_model_switches_model_and_version(engine, tokenizer):
    other = _tiny_model(len(tokenizer), seed=5)
    engine.set_model(other, version=5)
    prompt = _ids(tokenizer, PROMPTS[3])
    out = await engine.generate(prompt, SamplingParams(max_tokens=6, temperature=0.0))
    assert engine.model is other
    assert out.policy_versions == [5] * len(out.token_ids)
    assert out.token_ids == _reference_greedy(other, prompt, 6, engine._default_stop_ids)


async def test_peft_lora_wrapped_model_generates_like_its_generate(model, tokenizer):
    # The debug backbone shares the trainer's model with the engine; with LoRA that is a PeftModel.
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    eng = HFEngine(lora, tokenizer)
    try:
        prompts = [_ids(tokenizer, p) for p in PROMPTS[:3]]
        outs = await asyncio.gather(*[eng.generate(p, SamplingParams(max_tokens=10, temperature=0.0)) for p in prompts])
        for prompt, out in zip(prompts, outs):
            assert out.token_ids == _reference_greedy(lora, prompt, 10, eng._default_stop_ids)
        # init_lora_weights=False makes the adapter non-zero, so the base model must disagree somewhere.
        assert any(o.token_ids != _reference_greedy(model, p, 10, eng._default_stop_ids) for p, o in zip(prompts, outs))
    finally:
        eng.shutdown()


# ---------------------------------------------------------------- prefix reuse across turns


def _next_turn(tokenizer, prompt: list[int], reply: list[int], text: str) -> list[int]:
    return prompt + reply + _ids(tokenizer, text)


async def test_next_turn_reuses_cached_prefix_and_matches_fresh_generation(engine, model, tokenizer):
    prompt = _ids(tokenizer, PROMPTS[1])
    params = SamplingParams(max_tokens=10, temperature=0.0)
    first = await engine.generate(prompt, params)
    hits_before = engine.stats()["prefix_hit_tokens"]
    second_prompt = _next_turn(tokenizer, prompt, first.token_ids, " Then what?")
    second = await engine.generate(second_prompt, params)
    # Everything the engine had fed for turn one (all but its last sampled token) came from the store.
    assert engine.stats()["prefix_hit_tokens"] - hits_before == len(prompt) + len(first.token_ids) - 1
    assert second.token_ids == _reference_greedy(model, second_prompt, 10, engine._default_stop_ids)
    expected = _full_forward_logprobs(model, second_prompt, second.token_ids, 1.0)
    assert second.logprobs == pytest.approx(expected, abs=1e-4)


async def test_one_prefill_mixes_prefix_hits_of_different_lengths_and_a_miss(engine, model, tokenizer):
    params = SamplingParams(max_tokens=8, temperature=0.0)
    prompts = [_ids(tokenizer, PROMPTS[0]), _ids(tokenizer, PROMPTS[4])]
    firsts = await asyncio.gather(*[engine.generate(p, params) for p in prompts])
    follow_ups = [
        _next_turn(tokenizer, prompts[0], firsts[0].token_ids, " And then?"),
        _next_turn(tokenizer, prompts[1], firsts[1].token_ids, " Why"),
        _ids(tokenizer, PROMPTS[2]),  # no stored prefix
    ]
    before = engine.stats()
    with engine.pause():  # all three are admitted by the same prefill
        tasks = [asyncio.ensure_future(engine.generate(p, params)) for p in follow_ups]
        await _wait_for(lambda: engine.stats()["waiting"] == 3)
    outs = await asyncio.gather(*tasks)
    after = engine.stats()
    assert after["prefill_steps"] - before["prefill_steps"] == 1
    reused = sum(len(p) + len(f.token_ids) - 1 for p, f in zip(prompts, firsts))
    assert after["prefix_hit_tokens"] - before["prefix_hit_tokens"] == reused
    for prompt, out in zip(follow_ups, outs):
        assert out.token_ids == _reference_greedy(model, prompt, 8, engine._default_stop_ids)
        assert out.logprobs == pytest.approx(_full_forward_logprobs(model, prompt, out.token_ids, 1.0), abs=1e-4)


async def test_stored_prefixes_are_not_reused_after_a_policy_change(engine, tokenizer):
    params = SamplingParams(max_tokens=6, temperature=0.0)
    prompt = _ids(tokenizer, PROMPTS[3])
    first = await engine.generate(prompt, params)
    other = _tiny_model(len(tokenizer), seed=11)
    engine.update_weights(other.state_dict().items(), version=1)
    second_prompt = _next_turn(tokenizer, prompt, first.token_ids, " ok")
    second = await engine.generate(second_prompt, params)
    assert engine.stats()["prefix_hit_tokens"] == 0
    assert second.token_ids == _reference_greedy(other, second_prompt, 6, engine._default_stop_ids)
    # Shared-model mode: a version bump alone also retires what was stored under the old version.
    with engine.pause():
        engine.policy_version = 2
    await engine.generate(_next_turn(tokenizer, second_prompt, second.token_ids, " ok"), params)
    assert engine.stats()["prefix_hit_tokens"] == 0


def test_prefix_store_longest_match_version_and_lru_budget():
    def entry(tokens, version=0):
        kv = [torch.zeros(1, len(tokens), 2)]
        return PrefixEntry(tuple(tokens), kv, kv, version)

    store = PrefixStore(max_tokens=10)
    store.put(entry([1, 2]))
    store.put(entry([1, 2, 3, 4]))
    store.put(entry([7, 8, 9], version=1))
    assert store.lookup([1, 2, 3, 4, 5], version=0).tokens == (1, 2, 3, 4)
    assert store.lookup([1, 2, 3, 4], version=0).tokens == (1, 2)  # must leave one token to compute
    assert store.lookup([7, 8, 9, 1], version=0) is None  # other policy version
    store.put(entry([5, 6, 7]))  # 12 tokens > 10: the least recently used ([7, 8, 9]) goes
    assert store.num_tokens == 9 and store.lookup([7, 8, 9, 1], version=1) is None


# ---------------------------------------------------------------- lifecycle


async def test_shutdown_fails_running_and_waiting_requests_without_hanging(engine, tokenizer):
    prompt = _ids(tokenizer, PROMPTS[4])
    running = asyncio.ensure_future(engine.generate(prompt, SamplingParams(max_tokens=400, temperature=0.0)))
    await _wait_for(lambda: engine.stats()["generated_tokens"] >= 1)
    engine.pause()  # the next request stays queued; shutdown must still get through a pause
    waiting = asyncio.ensure_future(engine.generate(prompt, SamplingParams(max_tokens=5)))
    await _wait_for(lambda: engine.stats()["waiting"] == 1)
    await asyncio.get_running_loop().run_in_executor(None, engine.shutdown)
    for task in (running, waiting):
        with pytest.raises(EngineClosedError):
            await asyncio.wait_for(task, timeout=60)
    with pytest.raises(EngineClosedError):
        await engine.generate(prompt, SamplingParams(max_tokens=5))


async def test_cancelled_request_leaves_the_batch(engine, tokenizer):
    prompt = _ids(tokenizer, PROMPTS[1])
    doomed = asyncio.ensure_future(engine.generate(prompt, SamplingParams(max_tokens=400, temperature=0.0)))
    await _wait_for(lambda: engine.stats()["running"] == 1)
    doomed.cancel()
    out = await engine.generate(prompt, SamplingParams(max_tokens=4, temperature=0.0))
    assert len(out.token_ids) == 4
    await _wait_for(lambda: engine.stats()["running"] == 0)
    assert doomed.cancelled()


def test_build_engine_dispatches_and_rejects_unknown(model, tokenizer):
    eng = build_engine("hf", copy.deepcopy(model), tokenizer, max_batch_size=4)
    assert isinstance(eng, HFEngine) and eng.max_batch_size == 4
    eng.shutdown()
    with pytest.raises(ValueError, match="unknown engine"):
        build_engine("tgi", model, tokenizer)


# ---------------------------------------------------------------- sampling functions


def test_truncation_keeps_top_k_then_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    out = truncate_top_k_top_p(logits, top_k=torch.tensor([2, 0]), top_p=torch.tensor([1.0, 0.7]))
    kept = torch.isfinite(out)
    assert kept.tolist() == [[True, True, False, False], [True, True, False, False]]
    out = truncate_top_k_top_p(logits, top_k=torch.tensor([0, 3]), top_p=torch.tensor([0.81, 0.01]))
    assert torch.isfinite(out).tolist() == [[True, True, True, False], [True, False, False, False]]


def test_logprob_is_taken_before_truncation():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    tokens, logprobs = sample_next_tokens(
        logits, torch.tensor([0.5]), torch.tensor([1.0]), torch.tensor([1]), [torch.Generator().manual_seed(0)]
    )
    assert tokens.tolist() == [0]  # top_k=1 leaves only the argmax to sample
    assert logprobs.item() == pytest.approx(torch.log_softmax(logits / 0.5, -1)[0, 0].item(), abs=1e-6)
    assert logprobs.item() < -0.01  # not the 0.0 a truncated distribution would give


# ---------------------------------------------------------------- with the project's built-in model


@pytest.mark.slow
async def test_builtin_qwen_tokenizer_chat_prompt_end_to_end():
    from ajet import models

    tok = models.load_tokenizer("builtin:tiny-qwen2-random")
    model = models.load_model("builtin:tiny-qwen2-random").eval()
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is 3 * 14?"}], add_generation_prompt=True, tokenize=False
    )
    prompt = tok.encode(text)
    eng = HFEngine(model, tok)
    try:
        expected_stops = {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
        assert set(eng._default_stop_ids) == expected_stops
        out = await eng.generate(prompt, SamplingParams(max_tokens=12, temperature=0.0))
        assert out.token_ids == _reference_greedy(model, prompt, 12, eng._default_stop_ids)
        assert out.logprobs == pytest.approx(_full_forward_logprobs(model, prompt, out.token_ids, 1.0), abs=1e-4)
    finally:
        eng.shutdown()
