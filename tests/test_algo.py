"""The GRPO pieces against hand-computed values and the gradient directions they must produce."""

from __future__ import annotations

import math

import pytest
import torch

from ajet.algo import (
    agg_loss,
    entropy_from_logits,
    grpo_advantages,
    kl_penalty,
    logprob_gap_metrics,
    masked_mean,
    masked_sum,
    policy_loss,
    ratio_band_mask,
    truncated_is_weights,
)


# ---------------------------------------------------------------- advantages
def test_grpo_advantages_two_groups_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    adv = grpo_advantages(rewards, ["a"] * 4 + ["b"] * 4, eps=0.0)
    # group a: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    # group b: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 1/sqrt(3)
    b = 0.5 * math.sqrt(3)
    expected = torch.tensor([1.5, -0.5, -0.5, -0.5, b, b, -b, -b])
    torch.testing.assert_close(adv, expected)


def test_grpo_advantages_interleaved_ids_and_no_std():
    rewards = torch.tensor([3.0, 10.0, 1.0, 20.0])
    adv = grpo_advantages(rewards, ["x", "y", "x", "y"], norm_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([1.0, -5.0, -1.0, 5.0]))


def test_grpo_advantages_singleton_and_constant_groups_are_zero():
    rewards = torch.tensor([0.7, 1.0, 1.0, 1.0])
    adv = grpo_advantages(rewards, [0, 1, 1, 1])
    assert torch.equal(adv, torch.zeros(4))
    assert torch.isfinite(adv).all()


def test_grpo_advantages_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        grpo_advantages(torch.zeros(3), [0, 0])


# ---------------------------------------------------------------- masking
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [7.0, 7.0, 7.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # last row fully masked


def test_masked_reductions():
    assert masked_sum(LOSS, MASK).item() == 10.0
    assert masked_mean(LOSS, MASK).item() == 2.5
    torch.testing.assert_close(masked_mean(LOSS, MASK, dim=-1), torch.tensor([2.0, 4.0, 0.0]))


@pytest.mark.parametrize(
    "mode,expected",
    [("token-mean", 10 / 4), ("seq-mean-token-sum", (6 + 4) / 2), ("seq-mean-token-mean", (2 + 4) / 2)],
)
def test_agg_loss_modes(mode, expected):
    assert agg_loss(LOSS, MASK, mode).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
def test_agg_loss_micro_batches_sum_to_full_batch(mode):
    torch.manual_seed(0)
    loss = torch.rand(6, 5)
    mask = (torch.rand(6, 5) > 0.4).float()
    mask[2] = 0
    full = agg_loss(loss, mask, mode)
    num_tokens, num_seqs = mask.sum(), (mask.sum(-1) > 0).sum()
    parts = sum(
        agg_loss(loss[i : i + 2], mask[i : i + 2], mode, num_tokens=num_tokens, num_seqs=num_seqs) for i in (0, 2, 4)
    )
    torch.testing.assert_close(parts, full)


def test_agg_loss_unknown_mode():
    with pytest.raises(ValueError):
        agg_loss(LOSS, MASK, "seq-sum")


def test_agg_loss_all_masked_is_zero_not_nan():
    assert agg_loss(LOSS, torch.zeros_like(MASK), "token-mean").item() == 0.0


# ---------------------------------------------------------------- policy loss
def _one_token(ratio: float, adv: float, **kw):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    old = torch.zeros(1, 1)
    loss, metrics = policy_loss(logp, old, torch.tensor([[adv]]), torch.ones(1, 1), 0.2, 0.28, **kw)
    loss.backward()
    return loss.item(), logp.grad.item(), metrics


def test_policy_loss_inside_clip_range_is_ratio_times_advantage():
    loss, grad, metrics = _one_token(1.1, 2.0)
    assert loss == pytest.approx(-2.2)
    assert grad == pytest.approx(-2.2)  # d(-A r)/d logp = -A r
    assert metrics["clipfrac"].item() == 0.0


@pytest.mark.parametrize(
    "ratio,adv,expected_loss,clipped",
    [
        (1.5, 1.0, -1.28, True),  # above 1 + clip_high with A > 0: clipped, no gradient
        (0.5, -1.0, 0.8, True),  # below 1 - clip_low with A < 0: clipped, no gradient
        (0.5, 1.0, -0.5, False),  # below the range with A > 0: the pessimistic term is unclipped
        (1.5, -1.0, 1.5, False),  # above the range with A < 0: unclipped
    ],
)
def test_policy_loss_clipping_outside_range(ratio, adv, expected_loss, clipped):
    loss, grad, metrics = _one_token(ratio, adv)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["clipfrac"].item() == (1.0 if clipped else 0.0)
    if clipped:
        assert grad == 0.0
    else:
        assert grad == pytest.approx(-adv * ratio, rel=1e-5)


def test_policy_loss_dual_clip_bounds_negative_advantage():
    loss, grad, metrics = _one_token(5.0, -1.0, clip_ratio_c=3.0)
    assert loss == pytest.approx(3.0)
    assert grad == 0.0
    assert metrics["clipfrac_lower"].item() == 1.0
    loss_off, _, _ = _one_token(5.0, -1.0)
    assert loss_off == pytest.approx(5.0)


def test_policy_loss_metrics_and_tis_weights():
    logp = torch.log(torch.tensor([[1.0, 2.0, 0.5, 9.0]]))
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv = torch.ones(1, 4)
    loss, m = policy_loss(logp, torch.zeros(1, 4), adv, mask, 0.2, 0.28)
    assert m["ratio_max"].item() == pytest.approx(2.0)  # the masked 9.0 is excluded
    assert m["ratio_mean"].item() == pytest.approx(3.5 / 3)
    assert m["approx_kl"].item() == pytest.approx(-(0 + math.log(2) + math.log(0.5)) / 3)
    weights = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    loss_w, _ = policy_loss(logp, torch.zeros(1, 4), adv, mask, 0.2, 0.28, tis_weights=weights)
    assert loss_w.item() == pytest.approx(0.5 * loss.item())


def test_policy_loss_ignores_masked_tokens():
    torch.manual_seed(0)
    logp = torch.randn(2, 4, requires_grad=True)
    old, adv = torch.randn(2, 4), torch.randn(2, 4)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    loss, _ = policy_loss(logp, old, adv, mask)
    loss.backward()
    assert torch.all(logp.grad[mask == 0] == 0)
    # Changing anything under the mask changes nothing.
    old2 = old.clone()
    old2[mask == 0] += 5.0
    adv2 = adv.clone()
    adv2[mask == 0] *= -3.0
    loss2, _ = policy_loss(logp.detach(), old2, adv2, mask)
    assert loss2.item() == pytest.approx(loss.item())


@pytest.mark.parametrize("adv", [1.0, -1.0])
def test_sgd_step_moves_sampled_token_logprob_with_advantage_sign(adv):
    torch.manual_seed(0)
    logits = torch.randn(3, 10, requires_grad=True)  # 3 positions, vocab 10
    tokens = torch.tensor([2, 7, 4])

    def token_logprobs():
        return torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)[None]  # [1, 3]

    before = token_logprobs().detach()
    loss, _ = policy_loss(token_logprobs(), before, torch.full((1, 3), adv), torch.ones(1, 3))
    loss.backward()
    with torch.no_grad():
        logits -= 0.5 * logits.grad
    after = token_logprobs().detach()
    assert torch.all((after - before) * adv > 0)


