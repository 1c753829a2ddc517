"""Bradley–Terry, Plackett–Luce and centring losses: hand-computed values, properties,
float64 gradchecks."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.data.records import Ranking
from alignkit.losses.preference import (
    bradley_terry_loss,
    plackett_luce_loss,
    ranking_to_comparisons,
    reward_centering_loss,
)

t = torch.tensor


def test_bt_hard_label_a_preferred():
    """r_a = 1, r_b = 0, μ = 1: L = −log σ(1) = log(1 + e⁻¹) = log 1.367879 = 0.313262."""
    loss, m = bradley_terry_loss(t([1.0]), t([0.0]), t([1.0]))
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)
    assert m["reward/accuracy"].item() == 1.0


def test_bt_hard_label_b_preferred():
    """r_a = 1, r_b = 0, μ = 0: L = −log σ(−1) = log(1 + e) = log 3.718282 = 1.313262."""
    loss, m = bradley_terry_loss(t([1.0]), t([0.0]), t([0.0]))
    assert loss.item() == pytest.approx(1.313262, abs=1e-6)
    assert m["reward/accuracy"].item() == 0.0


def test_bt_tie_value_and_pull_together():
    """μ = ½: L = ½(0.313262 + 1.313262) = 0.813262; dL/dr_a = σ(1) − ½ = 0.231059 > 0,
    so a gradient step lowers r_a and raises r_b: the tie pulls them together."""
    r_a = t([1.0], requires_grad=True)
    r_b = t([0.0], requires_grad=True)
    loss, m = bradley_terry_loss(r_a, r_b, t([0.5]))
    loss.backward()
    assert loss.item() == pytest.approx(0.813262, abs=1e-6)
    assert r_a.grad.item() == pytest.approx(0.231059, abs=1e-6)
    assert r_b.grad.item() == pytest.approx(-0.231059, abs=1e-6)
    assert math.isnan(m["reward/accuracy"].item())  # ties only: accuracy undefined


def test_bt_tie_minimum_at_equal_rewards():
    """A tie's loss is minimal (log 2 = 0.693147) when the rewards are equal."""
    deltas = torch.linspace(-3, 3, 61)
    losses = torch.stack([bradley_terry_loss(d.view(1), t([0.0]), t([0.5]))[0] for d in deltas])
    assert deltas[losses.argmin()].item() == pytest.approx(0.0, abs=1e-6)
    assert losses.min().item() == pytest.approx(math.log(2), abs=1e-6)


def test_bt_batch_mean_and_scalar_mu():
    """Batch (μ = 1): mean(log(1+e⁻¹), log(1+e⁰)) = (0.313262 + 0.693147)/2 = 0.503204."""
    loss, m = bradley_terry_loss(t([1.0, 0.0]), t([0.0, 0.0]), 1.0)
    assert loss.item() == pytest.approx(0.503204, abs=1e-6)
    assert m["reward/margin"].item() == pytest.approx(0.5)
    assert m["reward/mean"].item() == pytest.approx(0.25)


def test_bt_margin():
    """Δ = 1, m = 0.5. μ = 1: −log σ(1 − 0.5) = log(1 + e^−0.5) = 0.474077.
    μ = 0: −log σ(−(1 + 0.5)) = log(1 + e^1.5) = 1.701413. μ = ½: no margin, 0.813262."""
    one = bradley_terry_loss(t([1.0]), t([0.0]), t([1.0]), margin=0.5)[0]
    zero = bradley_terry_loss(t([1.0]), t([0.0]), t([0.0]), margin=0.5)[0]
    tie = bradley_terry_loss(t([1.0]), t([0.0]), t([0.5]), margin=0.5)[0]
    assert one.item() == pytest.approx(0.474077, abs=1e-6)
    assert zero.item() == pytest.approx(1.701413, abs=1e-6)
    assert tie.item() == pytest.approx(0.813262, abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    st.floats(-5, 5), st.floats(-5, 5), st.floats(0, 1)
)
def test_bt_swap_symmetry(ra, rb, mu):
    """L(a, b, μ) = L(b, a, 1 − μ): which response is called a does not matter."""
    left = bradley_terry_loss(t([ra], dtype=torch.float64), t([rb], dtype=torch.float64), mu)[0]
    right = bradley_terry_loss(t([rb], dtype=torch.float64), t([ra], dtype=torch.float64), 1 - mu)[0]
    assert left.item() == pytest.approx(right.item(), abs=1e-9)


def test_bt_gradcheck():
    g = torch.Generator().manual_seed(0)
    r_a = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    r_b = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    mu = torch.tensor([1.0, 0.0, 0.5, 0.3, 0.9], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: bradley_terry_loss(a, b, mu)[0], (r_a, r_b))
    assert torch.autograd.gradcheck(lambda a, b: bradley_terry_loss(a, b, mu, margin=0.7)[0], (r_a, r_b))


