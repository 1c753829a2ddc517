"""Reward over-optimisation (Goodhart): proxy reward rising while gold reward falls.

Gao, Schulman & Hilton (2023), "Scaling Laws for Reward Model Overoptimization": as a
policy moves away from the reference (measured by KL), the proxy reward it was optimised
against keeps rising, but the gold reward peaks and then declines. This module holds
the arithmetic the demo's KL sweep needs:

* :func:`best_of_n_curve` — exact expected proxy and gold reward of best-of-n for every
  n from K samples per prompt (order statistics, no resampling noise), with the analytic
  KL of :func:`alignkit.decoding.best_of_n.bon_kl_analytic`;
* :func:`divergence` — where gold peaks along a sweep, and whether the loosest leash
  has higher proxy but lower gold than the peak (the over-optimisation signature).
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
