"""Over-optimisation arithmetic: best-of-n KL, exact best-of-n expectations, divergence."""

import math
import random

import numpy as np
import pytest

from alignkit.diagnostics.overoptimization import (
    best_of_n_curve,
    best_of_n_weights,
    divergence,
)


def test_best_of_n_weights_by_hand():
    # k = 3, n = 2: subsets {1,2},{1,3},{2,3}; best rank 2 once, rank 3 twice -> [0, 1/3, 2/3]
    assert best_of_n_weights(3, 2) == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert best_of_n_weights(5, 1) == pytest.approx([0.2] * 5)
    assert best_of_n_weights(5, 5) == pytest.approx([0, 0, 0, 0, 1])
    assert best_of_n_weights(40, 7).sum() == pytest.approx(1.0)


def test_best_of_n_curve_matches_monte_carlo():
    rng = np.random.default_rng(0)
    proxy = rng.normal(size=(3, 12))
    gold = proxy + rng.normal(size=(3, 12))
    exact = best_of_n_curve(proxy, gold, [1, 4])
    # n = 1 is the plain mean
    assert exact[0]["gold"] == pytest.approx(gold.mean())
    # Monte Carlo over random 4-subsets agrees within sampling error
    r = random.Random(0)
    sims = []
    for _ in range(20000):
        p = r.randrange(3)
        idx = r.sample(range(12), 4)
        best = max(idx, key=lambda i: proxy[p, i])
        sims.append(gold[p, best])
    se = np.std(sims) / math.sqrt(len(sims))
    assert abs(np.mean(sims) - exact[1]["gold"]) < 4 * se
    assert exact[1]["proxy"] >= exact[0]["proxy"]


def test_divergence_detects_peak_then_fall():
    pts = [{"kl": 0, "proxy": 0, "gold": 0}, {"kl": 1, "proxy": 1, "gold": 2},
           {"kl": 3, "proxy": 2, "gold": 1}]
    d = divergence(pts)
    assert d["peak_index"] == 1 and d["loosest_index"] == 2 and d["diverges"]
    mono = [{"kl": 0, "proxy": 0, "gold": 0}, {"kl": 1, "proxy": 1, "gold": 1}]
    assert not divergence(mono)["diverges"]
