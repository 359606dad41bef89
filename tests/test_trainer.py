"""PolicyTrainer and sequence_logprobs on a tiny random Llama: exact logprobs, accumulation, LoRA, checkpoints."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ajet.schema import Sample
from ajet.testing.config import make_config
from ajet.trainer import (
    PolicyTrainer,
    latest_checkpoint,
    list_checkpoints,
    sequence_logprobs,
)

torch.set_num_threads(2)
VOCAB = 61


def tiny_model(seed: int = 0, tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config)


def trainer_cfg(**overrides):
    """The `trainer_common` section with a test-sized learning rate; `overrides` by dotted key."""
    settings = {"optim.lr": 1e-3, "optim.weight_decay": 0.0, **overrides}
    return make_config(*(f"trainer_common.{key}={value}" for key, value in settings.items())).trainer_common


def lora_cfg(**overrides):
    return make_config(*(f"lora.{key}={value}" for key, value in overrides.items())).lora


def make_samples(model, n: int = 5, seed: int = 1, temperature: float = 1.0, prompt_len: int = 4) -> list[Sample]:
    """Random prompt + response sequences whose rollout logprobs are the model's own (ratio 1)."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        length = prompt_len + 3 + i * 2
        ids = torch.randint(0, VOCAB, (1, length), generator=gen)
        with torch.no_grad():
            lp = sequence_logprobs(model, ids, None, temperature)[0]
        mask = [0] * prompt_len + [1] * (length - prompt_len)
        samples.append(
            Sample(
                input_ids=ids[0].tolist(),
                loss_mask=mask,
                rollout_logprobs=[float(x) * m for x, m in zip(lp, mask)],
                token_versions=[0 if m else -1 for m in mask],
                task_id=f"t{i // 2}",
                episode_id=f"e{i}",
            )
        )
    return samples


def response_logprob(model, sample: Sample, temperature: float = 1.0) -> float:
    ids = torch.tensor([sample.input_ids])
    with torch.no_grad():
        lp = sequence_logprobs(model, ids, None, temperature)[0]
    return float((lp * torch.tensor(sample.loss_mask)).sum())


# ---------------------------------------------------------------- sequence_logprobs
def reference_logprobs(model, ids, attn, temperature):
    """Plain full-vocab log_softmax, one unpadded row at a time."""
    lp = torch.zeros(ids.shape)
    ent = torch.zeros(ids.shape)
    for b in range(ids.shape[0]):
        real = ids[b][attn[b].bool()]
        logits = model(real[None]).logits[0, :-1] / temperature
        logp = torch.log_softmax(logits, -1)
        cols = attn[b].nonzero().squeeze(-1)[1:]
        lp[b, cols] = logp.gather(-1, real[1:, None]).squeeze(-1)
        ent[b, cols] = -(logp.exp() * logp).sum(-1)
    return lp, ent


@pytest.mark.parametrize("pack", [True, False])
def test_sequence_logprobs_match_full_log_softmax(pack):
    model = tiny_model().eval()
    ids = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(3))
    attn = torch.ones_like(ids)
    attn[1, 5:] = 0  # right padding
    attn[2, :3] = 0  # left padding
    ref_lp, ref_ent = reference_logprobs(model, ids, attn, 0.7)
    with torch.no_grad():
        lp, ent = sequence_logprobs(model, ids, attn, 0.7, with_entropy=True, pack=pack, chunk_size=4)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    assert torch.all(lp[attn == 0] == 0) and torch.all(lp[:, 0] == 0)


