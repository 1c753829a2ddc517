"""How well a preference model's P(a ≻ b) = σ(r_a − r_b) matches the labels.

All functions take the reward difference ``delta = r_a − r_b`` ``(N,)`` and the soft
labels ``mu`` ``(N,)`` (μ = P(a ≻ b): 1, 0, ½ for a tie, or anything in between).
Pure torch; each returns a Python float.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "expected_calibration_error",
    "pairwise_accuracy",
    "pairwise_log_loss",
    "preference_metrics",
    "tie_log_loss",
]


def pairwise_accuracy(delta: torch.Tensor, mu: torch.Tensor) -> float:
    """Fraction of decided pairs (μ ≠ ½) where sign(Δ) agrees with the label.

    Δ = 0 (the model cannot tell) counts as half right. NaN when every pair is a tie.
    """
    decided = mu != 0.5
    if not decided.any():
        return math.nan
    d, m = delta[decided], mu[decided]
    right = ((d > 0) == (m > 0.5)).to(torch.float64)
    right = torch.where(d == 0, torch.full_like(right, 0.5), right)
    return right.mean().item()


def _bce(delta: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """−[μ log σ(Δ) + (1 − μ) log σ(−Δ)] per pair, in nats."""
    delta, mu = delta.double(), mu.double()
    return -(mu * F.logsigmoid(delta) + (1 - mu) * F.logsigmoid(-delta))


def pairwise_log_loss(delta: torch.Tensor, mu: torch.Tensor) -> float:
    """Mean Bradley–Terry log-loss (nats) over decided pairs (μ ≠ ½); log 2 is chance."""
    decided = mu != 0.5
    return _bce(delta[decided], mu[decided]).mean().item() if decided.any() else math.nan


def tie_log_loss(delta: torch.Tensor, mu: torch.Tensor) -> float:
    """Mean log-loss over tied pairs (μ = ½); its minimum log 2 is reached at Δ = 0."""
    tied = mu == 0.5
    return _bce(delta[tied], mu[tied]).mean().item() if tied.any() else math.nan


def expected_calibration_error(delta: torch.Tensor, mu: torch.Tensor, n_bins: int = 10) -> float:
    """Expected calibration error of p = σ(Δ) against μ, with equal-width bins.

        ECE = Σ_bins (n_bin / n) · |mean(p) − mean(μ)|   over the pairs in the bin

    Which response is called ``a`` is arbitrary (preference files usually put the chosen
    one first, so μ is always 1), so every pair is counted in both orientations,
    (p, μ) and (1 − p, 1 − μ). That makes the ECE independent of the file's convention.
    """
    p = torch.sigmoid(delta.double())
    mu = mu.double()
    p = torch.cat([p, 1 - p])
    y = torch.cat([mu, 1 - mu])
    if p.numel() == 0:
        return math.nan
    bins = torch.clamp((p * n_bins).long(), max=n_bins - 1)
    ece = p.new_zeros(())
    for k in range(n_bins):
        in_bin = bins == k
        if in_bin.any():
            ece += in_bin.sum() / p.numel() * (p[in_bin].mean() - y[in_bin].mean()).abs()
    return ece.item()


def preference_metrics(delta: torch.Tensor, mu: torch.Tensor, n_bins: int = 10) -> dict[str, float]:
    """Accuracy, log-loss, ECE, tie log-loss and counts, as one dict (``reward eval``)."""
    delta, mu = delta.detach().flatten().cpu(), mu.detach().flatten().cpu().to(delta.dtype)
    return {
        "accuracy": pairwise_accuracy(delta, mu),
        "log_loss": pairwise_log_loss(delta, mu),
        "ece": expected_calibration_error(delta, mu, n_bins),
        "tie_log_loss": tie_log_loss(delta, mu),
        "count": int(delta.numel()),
        "n_ties": int((mu == 0.5).sum()),
    }
