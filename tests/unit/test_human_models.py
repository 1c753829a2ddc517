"""Human models: each choice model against its closed form, then the annotators by Monte Carlo."""

import math
import random

import numpy as np
import pytest

from alignkit.errors import ConfigError
from alignkit.humans.annotators import AnnotatorPopulation, linear_population
from alignkit.humans.human_models import (
    BoltzmannAnnotator,
    BPrefTeacher,
    MyopicAnnotator,
    RegretAnnotator,
    boltzmann_probability,
    bpref_outcome,
    deterministic_regret,
    draw_label,
    linear_utility,
    linear_utility_fn,
    mixture_probability,
    myopic_return,
    noisy_probability,
    partial_return,
    regret_from_advantages,
    regret_probability,
)


def sig(x):
    return 1 / (1 + math.exp(-x))


def table(d):
    return lambda prompts, items: [d[i] for i in items]


def frac_a(labels):
    return sum(c.mu for c in labels) / len(labels)


def test_utilities_by_hand():
    # θ·φ: [1, -2]·[3, 1] = 1
    assert linear_utility([1.0, -2.0], [[3.0, 1.0], [0.0, 1.0]]).tolist() == [1.0, -2.0]
    # rewards 1, 2, 4 with γ = 0.5: forward Σ γ^t r_t = 1 + 1 + 1 = 3
    assert partial_return([1.0, 2.0, 4.0], 0.5) == pytest.approx(3.0)
    assert partial_return([1.0, 2.0, 4.0]) == pytest.approx(7.0)
    # myopic (B-Pref): Σ γ^(T-1-t) r_t = 0.25·1 + 0.5·2 + 1·4 = 5.25 — the end counts most
    assert myopic_return([1.0, 2.0, 4.0], 0.5) == pytest.approx(5.25)
    assert myopic_return([[1.0, 2.0, 4.0], [4.0, 2.0, 1.0]], 0.5).tolist() == pytest.approx([5.25, 3.0])
    # regret: V*(s0) = 10, segment return 3, V*(s_T) = 5 -> gave up 2
    assert deterministic_regret(10.0, 3.0, 5.0) == pytest.approx(2.0)
    assert regret_from_advantages([-0.5, 0.0, -1.5]) == pytest.approx(2.0)


def test_boltzmann_and_regret_probabilities_closed_form():
    assert boltzmann_probability(1.0, 0.0, 2.0) == pytest.approx(sig(2.0))
    assert boltzmann_probability(np.array([0.0, 3.0]), np.array([0.0, 1.0]), 0.5).tolist() == pytest.approx(
        [0.5, sig(1.0)])
    assert boltzmann_probability(5.0, 5.0, 0.0) == 0.5
    assert boltzmann_probability(1e-9, 0.0, math.inf) == 1.0
    assert boltzmann_probability(-1e-9, 0.0, math.inf) == 0.0
    assert boltzmann_probability(2.0, 2.0, math.inf) == 0.5
    assert boltzmann_probability(-800.0, 800.0, 1.0) == 0.0  # no overflow warning
    # regret 1 vs 3 with β = 1: the lower-regret a wins with σ(3 − 1) = σ(2)
    assert regret_probability(1.0, 3.0, 1.0) == pytest.approx(sig(2.0))
    # ε-flip: 0.1 + 0.8·0.9 = 0.82
    assert noisy_probability(0.9, 0.1) == pytest.approx(0.82)
    assert noisy_probability(0.3, 0.5) == pytest.approx(0.5)
    # mixture 3:1 of 0.9 and 0.2: 0.75·0.9 + 0.25·0.2 = 0.725
    assert mixture_probability([0.9, 0.2], [3, 1]) == pytest.approx(0.725)


def test_equal_partial_return_higher_regret_is_not_preferred():
    # Knox et al.'s example: both segments earn return 1, but b ends where V* = 0
    # (it walked away from the goal) while a ends where V* = 4; both start where V* = 5.
    ra = deterministic_regret(5.0, 1.0, 4.0)  # 0
    rb = deterministic_regret(5.0, 1.0, 0.0)  # 4
    assert (ra, rb) == (0.0, 4.0)
    assert partial_return([1.0]) == partial_return([1.0])  # partial return cannot tell them apart
    assert regret_probability(ra, rb, 1.0) == pytest.approx(sig(4.0))
    ann = RegretAnnotator(table({"a": ra, "b": rb}), beta=1.0, seed=0)
    assert frac_a(ann.label([("s", "a", "b")] * 3000)) == pytest.approx(sig(4.0), abs=4 * math.sqrt(0.02 / 3000))


def test_bpref_outcome_closed_form():
    u_a = np.array([0.1, 2.0, 2.0, 3.0])
    u_b = np.array([0.2, 2.05, 1.0, 0.0])
    p, tie, skip = bpref_outcome(u_a, u_b, beta=1.0, eps=0.1, skip_threshold=0.5, equal_threshold=0.1)
    assert skip.tolist() == [True, False, False, False]       # both below δ_skip = 0.5
    assert tie.tolist() == [False, True, False, False]        # |Δ| = 0.05 < δ_equal
    assert p[2] == pytest.approx(0.1 + 0.8 * sig(1.0))
    assert p[3] == pytest.approx(0.1 + 0.8 * sig(3.0))


