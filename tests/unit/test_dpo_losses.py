"""DPO family losses: hand-computed values and properties."""

import math

import pytest
import torch

from alignkit.losses.dpo import (
    PairLogps,
    cdpo_loss,
    dpo_loss,
    ipo_loss,
    normalized_gradient_dpo_loss,
    pair_metrics,
    per_example_grad_norms,
    plackett_luce_dpo_loss,
    ranking_metrics,
)

# One pair used in the hand computations below:
#   log π(y_w) = −1, log π(y_l) = −2, log π_ref(y_w) = log π_ref(y_l) = −1.5, β = 0.5
#   h = 0.5 · ((−1 + 1.5) − (−2 + 1.5)) = 0.5 · (0.5 + 0.5) = 0.5
PAIR = PairLogps(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]))
NEG_LOGSIG_HALF = math.log1p(math.exp(-0.5))  # −log σ(0.5) = log(1 + e^−0.5) = 0.474077


def mu_(value, n=1, dtype=torch.float32):
    """The soft label μ for n pairs, all equal to ``value`` (the recipe builds it from the data)."""
    return torch.full((n,), float(value), dtype=dtype)


def reduced(loss_fn, name, logps, beta, mu, **kw):
    """A pair loss as the DPO recipe uses it: the batch mean and the metrics it logs."""
    out = loss_fn(logps, beta, mu, **kw)
    return out.losses.mean(), pair_metrics(name, out, logps)


def test_dpo_policy_equals_reference_is_log2():
    """h = 0 ⇒ −log σ(0) = log 2, for any β and any soft label."""
    lp = torch.randn(7)
    for mu in (mu_(1, 7), mu_(0.3, 7), torch.rand(7)):
        loss, m = reduced(dpo_loss, "dpo", PairLogps(lp, lp - 1, lp, lp - 1), 0.37, mu)
        assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
        assert m["reward/margin"].item() == pytest.approx(0.0, abs=1e-6)


def test_dpo_hand_computed():
    """−log σ(0.5) = log(1 + e^−0.5) = log 1.606531 = 0.474077."""
    loss, m = reduced(dpo_loss, "dpo", PAIR, 0.5, mu_(1))
    assert loss.item() == pytest.approx(0.474077, abs=1e-6)
    assert m["reward/chosen"].item() == pytest.approx(0.25)  # 0.5 · (−1 + 1.5)
    assert m["reward/rejected"].item() == pytest.approx(-0.25)
    assert m["reward/accuracy"].item() == 1.0


def test_dpo_soft_label_hand_computed():
    """μ = 0.8: 0.8 · 0.474077 + 0.2 · (−log σ(−0.5)); −log σ(−h) = −log σ(h) + h = 0.974077.
    Total 0.379262 + 0.194815 = 0.574077."""
    loss, _ = reduced(dpo_loss, "dpo", PAIR, 0.5, mu_(0.8))
    assert loss.item() == pytest.approx(0.574077, abs=1e-6)


def test_cdpo_is_dpo_with_smoothed_label():
    """cDPO with ε = 0.2 is DPO with μ = 0.8: 0.574077 (same arithmetic as above)."""
    loss, m = reduced(cdpo_loss, "cdpo", PAIR, 0.5, mu_(1), label_smoothing=0.2)
    assert loss.item() == pytest.approx(0.574077, abs=1e-6)
    assert "loss/cdpo" in m
    with pytest.raises(ValueError):
        cdpo_loss(PAIR, 0.5, mu_(1), label_smoothing=0.7)


def test_ipo_hand_computed():
    """g = (−1 + 1.5) − (−2 + 1.5) = 1.
    β = 0.5: target 1/(2·0.5) = 1 ⇒ (1 − 1)² = 0.
    β = 0.25: target 2 ⇒ (1 − 2)² = 1.
    β = 0.25, μ = 0.75: target (0.75 − 0.5)/0.25 = 1 ⇒ 0.
    β = 0.25, μ = 0.5 (tie): target 0 ⇒ 1² = 1."""
    assert ipo_loss(PAIR, 0.5, mu_(1)).losses.mean().item() == pytest.approx(0.0, abs=1e-7)
    assert ipo_loss(PAIR, 0.25, mu_(1)).losses.mean().item() == pytest.approx(1.0)
    assert ipo_loss(PAIR, 0.25, mu_(0.75)).losses.mean().item() == pytest.approx(0.0, abs=1e-7)
    assert ipo_loss(PAIR, 0.25, mu_(0.5)).losses.mean().item() == pytest.approx(1.0)


