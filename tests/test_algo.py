"""The algorithm pieces against hand-computed values and the gradient directions they must produce."""

from __future__ import annotations

import math

import pytest
import torch

from ajet.algo import (
    advantage_estimator,
    advantage_estimator_names,
    agg_loss,
    batch_whitened_advantages,
    entropy_from_logits,
    grpo_advantages,
    kl_penalty,
    logprob_gap_metrics,
    masked_mean,
    masked_sum,
    overlong_penalty,
    policy_loss,
    policy_loss_fn,
    policy_loss_names,
    ratio_band_mask,
    register_advantage,
    rloo_advantages,
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


# ---------------------------------------------------------------- more estimators, by name
def _algorithm(*overrides: str):
    from ajet.testing.config import make_config

    return make_config(*overrides).trainer_common.algorithm


def test_rloo_is_each_reward_minus_the_mean_of_the_others():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 4.0, 7.0])
    adv = rloo_advantages(rewards, ["a"] * 4 + ["b"] * 2 + ["c"])
    # a: 1 - 0, 0 - 1/3 (three times); b: 2 - 4, 4 - 2; c: a group of one has no baseline
    torch.testing.assert_close(adv, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3, -2.0, 2.0, 0.0]))
    torch.testing.assert_close(advantage_estimator("rloo")(rewards, ["a"] * 4 + ["b"] * 2 + ["c"], _algorithm()), adv)


def test_reinforce_plus_plus_baseline_centres_per_group_then_whitens_over_the_batch():
    rewards = torch.tensor([1.0, 0.0, 3.0, 3.0, 3.0, 0.0, 2.0])
    ids = ["a", "a", "b", "b", "b", "c", "c"]
    adv = batch_whitened_advantages(rewards, ids)
    # centred: [.5, -.5, 0, 0, 0, -1, 1]; batch mean 0, unbiased var 2.5 / 6
    std = math.sqrt(2.5 / 6)
    expected = torch.tensor([0.5, -0.5, 0.0, 0.0, 0.0, -1.0, 1.0]) / std
    torch.testing.assert_close(adv, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(advantage_estimator("reinforce_plus_plus_baseline")(rewards, ids, _algorithm()), adv)
    # a batch without any spread stays at 0 instead of dividing 0 by 0
    assert torch.equal(batch_whitened_advantages(torch.ones(4), [0, 0, 1, 1]), torch.zeros(4))


def test_grpo_and_dr_grpo_by_name():
    rewards, ids = torch.tensor([3.0, 10.0, 1.0, 20.0]), ["x", "y", "x", "y"]
    grpo = advantage_estimator("grpo")
    torch.testing.assert_close(grpo(rewards, ids, _algorithm()), grpo_advantages(rewards, ids))
    no_std = _algorithm("trainer_common.algorithm.norm_adv_by_std_in_grpo=false")
    torch.testing.assert_close(grpo(rewards, ids, no_std), torch.tensor([1.0, -5.0, -1.0, 5.0]))
    # dr_grpo never divides by the std, whatever norm_adv_by_std_in_grpo says
    dr = _algorithm("trainer_common.algorithm.adv_estimator=dr_grpo", "trainer_common.algorithm.loss_agg_mode=seq-mean-token-sum-norm")
    assert dr.norm_adv_by_std_in_grpo is True
    torch.testing.assert_close(advantage_estimator("dr_grpo")(rewards, ids, dr), torch.tensor([1.0, -5.0, -1.0, 5.0]))


def test_unknown_names_list_the_registered_ones():
    from ajet.algo import UnknownAlgorithmError, check_algorithm_names, policy_loss_fn
    from ajet.backbone import check_config
    from ajet.config import ConfigError
    from ajet.testing.config import make_config

    assert {"grpo", "dr_grpo", "rloo", "reinforce_plus_plus_baseline"} <= set(advantage_estimator_names())
    assert {"vanilla", "gspo", "cispo"} <= set(policy_loss_names())
    with pytest.raises(UnknownAlgorithmError, match="no policy loss 'ppo'; registered: cispo, gspo, vanilla"):
        policy_loss_fn("ppo")
    for key, value in [("adv_estimator", "no_such_x"), ("policy_loss.loss_mode", "no_such_loss")]:
        cfg = make_config(f"trainer_common.algorithm.{key}={value}")
        for backbone in ("debug", "verl"):
            with pytest.raises(ConfigError, match=rf"ajet\.trainer_common\.algorithm\.{key} = '{value}': .*registered: ") as err:
                check_config(cfg, backbone)
            assert err.value.key == f"ajet.trainer_common.algorithm.{key}"
    check_algorithm_names(make_config().trainer_common.algorithm)  # the defaults are registered


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="already registered"):
        register_advantage("grpo")(lambda rewards, ids, algorithm: rewards)


