"""Gradient entanglement against closed-form gradients: a softmax bandit and a bigram LM."""

import math

import pytest
import torch

from alignkit.diagnostics.entanglement import (
    EntanglementStats,
    average_probes,
    case_shares,
    entanglement_cases,
    entanglement_metrics,
    gradient_stats,
    measured_cases,
    pair_gradient_stats,
    predicted_changes,
    probe_metrics,
)
from alignkit.losses.dpo import (
    PairLogps,
    dpo_loss,
    normalized_gradient_dpo_loss,
    per_example_grad_norms,
)


# --- softmax bandit: log π(y) = θ_y − logsumexp θ, so ∇_θ log π(y) = e_y − π ----------------
def test_bandit_inner_products_changes_and_case_by_hand():
    """π = (0.5, 0.3, 0.2), ‖π‖² = 0.38; pair w = 1, l = 0:
    ⟨∇_w, ∇_l⟩ = ‖π‖² − π_w − π_l = 0.38 − 0.8 = −0.42
    ‖∇_w‖² = 1 − 2π_w + ‖π‖² = 0.78,  ‖∇_l‖² = 1 − 1 + 0.38 = 0.38
    Δ_w / c = 0.78 + 0.42 = 1.2 (= 1 − π_w + π_l),  Δ_l / c = −0.42 − 0.38 = −0.8: case 1."""
    theta = torch.tensor([0.5, 0.3, 0.2]).log().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)
    stats = pair_gradient_stats(logp[[1]], logp[[0]], [theta])
    assert stats.inner.item() == pytest.approx(-0.42)
    assert stats.sq_chosen.item() == pytest.approx(0.78)
    assert stats.sq_rejected.item() == pytest.approx(0.38)
    assert stats.cosine.item() == pytest.approx(-0.42 / math.sqrt(0.78 * 0.38))
    d_w, d_l = predicted_changes(stats, coef=0.5)
    assert d_w.item() == pytest.approx(0.6) and d_l.item() == pytest.approx(-0.4)
    assert entanglement_cases(stats).tolist() == [1]


def test_bandit_first_order_prediction_matches_one_sgd_step():
    """A plain SGD step of size η on the DPO loss moves log π_w, log π_l by the predicted
    c(‖∇_w‖² − ⟨⟩), c(⟨⟩ − ‖∇_l‖²) with c = η β σ(−h), up to O(η²); pairs of a batch of 5."""
    g = torch.Generator().manual_seed(0)
    k, beta, eta = 6, 0.5, 1e-3
    theta0 = torch.randn(k, generator=g)
    ref = torch.log_softmax(torch.randn(k, generator=g), -1)
    w, l = torch.tensor([0, 2, 4, 1, 3]), torch.tensor([1, 3, 5, 5, 0])
    for b in range(5):  # each pair on its own: the prediction is for one pair's step
        theta = theta0.clone().requires_grad_(True)
        logp = torch.log_softmax(theta, -1)
        stats = pair_gradient_stats(logp[w[b : b + 1]], logp[l[b : b + 1]], [theta])
        # closed form agrees with autograd
        pi = torch.softmax(theta0, -1)
        e = torch.eye(k)
        closed = gradient_stats((e[w[b]] - pi)[None], (e[l[b]] - pi)[None])
        assert torch.allclose(stats.inner.float(), closed.inner, atol=1e-6)
        assert torch.allclose(stats.sq_chosen.float(), closed.sq_chosen, atol=1e-6)
        pair = PairLogps(logp[w[b : b + 1]], logp[l[b : b + 1]], ref[w[b : b + 1]], ref[l[b : b + 1]])
        loss = dpo_loss(pair, beta, torch.ones(1)).losses.mean()
        loss.backward()
        h = beta * ((logp[w[b]] - ref[w[b]]) - (logp[l[b]] - ref[l[b]])).detach()
        c = eta * beta * torch.sigmoid(-h)
        with torch.no_grad():
            new = torch.log_softmax(theta - eta * theta.grad, -1)
            measured_w, measured_l = new[w[b]] - logp[w[b]], new[l[b]] - logp[l[b]]
        d_w, d_l = predicted_changes(stats, coef=c)
        assert measured_w.item() == pytest.approx(d_w.item(), rel=5e-3, abs=1e-7)
        assert measured_l.item() == pytest.approx(d_l.item(), rel=5e-3, abs=1e-7)
        assert entanglement_cases(stats).item() == 1  # a bandit is always case 1


# --- a bigram LM: log π(y) = Σ_t log softmax(θ[y_{t−1}])[y_t] ----------------------------------
V, BOS = 3, 3  # tokens x = 0, a = 1, c = 2; row 3 is the start-of-sequence context
X, A = 0, 1