@pytest.mark.parametrize("mu", [0.5, 0.7, 0.95])
def test_dpo_soft_label_minimiser_is_logit_mu(mu):
    """∂L/∂h = σ(h) − μ vanishes at h = logit(μ); a tie (μ = ½) pulls the margin to 0."""
    h_star = math.log(mu / (1 - mu))
    for h0, sign in ((h_star - 0.3, -1.0), (h_star, 0.0), (h_star + 0.3, 1.0)):
        c = torch.tensor([h0], requires_grad=True)
        loss = dpo_loss(PairLogps(c, torch.zeros(1), torch.zeros(1), torch.zeros(1)), 1.0, mu_(mu)).losses.mean()
        loss.backward()
        g = c.grad.item()
        assert g == pytest.approx(torch.sigmoid(torch.tensor(h0)).item() - mu, abs=1e-6)
        if sign == 0.0:
            assert abs(g) < 1e-6
        else:
            assert g * sign > 0


def test_dpo_mu_zero_is_swapped_pair():
    lp = torch.randn(4, 5)
    a = dpo_loss(PairLogps(lp[0], lp[1], lp[2], lp[3]), 0.2, mu_(0, 5)).losses.mean()
    b = dpo_loss(PairLogps(lp[1], lp[0], lp[3], lp[2]), 0.2, mu_(1, 5)).losses.mean()
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


def _bandit_pair(seed=0, k=6):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(k, generator=g, requires_grad=True)
    ref = torch.log_softmax(torch.randn(k, generator=g), -1)
    w, l = torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5])
    return theta, ref, w, l


def test_normalized_gradient_matches_stated_update():
    """∇L = −β/B Σ_b σ(r̂_l − r̂_w)(∇log π_w/‖∇log π_w‖ − ∇log π_l/‖∇log π_l‖) by autograd."""
    beta = 0.3
    theta, ref, w, l = _bandit_pair()
    logp = torch.log_softmax(theta, -1)
    cw, cl = logp[w], logp[l]
    nw = per_example_grad_norms(cw, [theta])
    nl = per_example_grad_norms(cl, [theta])
    logps = PairLogps(cw, cl, ref[w], ref[l])
    out = normalized_gradient_dpo_loss(logps, beta, mu_(1, 3), nw, nl)
    loss, m = out.losses.mean(), pair_metrics("normalized", out, logps, grad_norms=(nw, nl))
    (grad,) = torch.autograd.grad(loss, theta, retain_graph=True)

    expected = torch.zeros_like(theta)
    for b in range(3):
        gw = torch.autograd.grad(cw[b], theta, retain_graph=True)[0]
        gl = torch.autograd.grad(cl[b], theta, retain_graph=True)[0]
        weight = torch.sigmoid(beta * ((cl[b] - ref[l][b]) - (cw[b] - ref[w][b]))).detach()
        expected += -beta * weight * (gw / gw.norm() - gl / gl.norm()) / 3
    torch.testing.assert_close(grad, expected)
    # the reported value is plain DPO
    assert loss.item() == pytest.approx(dpo_loss(logps, beta, mu_(1, 3)).losses.mean().item(), abs=1e-6)
    assert m["diag/grad_norm_chosen"].item() > 0


