"""``alignkit demo humans``: who gives the feedback, on the driving task.

Three experiments on the cached highway-env pool (:mod:`alignkit.tasks.driving`), all with
the Bayesian linear learner of :mod:`alignkit.humans.posterior` and the simulated people
of :mod:`alignkit.humans.human_models` labelling pool *indices* (the annotators work on
any items):

1. **Label efficiency** — a well-specified Boltzmann annotator; after each label the
   Laplace posterior is refit and the next query is chosen among ``candidates`` random
   pairs by each strategy of :mod:`alignkit.humans.query` (random, info-gain,
   volume-removal, disagreement). ``label_efficiency[strategy]`` = per seed, the first
   label count at which cos(θ̂, θ*) ≥ ``target_cosine`` (None: not within the budget).
2. **Misspecification matrix** — annotator model A × learner model B, random queries,
   ``matrix_labels`` labels: angle(θ̂, θ*), the normalised policy regret of the controller
   chosen under θ̂, and the held-out preference accuracy (against the annotator's own
   noise-free choices and against θ*) — the reward-misidentification check.
3. **Stability curve** — angle(θ̂, θ*) against a continuous model error: the annotator's
   β against the learner's (log₂ ratio), and the myopic annotator's γ (learner assumes 1).

Everything goes to OUT/summary.json, OUT/report.html (+ PNGs) and OUT/metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from alignkit.humans import human_models as hm
from alignkit.humans.annotators import linear_population
from alignkit.humans.posterior import cosine, fit_laplace, fit_map
from alignkit.humans.query import linear_pair_probs, select_queries
from alignkit.recipes.configs.humans import HumansConfig
from alignkit.report.humans import write_report
from alignkit.tasks import driving
from alignkit.utils.metrics import MetricsLogger
from alignkit.utils.progress import track

ANNOTATORS = ("boltzmann", "wrong-beta", "regret", "myopic", "false-belief", "noisy", "biased-group", "bpref")
LEARNERS = ("boltzmann", "regret")


def quick_overrides() -> dict[str, Any]:
    return {"seeds": [0, 1, 2, 3, 4], "max_labels": 60, "candidates": 600, "posterior_samples": 128,
            "matrix_labels": 120, "test_pairs": 1000, "stability_log2_beta": [-3, -1, 0, 1, 3],
            "stability_gamma": [1.0, 0.8, 0.5, 0.2]}


# ---------------------------------------------------------------------------
# The pieces: utilities, annotators, learners
# ---------------------------------------------------------------------------


class Setting:
    """The pool with everything the experiments need precomputed."""

    def __init__(self, pool: Any):
        self.pool = pool
        self.phi = pool.features()
        self.step_phi = pool.step_features()
        self.theta = driving.THETA_STAR
        self.u_true = self.phi @ self.theta
        self.regret_true = driving.regret(self.phi, pool, self.theta)
        self.n = pool.n

    def random_pairs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        a = rng.integers(0, self.n, n)
        b = (a + rng.integers(1, self.n, n)) % self.n  # b ≠ a
        return np.stack([a, b], 1)


def _record(prompt: Any, a: Any, b: Any, *, mu: float, incomparable: bool, annotator: str | None,
            group: str | None, meta: dict[str, Any]) -> tuple[int, int, float] | None:
    """A label as (a, b, μ); None for a skipped query (the learner never sees it)."""
    return None if incomparable else (int(a), int(b), float(mu))


def make_annotator(kind: str, st: Setting, cfg: HumansConfig, seed: int, *, beta: float | None = None,
                   gamma: float | None = None) -> tuple[Any, np.ndarray]:
    """The simulated person ``kind`` over pool indices, and the utility it maximises
    (per item, for the 'annotator accuracy' of a learned reward)."""
    beta = cfg.beta if beta is None else beta

    def items(u: np.ndarray) -> Any:
        return lambda prompts, idx: u[np.asarray(idx, dtype=int)]

    common = {"seed": seed, "record_fn": _record}
    if kind == "boltzmann":
        return hm.BoltzmannAnnotator(items(st.u_true), beta=beta, **common), st.u_true
    if kind == "wrong-beta":
        return hm.BoltzmannAnnotator(items(st.u_true), beta=cfg.wrong_beta, **common), st.u_true
    if kind == "regret":
        return hm.RegretAnnotator(items(st.regret_true), beta=beta, **common), -st.regret_true
    if kind == "myopic":
        g = cfg.myopic_gamma if gamma is None else gamma
        step_r = st.step_phi @ st.theta
        step_r = step_r / np.sum(g ** np.arange(step_r.shape[1]))  # a weighted mean, same scale as u
        ann = hm.MyopicAnnotator(lambda prompts, idx: step_r[np.asarray(idx, dtype=int)], gamma=g, beta=beta, **common)
        return ann, hm.myopic_return(step_r, g)
    if kind == "false-belief":
        u = st.pool.features(believed_braking=cfg.believed_braking) @ st.theta
        return hm.BoltzmannAnnotator(items(u), beta=beta, **common), u
    if kind == "noisy":
        return hm.BoltzmannAnnotator(items(st.u_true), beta=beta, noise=cfg.noise, **common), st.u_true
    if kind == "biased-group":
        theta_b = np.array([0.1, 1.0, -0.3, 0.0, 0.0])
        theta_b /= np.linalg.norm(theta_b)
        pop = linear_population([st.theta, theta_b], lambda idx: st.phi[np.asarray(idx, dtype=int)],
                                   weights=[1 - cfg.biased_share, cfg.biased_share], beta=beta, seed=seed,
                                   record_fn=_record, groups=["honest", "speedy"])
        return pop, st.phi @ ((1 - cfg.biased_share) * st.theta + cfg.biased_share * theta_b)
    if kind == "bpref":
        u = st.u_true
        ann = hm.BPrefTeacher(items(u), beta=math.inf, mistake=cfg.bpref_mistake,
                              skip_threshold=float(np.quantile(u, cfg.bpref_skip_quantile)),
                              equal_threshold=cfg.bpref_equal * float(u.std()), **common)
        return ann, u
    raise ValueError(f"unknown annotator model {kind!r}")


def fit_learner(kind: str, st: Setting, labels: list[tuple[int, int, float]], cfg: HumansConfig,
                beta: float | None = None) -> np.ndarray:
    """θ̂ (the posterior mode) under learner model ``kind``, assuming rationality ``beta``
    (default ``cfg.beta``)."""
    beta = cfg.beta if beta is None else beta
    a = np.array([x[0] for x in labels])
    b = np.array([x[1] for x in labels])
    mu = np.array([x[2] for x in labels])
    boltz = fit_laplace(st.phi[a] - st.phi[b], mu, beta=beta, prior_var=cfg.prior_var).mean
    if kind == "boltzmann":
        return boltz
    if kind == "regret":
        f = driving.regret_log_lik_fn(st.phi, st.pool.scenario, a, b, mu, beta)
        return fit_map(f, st.phi.shape[1], prior_var=cfg.prior_var, x0=boltz)
    raise ValueError(f"unknown learner model {kind!r}")


def learner_utility(kind: str, st: Setting, theta: np.ndarray) -> np.ndarray:
    """What learner ``kind`` predicts the person maximises, per item, under θ."""
    if kind == "regret":
        return -driving.regret(st.phi, st.pool, theta)
    return st.phi @ theta


def _accuracy(u_pred: np.ndarray, u_ref: np.ndarray, pairs: np.ndarray) -> float:
    dr = u_ref[pairs[:, 0]] - u_ref[pairs[:, 1]]
    keep = dr != 0
    dp = u_pred[pairs[:, 0]] - u_pred[pairs[:, 1]]
    return float(np.mean(np.sign(dp[keep]) == np.sign(dr[keep])))


def _ci95(xs: list[float]) -> dict[str, float]:
    from scipy.stats import t

    n = len(xs)
    m = statistics.fmean(xs)
    sd = statistics.stdev(xs) if n > 1 else 0.0
    h = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": m, "std": sd, "lo": m - h, "hi": m + h, "n": n}


# ---------------------------------------------------------------------------
# 1. Label efficiency
# ---------------------------------------------------------------------------


def label_efficiency_run(st: Setting, cfg: HumansConfig, strategy: str, seed: int) -> list[float]:
    """cos(θ̂, θ*) after 0, 1, …, ``max_labels`` labels chosen by ``strategy``."""
    rng = np.random.default_rng(seed)
    cand = st.random_pairs(cfg.candidates, rng)       # the same candidates for every strategy
    d_cand = st.phi[cand[:, 0]] - st.phi[cand[:, 1]]
    ann, _ = make_annotator("boltzmann", st, cfg, seed)
    pick_rng = np.random.default_rng(seed + 10_000)
    asked = np.zeros(len(cand), bool)
    d_lab: list[np.ndarray] = []
    mu_lab: list[float] = []
    post = fit_laplace(np.zeros((0, st.phi.shape[1])), np.zeros(0), prior_var=cfg.prior_var)
    cos = [cosine(post.mean, st.theta)]
    for _ in range(cfg.max_labels):
        free = np.flatnonzero(~asked)
        samples = post.sample(cfg.posterior_samples, pick_rng)
        probs = linear_pair_probs(samples, d_cand[free], cfg.beta)
        q = free[select_queries(strategy, probs, 1, pick_rng)[0]]
        asked[q] = True
        _, _, mu = ann.compare(None, int(cand[q, 0]), int(cand[q, 1]))
        d_lab.append(d_cand[q])
        mu_lab.append(mu)
        post = fit_laplace(np.array(d_lab), np.array(mu_lab), beta=cfg.beta, prior_var=cfg.prior_var)
        cos.append(cosine(post.mean, st.theta))
    return cos


def labels_to_cosine(curve: list[float], target: float) -> int | None:
    """The first label count n with curve[n] ≥ target (curve[0] is before any label)."""
    for n, c in enumerate(curve):
        if c >= target:
            return n
    return None


def labels_to_stay(curve: list[float], target: float) -> int | None:
    """The smallest n with curve[m] ≥ target for every m ≥ n (None if the last point is below)."""
    n = None
    for i in range(len(curve) - 1, -1, -1):
        if curve[i] < target:
            break
        n = i
    return n


def run_label_efficiency(st: Setting, cfg: HumansConfig, log: Any) -> dict[str, Any]:
    curves: dict[str, list[list[float]]] = {s: [] for s in cfg.strategies}
    jobs = [(s, seed) for seed in cfg.seeds for s in cfg.strategies]
    for strategy, seed in track(jobs, description="label efficiency"):
        c = label_efficiency_run(st, cfg, strategy, seed)
        curves[strategy].append(c)
        log({f"label_efficiency/{strategy}/seed{seed}/labels_to_{cfg.target_cosine:g}":
             labels_to_cosine(c, cfg.target_cosine)})
    needed = {s: [labels_to_cosine(c, cfg.target_cosine) for c in cs] for s, cs in curves.items()}
    # censored seeds (never reached) count as budget + 1 in the paired comparison, and are listed
    cap = cfg.max_labels + 1
    out: dict[str, Any] = {"label_efficiency": needed, "censored_as": cap, "curves": {}, "vs_random": {}}
    from scipy.stats import t as student_t

    for s, cs in curves.items():
        arr = np.array(cs)
        half = (student_t.ppf(0.975, len(cs) - 1) * arr.std(0, ddof=1) / math.sqrt(len(cs))
                if len(cs) > 1 else np.zeros(arr.shape[1]))
        out["curves"][s] = {"mean": arr.mean(0).tolist(), "lo": (arr.mean(0) - half).tolist(),
                            "hi": (arr.mean(0) + half).tolist()} if len(cs) else {}
    # a stricter reading: the label count after which the curve stays ≥ target to the budget
    out["labels_to_stay"] = {s: [labels_to_stay(c, cfg.target_cosine) for c in cs] for s, cs in curves.items()}
    if "random" in needed:
        base = [cap if n is None else n for n in needed["random"]]
        for s in cfg.strategies:
            if s == "random":
                continue
            mine = [cap if n is None else n for n in needed[s]]
            diff = [r - m for r, m in zip(base, mine, strict=True)]
            ci = _ci95(diff)
            stay_b = [cap if n is None else n for n in out["labels_to_stay"]["random"]]
            stay_m = [cap if n is None else n for n in out["labels_to_stay"][s]]
            out["vs_random"][s] = {
                "labels_saved_per_seed": diff, "labels_saved": ci,
                "fewer_labels_fraction": 1.0 - statistics.fmean(mine) / statistics.fmean(base),
                "ci_excludes_0": bool(ci["lo"] > 0 or ci["hi"] < 0),
                "mean_labels": statistics.fmean(mine), "random_mean_labels": statistics.fmean(base),
                "stay_labels_saved": _ci95([r - m for r, m in zip(stay_b, stay_m, strict=True)]),
                "stay_mean_labels": statistics.fmean(stay_m), "stay_random_mean_labels": statistics.fmean(stay_b),
            }
    return out


# ---------------------------------------------------------------------------
# 2. Misspecification matrix, 3. stability curve
# ---------------------------------------------------------------------------


def _cell(st: Setting, cfg: HumansConfig, annotator: str, learners: tuple[str, ...], seed: int,
          learner_beta: float | None = None, **ann_kwargs: Any) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed + 777)
    pairs = st.random_pairs(cfg.matrix_labels, rng)
    test = st.random_pairs(cfg.test_pairs, rng)
    ann, u_ann = make_annotator(annotator, st, cfg, seed, **ann_kwargs)
    labels = [x for x in ann.label([(None, int(a), int(b)) for a, b in pairs]) if x is not None]
    out = {}
    for learner in learners:
        th = fit_learner(learner, st, labels, cfg, beta=learner_beta)
        u_hat = learner_utility(learner, st, th)
        out[learner] = {
            "angle_deg": driving.angle_deg(th, st.theta),
            "policy_regret": driving.policy_regret(st.phi, st.pool, th, st.theta),
            "trajectory_regret": driving.trajectory_regret(st.phi, st.pool, th, st.theta),
            "heldout_acc_annotator": _accuracy(u_hat, u_ann, test),
            "heldout_acc_true": _accuracy(st.phi @ th, st.u_true, test),
        }
    return out


def run_matrix(st: Setting, cfg: HumansConfig, log: Any) -> dict[str, Any]:
    raw: dict[str, dict[str, list[dict[str, float]]]] = {a: {b: [] for b in LEARNERS} for a in ANNOTATORS}
    for a, seed in track([(a, s) for a in ANNOTATORS for s in cfg.seeds], description="misspecification"):
        cell = _cell(st, cfg, a, LEARNERS, seed)
        for b in LEARNERS:
            raw[a][b].append(cell[b])
            log({f"matrix/{a}/{b}/{k}": v for k, v in cell[b].items()})
    matrix = {a: {b: {k: _ci95([r[k] for r in raw[a][b]]) for k in raw[a][b][0]} for b in LEARNERS}
              for a in ANNOTATORS}
    return {"annotators": list(ANNOTATORS), "learners": list(LEARNERS), "cells": matrix,
            "labels": cfg.matrix_labels, "per_seed": raw}


def run_stability(st: Setting, cfg: HumansConfig, log: Any) -> dict[str, Any]:
    curves: dict[str, list[dict[str, Any]]] = {"log2_beta_ratio": [], "myopic_gamma": []}
    jobs = [("log2_beta_ratio", x) for x in cfg.stability_log2_beta] + [("myopic_gamma", g) for g in cfg.stability_gamma]
    for kind, x in track(jobs, description="stability"):
        angles, regrets, matched, gap = [], [], [], []
        for seed in cfg.seeds:
            if kind == "log2_beta_ratio":
                beta_a = cfg.beta * 2.0**x
                cell = _cell(st, cfg, "boltzmann", ("boltzmann",), seed, beta=beta_a)
                # the control arm: the same labels, a learner that knows the annotator's β — what is
                # lost to β itself (less rational = less informative) rather than to the mismatch
                ok = _cell(st, cfg, "boltzmann", ("boltzmann",), seed, learner_beta=beta_a, beta=beta_a)
                matched.append(ok["boltzmann"]["angle_deg"])
                gap.append(cell["boltzmann"]["angle_deg"] - ok["boltzmann"]["angle_deg"])
            else:
                cell = _cell(st, cfg, "myopic", ("boltzmann",), seed, gamma=x)
            angles.append(cell["boltzmann"]["angle_deg"])
            regrets.append(cell["boltzmann"]["policy_regret"])
        pt = {"x": x, "angle_deg": _ci95(angles), "policy_regret": _ci95(regrets)}
        if matched:
            pt["angle_deg_matched_learner"] = _ci95(matched)
            pt["angle_deg_mismatch_cost"] = _ci95(gap)
        curves[kind].append(pt)
        log({f"stability/{kind}/{x:g}/angle_deg": statistics.fmean(angles)})
    return curves


# ---------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------


def run_humans(cfg: HumansConfig) -> dict[str, Any]:
    if cfg.quick:
        for k, v in quick_overrides().items():
            setattr(cfg, k, v)
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = driving.load_pool(cfg.pool)
    st = Setting(pool)
    step = [0]
    with MetricsLogger(out, tensorboard=False) as metrics:

        def log(m: dict[str, Any]) -> None:
            metrics.log(m, step[0])
            step[0] += 1

        timings = {}
        t = time.time()
        le = run_label_efficiency(st, cfg, log)
        timings["label_efficiency"] = time.time() - t
        t = time.time()
        mx = run_matrix(st, cfg, log)
        timings["matrix"] = time.time() - t
        t = time.time()
        stab = run_stability(st, cfg, log)
        timings["stability"] = time.time() - t
    j = driving.controller_values(st.phi, pool, st.theta)
    summary = {
        "task": "driving (highway-env, cached pool)",
        "pool": {**pool.meta, "n_trajectories": pool.n, "features": list(driving.FEATURES),
                 "theta_star": st.theta.tolist(), "best_controller": int(np.argmax(j))},
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "label_efficiency": le["label_efficiency"],
        "label_efficiency_detail": {k: v for k, v in le.items() if k != "label_efficiency"},
        "misspecification": mx,
        "stability": stab,
        "timings_s": timings,
        "wall_s": time.time() - t0,
    }
    write_report(summary, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
