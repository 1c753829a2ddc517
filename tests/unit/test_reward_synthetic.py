"""Bradley–Terry recovers a known reward: synthetic items with a linear true reward
r*(x) = w*·x, choices sampled from P(a ≻ b) = σ(r*(a) − r*(b)), a linear head fitted by
minimising bradley_terry_loss. The fitted reward must rank fresh items like r* (Spearman
≥ 0.95) and its P(a ≻ b) must be calibrated on fresh pairs (ECE ≤ 0.05)."""

import torch

from alignkit.diagnostics.calibration import expected_calibration_error
from alignkit.losses.preference import bradley_terry_loss


def _spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    rx = x.argsort().argsort().double()
    ry = y.argsort().argsort().double()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return (rx @ ry / (rx.norm() * ry.norm())).item()


def _sample_pairs(w_true, n, g):
    x_a = torch.randn(n, w_true.numel(), generator=g, dtype=torch.float64)
    x_b = torch.randn(n, w_true.numel(), generator=g, dtype=torch.float64)
    p = torch.sigmoid((x_a - x_b) @ w_true)
    mu = (torch.rand(n, generator=g, dtype=torch.float64) < p).double()
    return x_a, x_b, mu


def test_bt_recovers_linear_reward_and_is_calibrated():
    g = torch.Generator().manual_seed(0)
    d = 8
    w_true = torch.randn(d, generator=g, dtype=torch.float64) * 0.7
    x_a, x_b, mu = _sample_pairs(w_true, 4000, g)

    head = torch.nn.Linear(d, 1, dtype=torch.float64)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss, _ = bradley_terry_loss(head(x_a).squeeze(-1), head(x_b).squeeze(-1), mu)
        loss.backward()
        return loss

    opt.step(closure)

    with torch.no_grad():
        items = torch.randn(2000, d, generator=g, dtype=torch.float64)
        assert _spearman(head(items).squeeze(-1), items @ w_true) >= 0.95

        t_a, t_b, t_mu = _sample_pairs(w_true, 20000, g)
        delta = (head(t_a) - head(t_b)).squeeze(-1)
        assert expected_calibration_error(delta, t_mu) <= 0.05
        # the same ranking with overconfident probabilities is caught by the ECE
        assert expected_calibration_error(3 * delta, t_mu) > 0.05