@pytest.mark.parametrize("pack", [True, False])
def test_only_where_computes_exactly_the_selected_positions(pack):
    """Restricting the lm_head to loss-mask positions changes nothing there and gives 0 elsewhere."""
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(6))
    attn = torch.ones_like(ids)
    attn[1, 6:] = 0
    attn[2, :2] = 0
    where = torch.zeros_like(ids, dtype=torch.bool)
    where[0, 4:] = True
    where[1, 2:6] = True
    where[2, 7:] = True
    where[2, 0] = True  # padding selected by mistake: still 0
    ref_lp, ref_ent = reference_logprobs(model, ids, attn, 1.0)
    weights = torch.randn(3, 9, generator=torch.Generator().manual_seed(7)) * where
    grads = []
    for only_where in (None, where):
        model.zero_grad()
        lp, ent = sequence_logprobs(model, ids, attn, with_entropy=True, pack=pack, chunk_size=4, only_where=only_where)
        if only_where is not None:
            keep = where & attn.bool()
            torch.testing.assert_close(lp[keep], ref_lp[keep], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ent[keep], ref_ent[keep], atol=1e-5, rtol=1e-5)
            assert torch.all(lp[~keep] == 0) and torch.all(ent[~keep] == 0)
        (lp * weights).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_sequence_logprobs_gradient_matches_reference():
    """The chunked, checkpointed, packed path back-propagates the same gradient as the plain one."""
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(4))
    attn = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    weights = torch.randn(2, 7, generator=torch.Generator().manual_seed(5))
    grads = []
    for fn in (lambda m: reference_logprobs(m, ids, attn, 1.0)[0], lambda m: sequence_logprobs(m, ids, attn, chunk_size=3)):
        model = tiny_model()
        (fn(model) * weights).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_default_chunks_follow_the_logits_budget(monkeypatch):
    """chunk_size=None sizes chunks from LOGITS_CHUNK_BYTES; a budget of 3 rows' logits gives 3-token chunks."""
    from ajet.trainer import logprobs as logprobs_module

    model = tiny_model().eval()
    ids = torch.randint(0, VOCAB, (1, 11), generator=torch.Generator().manual_seed(8))
    rows = []
    model.lm_head.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
    monkeypatch.setattr(logprobs_module, "LOGITS_CHUNK_BYTES", 3 * 4 * VOCAB)
    with torch.no_grad():
        lp = sequence_logprobs(model, ids)
    assert rows == [3, 3, 3, 1]  # the 10 predicted positions
    torch.testing.assert_close(lp, reference_logprobs(model, ids, torch.ones_like(ids), 1.0)[0], atol=1e-5, rtol=1e-5)