def test_pl_k3_hand_computed():
    """rewards (2, 1, 0), order 0 ≻ 1 ≻ 2:
    stage 1: log(e² + e + 1) − 2 = log 11.107338 − 2 = 0.407606
    stage 2: log(e + 1) − 1 = 0.313262;  stage 3: 0   → 0.720868.
    Reversed order 2 ≻ 1 ≻ 0: (2.407606 − 0) + (log(e + e²) − 1 = 1.313262) → 3.720868."""
    rewards = t([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    order = t([[0, 1, 2], [2, 1, 0]])
    loss, m = plackett_luce_loss(rewards, order)
    assert loss.item() == pytest.approx((0.720868 + 3.720868) / 2, abs=1e-5)
    assert m["reward/top1_accuracy"].item() == 0.5
    assert plackett_luce_loss(rewards[:1], order[:1])[0].item() == pytest.approx(0.720868, abs=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.floats(-6, 6), st.floats(-6, 6))
def test_pl_k2_equals_bt(ra, rb):
    rewards = t([[ra, rb]], dtype=torch.float64)
    pl = plackett_luce_loss(rewards, t([[0, 1]]))[0]
    bt = bradley_terry_loss(rewards[:, 0], rewards[:, 1], 1.0)[0]
    assert pl.item() == pytest.approx(bt.item(), abs=1e-9)


def test_pl_is_a_distribution_over_orders():
    """Σ over all K! orders of exp(−L(order)) = 1 (Plackett–Luce is a probability model)."""
    rewards = t([[0.3, -1.2, 2.0, 0.5]], dtype=torch.float64)
    total = sum(
        math.exp(-plackett_luce_loss(rewards, t([list(p)]))[0].item())
        for p in itertools.permutations(range(4))
    )
    assert total == pytest.approx(1.0, abs=1e-9)


def test_pl_mask_drops_padding():
    """A 2-item ranking padded to K = 3 gives the same loss as the unpadded K = 2 one,
    whatever reward the padding item has."""
    padded = plackett_luce_loss(t([[0.2, 1.5, 9.0]]), t([[1, 0, 2]]), t([[True, True, False]]))[0]
    plain = plackett_luce_loss(t([[0.2, 1.5]]), t([[1, 0]]))[0]
    assert padded.item() == pytest.approx(plain.item(), abs=1e-6)


def test_pl_tied_ranking_is_uniform_over_its_orders():
    """Rewards (1, 0, −1), 0 ≻ {1, 2} tied: rows [0,1,2] and [0,2,1] with weight ½ each.
    Stage 1 is log(e + 1 + e⁻¹) − 1 = 0.407606 in both; stage 2 is log(1 + e⁻¹) = 0.313262
    for 1 ≻ 2 and log(1 + e⁻¹) + 1 = 1.313262 for 2 ≻ 1 → 0.407606 + 0.813262 = 1.220868.
    A tie of K = 2 is then exactly Bradley–Terry with μ = ½: it pulls the rewards together."""
    from alignkit.data import Ranking, ranking_orders

    orders = ranking_orders(Ranking("q", ["a", "b", "c"], [0, 1, 2], ties=[[1, 2]]))
    rewards = t([[1.0, 0.0, -1.0]]).expand(len(orders), 3)
    w = torch.full((len(orders),), 1 / len(orders))
    assert plackett_luce_loss(rewards, t(orders), weights=w)[0].item() == pytest.approx(1.220868, abs=1e-5)
    r = t([[0.7, -0.4], [0.7, -0.4]], dtype=torch.float64, requires_grad=True)
    tie = plackett_luce_loss(r, t([[0, 1], [1, 0]]), weights=t([0.5, 0.5], dtype=torch.float64))[0]
    bt = bradley_terry_loss(r[0, :1], r[0, 1:], 0.5)[0]
    assert tie.item() == pytest.approx(bt.item(), abs=1e-12)
    tie.backward()
    assert r.grad[:, 0].sum() > 0 and r.grad[:, 1].sum() < 0  # descent lowers 0.7, raises −0.4
    # weights are normalised: two copies of a ranking weigh as one
    one = plackett_luce_loss(t([[2.0, 1.0, 0.0]]), t([[0, 1, 2]]))[0]
    two = plackett_luce_loss(t([[2.0, 1.0, 0.0]] * 2), t([[0, 1, 2]] * 2), weights=t([3.0, 3.0]))[0]
    assert two.item() == pytest.approx(one.item())


def test_pl_gradcheck():
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(3)])
    mask = t([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda r: plackett_luce_loss(r, order, mask)[0], (rewards,))


def test_centering_hand_computed_and_gradcheck():
    """λ = 0.1, r = (1, −2, 3): 0.1 · (1 + 4 + 9)/3 = 0.466667; gradient 2λr/n."""
    r = t([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    loss, m = reward_centering_loss(r, 0.1)
    assert loss.item() == pytest.approx(0.466667, abs=1e-6)
    assert m["loss/centering"].item() == pytest.approx(0.466667, abs=1e-6)
    loss.backward()
    assert torch.allclose(r.grad, 2 * 0.1 * r.detach() / 3)
    assert torch.autograd.gradcheck(lambda x: reward_centering_loss(x, 0.3)[0], (r.detach().requires_grad_(),))


def test_ranking_to_comparisons_strict_and_ties():
    strict = Ranking(prompt="p", responses=["x", "y", "z"], order=[2, 0, 1], group="g")
    pairs = ranking_to_comparisons(strict)
    assert [(c.a, c.b, c.mu) for c in pairs] == [("z", "x", 1.0), ("z", "y", 1.0), ("x", "y", 1.0)]
    assert all(c.group == "g" for c in pairs)
    tied = Ranking(prompt="p", responses=["x", "y", "z"], order=[0, 1, 2], ties=[[1, 2]])
    assert [(c.a, c.b, c.mu) for c in ranking_to_comparisons(tied)] == [
        ("x", "y", 1.0),
        ("x", "z", 1.0),
        ("y", "z", 0.5),
    ]