def bigram_logp(theta: torch.Tensor, seq: list[int]) -> torch.Tensor:
    prev = [BOS] + seq[:-1]
    lp = torch.log_softmax(theta, -1)
    return lp[prev, seq].sum()


def bigram_grad(theta: torch.Tensor, seq: list[int]) -> torch.Tensor:
    """Closed form: row p gets Σ_{t: y_{t−1} = p} (e_{y_t} − softmax(θ[p]))."""
    pi = torch.softmax(theta, -1)
    grad = torch.zeros_like(theta)
    for p, y in zip([BOS] + seq[:-1], seq, strict=True):
        grad[p] += torch.eye(V)[y] - pi[p]
    return grad.reshape(-1)


CHOSEN = [X, X, X, X, A]  # rejected repeats one token: the two share all but one
REJECTED = [X, X, X, X, X, A]


def test_bigram_case2_by_hand_and_one_dpo_step_lowers_both():
    """θ = 0 (uniform rows), g = e_x − u, q = e_a − u: ‖g‖² = ‖q‖² = 2/3, ⟨g, q⟩ = −1/3.
    ∇_w = [g | 3g + q], ∇_l = [g | 4g + q] (rows BOS | x), so
    ‖∇_w‖² = 2/3 + 6 − 2 + 2/3 = 16/3,  ‖∇_l‖² = 2/3 + 32/3 − 8/3 + 2/3 = 28/3,
    ⟨∇_w, ∇_l⟩ = 2/3 + 8 − 7/3 + 2/3 = 7:  16/3 ≤ 7 < 28/3, case 2;
    Δ_w / c = 16/3 − 7 = −5/3,  Δ_l / c = 7 − 28/3 = −7/3 (both fall, l more)."""
    theta = torch.zeros(V + 1, V, requires_grad=True)
    lw, ll = bigram_logp(theta, CHOSEN), bigram_logp(theta, REJECTED)
    stats = pair_gradient_stats(lw[None], ll[None], [theta])
    closed = gradient_stats(bigram_grad(theta.detach(), CHOSEN)[None], bigram_grad(theta.detach(), REJECTED)[None])
    assert stats.sq_chosen.item() == pytest.approx(16 / 3) == closed.sq_chosen.item()
    assert stats.sq_rejected.item() == pytest.approx(28 / 3)
    assert stats.inner.item() == pytest.approx(7.0) == pytest.approx(closed.inner.item())
    d_w, d_l = predicted_changes(stats)
    assert (d_w.item(), d_l.item()) == (pytest.approx(-5 / 3), pytest.approx(-7 / 3))
    assert entanglement_cases(stats).tolist() == [2]

    # one plain DPO step (SGD, policy = reference at the start): both log-probs fall
    ref_w, ref_l = lw.detach(), ll.detach()
    loss = dpo_loss(PairLogps(lw[None], ll[None], ref_w[None], ref_l[None]), 1.0, torch.ones(1)).losses.mean()
    loss.backward()
    with torch.no_grad():
        new = theta - 0.1 * theta.grad
        new_w, new_l = bigram_logp(new, CHOSEN), bigram_logp(new, REJECTED)
    assert new_w < lw and new_l < ll
    assert (new_w - lw) > (new_l - ll)  # the margin still grows: l falls more
    # and the normalised-gradient update of the same pair is case 1: chosen rises
    assert entanglement_cases(stats, update="normalized").tolist() == [1]
    theta.grad = None
    lw, ll = bigram_logp(theta, CHOSEN), bigram_logp(theta, REJECTED)
    norms = per_example_grad_norms(torch.stack([lw, ll]), [theta])
    loss = normalized_gradient_dpo_loss(PairLogps(lw[None], ll[None], ref_w[None], ref_l[None]), 1.0, torch.ones(1),
                                        norms[:1], norms[1:]).losses.mean()
    loss.backward()
    with torch.no_grad():
        new = theta - 0.1 * theta.grad
        assert bigram_logp(new, CHOSEN) > lw and bigram_logp(new, REJECTED) < ll


def test_bigram_case3_swapped_pair():
    """Swap the roles: ⟨⟩ = 7, ‖∇_w‖² = 28/3, ‖∇_l‖² = 16/3, so Δ_w/c = 7/3, Δ_l/c = 5/3: case 3."""
    theta = torch.zeros(V + 1, V)
    stats = gradient_stats(bigram_grad(theta, REJECTED)[None], bigram_grad(theta, CHOSEN)[None])
    d_w, d_l = predicted_changes(stats)
    assert (d_w.item(), d_l.item()) == (pytest.approx(7 / 3), pytest.approx(5 / 3))
    assert entanglement_cases(stats).tolist() == [3]