def test_normalized_gradient_components_have_unit_norm():
    """For one pair, the chosen and rejected parts of the update each have norm β·σ(r̂_l − r̂_w):
    the direction components are unit vectors whatever the size of ∇log π."""
    beta = 0.5
    theta, ref, w, l = _bandit_pair(seed=3)
    for scale in (1.0, 25.0):  # sharper logits ⇒ very different raw gradient norms
        th = (theta.detach() * scale).requires_grad_(True)
        logp = torch.log_softmax(th, -1)
        cw, cl = logp[w[:1]], logp[l[:1]]
        nw, nl = per_example_grad_norms(cw, [th]), per_example_grad_norms(cl, [th])
        weight = torch.sigmoid(beta * ((cl - ref[l[:1]]) - (cw - ref[w[:1]]))).item()
        only_w = normalized_gradient_dpo_loss(PairLogps(cw, cl.detach(), ref[w[:1]], ref[l[:1]]), beta, mu_(1),
                                              nw, nl).losses.mean()
        only_l = normalized_gradient_dpo_loss(PairLogps(cw.detach(), cl, ref[w[:1]], ref[l[:1]]), beta, mu_(1),
                                              nw, nl).losses.mean()
        gw = torch.autograd.grad(only_w, th, retain_graph=True)[0]
        gl = torch.autograd.grad(only_l, th, retain_graph=True)[0]
        assert gw.norm().item() == pytest.approx(beta * weight, rel=1e-5)
        assert gl.norm().item() == pytest.approx(beta * weight, rel=1e-5)
        # and plain DPO's chosen component is NOT unit-norm-scaled
        plain = dpo_loss(PairLogps(cw, cl.detach(), ref[w[:1]], ref[l[:1]]), beta, mu_(1)).losses.mean()
        gp = torch.autograd.grad(plain, th, retain_graph=True)[0]
        assert gp.norm().item() == pytest.approx(beta * weight * nw.item(), rel=1e-5)


def test_pl_dpo_k2_equals_dpo_exactly():
    """K = 2 rankings [0, 1] are DPO pairs (chosen = response 0): same loss and gradients."""
    g = torch.Generator().manual_seed(3)
    pol = torch.randn(6, 2, dtype=torch.float64, generator=g, requires_grad=True)
    ref = torch.randn(6, 2, dtype=torch.float64, generator=g)
    order = torch.tensor([[0, 1]] * 6)
    out = plackett_luce_dpo_loss(pol, ref, 0.3, order)
    pl, m = out.losses.mean(), ranking_metrics(out, pol, order)
    (g_pl,) = torch.autograd.grad(pl, pol)
    d, dm = reduced(dpo_loss, "dpo", PairLogps(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1]), 0.3,
                    mu_(1, 6, torch.float64))
    (g_d,) = torch.autograd.grad(d, pol)
    assert pl.item() == d.item()
    assert torch.equal(g_pl, g_d) or torch.allclose(g_pl, g_d, rtol=0, atol=1e-15)
    assert m["reward/margin"].item() == pytest.approx(dm["reward/margin"].item())


def test_pl_dpo_k3_hand_computed():
    """β = 0.5, log π − log π_ref = (2, 0, −2) → r̂ = (1, 0, −1); order 0 ≻ 1 ≻ 2:
    [log(e + 1 + e⁻¹) − 1] + [log(1 + e⁻¹) − 0] = 0.407606 + 0.313262 = 0.720868.
    Order 2 ≻ 0 ≻ 1 (second row): [log(e + 1 + e⁻¹) + 1] + [log(e + 1) − 1] = 2.407606 + 0.313262."""
    ref = torch.tensor([[-3.0, -2.0, -1.0]] * 2)
    pol = ref + torch.tensor([2.0, 0.0, -2.0])
    one, two = torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 2], [2, 0, 1]])
    out = plackett_luce_dpo_loss(pol[:1], ref[:1], 0.5, one)
    loss, m = out.losses.mean(), ranking_metrics(out, pol[:1], one)
    assert loss.item() == pytest.approx(0.720868, abs=1e-5)
    assert m["reward/best"].item() == pytest.approx(1.0) and m["reward/worst"].item() == pytest.approx(-1.0)
    out2 = plackett_luce_dpo_loss(pol, ref, 0.5, two)
    loss2, m2 = out2.losses.mean(), ranking_metrics(out2, pol, two)
    assert loss2.item() == pytest.approx((0.720868 + 2.720868) / 2, abs=1e-5)
    torch.testing.assert_close(out2.losses, torch.tensor([0.720868, 2.720868]), atol=1e-5, rtol=0)  # per row
    assert m2["reward/top1_accuracy"].item() == 0.5
    assert m2["loss/pl_dpo"].item() == pytest.approx(loss2.item())
    # policy == reference: every implicit reward is 0, the loss is log K! = log 6
    assert plackett_luce_dpo_loss(ref, ref, 0.5, one).losses.mean().item() == pytest.approx(math.log(6))