def test_draw_label_rng_order_and_soft():
    rng = random.Random(0)
    first = random.Random(0).random()
    mu, p = draw_label(0.5, rng, beta=2.0)
    assert p == pytest.approx(sig(1.0)) and mu == (1.0 if first < p else 0.0)
    assert draw_label(0.05, random.Random(0), tie_band=0.1) == (0.5, pytest.approx(sig(0.05)))
    assert draw_label(1.0, random.Random(0), soft=True)[0] == pytest.approx(sig(1.0))


def test_myopic_annotator_prefers_the_better_ending():
    # a: rewards (4, 0, 0), b: (0, 0, 1). True return prefers a; a γ = 0.5 myopic teacher sees
    # 4·0.25 = 1.0 vs 1.0 — a coin — and with γ = 0.3: 0.36 vs 1 -> prefers b.
    steps = table({"a": [4.0, 0.0, 0.0], "b": [0.0, 0.0, 1.0]})
    n = 3000
    half = MyopicAnnotator(steps, gamma=0.5, beta=5.0, seed=1)
    assert frac_a(half.label([("s", "a", "b")] * n)) == pytest.approx(0.5, abs=4 * math.sqrt(0.25 / n))
    short = MyopicAnnotator(steps, gamma=0.3, beta=5.0, seed=2)
    p = sig(5.0 * (4 * 0.09 - 1.0))
    assert frac_a(short.label([("s", "a", "b")] * n)) == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n) + 1e-3)
    honest = MyopicAnnotator(steps, gamma=1.0, beta=math.inf)
    assert honest.compare("s", "a", "b").mu == 1.0
    with pytest.raises(ConfigError):
        MyopicAnnotator(steps, gamma=1.5)


def test_bpref_teacher_skip_equal_mistake():
    u = table({"lo1": 0.1, "lo2": 0.2, "x": 2.0, "y": 2.05, "good": 3.0, "bad": 0.0})
    t = BPrefTeacher(u, mistake=0.0, skip_threshold=0.5, equal_threshold=0.1)
    skipped = t.compare("s", "lo1", "lo2")
    assert skipped.incomparable and skipped.meta["skipped"]
    assert t.compare("s", "x", "y").mu == 0.5
    assert t.compare("s", "good", "bad").mu == 1.0   # β = ∞ by default: the oracle
    n = 4000
    wrong = BPrefTeacher(u, mistake=0.2, seed=4)
    p = noisy_probability(1.0, 0.2)
    assert frac_a(wrong.label([("s", "good", "bad")] * n)) == pytest.approx(p, abs=4 * math.sqrt(0.16 / n))


def test_boltzmann_over_features_matches_sigma_beta_theta_dphi():
    feats = {"a": [1.0, 0.0], "b": [0.0, 1.0]}
    theta = [0.7, -0.3]
    ann = BoltzmannAnnotator(linear_utility_fn(theta, lambda items: [feats[i] for i in items]), beta=2.0, seed=5)
    p = sig(2.0 * (0.7 + 0.3))
    n = 4000
    assert frac_a(ann.label([("ctx", "a", "b")] * n)) == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))


def test_noise_is_noisy_probability():
    ann = BoltzmannAnnotator(table({"a": 1.0, "b": 0.0}), beta=1.0, noise=0.3, seed=6)
    p = noisy_probability(sig(1.0), 0.3)
    n = 4000
    assert frac_a(ann.label([("s", "a", "b")] * n)) == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))


def test_biased_group_population_is_the_mixture():
    feats = {"a": [1.0, 0.0], "b": [0.0, 1.0]}
    # honest group likes feature 0; the biased group (a quarter) likes feature 1
    pop = linear_population([[1.0, 0.0], [0.0, 2.0]], lambda items: [feats[i] for i in items],
                            weights=[3, 1], beta=1.0, seed=7, groups=["honest", "biased"])
    assert isinstance(pop, AnnotatorPopulation)
    p = mixture_probability([sig(1.0), sig(-2.0)], [3, 1])
    n = 6000
    labels = pop.label([("ctx", "a", "b")] * n)
    assert frac_a(labels) == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))
    assert {c.group for c in labels} == {"honest", "biased"}


def test_record_fn_lets_items_be_anything():
    seen = []

    def record(prompt, a, b, *, mu, incomparable, annotator, group, meta):
        seen.append((a, b, mu))
        return {"a": a, "b": b, "mu": mu}

    ann = BoltzmannAnnotator(lambda prompts, items: [sum(x) for x in items], beta=math.inf, record_fn=record)
    out = ann.label([(None, (1.0, 2.0), (0.0, 0.5))])
    assert out == [{"a": (1.0, 2.0), "b": (0.0, 0.5), "mu": 1.0}]
    with pytest.raises(ConfigError):
        BoltzmannAnnotator(lambda p, i: i, beta=float("nan"))
