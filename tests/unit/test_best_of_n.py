"""Best-of-n against its closed forms."""

import math

import pytest
import torch

from alignkit.decoding.best_of_n import (
    best_of_n,
    bon_kl_analytic,
    bon_kl_estimate,
    bon_kl_exact,
    bon_selection_probs,
)


def test_analytic_kl_hand_computed():
    """n = 1: log 1 − 0 = 0;  n = 2: log 2 − ½ = 0.193147;  n = 16: log 16 − 15/16 = 2.772589 − 0.9375 = 1.835089."""
    assert bon_kl_analytic(1) == 0.0
    assert bon_kl_analytic(2) == pytest.approx(0.193147, abs=1e-6)
    assert bon_kl_analytic(16) == pytest.approx(1.835089, abs=1e-6)
    with pytest.raises(ValueError):
        bon_kl_analytic(0)


def test_selection_probs_hand_computed():
    """π uniform on 3 items, rewards 0 < 1 < 2, n = 2: F = 1/3, 2/3, 1 ⇒
    P = 1/9, 4/9 − 1/9 = 3/9, 1 − 4/9 = 5/9. With a tie between the top two items:
    the group {1, 2} (F⁻ = 1/3) gets 1 − 1/9 = 8/9, split equally."""
    probs = torch.full((3,), 1 / 3, dtype=torch.float64)
    p = bon_selection_probs(probs, torch.tensor([0.0, 1.0, 2.0]), 2)
    torch.testing.assert_close(p, torch.tensor([1 / 9, 3 / 9, 5 / 9], dtype=torch.float64))
    p = bon_selection_probs(probs, torch.tensor([0.0, 2.0, 2.0]), 2)
    torch.testing.assert_close(p, torch.tensor([1 / 9, 4 / 9, 4 / 9], dtype=torch.float64))


def test_exact_kl_approaches_continuous_formula():
    """Many distinct rewards under a non-uniform π behave like a continuous reward."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(20000, generator=g, dtype=torch.float64), 0)
    rewards = torch.randn(20000, generator=g, dtype=torch.float64)
    for n in (2, 4, 16):
        assert bon_kl_exact(probs, rewards, n) == pytest.approx(bon_kl_analytic(n), abs=2e-3)
    # few items: the discrete KL is strictly smaller than log n − (n−1)/n
    assert bon_kl_exact(probs[:5] / probs[:5].sum(), rewards[:5], 16) < bon_kl_analytic(16) - 0.3


def _item_sampler(m: int, seed: int):
    g = torch.Generator().manual_seed(seed)

    def sample(prompts):
        return [str(i) for i in torch.randint(0, m, (len(prompts),), generator=g).tolist()]

    return sample


def test_empirical_selection_matches_analytic():
    """π uniform over 40 items with distinct rewards, n = 4, 20000 draws of best-of-n:
    empirical selection frequencies match F(y)^n − F(y⁻)^n within sampling error."""
    m, n, trials = 40, 4, 20000
    g = torch.Generator().manual_seed(1)
    item_reward = torch.randn(m, generator=g, dtype=torch.float64)

    def reward_fn(prompts, responses):
        return item_reward[torch.tensor([int(r) for r in responses])]

    res = best_of_n(["x"] * trials, _item_sampler(m, 2), reward_fn, n=n, batch_size=4096)
    counts = torch.bincount(torch.tensor([int(r) for r in res.responses]), minlength=m).double()
    expected = bon_selection_probs(torch.full((m,), 1 / m, dtype=torch.float64), item_reward, n)
    # Pearson χ² with 39 d.o.f.: mean 39, sd ≈ 8.8; 80 is beyond the 99.99th percentile
    chi2 = ((counts - trials * expected) ** 2 / (trials * expected)).sum().item()
    assert chi2 < 80
    assert 0.5 * (counts / trials - expected).abs().sum().item() < 0.03
    # and the selection is the argmax of the rewards it reports
    torch.testing.assert_close(res.rewards, res.all_rewards.max(1).values)


def test_empirical_kl_matches_log_n_minus_n_minus_1_over_n():
    """π = Uniform(0, 1), r(y) = y (continuous). The Monte-Carlo KL estimate from fresh
    reference samples matches log n − (n−1)/n within 4 standard errors (≈0.03)."""
    n, prompts, m = 16, 2000, 200
    g = torch.Generator().manual_seed(3)

    def sample(ps):
        return [repr(u) for u in torch.rand(len(ps), generator=g, dtype=torch.float64).tolist()]

    def reward_fn(ps, responses):
        return torch.tensor([float(r) for r in responses], dtype=torch.float64)

    res = best_of_n([f"p{i}" for i in range(prompts)], sample, reward_fn, n=n, n_reference=m, batch_size=8192)
    assert res.kl_analytic == pytest.approx(math.log(16) - 15 / 16)
    assert res.kl_estimate == pytest.approx(res.kl_analytic, abs=0.12)
    # the oracle estimate with the true CDF F(y) = y is tighter
    oracle = (math.log(n) + (n - 1) * res.rewards.log()).mean().item()
    assert oracle == pytest.approx(res.kl_analytic, abs=0.1)


def test_kl_estimate_hand_computed():
    """best = 0.5, references [0.1, 0.5, 0.9, 0.7]: F̂ = (1 + ½·1)/4 = 0.375;
    n = 2: log 2 + log 0.375 = log 0.75 = −0.287682."""
    est = bon_kl_estimate(torch.tensor([0.5]), torch.tensor([[0.1, 0.5, 0.9, 0.7]]), 2)
    assert est == pytest.approx(math.log(0.75), abs=1e-6)


def test_n_must_be_positive():
    with pytest.raises(ValueError):
        best_of_n(["x"], _item_sampler(3, 0), lambda p, r: torch.zeros(len(r)), n=0)
