"""The arena leaderboard: Bradley–Terry by hand, against choix, and on simulated votes."""

import math

import choix
import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import spearmanr

from alignkit.feedback.leaderboard import (
    Battle,
    bradley_terry,
    information_gain,
    leaderboard,
    mle_exists,
    next_pair,
    to_elo,
)


def test_two_models_by_hand():
    """A beats B 3 times, B beats A once: the MLE has σ(θ_A − θ_B) = 3/4, so θ_A − θ_B = ln 3,
    centred θ_A = ln 3 / 2 = 0.549306; Elo 1000 ± 200·log10(3) = 1095.424 / 904.576."""
    theta = bradley_terry(2, [0, 0, 0, 1], [1, 1, 1, 0], [1, 1, 1, 1])
    assert theta[0] == pytest.approx(math.log(3) / 2, abs=1e-9)
    assert theta[1] == pytest.approx(-math.log(3) / 2, abs=1e-9)
    assert to_elo(theta) == pytest.approx([1095.4243, 904.5757], abs=1e-4)
    # one win and one tie is 1.5 of 2: the same σ = 3/4 (a tie counts half a win each way)
    tie = bradley_terry(2, [0, 0], [1, 1], [1.0, 0.5])
    assert tie == pytest.approx(theta, abs=1e-9)
    # a battle written the other way round with μ = 0 is the same vote
    flipped = bradley_terry(2, [1, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0])
    assert flipped == pytest.approx(theta, abs=1e-9)


def test_ridge_estimate_is_stationary():
    """One battle, A wins, α = 0.1: θ_A = −θ_B = t with 2σ(−2t) = 4αt (the penalised
    gradient is zero), a root scipy's brentq finds independently."""
    t = bradley_terry(2, [0], [1], [1.0], alpha=0.1)[0]
    assert 2 / (1 + math.exp(2 * t)) == pytest.approx(4 * 0.1 * t, abs=1e-10)
    root = brentq(lambda x: 2 / (1 + math.exp(2 * x)) - 0.4 * x, 0.0, 5.0, xtol=1e-14)
    assert t == pytest.approx(root, abs=1e-9)


def synthetic_votes(rng, k=5, n=400, tie_rate=0.15):
    truth = np.linspace(-1, 1, k)
    a, b, mu = [], [], []
    for _ in range(n):
        i, j = rng.choice(k, 2, replace=False)
        if rng.random() < tie_rate:
            m = 0.5
        else:
            m = float(rng.random() < 1 / (1 + math.exp(-(truth[i] - truth[j]))))
        a.append(int(i))
        b.append(int(j))
        mu.append(m)
    return truth, a, b, mu


def choix_data(a, b, mu):
    """choix takes (winner, loser) pairs: each decisive vote twice, a tie once each way —
    twice our log-likelihood, so the same MLE (and choix's ridge is 2α)."""
    data = []
    for i, j, m in zip(a, b, mu, strict=True):
        if m == 1:
            data += [(i, j), (i, j)]
        elif m == 0:
            data += [(j, i), (j, i)]
        else:
            data += [(i, j), (j, i)]
    return data


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_choix_to_1e6(seed):
    rng = np.random.default_rng(seed)
    _, a, b, mu = synthetic_votes(rng)
    assert mle_exists(5, a, b, mu) and 0.5 in mu
    ours = bradley_terry(5, a, b, mu)
    ref = choix.ilsr_pairwise(5, choix_data(a, b, mu), alpha=0.0, tol=1e-14, max_iter=10_000)
    assert np.max(np.abs(ours - (ref - ref.mean()))) < 1e-6
    ref_opt = choix.opt_pairwise(5, choix_data(a, b, mu), alpha=0.0, tol=1e-12)
    assert np.max(np.abs(ours - (ref_opt - ref_opt.mean()))) < 1e-6
    # with a ridge α: choix's MAP with penalty 2α (its objective is twice ours)
    ridge = bradley_terry(5, a, b, mu, alpha=0.3)
    ref_ridge = choix.opt_pairwise(5, choix_data(a, b, mu), alpha=0.6, tol=1e-12)
    assert np.max(np.abs(ridge - ref_ridge)) < 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_known_strengths_from_2000_votes(seed):
    rng = np.random.default_rng(100 + seed)
    truth, a, b, mu = synthetic_votes(rng, k=5, n=2000, tie_rate=0.1)
    names = [f"m{i}" for i in range(5)]
    battles = [Battle(names[i], names[j], m) for i, j, m in zip(a, b, mu, strict=True)]
    st = leaderboard(battles, bootstrap=100, seed=seed)
    assert st.battles == 2000 and not st.regularised
    fitted = {r.model: r.theta for r in st.rows}
    estimate = [fitted[n] for n in names]
    assert spearmanr(truth, estimate).statistic == pytest.approx(1.0, abs=1e-12)
    assert list(np.argsort(estimate)) == list(np.argsort(truth))  # the same order exactly
    assert all(r.elo_lo <= r.elo <= r.elo_hi for r in st.rows)