# ---------------------------------------------------------------- KL, entropy
def test_kl_penalty_kinds():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -2.0]])
    torch.testing.assert_close(kl_penalty(logp, ref, "kl"), torch.tensor([[0.5, 0.0]]))
    torch.testing.assert_close(kl_penalty(ref, logp, "abs"), torch.tensor([[0.5, 0.0]]))
    torch.testing.assert_close(kl_penalty(logp, ref, "mse"), torch.tensor([[0.125, 0.0]]))
    k3 = kl_penalty(logp, ref, "low_var_kl")
    torch.testing.assert_close(k3, torch.tensor([[math.exp(-0.5) + 0.5 - 1.0, 0.0]]))
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "reverse")


def test_low_var_kl_is_clamped():
    far = kl_penalty(torch.tensor([[-50.0]]), torch.tensor([[0.0]]), "low_var_kl")
    assert far.item() == 10.0
    assert kl_penalty(torch.tensor([[0.0]]), torch.tensor([[-50.0]]), "low_var_kl").item() == 10.0
    assert kl_penalty(torch.tensor([[0.0]]), torch.tensor([[-5.0]]), "low_var_kl").item() == pytest.approx(
        math.exp(-5.0) + 5.0 - 1.0
    )
    logp = torch.tensor([[-200.0]], requires_grad=True)
    kl_penalty(logp, torch.tensor([[0.0]]), "low_var_kl").sum().backward()
    assert torch.isfinite(logp.grad).all()


def test_entropy_from_logits():
    assert entropy_from_logits(torch.zeros(4, 8)).allclose(torch.full((4,), math.log(8)))
    logits = torch.randn(2, 3, 11)
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(entropy_from_logits(logits), -(p * p.log()).sum(-1))


# ---------------------------------------------------------------- off-policy correction
TRAINER = torch.log(torch.tensor([[0.5, 0.9, 0.2, 0.3]]))
ROLLOUT = torch.log(torch.tensor([[0.5, 0.3, 0.8, 0.3]]))
CMASK = torch.tensor([[1, 1, 1, 0]])


def test_truncated_is_weights_caps_ratio_and_zeroes_masked():
    w = truncated_is_weights(TRAINER, ROLLOUT, CMASK, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0, 0.25, 0.0]]))  # ratios 1, 3 -> 2, 0.25


def test_ratio_band_mask_drops_out_of_band_tokens():
    new_mask, frac = ratio_band_mask(TRAINER, ROLLOUT, CMASK, low=0.5, high=2.0)
    assert new_mask.tolist() == [[1, 0, 0, 0]]
    assert frac == pytest.approx(2 / 3)
    only_high, frac_high = ratio_band_mask(TRAINER, ROLLOUT, CMASK, low=None, high=2.0)
    assert only_high.tolist() == [[1, 0, 1, 0]] and frac_high == pytest.approx(1 / 3)


def test_logprob_gap_metrics():
    m = logprob_gap_metrics(TRAINER, ROLLOUT, CMASK)
    assert m["rollout_trainer_logprob_diff"] == pytest.approx((0 + math.log(3) + math.log(4)) / 3, rel=1e-5)
    assert m["rollout_trainer_ratio_max"] == pytest.approx(3.0, rel=1e-5)
    assert m["rollout_trainer_ratio_min"] == pytest.approx(0.25, rel=1e-5)
    empty = logprob_gap_metrics(TRAINER, torch.zeros_like(CMASK), torch.zeros_like(CMASK))
    assert empty["rollout_trainer_logprob_diff"] == 0.0