# ---------------------------------------------------------------- Dr. GRPO's aggregation
def test_seq_mean_token_sum_norm_divides_token_sums_by_the_constant():
    # sequence token sums 6 and 4 (the last row is fully masked), divided by 10, mean over 2 sequences
    assert agg_loss(LOSS, MASK, "seq-mean-token-sum-norm", scale_factor=10.0).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="scale_factor"):
        agg_loss(LOSS, MASK, "seq-mean-token-sum-norm")


def test_seq_mean_token_sum_norm_micro_batches_sum_to_full_batch():
    torch.manual_seed(0)
    loss, mask = torch.rand(6, 5), (torch.rand(6, 5) > 0.4).float()
    full = agg_loss(loss, mask, "seq-mean-token-sum-norm", scale_factor=7.0)
    num_seqs = (mask.sum(-1) > 0).sum()
    parts = sum(
        agg_loss(loss[i : i + 3], mask[i : i + 3], "seq-mean-token-sum-norm", num_seqs=num_seqs, scale_factor=7.0)
        for i in (0, 3)
    )
    torch.testing.assert_close(parts, full)


# ---------------------------------------------------------------- the registered policy losses
def _trainer_cfg(*overrides: str):
    from ajet.testing.config import make_config

    return make_config(*overrides).trainer_common


def _loss_and_grad(name, logp_values, old_values, adv_values, mask_values, cfg):
    logp = torch.tensor(logp_values, requires_grad=True)
    loss, metrics = policy_loss_fn(name)(logp, torch.tensor(old_values), torch.tensor(adv_values), torch.tensor(mask_values), cfg)
    loss.backward()
    return loss.item(), logp.grad, metrics


def test_vanilla_clip_higher_lets_a_good_token_rise_further_than_it_may_fall():
    # ratio 1.25 on a positive advantage: inside [0.8, 1.28] (clip-higher), outside a symmetric 0.2
    args = ([[math.log(1.25)]], [[0.0]], [[1.0]], [[1.0]])
    loss, grad, metrics = _loss_and_grad("vanilla", *args, _trainer_cfg())
    assert loss == pytest.approx(-1.25) and grad.item() == pytest.approx(-1.25) and metrics["clipfrac"].item() == 0.0
    loss, grad, metrics = _loss_and_grad("vanilla", *args, _trainer_cfg("trainer_common.clip_ratio_high=0.2"))
    assert loss == pytest.approx(-1.2) and grad.item() == 0.0 and metrics["clipfrac"].item() == 1.0


def test_vanilla_by_name_is_the_ppo_clip_with_the_configured_dual_clip():
    cfg = _trainer_cfg("trainer_common.clip_ratio_c=3.0")
    loss, grad, metrics = _loss_and_grad("vanilla", [[math.log(5.0)]], [[0.0]], [[-1.0]], [[1.0]], cfg)
    assert loss == pytest.approx(3.0) and grad.item() == 0.0 and metrics["clipfrac_lower"].item() == 1.0


# Two sequences: log-ratios (0.1, 0.3) and (0.5, 0.5) with a masked third token whose log-ratio (9.0)
# must not enter the sequence ratio. Sequence ratios: exp(0.2) = 1.2214 and exp(0.5) = 1.6487.
GSPO_LOGP = [[0.1, 0.3, 0.0], [0.5, 0.5, 9.0]]
GSPO_OLD = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
GSPO_MASK = [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]


def _gspo_cfg():
    return _trainer_cfg(
        "trainer_common.algorithm.policy_loss.loss_mode=gspo",
        "trainer_common.algorithm.loss_agg_mode=seq-mean-token-mean",
        "trainer_common.algorithm.policy_loss.gspo_clip_ratio_low=0.2",
        "trainer_common.algorithm.policy_loss.gspo_clip_ratio_high=0.28",
    )


def test_gspo_clips_the_length_normalised_sequence_ratio():
    s0, s1 = math.exp(0.2), math.exp(0.5)
    adv = [[1.0] * 3, [1.0] * 3]
    loss, grad, metrics = _loss_and_grad("gspo", GSPO_LOGP, GSPO_OLD, adv, GSPO_MASK, _gspo_cfg())
    # seq 0 inside [0.8, 1.28]: -A s0 per token; seq 1 above it with A > 0: clipped to -1.28, no gradient
    assert loss == pytest.approx(-(s0 + 1.28) / 2, rel=1e-5)
    # d/d logp_t of -A s_i (s_i = exp(mean log-ratio)) under seq-mean-token-mean: -A s_i / |y_i| / B
    torch.testing.assert_close(grad, torch.tensor([[-s0 / 4, -s0 / 4, 0.0], [0.0, 0.0, 0.0]]))
    assert metrics["clipfrac"].item() == pytest.approx(0.5)
    assert metrics["ratio_max"].item() == pytest.approx(s1, rel=1e-5)


