"""Reward over-optimisation (Goodhart): proxy reward rising while gold reward falls.

Gao, Schulman & Hilton (2023), "Scaling Laws for Reward Model Overoptimization": as a
policy moves away from the reference (measured by KL), the proxy reward it was optimised
against keeps rising, but the gold reward peaks and then declines. This module holds
the arithmetic the demo's KL sweep needs:

* :func:`best_of_n_curve` — exact expected proxy and gold reward of best-of-n for every
  n from K samples per prompt (order statistics, no resampling noise), with the analytic
  KL of :func:`alignkit.decoding.best_of_n.bon_kl_analytic`;
* :func:`divergence` — where gold peaks along a sweep, and whether the loosest leash
  has higher proxy but lower gold than the peak (the over-optimisation signature);
* :func:`fit_gao` — Gao et al.'s functional forms fitted to a sweep, with bootstrap CIs
  and the KL at which gold is predicted to peak.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from alignkit.decoding.best_of_n import bon_kl_analytic


def best_of_n_weights(k: int, n: int) -> np.ndarray:
    """P(the sample of proxy rank i is the best of n drawn without replacement from k).

    Ranks i = 1..k ascending by proxy; the best of a random n-subset has rank i with
    probability C(i − 1, n − 1) / C(k, n). Shape ``(k,)``, sums to 1.
    """
    if not 1 <= n <= k:
        raise ValueError(f"best-of-n needs 1 ≤ n ≤ k, got n={n}, k={k}")
    i = np.arange(1, k + 1)
    # log C(i-1, n-1) - log C(k, n), with C = 0 for i - 1 < n - 1
    with np.errstate(divide="ignore"):
        logc = np.array([
            math.lgamma(x) - math.lgamma(n) - math.lgamma(x - n + 1) if x - 1 >= n - 1 else -np.inf
            for x in i
        ])
    logc -= math.lgamma(k + 1) - math.lgamma(n + 1) - math.lgamma(k - n + 1)
    return np.exp(logc)


def best_of_n_curve(
    proxy: np.ndarray, gold: np.ndarray, ns: Sequence[int]
) -> list[dict[str, float]]:
    """Expected proxy and gold reward of best-of-n (ranked by proxy) for each n in ``ns``.

    ``proxy`` and ``gold``: ``(P, K)`` — K samples for each of P prompts. Per prompt the
    samples are sorted by proxy and weighted by :func:`best_of_n_weights`; the result is
    the mean over prompts. Each point: ``{"n", "kl", "proxy", "gold"}``.
    """
    proxy, gold = np.asarray(proxy, float), np.asarray(gold, float)
    _, k = proxy.shape
    order = np.argsort(proxy, axis=1, kind="stable")
    ps = np.take_along_axis(proxy, order, 1)
    gs = np.take_along_axis(gold, order, 1)
    out = []
    for n in ns:
        w = best_of_n_weights(k, n)
        out.append({
            "n": int(n),
            "kl": bon_kl_analytic(n),
            "proxy": float((ps @ w).mean()),
            "gold": float((gs @ w).mean()),
        })
    return out


def best_of_n_gold_gains(proxy: np.ndarray, gold: np.ndarray, ns: Sequence[int]) -> np.ndarray:
    """Per-prompt expected gold gain of best-of-n over the base policy, ``(P, len(ns))``.

    Row p, column i: E[gold of the best of n_i by proxy] − mean gold of prompt p's samples
    (best-of-1 is the base policy). The replicates :func:`fit_gao` bootstraps over; their
    column means are :func:`best_of_n_curve`'s gold minus its n = 1 gold.
    """
    proxy, gold = np.asarray(proxy, float), np.asarray(gold, float)
    _, k = proxy.shape
    order = np.argsort(proxy, axis=1, kind="stable")
    gs = np.take_along_axis(gold, order, 1)
    weights = np.stack([best_of_n_weights(k, n) for n in ns], 1)  # (k, len(ns))
    return gs @ weights - gold.mean(1, keepdims=True)


def divergence(points: Sequence[dict[str, Any]], *, kl_key: str = "kl") -> dict[str, Any]:
    """Where gold peaks along a sweep and whether proxy and gold diverge after it.

    ``points``: one dict per leash setting with ``kl``, ``proxy`` and ``gold``. The
    loosest leash is the point with the largest KL. ``diverges`` is True when, at the
    loosest leash, proxy > proxy at the gold peak and gold < gold at the peak.
    """
    if not points:
        raise ValueError("divergence needs at least one sweep point")
    peak = max(range(len(points)), key=lambda i: points[i]["gold"])
    loose = max(range(len(points)), key=lambda i: points[i][kl_key])
    p, lo = points[peak], points[loose]
    return {
        "peak_index": peak,
        "loosest_index": loose,
        "peak_gold": p["gold"],
        "peak_proxy": p["proxy"],
        "peak_kl": p[kl_key],
        "loosest_gold": lo["gold"],
        "loosest_proxy": lo["proxy"],
        "loosest_kl": lo[kl_key],
        "diverges": bool(lo["proxy"] > p["proxy"] and lo["gold"] < p["gold"]),
    }


# --- Gao et al. (2023) functional forms --------------------------------------------------

GAO_FORMS = ("bon", "rl")


def gao_curve(d: np.ndarray, alpha: float, beta: float, form: str) -> np.ndarray:
    """Gold-reward gain over the base policy at d = √KL (Gao et al. 2023, eqs. 1–2):

        best-of-n:  R_bon(d) = d (α − β d)
        RL:         R_RL(d)  = d (α − β log d)      (R_RL(0) = 0)
    """
    d = np.asarray(d, float)
    return d * alpha - beta * _gao_penalty(d, form)


def _gao_penalty(d: np.ndarray, form: str) -> np.ndarray:
    if form == "bon":
        return d * d
    if form == "rl":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    raise ValueError(f"form: expected one of {GAO_FORMS}, got {form!r}")


def _lstsq(d: np.ndarray, y: np.ndarray, form: str) -> tuple[float, float]:
    """α, β minimising Σ (y − α d + β pen(d))² (linear in α, β; no intercept: R(0) = 0)."""
    x = np.stack([d, -_gao_penalty(d, form)], 1)
    (alpha, beta), *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(alpha), float(beta)


def gao_peak_d(alpha: float, beta: float, form: str) -> float:
    """d* where the fitted gold peaks: α/(2β) for best-of-n, exp(α/β − 1) for RL;
    ∞ when β ≤ 0 (the fit never turns down)."""
    if beta <= 0:
        return math.inf
    if form == "bon":
        return alpha / (2 * beta)
    z = alpha / beta - 1
    return math.exp(z) if z < 300 else math.inf


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def fit_gao(
    kl: Sequence[float],
    gain: np.ndarray,
    form: str,
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit Gao et al.'s form to a sweep of (KL, gold gain over the base policy).

    ``kl`` ``(N,)``: the KL of each sweep point (d = √KL). ``gain`` ``(N,)``, or ``(R, N)``
    with R replicates (prompts or seeds) of every point. α, β are the least-squares fit to
    the mean gain (linear in α, β, so exact). Bootstrap (``n_boot`` draws, percentile
    interval of level ``ci``): with replicates, the R rows are resampled (KL held at its
    value); with one curve, the residuals are (a residual bootstrap — with few points its
    intervals are rough). The predicted peak is KL* = d*² (:func:`gao_peak_d`); the
    observed one is the KL of the sweep point with the highest mean gain.

    Returns ``{"form", "alpha", "beta", "alpha_ci", "beta_ci", "peak_kl", "peak_kl_ci",
    "observed_peak_kl", "r2", "points": [{"kl", "gain"}], "curve": [{"kl", "gain"}]}``; a
    peak KL (or CI bound) is ``None`` where the fit never turns down (β ≤ 0), so the result
    is plain JSON.
    """
    if form not in GAO_FORMS:
        raise ValueError(f"form: expected one of {GAO_FORMS}, got {form!r}")
    kl_a = np.asarray(kl, float)
    g = np.asarray(gain, float)
    reps = g if g.ndim == 2 else None
    y = g.mean(0) if reps is not None else g
    if kl_a.ndim != 1 or y.shape != kl_a.shape or len(kl_a) < 2:
        raise ValueError(f"need ≥ 2 sweep points with one gain each, got kl {kl_a.shape}, gain {g.shape}")
    d = np.sqrt(np.clip(kl_a, 0.0, None))
    alpha, beta = _lstsq(d, y, form)
    fitted = gao_curve(d, alpha, beta, form)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        if reps is not None:
            y_b = reps[rng.integers(0, len(reps), len(reps))].mean(0)
        else:
            y_b = fitted + rng.choice(y - fitted, size=len(y), replace=True)
        a_b, b_b = _lstsq(d, y_b, form)
        boots.append((a_b, b_b, gao_peak_d(a_b, b_b, form) ** 2))
    lo, hi = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    b = np.array(boots) if boots else np.full((1, 3), np.nan)

    def interval(col: int) -> list[float | None]:
        # no interpolation between draws, so an unbounded (∞) peak draw stays ∞, not NaN
        return [_finite(float(np.percentile(b[:, col], q, method="inverted_cdf"))) for q in (lo, hi)]

    ss_res, ss_tot = float(((y - fitted) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    grid = np.linspace(0.0, d.max() * 1.15, 60)
    return {
        "form": form,
        "alpha": alpha,
        "beta": beta,
        "alpha_ci": interval(0),
        "beta_ci": interval(1),
        "peak_kl": _finite(gao_peak_d(alpha, beta, form) ** 2),
        "peak_kl_ci": interval(2),
        "observed_peak_kl": float(kl_a[int(np.argmax(y))]),
        "r2": 1 - ss_res / ss_tot if ss_tot > 0 else math.nan,
        "n_boot": n_boot,
        "replicates": 0 if reps is None else len(reps),
        "points": [{"kl": float(k), "gain": float(v)} for k, v in zip(kl_a, y, strict=True)],
        "curve": [{"kl": float(x * x), "gain": float(v)} for x, v in zip(grid, gao_curve(grid, alpha, beta, form),
                                                                          strict=True)],
    }
