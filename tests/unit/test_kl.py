"""KL estimators and controllers."""

import math

import pytest
import torch

from alignkit.losses.kl import AdaptiveKLController, FixedKLController, kl_k1, kl_k2, kl_k3


def test_estimators_hand_computed():
    """π(y) = 0.5, π_ref(y) = 0.25: ℓ = log 2 = 0.693147; k2 = ½ℓ² = 0.240227;
    k3 = (0.25/0.5 − 1) + log 2 = −0.5 + 0.693147 = 0.193147."""
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert kl_k1(lp, ref).item() == pytest.approx(0.693147, abs=1e-6)
    assert kl_k2(lp, ref).item() == pytest.approx(0.240227, abs=1e-6)
    assert kl_k3(lp, ref).item() == pytest.approx(0.193147, abs=1e-6)


def test_k1_k3_unbiased_k2_k3_nonnegative():
    """E_{y∼p}[k1] = E_{y∼p}[k3] = KL(p‖q) exactly (expectation over the support)."""
    g = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(torch.randn(20, generator=g), -1)
    lq = torch.log_softmax(torch.randn(20, generator=g), -1)
    kl = (lp.exp() * (lp - lq)).sum()
    assert (lp.exp() * kl_k1(lp, lq)).sum().item() == pytest.approx(kl.item(), abs=1e-6)
    assert (lp.exp() * kl_k3(lp, lq)).sum().item() == pytest.approx(kl.item(), abs=1e-6)
    assert torch.all(kl_k2(lp, lq) >= 0) and torch.all(kl_k3(lp, lq) >= -1e-7)
    assert torch.any(kl_k1(lp, lq) < 0)


def test_adaptive_controller_hand_computed():
    """β = 0.1, target 6, horizon 10000, 256 samples:
    KL = 9 → e = clip(0.5) = 0.2 → β = 0.1·(1 + 0.2·256/10000) = 0.100512;
    KL = 6 → unchanged; KL = 3 → e = −0.2 → β·(1 − 0.00512)."""
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(9.0, 256) == pytest.approx(0.100512)
    assert c.update(6.0, 256) == pytest.approx(0.100512)
    assert c.update(3.0, 256) == pytest.approx(0.100512 * (1 - 0.00512))
    assert c.update(float("nan"), 256) == pytest.approx(0.100512 * (1 - 0.00512))
    assert FixedKLController(0.05).update(100.0, 256) == 0.05
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0)