def test_gspo_keeps_the_pessimistic_term_for_a_negative_advantage():
    s0, s1 = math.exp(0.2), math.exp(0.5)
    adv = [[1.0] * 3, [-1.0] * 3]
    loss, grad, metrics = _loss_and_grad("gspo", GSPO_LOGP, GSPO_OLD, adv, GSPO_MASK, _gspo_cfg())
    assert loss == pytest.approx((-s0 + s1) / 2, rel=1e-5)
    torch.testing.assert_close(grad, torch.tensor([[-s0 / 4, -s0 / 4, 0.0], [s1 / 4, s1 / 4, 0.0]]))
    assert metrics["clipfrac"].item() == 0.0


def test_gspo_default_range_is_the_papers_narrow_one():
    cfg = _trainer_cfg("trainer_common.algorithm.policy_loss.loss_mode=gspo")
    # a sequence ratio of exp(0.001) = 1.001 is already past 1 + 4e-4: clipped
    _, grad, metrics = _loss_and_grad("gspo", [[0.001, 0.001]], [[0.0, 0.0]], [[1.0, 1.0]], [[1.0, 1.0]], cfg)
    assert metrics["clipfrac"].item() == 1.0 and torch.all(grad == 0)


def test_cispo_weights_every_tokens_logprob_gradient_by_its_clipped_detached_ratio():
    # ratios 2, 0.5, 1; advantages 1, 1, -1; default range: no lower bound, upper 1 + 0.28
    logp = [[math.log(0.5), math.log(0.1), math.log(0.4)]]
    old = [[math.log(0.25), math.log(0.2), math.log(0.4)]]
    adv, mask = [[1.0, 1.0, -1.0]], [[1.0, 1.0, 1.0]]
    cfg = _trainer_cfg("trainer_common.algorithm.policy_loss.loss_mode=cispo")
    loss, grad, metrics = _loss_and_grad("cispo", logp, old, adv, mask, cfg)
    weights = [1.28, 0.5, 1.0]
    expected_loss = sum(-w * a * lp for w, a, lp in zip(weights, adv[0], logp[0])) / 3
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    torch.testing.assert_close(grad, torch.tensor([[-1.28 / 3, -0.5 / 3, 1.0 / 3]]))
    assert metrics["clipfrac"].item() == pytest.approx(1 / 3)
    # The PPO clip gives the first token (ratio 2 > 1.28, A > 0) no gradient at all.
    _, ppo_grad, _ = _loss_and_grad("vanilla", logp, old, adv, mask, _trainer_cfg())
    assert ppo_grad[0, 0].item() == 0.0
    # A lower bound, when set, lifts the small weight: 0.5 -> 0.8
    low = _trainer_cfg("trainer_common.algorithm.policy_loss.loss_mode=cispo", "trainer_common.algorithm.policy_loss.cispo_clip_ratio_low=0.2")
    _, grad_low, _ = _loss_and_grad("cispo", logp, old, adv, mask, low)
    assert grad_low[0, 1].item() == pytest.approx(-0.8 / 3)


@pytest.mark.parametrize("name", ["vanilla", "gspo", "cispo"])
@pytest.mark.parametrize("adv", [1.0, -1.0])
def test_every_registered_loss_moves_sampled_logprobs_with_the_advantage_sign(name, adv):
    torch.manual_seed(0)
    logits = torch.randn(3, 10, requires_grad=True)
    tokens = torch.tensor([2, 7, 4])

    def token_logprobs():
        return torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)[None]

    before = token_logprobs().detach()
    cfg = _trainer_cfg(f"trainer_common.algorithm.policy_loss.loss_mode={name}")
    loss, _ = policy_loss_fn(name)(token_logprobs(), before, torch.full((1, 3), adv), torch.ones(1, 3), cfg)
    loss.backward()
    with torch.no_grad():
        logits -= 0.5 * logits.grad
    assert torch.all((token_logprobs().detach() - before) * adv > 0)


# ---------------------------------------------------------------- overlong
@pytest.mark.parametrize(
    "length,factor,expected",
    [(40, 1.0, 0.0), (48, 1.0, 0.0), (52, 1.0, -0.25), (56, 1.0, -0.5), (64, 1.0, -1.0), (56, 2.0, -1.0)],
)
def test_overlong_penalty_ramps_over_the_last_buffer_tokens(length, factor, expected):
    # limit 64, buffer 16: no penalty up to 48 tokens, then linear to -factor at 64
    assert overlong_penalty(length, 64, 16, factor) == pytest.approx(expected)


def test_overlong_penalty_rejects_a_buffer_longer_than_the_limit():
    with pytest.raises(ValueError):
        overlong_penalty(10, 64, 65, 1.0)
