"""Over-optimisation arithmetic: best-of-n KL, exact best-of-n expectations, divergence."""

import math
import random

import numpy as np
import pytest

from alignkit.diagnostics.overoptimization import (
    best_of_n_curve,
    best_of_n_gold_gains,
    best_of_n_weights,
    divergence,
    fit_gao,
    gao_curve,
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


# --- Gao et al. fits ---------------------------------------------------------------------
@pytest.mark.parametrize("form,alpha,beta", [("bon", 1.3, 0.4), ("rl", 0.9, 0.5)])
def test_gao_fit_recovers_synthetic_curves_within_5_percent(form, alpha, beta):
    """Noisy replicate curves R(d) + ε (σ = 0.1, 64 replicates) at the demo's kind of KL grid:
    α, β within 5 %, their bootstrap CIs cover the truth, the predicted peak KL is
    d*² = (α/2β)² (bon) or exp(2(α/β − 1)) (rl)."""
    rng = np.random.default_rng(1)
    kl = np.array([0.0, 0.3, 0.8, 1.5, 2.4, 3.5, 5.0, 7.0]) if form == "bon" else np.array(
        [0.0, 0.1, 0.4, 1.0, 2.0, 4.0, 8.0, 12.0])
    truth = gao_curve(np.sqrt(kl), alpha, beta, form)
    reps = truth + rng.normal(0, 0.1, size=(64, len(kl)))
    fit = fit_gao(kl, reps, form, n_boot=300, seed=0)
    assert fit["alpha"] == pytest.approx(alpha, rel=0.05)
    assert fit["beta"] == pytest.approx(beta, rel=0.05)
    assert fit["alpha_ci"][0] <= alpha <= fit["alpha_ci"][1]
    assert fit["beta_ci"][0] <= beta <= fit["beta_ci"][1]
    peak = (alpha / (2 * beta)) ** 2 if form == "bon" else math.exp(2 * (alpha / beta - 1))
    assert fit["peak_kl"] == pytest.approx(peak, rel=0.15)
    assert fit["peak_kl_ci"][0] <= peak <= fit["peak_kl_ci"][1]
    assert fit["r2"] > 0.9 and fit["replicates"] == 64


def test_gao_fit_exact_curve_and_hand_peak():
    """Exact best-of-n curve α = 1, β = 0.25 (no noise): the fit is exact, the residual
    bootstrap has zero width, d* = 1/(2·0.25) = 2, KL* = 4; the observed peak is the grid
    point nearest it (KL = 4 itself here, gain 2·(1 − 0.5) = 1)."""
    kl = [0.0, 1.0, 4.0, 9.0]
    gain = gao_curve(np.sqrt(kl), 1.0, 0.25, "bon")
    assert gain.tolist() == pytest.approx([0.0, 0.75, 1.0, 0.75])
    fit = fit_gao(kl, gain, "bon", n_boot=50)
    assert (fit["alpha"], fit["beta"]) == (pytest.approx(1.0), pytest.approx(0.25))
    assert fit["peak_kl"] == pytest.approx(4.0) and fit["observed_peak_kl"] == 4.0
    assert fit["alpha_ci"] == pytest.approx([1.0, 1.0])
    # the RL form: R(e) = e(α − β) at d = e; a curve that never turns down has β ≤ 0 → no peak
    assert gao_curve(np.array([math.e]), 1.0, 0.25, "rl")[0] == pytest.approx(math.e * 0.75)
    rising = fit_gao([0.0, 1.0, 4.0], [0.0, 1.0, 2.0], "rl", n_boot=10)
    assert rising["beta"] == pytest.approx(0.0, abs=1e-9) and rising["peak_kl"] is None
    with pytest.raises(ValueError):
        fit_gao(kl, gain, "ppo")


def test_gao_and_entanglement_plots_write_pngs(tmp_path):
    from alignkit.report.plots import plot_entanglement, plot_gao_fits

    kl = [0.0, 1.0, 4.0, 9.0]
    fits = {"best_of_n": fit_gao(kl, gao_curve(np.sqrt(kl), 1.0, 0.25, "bon"), "bon", n_boot=20),
            "ppo": fit_gao([0.0, 1.0, 4.0], [0.0, 1.0, 2.0], "rl", n_boot=20)}  # no peak: no line
    assert plot_gao_fits(fits, tmp_path / "gao.png").stat().st_size > 1000
    pts = [{"step": s, "case1": 0.5, "case2": 0.25, "case3": 0.25, "cosine": 0.9, "dlogp_chosen": -s,
            "dlogp_rejected": -2 * s} for s in (0, 5)]
    assert plot_entanglement({"dpo": pts, "normalized": pts}, tmp_path / "ent.png").stat().st_size > 1000


def test_best_of_n_gold_gains_per_prompt_match_the_curve():
    rng = np.random.default_rng(2)
    proxy = rng.normal(size=(5, 16))
    gold = proxy + rng.normal(size=(5, 16))
    ns = [1, 2, 4, 16]
    gains = best_of_n_gold_gains(proxy, gold, ns)
    curve = best_of_n_curve(proxy, gold, ns)
    assert gains.shape == (5, 4) and np.allclose(gains[:, 0], 0.0)
    assert gains.mean(0) == pytest.approx([p["gold"] - curve[0]["gold"] for p in curve])
    # n = k picks the top-proxy sample of each prompt
    top = gold[np.arange(5), proxy.argmax(1)] - gold.mean(1)
    assert gains[:, 3] == pytest.approx(top)


def test_gao_fit_band_brackets_the_curve():
    rng = np.random.default_rng(0)
    kl = [0.0, 0.5, 1.0, 2.0, 4.0]
    reps = gao_curve(np.sqrt(kl), 1.0, 0.3, "bon") + rng.normal(0, 0.2, size=(40, 5))
    fit = fit_gao(kl, reps, "bon", n_boot=200)
    assert all(p["lo"] <= p["gain"] + 1e-9 and p["gain"] <= p["hi"] + 1e-9 for p in fit["curve"])
    assert fit["curve"][0]["lo"] == fit["curve"][0]["hi"] == 0.0  # R(0) = 0 in every draw
    assert any(p["hi"] - p["lo"] > 0.01 for p in fit["curve"])


def test_gain_at_kl_interpolates_in_sqrt_kl_by_hand():
    from alignkit.diagnostics.overoptimization import gain_at_kl

    # points at d = 0, 1, 2 with gains 0, 1, 3 (given out of order); d = 1.5 → 2.0, d = 0.5 → 0.5
    kl, gain = [4.0, 0.0, 1.0], np.array([3.0, 0.0, 1.0])
    assert gain_at_kl(kl, gain, np.array([2.25, 0.25])).tolist() == pytest.approx([2.0, 0.5])
    rows = np.stack([gain, 2 * gain])
    assert gain_at_kl(kl, rows, np.array([2.25])).ravel().tolist() == pytest.approx([2.0, 4.0])


def test_compare_at_kl_by_hand_and_without_overlap():
    from alignkit.diagnostics.overoptimization import compare_at_kl

    # A: d = 0, 2 → gains 0, 2 (slope 1 in d); B: d = 1, 3 → gains 0, 0.5. Overlap KL [1, 4]:
    # at d = 1: A 1, B 0; at d = 2: A 2, B 0.25. Identical replicates: the CI is the point.
    ga = np.tile([0.0, 2.0], (6, 1))
    gb = np.tile([0.0, 0.5], (6, 1))
    c = compare_at_kl([0.0, 4.0], ga, [1.0, 9.0], gb, n_grid=2, n_boot=50)
    assert c["overlap"] == [1.0, 4.0] and c["kl"] == pytest.approx([1.0, 4.0])
    assert c["diff"] == pytest.approx([1.0, 1.75])
    assert c["diff_ci"] == [pytest.approx([1.0, 1.0]), pytest.approx([1.75, 1.75])]
    # replicate noise shared by both sweeps cancels in the paired difference
    noise = np.random.default_rng(1).normal(size=(6, 1))
    c2 = compare_at_kl([0.0, 4.0], ga + noise, [1.0, 9.0], gb + noise, n_grid=2, n_boot=50)
    assert c2["diff_ci"][1] == pytest.approx([1.75, 1.75])
    none = compare_at_kl([0.0, 1.0], ga, [4.0, 9.0], gb)
    assert none["overlap"] is None and none["diff"] == []
    with pytest.raises(ValueError):
        compare_at_kl([0.0, 4.0], ga, [1.0, 9.0], gb[:3])