def test_cdpo_and_normalized_respect_the_data_label():
    """A pair labelled b ≻ a (μ = 0) trains as the swapped pair labelled a ≻ b: cDPO with ε = 0.2
    is DPO with μ' = 0.2 (= 0.8 on the swapped pair); normalised-gradient DPO with μ = 0 has the
    swapped pair's gradient, and its value is the soft-label DPO loss."""
    a = torch.tensor([-1.0, -3.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([-2.0, -2.5], dtype=torch.float64, requires_grad=True)
    ra, rb = torch.tensor([-1.5, -2.0], dtype=torch.float64), torch.tensor([-1.5, -2.2], dtype=torch.float64)
    mu = torch.tensor([0.0, 0.0], dtype=torch.float64)
    ab, ba = PairLogps(a, b, ra, rb), PairLogps(b, a, rb, ra)
    c0 = cdpo_loss(ab, 0.5, mu, label_smoothing=0.2).losses.mean()
    assert c0.item() == pytest.approx(dpo_loss(ab, 0.5, mu_(0.2, 2)).losses.mean().item())
    assert c0.item() == pytest.approx(cdpo_loss(ba, 0.5, mu_(1, 2), label_smoothing=0.2).losses.mean().item())
    na, nb = torch.tensor([2.0, 3.0], dtype=torch.float64), torch.tensor([1.0, 4.0], dtype=torch.float64)
    loss0 = normalized_gradient_dpo_loss(ab, 0.5, mu, na, nb).losses.mean()
    g0 = torch.autograd.grad(loss0, [a, b])
    loss1 = normalized_gradient_dpo_loss(ba, 0.5, mu_(1, 2), nb, na).losses.mean()
    g1 = torch.autograd.grad(loss1, [b, a])
    assert torch.allclose(g0[0], g1[1]) and torch.allclose(g0[1], g1[0])
    assert loss0.item() == pytest.approx(dpo_loss(ab, 0.5, mu_(0, 2)).losses.mean().item())
    # a tie pulls the margin to 0: h > 0 here for pair 0 → its chosen log-prob gets pushed down
    tie = normalized_gradient_dpo_loss(PairLogps(a[:1], b[:1], ra[:1], rb[:1]), 0.5, mu_(0.5, 1, torch.float64),
                                       na[:1], nb[:1]).losses.mean()
    (ga,) = torch.autograd.grad(tie, [a])
    assert ga[0].item() > 0  # descent lowers log π(a)


def test_pair_losses_are_per_example_and_rewards_are_implicit():
    """The pair above and its swap, μ = 1: per-example DPO losses −log σ(0.5) = 0.474077 and
    −log σ(−0.5) = 0.474077 + 0.5 = 0.974077 (not their mean); r̂_w = (0.25, −0.25),
    r̂_l = (−0.25, 0.25). IPO, β = 0.25: g = (1, −1), target 2 ⇒ (1, 9)."""
    two = PairLogps(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0]), torch.full((2,), -1.5), torch.full((2,), -1.5))
    out = dpo_loss(two, 0.5, mu_(1, 2))
    torch.testing.assert_close(out.losses, torch.tensor([0.474077, 0.974077]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.25, -0.25]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.25, 0.25]))
    assert not out.chosen_rewards.requires_grad
    torch.testing.assert_close(ipo_loss(two, 0.25, mu_(1, 2)).losses, torch.tensor([1.0, 9.0]))
    m = pair_metrics("dpo", out, two)
    assert m["loss/dpo"].item() == pytest.approx((0.474077 + 0.974077) / 2, abs=1e-6)
    assert m["reward/accuracy"].item() == 0.5 and m["reward/margin"].item() == pytest.approx(0.0)


def test_pair_losses_refuse_a_label_or_log_prob_of_the_wrong_shape():
    with pytest.raises(ValueError, match="mu: one soft label per pair"):
        dpo_loss(PAIR, 0.5, torch.tensor(1.0))
    with pytest.raises(ValueError, match="PairLogps"):
        PairLogps(torch.zeros(2), torch.zeros(2), torch.zeros(3), torch.zeros(2))