def test_boundaries_shares_and_metrics():
    """Boundaries of the table: ⟨⟩ = ‖∇_w‖² < ‖∇_l‖² is case 2 (Δ_w = 0), ⟨⟩ = ‖∇_l‖² <
    ‖∇_w‖² case 3, identical gradients 0. Shares over the batch: 2/5 case 1, ..."""
    s = EntanglementStats(
        inner=torch.tensor([-1.0, 1.0, 1.0, 1.0, 0.0], dtype=torch.float64),
        sq_chosen=torch.tensor([1.0, 1.0, 4.0, 1.0, 1.0], dtype=torch.float64),
        sq_rejected=torch.tensor([1.0, 4.0, 1.0, 1.0, 2.0], dtype=torch.float64),
    )
    assert entanglement_cases(s).tolist() == [1, 2, 3, 0, 1]
    assert case_shares(entanglement_cases(s)) == {0: 0.2, 1: 0.4, 2: 0.2, 3: 0.2}
    m = entanglement_metrics(s)
    assert m["diag/entangle/case1"] == 0.4 and m["diag/entangle/case0"] == 0.2
    # cosines −1, ½, ½, 1, 0 → mean 0.2
    assert m["diag/entangle/cosine"] == pytest.approx(0.2)
    # predicted Δ_w per unit step: 2, 0, 3, 0, 1 → mean 1.2
    assert m["diag/entangle/pred_dlogp_chosen"] == pytest.approx(1.2)
    assert measured_cases(torch.tensor([0.1, -0.1, 0.1, -0.1]), torch.tensor([-0.1, -0.2, 0.1, 0.1])).tolist() == [
        1, 2, 3, 4]
    with pytest.raises(ValueError):
        predicted_changes(s, update="sgd")


def test_probe_metrics_on_the_bigram_pair():
    """The case-2 pair twice: predicted shares, measured log-probs, and after one plain DPO
    step the measured case (both fell) and the change since the start."""
    theta = torch.zeros(V + 1, V, requires_grad=True)

    def logps(th):
        return (torch.stack([bigram_logp(th, CHOSEN)] * 2), torch.stack([bigram_logp(th, REJECTED)] * 2))

    lw, ll = logps(theta)
    m0, start = probe_metrics(lw, ll, [theta])
    assert m0["diag/entangle/case2"] == 1.0 and m0["diag/entangle/case1"] == 0.0
    assert m0["diag/entangle/logp_chosen"] == pytest.approx(5 * math.log(1 / 3))
    assert "diag/entangle/measured_case2" not in m0
    loss = dpo_loss(PairLogps(lw, ll, lw.detach(), ll.detach()), 1.0, torch.ones_like(lw)).losses.mean()
    loss.backward()
    with torch.no_grad():
        theta -= 0.1 * theta.grad
    lw, ll = logps(theta)
    m1, _ = probe_metrics(lw, ll, [theta], start=start, previous=start)
    assert m1["diag/entangle/measured_case2"] == 1.0
    assert m1["diag/entangle/dlogp_chosen"] < 0 and m1["diag/entangle/dlogp_rejected"] < m1["diag/entangle/dlogp_chosen"]


def test_average_probes_over_seeds():
    a = [{"step": 0, "case1": 1.0}, {"step": 4, "case1": 0.5, "measured_case1": 1.0}]
    b = [{"step": 0, "case1": 0.0}, {"step": 4, "case1": 0.25}, {"step": 8, "case1": 0.0}]
    assert average_probes([a, b]) == [{"step": 0, "case1": 0.5}, {"step": 4, "case1": 0.375, "measured_case1": 1.0}]
    assert average_probes([]) == []


def test_gradient_dots_off_the_cpu_take_no_float64_copy():
    """Review finding S9, the GPU branch forced on the CPU: with ``exact=False`` each
    parameter's ⟨a, b⟩ is taken in float32 and only the sum over parameters is float64. By
    hand: (1 + 2⁻¹²)² = 1 + 2⁻¹¹ + 2⁻²⁴; float32 has 23 fraction bits, so the 2⁻²⁴ rounds away
    (half an ulp, to even); float64 keeps it. Two parameters: 3 · 2 = 6 is exact in both."""
    from alignkit.diagnostics.entanglement import _dot

    x = torch.tensor([1 + 2**-12], dtype=torch.float32)
    a, b = [x, torch.tensor([3.0]), None], [x.clone(), torch.tensor([2.0]), torch.ones(1)]
    assert _dot(a, b, exact=False).item() == 1 + 2**-11 + 6
    assert _dot(a, b, exact=True).item() == 1 + 2**-11 + 2**-24 + 6
    assert _dot(a, b).item() == 1 + 2**-11 + 2**-24 + 6  # the CPU default is the exact one
    assert _dot(a, b, exact=False).dtype == torch.float64
