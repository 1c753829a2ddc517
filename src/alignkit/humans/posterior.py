"""Bayesian linear preference learning: a posterior over reward weights θ from comparisons.

The reward is linear in features, R_θ(ξ) = θ · φ(ξ), and a label μ = P(a ≻ b) follows the
Boltzmann / Bradley–Terry likelihood of the learner's human model,

    log p(μ | θ) = μ log σ(β θ·d) + (1 − μ) log σ(−β θ·d),   d = φ(a) − φ(b),

with a Gaussian prior θ ~ N(0, σ₀² I). The log posterior is concave, so Newton's method
finds its mode exactly; :func:`fit_laplace` returns N(θ_MAP, H⁻¹) with H the negative
Hessian at the mode (the Laplace approximation; Bıyık et al. 2019 and APReL sample the
posterior instead — :meth:`LaplacePosterior.sample` gives samples from this Gaussian).

For likelihoods that are not linear-logistic (a learner that assumes regret-based humans,
whose utility −regret_θ involves a max over the library), :func:`fit_map` finds the mode of
any log-likelihood with its gradient by L-BFGS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def bt_log_likelihood(theta: np.ndarray, d: np.ndarray, mu: np.ndarray, beta: float = 1.0) -> float:
    """Σ_i μ_i log σ(β θ·d_i) + (1 − μ_i) log σ(−β θ·d_i); ``d`` ``(N, k)``, ``mu`` ``(N,)``."""
    z = beta * (np.asarray(d) @ np.asarray(theta))
    mu = np.asarray(mu, dtype=float)
    return float(np.sum(mu * _log_sigmoid(z) + (1.0 - mu) * _log_sigmoid(-z)))


def log_posterior(theta: np.ndarray, d: np.ndarray, mu: np.ndarray, *, beta: float = 1.0,
                  prior_var: float = 1.0) -> float:
    """bt_log_likelihood − ‖θ‖² / (2 σ₀²) (up to a constant)."""
    return bt_log_likelihood(theta, d, mu, beta) - float(np.dot(theta, theta)) / (2.0 * prior_var)


@dataclass
class LaplacePosterior:
    """N(``mean``, ``cov``) over θ; ``mean`` is the posterior mode."""

    mean: np.ndarray
    cov: np.ndarray

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, k)`` draws from the Gaussian."""
        return rng.multivariate_normal(self.mean, self.cov, size=n, method="cholesky")


def fit_laplace(d: np.ndarray, mu: np.ndarray, *, beta: float = 1.0, prior_var: float = 1.0,
                max_iter: int = 100, tol: float = 1e-10) -> LaplacePosterior:
    """Mode by damped Newton steps on the concave log posterior, covariance H⁻¹.

    gradient  g = β Σ (μ − p) d − θ / σ₀²,    p = σ(β θ·d)
    Hessian  −H = −β² Σ p (1 − p) d dᵀ − I / σ₀²
    With no labels the result is the prior, N(0, σ₀² I).
    """
    d = np.asarray(d, dtype=float).reshape(len(mu), -1) if len(mu) else np.zeros((0, np.shape(d)[-1]))
    mu = np.asarray(mu, dtype=float)
    k = d.shape[1]
    theta = np.zeros(k)
    eye = np.eye(k) / prior_var

    def hessian(th: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-beta * (d @ th)))
        return beta**2 * (d.T * (p * (1 - p))) @ d + eye

    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-beta * (d @ theta)))
        g = beta * d.T @ (mu - p) - theta / prior_var
        step = np.linalg.solve(hessian(theta), g)
        f0, t = log_posterior(theta, d, mu, beta=beta, prior_var=prior_var), 1.0
        while log_posterior(theta + t * step, d, mu, beta=beta, prior_var=prior_var) < f0 and t > 1e-8:
            t *= 0.5  # backtracking keeps every step an ascent step
        theta = theta + t * step
        if float(np.abs(t * step).max()) < tol:
            break
    return LaplacePosterior(theta, np.linalg.inv(hessian(theta)))


def fit_map(log_lik: Callable[[np.ndarray], tuple[float, np.ndarray]], k: int, *, prior_var: float = 1.0,
            x0: np.ndarray | None = None) -> np.ndarray:
    """The mode of log_lik(θ) − ‖θ‖²/(2σ₀²) by L-BFGS; ``log_lik`` returns (value, gradient)."""
    from scipy.optimize import minimize

    def neg(th: np.ndarray) -> tuple[float, np.ndarray]:
        v, g = log_lik(th)
        return -v + float(th @ th) / (2 * prior_var), -g + th / prior_var

    res = minimize(neg, np.zeros(k) if x0 is None else x0, jac=True, method="L-BFGS-B")
    return res.x


def bt_log_lik_fn(d: np.ndarray, mu: np.ndarray, beta: float = 1.0) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """(value, gradient) of :func:`bt_log_likelihood` as a function of θ (for :func:`fit_map`)."""
    d = np.asarray(d, dtype=float)
    mu = np.asarray(mu, dtype=float)

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = beta * (d @ theta)
        p = 1.0 / (1.0 + np.exp(-z))
        return bt_log_likelihood(theta, d, mu, beta), beta * d.T @ (mu - p)

    return f


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """cos(a, b) = a·b / (‖a‖ ‖b‖) (0 when either is zero)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(np.dot(a, b) / (na * nb)) if na > 0 and nb > 0 else 0.0
