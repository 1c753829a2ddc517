"""Accuracy, log-loss and ECE of σ(r_a − r_b): hand-computed values."""

import math

import pytest
import torch

from alignkit.diagnostics.calibration import (
    expected_calibration_error,
    pairwise_accuracy,
    pairwise_log_loss,
    preference_metrics,
    tie_log_loss,
)

t = torch.tensor


def test_accuracy_ignores_ties_and_halves_zero_deltas():
    """Decided pairs: Δ=2 μ=1 right, Δ=−1 μ=1 wrong, Δ=0 μ=0 half, Δ=−3 μ=0 right → 2.5/4;
    the tie (μ = ½) is not counted."""
    delta = t([2.0, -1.0, 0.0, -3.0, 5.0])
    mu = t([1.0, 1.0, 0.0, 0.0, 0.5])
    assert pairwise_accuracy(delta, mu) == pytest.approx(0.625)
    assert math.isnan(pairwise_accuracy(t([1.0]), t([0.5])))


def test_log_losses():
    """Δ = 0 gives log 2 = 0.693147 for any label; Δ = log 3 with μ = 1 gives
    −log(3/4) = 0.287682. Tie log-loss at Δ = log 3: −½ log ¾ − ½ log ¼ = 0.836988."""
    assert pairwise_log_loss(t([0.0, 0.0]), t([1.0, 0.0])) == pytest.approx(math.log(2))
    assert pairwise_log_loss(t([math.log(3)]), t([1.0])) == pytest.approx(0.287682, abs=1e-6)
    assert tie_log_loss(t([math.log(3), 1.0]), t([0.5, 1.0])) == pytest.approx(0.836988, abs=1e-6)


def test_ece_perfectly_calibrated_is_zero():
    """p = σ(log 3) = ¾ for four pairs, three of which a wins: bin [0.7, 0.8) has mean p ¾
    and mean label ¾, the mirrored bin [0.2, 0.3) ¼ and ¼ → ECE 0."""
    delta = torch.full((4,), math.log(3))
    assert expected_calibration_error(delta, t([1.0, 1.0, 1.0, 0.0])) == pytest.approx(0.0, abs=1e-7)


def test_ece_overconfident_hand_computed():
    """p = ¾ but a always wins: |¾ − 1| in one bin, |¼ − 0| in its mirror, each weight ½
    → ECE = ¼. With a wins half the time: |¾ − ½| = ¼ as well."""
    delta = torch.full((4,), math.log(3))
    assert expected_calibration_error(delta, torch.ones(4)) == pytest.approx(0.25)
    assert expected_calibration_error(delta, t([1.0, 0.0, 1.0, 0.0])) == pytest.approx(0.25)


def test_ece_orientation_invariant():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(50, generator=g)
    mu = (torch.rand(50, generator=g) < torch.sigmoid(delta)).double()
    assert expected_calibration_error(delta, mu) == pytest.approx(
        expected_calibration_error(-delta, 1 - mu), abs=1e-12
    )


def test_preference_metrics_dict():
    m = preference_metrics(t([1.0, -1.0, 0.0]), t([1.0, 1.0, 0.5]))
    assert m["accuracy"] == 0.5
    assert m["count"] == 3 and m["n_ties"] == 1
    assert m["tie_log_loss"] == pytest.approx(math.log(2))
    assert set(m) == {"accuracy", "log_loss", "ece", "tie_log_loss", "count", "n_ties"}
