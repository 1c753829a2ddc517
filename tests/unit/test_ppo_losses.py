"""PPO / A2C losses, GAE, whitening, KL-penalised rewards: hand-computed values and properties."""

import math

import pytest
import torch

from alignkit.losses.ppo import (
    a2c_policy_loss,
    explained_variance,
    gae,
    kl_penalized_rewards,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)


def test_ppo_policy_loss_hand_computed():
    """Three tokens, ε = 0.2, old log-probs 0:
    ρ = 1.5, A = +1: max(−1.5, −1.2) = −1.2  (clipped: no gradient)
    ρ = 1.5, A = −1: max( 1.5,  1.2) =  1.5  (unclipped)
    ρ = 0.5, A = +1: max(−0.5, −0.8) = −0.5  (unclipped)
    loss = (−1.2 + 1.5 − 0.5)/3 = −0.0666…; clipfrac = 1/3.
    ∂/∂ℓ of −Aρ = −Aρ: token 2 → +1.5/3 = 0.5, token 3 → −0.5/3."""
    lp = torch.log(torch.tensor([[1.5, 1.5, 0.5]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    loss, m = ppo_policy_loss(lp, torch.zeros(1, 3), adv, torch.ones(1, 3), clip_eps=0.2)
    assert loss.item() == pytest.approx(-0.2 / 3, abs=1e-6)
    assert m["diag/clipfrac"].item() == pytest.approx(1 / 3)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, 0.5, -0.5 / 3]]))


def test_ppo_clipped_ratios_give_zero_gradient():
    """Every token outside the trust region in its advantage's direction: gradient is exactly 0."""
    lp = torch.log(torch.tensor([[1.4, 0.6, 1.3]])).requires_grad_(True)
    adv = torch.tensor([[2.0, -1.0, 0.5]])
    loss, m = ppo_policy_loss(lp, torch.zeros(1, 3), adv, torch.ones(1, 3), clip_eps=0.2)
    loss.backward()
    assert torch.all(lp.grad == 0)
    assert m["diag/clipfrac"].item() == 1.0


def test_ppo_on_policy_gradient_equals_a2c():
    """At ρ = 1 the clipped surrogate's gradient is the plain policy gradient."""
    torch.manual_seed(0)
    lp = torch.randn(3, 5, requires_grad=True)
    adv, mask = torch.randn(3, 5), (torch.rand(3, 5) > 0.3).float()
    g1 = torch.autograd.grad(ppo_policy_loss(lp, lp.detach(), adv, mask)[0], lp)[0]
    g2 = torch.autograd.grad(a2c_policy_loss(lp, adv, mask)[0], lp)[0]
    torch.testing.assert_close(g1, g2)
    assert torch.all(g1[mask == 0] == 0)


def test_ppo_value_loss_hand_computed():
    """V = 1.5, V_old = 1.0, R = 2.0, ε = 0.2: (1.5 − 2)² = 0.25; V_clip = 1.2, (1.2 − 2)² = 0.64;
    loss = ½ · max = 0.32. Without clipping: ½ · 0.25 = 0.125."""
    v, vo, r, m = (torch.tensor([[x]]) for x in (1.5, 1.0, 2.0, 1.0))
    assert ppo_value_loss(v, vo, r, m, 0.2)[0].item() == pytest.approx(0.32)
    assert ppo_value_loss(v, vo, r, m, None)[0].item() == pytest.approx(0.125)


def test_gae_hand_computed():
    """r = [0, 0, 1], V = [0.5, 0.6, 0.7], γ = 0.9, λ = 0.8 (γλ = 0.72):
    t=2: δ = 1 − 0.7 = 0.3,              A = 0.3
    t=1: δ = 0.9·0.7 − 0.6 = 0.03,       A = 0.03 + 0.72·0.3 = 0.246
    t=0: δ = 0.9·0.6 − 0.5 = 0.04,       A = 0.04 + 0.72·0.246 = 0.21712
    returns = A + V = [0.71712, 0.846, 1.0]."""
    adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 0.9, 0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.21712, 0.246, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[0.71712, 0.846, 1.0]]))


def test_gae_limits_and_mask():
    torch.manual_seed(1)
    r, v = torch.randn(4, 6), torch.randn(4, 6)
    ones = torch.ones(4, 6)
    # λ = 1, γ = 1: returns are Monte-Carlo reward-to-go
    _, ret = gae(r, v, ones, 1.0, 1.0)
    torch.testing.assert_close(ret, r.flip(1).cumsum(1).flip(1))
    # λ = 0: advantage is the one-step TD error
    adv, _ = gae(r, v, ones, 0.9, 0.0)
    nxt = torch.cat([v[:, 1:], torch.zeros(4, 1)], 1)
    torch.testing.assert_close(adv, r + 0.9 * nxt - v)
    # tokens after the mask end the episode: same as truncating the tensors
    mask = ones.clone()
    mask[:, 4:] = 0
    adv_m, ret_m = gae(r, v, mask, 0.95, 0.9)
    adv_t, ret_t = gae(r[:, :4], v[:, :4], ones[:, :4], 0.95, 0.9)
    torch.testing.assert_close(adv_m[:, :4], adv_t)
    assert torch.all(adv_m[:, 4:] == 0) and torch.all(ret_m[:, 4:] == 0)


def test_kl_penalized_rewards_hand_computed():
    """log π = [−1, −2, −3], log π_ref = −1.5, mask [1, 1, 0], r̂ = 2, β = 0.1:
    r = [−0.1·0.5, −0.1·(−0.5) + 2, 0] = [−0.05, 2.05, 0]. Return = r̂ − β·Σk1 = 2 − 0."""
    r = kl_penalized_rewards(
        torch.tensor([[-1.0, -2.0, -3.0]]), torch.full((1, 3), -1.5), torch.tensor([2.0]),
        torch.tensor([[1, 1, 0]]), kl_coef=0.1,
    )
    torch.testing.assert_close(r, torch.tensor([[-0.05, 2.05, 0.0]]))


def test_kl_penalized_rewards_empty_row_gets_no_score():
    r = kl_penalized_rewards(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([1.0, 5.0]),
                             torch.tensor([[0, 0, 0], [1, 0, 0]]), 0.1)
    torch.testing.assert_close(r, torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0]]))


def test_whiten_and_masked_mean():
    """masked_mean([1, 2, 3, (9)]) = 2; whitened [1, 2, 3] has mean 0, unbiased std 1 → [−1, 0, 1]."""
    x, m = torch.tensor([[1.0, 2.0, 3.0, 9.0]]), torch.tensor([[1, 1, 1, 0]])
    assert masked_mean(x, m).item() == pytest.approx(2.0)
    torch.testing.assert_close(whiten(x, m), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(whiten(x, m, shift_mean=False), torch.tensor([[1.0, 2.0, 3.0, 0.0]]),
                               atol=1e-6, rtol=0)


def test_explained_variance():
    ret, m = torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3)
    assert explained_variance(ret, ret, m).item() == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 3), 2.0), ret, m).item() == pytest.approx(0.0)
    assert math.isclose(explained_variance(ret.flip(1), ret, m).item(), 1 - 4.0, abs_tol=1e-6)