def test_entropy_as_a_metric_has_no_graph_and_the_same_values():
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(9))
    weights = torch.randn(2, 8, generator=torch.Generator().manual_seed(10))
    out = {}
    for entropy_grad in (True, False):
        model = tiny_model()
        lp, ent = sequence_logprobs(model, ids, with_entropy=True, entropy_grad=entropy_grad, chunk_size=5)
        (lp * weights).sum().backward()
        out[entropy_grad] = (lp.detach(), ent, torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert out[True][1].requires_grad and not out[False][1].requires_grad
    torch.testing.assert_close(out[False][0], out[True][0])
    torch.testing.assert_close(out[False][1], out[True][1].detach())
    torch.testing.assert_close(out[False][2], out[True][2])


def test_greedy_temperature_zero_means_one():
    model = tiny_model().eval()
    ids = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(sequence_logprobs(model, ids, None, 0.0), sequence_logprobs(model, ids, None, 1.0))


# ---------------------------------------------------------------- train_step
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_gradient_accumulation_equals_one_big_batch(mode):
    grads = {}
    for micro in (1, 2, 8):
        model = tiny_model()
        samples = make_samples(model, n=5)
        trainer = PolicyTrainer(model, None, trainer_cfg(**{"micro_batch_size": micro, "algorithm.loss_agg_mode": mode}))
        trainer.compute_gradients(samples, [1.0, -0.5, 0.3, -1.2, 0.8], temperature=1.0)
        grads[micro] = torch.cat([p.grad.flatten() for p in trainer.params])
    assert grads[8].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[8], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(grads[2], grads[8], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_recomputes_layers_and_keeps_the_gradient(lora):
    grads, layer_forwards = {}, {}
    for checkpointing in (False, True):
        model = tiny_model()
        samples = make_samples(model, n=3)
        calls = []
        # A pre-hook: the recomputation in backward stops as soon as it has what backward needs.
        model.model.layers[0].register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        cfg = trainer_cfg(micro_batch_size=2, gradient_checkpointing=checkpointing)
        trainer = PolicyTrainer(model, None, cfg, LORA if lora else None)
        trainer.compute_gradients(samples, [1.0, -0.5, 0.3], temperature=1.0)
        grads[checkpointing] = torch.cat([p.grad.flatten() for p in trainer.params])
        layer_forwards[checkpointing] = len(calls)
    # Two micro-batches: each runs the layer once, and once more in backward when it is checkpointed.
    assert layer_forwards == {False: 2, True: 4}
    assert grads[False].abs().sum() > 0
    torch.testing.assert_close(grads[True], grads[False], atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_on_a_model_without_it_names_the_key():
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="trainer_common.gradient_checkpointing"):
        PolicyTrainer(Plain(), None, trainer_cfg(gradient_checkpointing=True))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_train_step_moves_sequence_logprob_with_advantage(sign):
    model = tiny_model()
    samples = make_samples(model, n=2)
    before = [response_logprob(model, s) for s in samples]
    trainer = PolicyTrainer(model, None, trainer_cfg(micro_batch_size=1))
    metrics = trainer.train_step(samples, [sign, 0.0], temperature=1.0)
    after = [response_logprob(trainer.model, s) for s in samples]
    assert (after[0] - before[0]) * sign > 0
    for key in ("loss", "pg_loss", "kl", "entropy", "clipfrac", "grad_norm", "lr", "rollout_trainer_logprob_diff",
                "tokens", "tokens_per_s", "update_time"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["tokens"] == sum(len(s.input_ids) for s in samples)
    assert metrics["rollout_trainer_logprob_diff"] < 1e-5  # rollout logprobs were the model's own
    assert metrics["grad_norm"] > 0 and metrics["entropy"] > 0


def _weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_a_batch_whose_groups_all_tied_leaves_the_weights_where_they_are():
    """All advantages 0 after a real step: AdamW's momentum and weight decay must not move the weights."""
    model = tiny_model()
    samples = make_samples(model, n=2)
    trainer = PolicyTrainer(model, None, trainer_cfg(**{"micro_batch_size": 1, "optim.weight_decay": 0.1}))
    trainer.train_step(samples, [1.0, -1.0], temperature=1.0)  # leaves momentum in AdamW
    before = _weights(trainer.model)
    metrics = trainer.train_step(samples, [0.0, 0.0], temperature=1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(trainer.model)))
    assert metrics["no_signal"] == 1.0 and metrics["grad_norm"] == 0.0 and metrics["loss"] == 0.0
    assert metrics["tokens"] == sum(len(s.input_ids) for s in samples)
    assert trainer.global_step == 2  # the lr schedule still counts it


def test_a_tied_mini_batch_among_others_takes_no_optimizer_step():
    model = tiny_model()
    samples = make_samples(model, n=4)
    trainer = PolicyTrainer(model, None, trainer_cfg(mini_batch_num=2, micro_batch_size=1))
    trainer.train_step(samples[:2], [1.0, -1.0], temperature=1.0)
    steps_before = [trainer.optimizer.state[p]["step"].item() for p in trainer.params]
    metrics = trainer.train_step(samples, [1.0, -1.0, 0.0, 0.0], temperature=1.0)  # second mini-batch tied
    steps_after = [trainer.optimizer.state[p]["step"].item() for p in trainer.params]
    assert all(after == before + 1 for before, after in zip(steps_before, steps_after))
    assert metrics["no_signal"] == 0.0


def test_a_tied_batch_still_trains_when_the_kl_term_pulls_towards_the_reference():
    model = tiny_model()
    samples = make_samples(model, n=2)
    trainer = PolicyTrainer(model, None, trainer_cfg(use_kl_loss=True, kl_loss_coef=0.5))
    trainer.train_step(samples, [1.0, -1.0], 1.0)  # policy now differs from the reference
    before = _weights(trainer.model)
    metrics = trainer.train_step(samples, [0.0, 0.0], 1.0)
    assert metrics["no_signal"] == 0.0 and metrics["kl"] > 0 and metrics["grad_norm"] > 0
    assert not all(torch.equal(a, b) for a, b in zip(before, _weights(trainer.model)))


def test_rollout_logprob_gap_is_measured_before_the_update():
    model = tiny_model()
    samples = make_samples(model, n=3)
    for s in samples:
        s.rollout_logprobs = [lp - 0.25 * m for lp, m in zip(s.rollout_logprobs, s.loss_mask)]
    cfg = trainer_cfg(mini_batch_num=3, micro_batch_size=1)  # later mini-batches see updated weights
    metrics = PolicyTrainer(model, None, cfg).train_step(samples, [1.0, -1.0, 1.0], temperature=1.0)
    assert metrics["rollout_trainer_logprob_diff"] == pytest.approx(0.25, abs=1e-4)


def test_tis_uses_proximal_ratio_and_capped_weights():
    model = tiny_model()
    samples = make_samples(model, n=2)
    for s in samples:  # rollout engine thought every sampled token half as likely: trainer/rollout = 2
        s.rollout_logprobs = [lp - math.log(2) * m for lp, m in zip(s.rollout_logprobs, s.loss_mask)]
    plain = PolicyTrainer(tiny_model(), None, trainer_cfg()).train_step(samples, [1.0, 1.0], 1.0)
    assert plain["pg_loss"] == pytest.approx(-1.28, abs=1e-4)  # ratio 2 clipped at 1 + 0.28
    tis = PolicyTrainer(tiny_model(), None, trainer_cfg(**{"rollout_correction.tis_cap": 1.5})).train_step(
        samples, [1.0, 1.0], 1.0
    )
    assert tis["pg_loss"] == pytest.approx(-1.5, abs=1e-4)  # ratio to the proximal policy is 1, weight min(2, 1.5)


def test_band_mask_drops_tokens_outside_ratio_band():
    model = tiny_model()
    samples = make_samples(model, n=2)
    total = sum(s.num_trained_tokens for s in samples)
    shifted = 0
    for s in samples:  # shift the first two trained tokens of each sample: ratio e^1 ~ 2.7
        idx = [i for i, m in enumerate(s.loss_mask) if m][:2]
        for i in idx:
            s.rollout_logprobs[i] -= 1.0
        shifted += len(idx)
    cfg = trainer_cfg(**{"rollout_correction.mask_low": 0.5, "rollout_correction.mask_high": 2.0})
    metrics = PolicyTrainer(model, None, cfg).train_step(samples, [1.0, -1.0], 1.0)
    assert metrics["rollout_band_masked_frac"] == pytest.approx(shifted / total)
    assert metrics["trained_tokens"] == total - shifted


def test_full_finetune_kl_against_frozen_copy():
    model = tiny_model()
    samples = make_samples(model, n=2)
    trainer = PolicyTrainer(model, None, trainer_cfg(use_kl_loss=True, kl_loss_coef=0.1))
    first = trainer.train_step(samples, [1.0, -1.0], 1.0)
    second = trainer.train_step(samples, [1.0, -1.0], 1.0)
    assert first["kl"] == pytest.approx(0.0, abs=1e-7)  # policy == reference before any update
    assert second["kl"] > 0
    assert all(not p.requires_grad for p in trainer.ref_model.parameters())


# ---------------------------------------------------------------- LoRA
LORA = lora_cfg(lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")


def test_lora_trains_only_adapters_and_exports_merged_weights():
    model = tiny_model()
    base_names = list(tiny_model().state_dict().keys())
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    samples = make_samples(model, n=2)
    trainer = PolicyTrainer(model, None, trainer_cfg(use_kl_loss=True), LORA)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    first = trainer.train_step(samples, [1.0, -1.0], 1.0)
    trainer.train_step(samples, [1.0, -1.0], 1.0)
    third = trainer.train_step(samples, [1.0, -1.0], 1.0)
    assert first["kl"] == pytest.approx(0.0, abs=1e-7)  # reference = adapter disabled; B starts at 0
    assert third["kl"] > 0
    base = trainer.model.get_base_model()
    for name, param in base.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, frozen_before[name.replace(".base_layer", "")]), name

    exported = dict(trainer.engine_weights())
    merged = copy.deepcopy(trainer.model).merge_and_unload().state_dict()
    assert list(exported) == base_names == list(merged)
    for name in base_names:
        torch.testing.assert_close(exported[name], merged[name], atol=1e-6, rtol=1e-5)
    assert not torch.equal(exported["model.layers.0.self_attn.q_proj.weight"], frozen_before["model.layers.0.self_attn.q_proj.weight"])
    # exporting did not merge anything into the training model
    assert all(not m.merged for m in base.modules() if hasattr(m, "merged") and hasattr(m, "lora_A"))
    # the exported weights reproduce the adapted model's logprobs in a plain copy
    plain = tiny_model(seed=99)
    plain.load_state_dict(exported)
    assert response_logprob(plain, samples[0]) == pytest.approx(response_logprob(trainer.model, samples[0]), abs=1e-4)


def test_full_finetune_engine_weights_are_the_live_state_dict():
    model = tiny_model()
    trainer = PolicyTrainer(model, None, trainer_cfg())
    exported = dict(trainer.engine_weights())
    assert list(exported) == list(tiny_model().state_dict())
    assert all(torch.equal(exported[n], p) for n, p in model.state_dict().items())


# ---------------------------------------------------------------- checkpoints
def _draws():
    return (random.random(), float(np.random.rand()), float(torch.rand(1)))


@pytest.mark.parametrize("lora", [None, LORA])
def test_checkpoint_roundtrip_resumes_exactly(tmp_path, lora):
    model = tiny_model(tie=True)
    samples = make_samples(model, n=3)
    advantages = [1.0, -1.0, 0.5]
    trainer = PolicyTrainer(model, None, trainer_cfg(**{"optim.lr_warmup_steps": 3}), lora)
    trainer.train_step(samples, advantages, 1.0)
    ckpt = trainer.save_checkpoint(tmp_path, step=1, extra_state={"epoch": 0, "batch_index": 7})
    files = {p.name for p in ckpt.iterdir()}
    assert ("adapter" in files) == (lora is not None) and ("model.safetensors" in files) == (lora is None)

    draws_after_save = _draws()
    metrics_after_save = trainer.train_step(samples, advantages, 1.0)
    params_after_save = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train_step(samples, advantages, 1.0)  # drift further away

    # Full fine-tuning restores every weight; a LoRA checkpoint holds the adapter only, so it resumes
    # on the same base model (its fresh adapter starts from a different random lora_A).
    base_seed = 5 if lora is None else 0
    fresh = PolicyTrainer(tiny_model(seed=base_seed, tie=True), None, trainer_cfg(**{"optim.lr_warmup_steps": 3}), lora)
    extra = fresh.load_checkpoint(tmp_path)  # a folder of checkpoints resolves to its latest
    assert extra == {"epoch": 0, "batch_index": 7}
    assert fresh.global_step == 1
    assert _draws() == draws_after_save  # RNG restored: the next random draws are identical
    metrics_resumed = fresh.train_step(samples, advantages, 1.0)
    assert metrics_resumed["lr"] == metrics_after_save["lr"]  # scheduler position restored
    for name, param in fresh.model.named_parameters():
        torch.testing.assert_close(param, params_after_save[name], atol=0, rtol=0)
    state_a, state_b = trainer.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    assert state_a.keys() == state_b.keys()


def test_checkpoint_keeps_last_n(tmp_path):
    trainer = PolicyTrainer(tiny_model(), None, trainer_cfg(max_checkpoints_to_keep=2))
    for step in (1, 2, 3, 4):
        trainer.save_checkpoint(tmp_path, step=step, extra_state={"step": step})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert latest_checkpoint(tmp_path).name == "global_step_4"


def test_crash_mid_save_leaves_previous_latest(tmp_path, monkeypatch):
    trainer = PolicyTrainer(tiny_model(), None, trainer_cfg())
    trainer.save_checkpoint(tmp_path, step=1, extra_state={"pos": 1})
    # A process killed mid-save earlier leaves a temporary folder behind, even one with meta.json.
    stale = tmp_path / ".tmp-global_step_9-deadbeef"
    stale.mkdir()
    (stale / "meta.json").write_text('{"step": 9, "extra_state": {}}')

    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        if str(f).endswith("scheduler.pt"):
            raise KeyboardInterrupt("killed")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(tmp_path, step=2, extra_state={"pos": 2})
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path).name == "global_step_1"
    assert not (tmp_path / "global_step_2").exists()
    assert trainer.load_checkpoint(tmp_path) == {"pos": 1}

    trainer.save_checkpoint(tmp_path, step=2, extra_state={"pos": 2})
    assert latest_checkpoint(tmp_path).name == "global_step_2"
    assert not stale.exists()  # the next good save cleans up leftovers


def test_packed_and_padded_micro_batches_give_the_same_gradient():
    grads = []
    for pack in (False, True):
        model = tiny_model()
        samples = make_samples(model, n=4)
        trainer = PolicyTrainer(model, None, trainer_cfg(micro_batch_size=4), pack=pack)
        assert trainer.pack is pack
        trainer.compute_gradients(samples, [1.0, -0.5, 0.3, -1.2], temperature=0.8)
        grads.append(torch.cat([p.grad.flatten() for p in trainer.params]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)
