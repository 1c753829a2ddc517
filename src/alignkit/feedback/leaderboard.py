"""An arena leaderboard: Bradley–Terry strengths from battles, bootstrap intervals, an Elo
scale, and which pair of models to ask about next.

A *battle* is one vote between two models on the same turn: ``(a, b, mu)`` with the soft
label μ = P(a ≻ b) the store uses everywhere (A better 1, B better 0, tie ½, "both bad" ½ —
Chatbot Arena also scores "both bad" as a tie; it is counted in its own column).

Model (Bradley & Terry 1952; Zermelo 1929): P(i ≻ j) = σ(θ_i − θ_j). The fit maximises

    ℓ(θ) = Σ_n w_n [μ_n log σ(θ_{a_n} − θ_{b_n}) + (1 − μ_n) log σ(θ_{b_n} − θ_{a_n})] − α ‖θ‖²

by Newton's method (ℓ is concave; a backtracking step keeps every step an ascent). θ is
only identified up to a shift: the estimate is centred, Σ_i θ_i = 0. With α = 0 this is the
MLE, which exists exactly when the "has beaten (or tied)" graph is strongly connected (Ford
1957: no group of models that never lost to the rest) — :func:`mle_exists`. When it does
not (a model that has only won, a handful of votes), :func:`leaderboard` uses the weak
ridge ``fallback_alpha`` (a N(0, 1/(2α)) prior on each θ) and says so.

Intervals: percentile bootstrap over battles (resample N battles with replacement, refit;
as the Chatbot Arena leaderboard does). Elo scale: ``1000 + 400 · θ / ln 10``, so a
difference of 400 points means odds of 10 : 1 (the convention of Chatbot Arena's
``compute_mle_elo``).

Checked against ``choix`` (Maystre & Grossglauser) to 1e-6 and on simulated votes with
known strengths (``tests/unit/test_leaderboard.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ELO_BASE",
    "ELO_SCALE",
    "Battle",
    "LeaderboardRow",
    "Standings",
    "bradley_terry",
    "information_gain",
    "leaderboard",
    "mle_exists",
    "next_pair",
    "to_elo",
]

ELO_SCALE = 400.0
ELO_BASE = 1000.0


@dataclass(frozen=True)
class Battle:
    """One vote: ``mu`` = P(a ≻ b) (1, 0 or ½); ``both_bad`` marks a "both bad" ½."""

    a: str
    b: str
    mu: float
    both_bad: bool = False


_NO_MLE = (
    "the Bradley–Terry MLE does not exist for these battles (a model never lost or never won "
    "against the rest); use alpha > 0"
)


def to_elo(theta):
    """Bradley–Terry strength(s) on the Elo scale: ``1000 + 400 θ / ln 10``."""
    return ELO_BASE + ELO_SCALE * np.asarray(theta, dtype=float) / math.log(10.0)


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def bradley_terry(
    n_models: int,
    a: Sequence[int],
    b: Sequence[int],
    mu: Sequence[float],
    *,
    weights: Sequence[float] | None = None,
    alpha: float = 0.0,
    tol: float = 1e-10,
    max_iter: int = 200,
) -> np.ndarray:
    """The centred (ridge-penalised) Bradley–Terry estimate θ, shape ``(n_models,)``.

    ``a``, ``b``: model indices of each battle ``(N,)``; ``mu``: P(a ≻ b) per battle
    ``(N,)``; ``weights``: per-battle weights (default 1). Maximises ℓ(θ) of the module
    docstring by Newton's method. With ``alpha = 0`` the caller must make sure the MLE
    exists (:func:`mle_exists`); otherwise θ runs off to ±∞ and ``ValueError`` is raised.
    """
    a_idx, b_idx = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    m = np.asarray(mu, dtype=float)
    w = np.ones_like(m) if weights is None else np.asarray(weights, dtype=float)
    k = n_models
    theta = np.zeros(k)

    def objective(t: np.ndarray) -> float:
        d = t[a_idx] - t[b_idx]
        return float(np.sum(w * (m * _log_sigmoid(d) + (1 - m) * _log_sigmoid(-d))) - alpha * t @ t)

    value = objective(theta)
    for _ in range(max_iter):
        d = theta[a_idx] - theta[b_idx]
        p = 1.0 / (1.0 + np.exp(-d))
        r = w * (m - p)  # dℓ/dd per battle
        grad = np.bincount(a_idx, r, k) - np.bincount(b_idx, r, k) - 2 * alpha * theta
        c = w * p * (1 - p)  # −d²ℓ/dd² per battle
        info = np.zeros((k, k))
        np.add.at(info, (a_idx, a_idx), c)
        np.add.at(info, (b_idx, b_idx), c)
        np.add.at(info, (a_idx, b_idx), -c)
        np.add.at(info, (b_idx, a_idx), -c)
        info += 2 * alpha * np.eye(k)
        # info·1 = 2α·1: with α = 0 the shift direction is free; grad ⊥ 1, so solving with
        # 11ᵀ/k added gives the step ⊥ 1 (θ stays centred).
        if alpha == 0:
            info += np.ones((k, k)) / k
        try:
            step = np.linalg.solve(info, grad)
        except np.linalg.LinAlgError:  # p → 0 or 1 on every battle of a model: θ diverges
            raise ValueError(_NO_MLE) from None
        scale = 1.0
        while True:  # backtrack: Newton from far away can overshoot on a flat logistic
            cand = theta + scale * step
            new = objective(cand)
            if new >= value - 1e-12 or scale < 1e-8:
                break
            scale /= 2
        theta, value = cand, new
        if np.max(np.abs(scale * step)) < tol:
            break
        if np.max(np.abs(theta)) > 50:
            raise ValueError(_NO_MLE)
    return theta - theta.mean() if alpha == 0 else theta


def mle_exists(n_models: int, a: Sequence[int], b: Sequence[int], mu: Sequence[float]) -> bool:
    """Whether the unpenalised Bradley–Terry MLE exists: every model can reach every other
    along "i has beaten or tied j" edges (Ford 1957)."""
    beat: list[set[int]] = [set() for _ in range(n_models)]  # beat[i] = j's that i beat/tied
    for i, j, x in zip(a, b, mu, strict=True):
        if x > 0:
            beat[i].add(j)
        if x < 1:
            beat[j].add(i)
    if n_models <= 1:
        return True

    def reach(edges: list[set[int]]) -> int:
        seen, stack = {0}, [0]
        while stack:
            for j in edges[stack.pop()]:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return len(seen)

    lost_to: list[set[int]] = [set() for _ in range(n_models)]
    for i, js in enumerate(beat):
        for j in js:
            lost_to[j].add(i)
    return reach(beat) == n_models and reach(lost_to) == n_models


@dataclass(frozen=True)
class LeaderboardRow:
    model: str
    battles: int
    wins: int
    """Decisive wins."""
    losses: int
    ties: int
    """Ties, "both bad" not included."""
    both_bad: int
    theta: float
    theta_lo: float
    theta_hi: float
    elo: float
    elo_lo: float
    elo_hi: float


@dataclass(frozen=True)
class Standings:
    rows: list[LeaderboardRow]
    """Best first (by θ)."""
    battles: int
    alpha: float
    """The ridge actually used (0: the MLE)."""
    regularised: bool
    """True when the MLE did not exist and ``fallback_alpha`` was used."""
    bootstrap: int
    level: float


def _fit(k: int, a, b, mu, alpha: float, fallback_alpha: float) -> tuple[np.ndarray, float]:
    if alpha == 0 and not mle_exists(k, a, b, mu):
        alpha = fallback_alpha
    return bradley_terry(k, a, b, mu, alpha=alpha), alpha


def leaderboard(
    battles: Sequence[Battle],
    models: Sequence[str] | None = None,
    *,
    alpha: float = 0.0,
    fallback_alpha: float = 0.01,
    bootstrap: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> Standings:
    """Standings of ``models`` (default: every model in a battle) from ``battles``.

    θ is the Bradley–Terry MLE (``alpha = 0``) or the ridge estimate; where the MLE does not
    exist the fit uses ``fallback_alpha`` (``regularised=True``). Intervals: percentile
    bootstrap at ``level`` over ``bootstrap`` resamples of the battles (each refit by the
    same rule). A model with no battle has θ = 0 under a ridge, so models without battles
    are left out of the fit and listed last with NaN strengths.
    """
    names = list(dict.fromkeys(list(models or []) + [x for bt in battles for x in (bt.a, bt.b)]))
    active = sorted({x for bt in battles for x in (bt.a, bt.b)}, key=names.index)
    index = {name: i for i, name in enumerate(active)}
    k = len(active)
    a = np.array([index[bt.a] for bt in battles], dtype=int)
    b = np.array([index[bt.b] for bt in battles], dtype=int)
    mu = np.array([bt.mu for bt in battles], dtype=float)
    if k >= 2:
        theta, used = _fit(k, a, b, mu, alpha, fallback_alpha)
        rng = np.random.default_rng(seed)
        draws = np.empty((bootstrap, k))
        for r in range(bootstrap):
            idx = rng.integers(0, len(mu), len(mu))
            draws[r] = _fit(k, a[idx], b[idx], mu[idx], alpha, fallback_alpha)[0]
        q = (1 - level) / 2
        lo, hi = (np.quantile(draws, [q, 1 - q], axis=0) if bootstrap else (theta, theta))
    else:
        theta = lo = hi = np.zeros(k)
        used = alpha
    rows = []
    for name in names:
        mine = [bt for bt in battles if name in (bt.a, bt.b)]
        score = [bt.mu if bt.a == name else 1 - bt.mu for bt in mine]
        both_bad = sum(bt.both_bad for bt in mine)
        ties = sum(s == 0.5 for s in score) - both_bad
        if name in index:
            i = index[name]
            t, tl, th = float(theta[i]), float(lo[i]), float(hi[i])
        else:
            t = tl = th = math.nan
        rows.append(
            LeaderboardRow(
                model=name,
                battles=len(mine),
                wins=sum(s == 1 for s in score),
                losses=sum(s == 0 for s in score),
                ties=ties,
                both_bad=both_bad,
                theta=t,
                theta_lo=tl,
                theta_hi=th,
                elo=float(to_elo(t)),
                elo_lo=float(to_elo(tl)),
                elo_hi=float(to_elo(th)),
            )
        )
    rows.sort(key=lambda r: (math.isnan(r.theta), -r.theta if not math.isnan(r.theta) else 0))
    return Standings(rows, len(battles), used, used != alpha, bootstrap, level)


# ---------------------------------------------------------------------- the next pair


def information_gain(info: np.ndarray, i: int, j: int, w: float) -> float:
    """How much one more battle of (i, j) shrinks tr(I⁻¹), the summed variance of θ̂.

    One battle adds w·vvᵀ (v = e_i − e_j, w = p(1 − p)) to the Fisher information I; by
    Sherman–Morrison tr(I⁻¹) − tr((I + w vvᵀ)⁻¹) = w vᵀI⁻²v / (1 + w vᵀI⁻¹v).
    ``info`` must be invertible (a ridge makes it so).
    """
    inv = np.linalg.inv(info)
    v = np.zeros(len(info))
    v[i], v[j] = 1.0, -1.0
    u = inv @ v
    return float(w * (u @ u) / (1.0 + w * (v @ u)))


def next_pair(
    models: Sequence[str],
    battles: Sequence[Battle],
    rng: np.random.Generator,
    *,
    prior: float = 0.5,
    explore: float = 0.1,
) -> tuple[str, str]:
    """The pair of ``models`` whose next battle is most informative (A-optimal design).

    Fit θ with a ridge ``prior`` (defined from the first vote on), form the Fisher
    information I = Σ_battles p q (e_a − e_b)(e_a − e_b)ᵀ + 2·prior·Id, and pick the pair
    with the largest :func:`information_gain` — the expected drop in the summed variance of
    the strengths. Pairs never or rarely compared and pairs whose outcome is uncertain
    (p near ½) win. With probability ``explore`` (and to break exact ties) a pair is drawn
    at random. The order of the two is random (which side is A says nothing).
    """
    names = list(models)
    k = len(names)
    if k < 2:
        raise ValueError("an arena needs at least two models")
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    if rng.random() < explore:
        i, j = pairs[rng.integers(len(pairs))]
    else:
        index = {n: i for i, n in enumerate(names)}
        seen = [bt for bt in battles if bt.a in index and bt.b in index]
        a = np.array([index[bt.a] for bt in seen], dtype=int)
        b = np.array([index[bt.b] for bt in seen], dtype=int)
        mu = np.array([bt.mu for bt in seen], dtype=float)
        theta = bradley_terry(k, a, b, mu, alpha=prior) if len(seen) else np.zeros(k)
        p = 1.0 / (1.0 + np.exp(-(theta[a] - theta[b])))
        c = p * (1 - p)
        info = 2 * prior * np.eye(k)
        np.add.at(info, (a, a), c)
        np.add.at(info, (b, b), c)
        np.add.at(info, (a, b), -c)
        np.add.at(info, (b, a), -c)
        gains = []
        for i, j in pairs:
            pij = 1.0 / (1.0 + math.exp(-(theta[i] - theta[j])))
            gains.append(information_gain(info, i, j, pij * (1 - pij)))
        best = max(gains)
        top = [pair for pair, g in zip(pairs, gains, strict=True) if g >= best * (1 - 1e-9)]
        i, j = top[rng.integers(len(top))]
    return (names[i], names[j]) if rng.random() < 0.5 else (names[j], names[i])