def test_bootstrap_intervals_cover_the_truth():
    """Without ties (random ties shrink every difference: they are not in the BT model) the
    95 % intervals hold the centred true strengths: 14 of 15 over three seeds here."""
    inside = 0
    for seed in range(3):
        rng = np.random.default_rng(200 + seed)
        truth, a, b, mu = synthetic_votes(rng, k=5, n=2000, tie_rate=0.0)
        names = [f"m{i}" for i in range(5)]
        battles = [Battle(names[i], names[j], m) for i, j, m in zip(a, b, mu, strict=True)]
        st = leaderboard(battles, bootstrap=200, seed=seed)
        centred = truth - truth.mean()
        inside += sum(r.theta_lo <= centred[names.index(r.model)] <= r.theta_hi for r in st.rows)
    assert inside >= 13


def test_rows_count_every_outcome_and_order_by_strength():
    battles = [
        Battle("x", "y", 1.0),
        Battle("y", "x", 1.0),
        Battle("x", "y", 0.5),
        Battle("y", "x", 0.5, both_bad=True),
        Battle("x", "z", 1.0),
        Battle("z", "y", 0.0),
    ]
    st = leaderboard(battles, ["x", "y", "z", "never"], bootstrap=20)
    rows = {r.model: r for r in st.rows}
    assert (rows["x"].battles, rows["x"].wins, rows["x"].losses) == (5, 2, 1)
    assert (rows["x"].ties, rows["x"].both_bad) == (1, 1)
    assert (rows["z"].wins, rows["z"].losses) == (0, 2)
    # z never won: no MLE, so the weak ridge is used and said
    assert st.regularised and st.alpha == 0.01
    assert [r.model for r in st.rows] == ["x", "y", "z", "never"]
    assert math.isnan(rows["never"].theta) and rows["never"].battles == 0


def test_mle_exists_is_strong_connectivity():
    assert not mle_exists(3, [0, 1], [1, 2], [1, 1])  # a chain: 0 never lost
    assert mle_exists(3, [0, 1, 2], [1, 2, 0], [1, 1, 1])  # a cycle
    assert mle_exists(2, [0], [1], [0.5])  # a tie joins both ways
    with pytest.raises(ValueError, match="does not exist"):
        bradley_terry(3, [0, 1], [1, 2], [1, 1])


def test_information_gain_is_the_drop_in_summed_variance():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(4, 4))
    info = m @ m.T + np.eye(4)
    for i, j in [(0, 1), (2, 3), (0, 3)]:
        v = np.zeros(4)
        v[i], v[j] = 1, -1
        w = 0.21
        direct = np.trace(np.linalg.inv(info)) - np.trace(np.linalg.inv(info + w * np.outer(v, v)))
        assert information_gain(info, i, j, w) == pytest.approx(direct, rel=1e-10)


def test_next_pair_asks_about_the_least_known_pair():
    # a and b met 30 times, c never played: the next battle involves c
    battles = [Battle("a", "b", float(n % 2)) for n in range(30)]
    rng = np.random.default_rng(0)
    picks = [frozenset(next_pair(["a", "b", "c"], battles, rng, explore=0.0)) for _ in range(20)]
    assert all("c" in p for p in picks)
    # and among the pairs with c, both are picked (exact ties are broken at random)
    assert {frozenset("ac"), frozenset("bc")} <= set(picks)
