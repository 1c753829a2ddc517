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
  (of α, β, the predicted peak and the curve) and the KL at which gold is predicted to peak;
* :func:`compare_at_kl` — two sweeps' gold gains at equal KL (interpolated, no
  extrapolation) with a paired bootstrap CI of the difference: whose frontier is higher.
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
    "observed_peak_kl", "r2", "points": [{"kl", "gain"}], "curve": [{"kl", "gain", "lo",
    "hi"}]}`` (``lo``/``hi``: the pointwise percentile band of the bootstrap fits' curves); a
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
    grid = np.linspace(0.0, d.max() * 1.15, 60)
    boots, curves = [], []
    for _ in range(n_boot):
        if reps is not None:
            y_b = reps[rng.integers(0, len(reps), len(reps))].mean(0)
        else:
            y_b = fitted + rng.choice(y - fitted, size=len(y), replace=True)
        a_b, b_b = _lstsq(d, y_b, form)
        boots.append((a_b, b_b, gao_peak_d(a_b, b_b, form) ** 2))
        curves.append(gao_curve(grid, a_b, b_b, form))
    lo, hi = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    b = np.array(boots) if boots else np.full((1, 3), np.nan)
    band = np.percentile(np.array(curves), [lo, hi], axis=0) if curves else np.full((2, len(grid)), np.nan)

    def interval(col: int) -> list[float | None]:
        # no interpolation between draws, so an unbounded (∞) peak draw stays ∞, not NaN
        return [_finite(float(np.percentile(b[:, col], q, method="inverted_cdf"))) for q in (lo, hi)]

    ss_res, ss_tot = float(((y - fitted) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
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
        "curve": [{"kl": float(x * x), "gain": float(v), "lo": float(a), "hi": float(c)}
                  for x, v, a, c in zip(grid, gao_curve(grid, alpha, beta, form), band[0], band[1], strict=True)],
    }


# --- two sweeps at equal KL ---------------------------------------------------------------


def gain_at_kl(kl: Sequence[float], gain: np.ndarray, at: np.ndarray) -> np.ndarray:
    """A sweep's gain at the KLs ``at`` by linear interpolation in d = √KL between its points
    (sorted by KL). ``gain``: ``(N,)`` or ``(R, N)`` → ``(len(at),)`` or ``(R, len(at))``.
    Only meaningful inside the sweep's KL range; outside it the end values are held."""
    d = np.sqrt(np.clip(np.asarray(kl, float), 0.0, None))
    order = np.argsort(d, kind="stable")
    g = np.asarray(gain, float)
    q = np.sqrt(np.clip(np.asarray(at, float), 0.0, None))
    if g.ndim == 1:
        return np.interp(q, d[order], g[order])
    return np.stack([np.interp(q, d[order], row[order]) for row in g])


def compare_at_kl(
    kl_a: Sequence[float],
    gain_a: np.ndarray,
    kl_b: Sequence[float],
    gain_b: np.ndarray,
    *,
    n_grid: int = 5,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Sweep A's gold gain minus sweep B's at equal KL, with a paired bootstrap.

    ``gain_a`` ``(R, N_a)`` and ``gain_b`` ``(R, N_b)`` hold the same R replicates (rows:
    the same prompts × seeds in both), the points at KLs ``kl_a``/``kl_b`` (held at their
    values). The KLs compared are ``n_grid`` points evenly spaced in √KL over the overlap of
    the two sweeps' KL ranges — no extrapolation; each sweep's gain there is
    :func:`gain_at_kl`. The bootstrap resamples the R rows (the same draw for both sweeps:
    the pairing) and takes the percentile interval of the difference of the means.

    Returns ``{"overlap": [lo, hi] or None, "kl": [...], "a": [...], "b": [...], "diff":
    [...], "diff_ci": [[lo, hi], ...]}`` (empty lists when the ranges do not overlap).
    """
    ga, gb = np.asarray(gain_a, float), np.asarray(gain_b, float)
    if ga.ndim != 2 or gb.ndim != 2 or len(ga) != len(gb):
        raise ValueError(f"need (R, N) gains with the same R replicates, got {ga.shape} and {gb.shape}")
    lo_kl, hi_kl = max(min(kl_a), min(kl_b)), min(max(kl_a), max(kl_b))
    if not lo_kl < hi_kl:
        return {"overlap": None, "kl": [], "a": [], "b": [], "diff": [], "diff_ci": []}
    at = np.linspace(math.sqrt(max(lo_kl, 0.0)), math.sqrt(hi_kl), n_grid) ** 2
    ia, ib = gain_at_kl(kl_a, ga, at), gain_at_kl(kl_b, gb, at)  # (R, n_grid)
    rng = np.random.default_rng(seed)
    draws = np.array([(ia[r].mean(0) - ib[r].mean(0)) for r in (rng.integers(0, len(ga), len(ga))
                                                                 for _ in range(n_boot))])
    q = np.percentile(draws, [(1 - ci) / 2 * 100, (1 + ci) / 2 * 100], axis=0)
    return {"overlap": [float(lo_kl), float(hi_kl)], "kl": at.tolist(), "a": ia.mean(0).tolist(),
            "b": ib.mean(0).tolist(), "diff": (ia.mean(0) - ib.mean(0)).tolist(),
            "diff_ci": [[float(x), float(y)] for x, y in zip(q[0], q[1], strict=True)]}
