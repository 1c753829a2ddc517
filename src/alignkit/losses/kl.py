"""KL(π_θ ‖ π_ref) estimators from sampled tokens, and the KL-coefficient controllers.

For tokens y ~ π_θ, with log-ratio ℓ = log π_θ(y) − log π_ref(y) (Schulman, "Approximating
KL divergence", 2020):

* k1 = ℓ                      unbiased, high variance, can be negative;
* k2 = ½ ℓ²                   biased (exact to second order), always ≥ 0;
* k3 = (e^{−ℓ} − 1) + ℓ       unbiased, always ≥ 0, low variance.

All estimators are per token, shapes ``(B, T)`` in → ``(B, T)`` out; average them with a
mask (``masked_mean``) or sum over a sequence for a per-sequence KL.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "kl_k1",
    "kl_k2",
    "kl_k3",
]


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log π_θ(y) − log π_ref(y). Shapes ``(B, T)`` → ``(B, T)``."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log π_θ(y) − log π_ref(y))². Shapes ``(B, T)`` → ``(B, T)``."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = π_ref/π_θ − 1 − log(π_ref/π_θ). Shapes ``(B, T)`` → ``(B, T)``."""
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r


class FixedKLController:
    """A constant KL coefficient β."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """Proportional controller on β that steers the per-sequence KL to ``target``
    (Ziegler et al. 2019, "Fine-tuning LMs from human preferences", sec. 2.2):

        e = clip(KL / target − 1, −0.2, 0.2),   β ← β (1 + e · n_steps / horizon)

    ``n_steps`` is the number of samples since the last update (the batch size).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int = 10000):
        if target <= 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        if not math.isfinite(current_kl):
            return self.value
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
