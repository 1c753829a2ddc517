"""Query selection: ensemble disagreement, selection rules, the active-learning curve."""

import random

import numpy as np
import pytest

from alignkit.data.records import Comparison
from alignkit.errors import ConfigError
from alignkit.humans.human_models import BoltzmannAnnotator
from alignkit.humans.query import (
    BowRewardEnsemble,
    CurvePoint,
    active_learning_curve,
    ensemble_disagreement,
    labels_to_reach,
    pair_disagreement,
    preference_accuracy,
    select_max_disagreement,
    select_random,
)


def test_pair_disagreement_by_hand():
    # differences per member: m0 = [1-0, 2-0] = [1, 2]; m1 = [3-0, 2-1] = [3, 1]
    # std over members: pair 0: std(1, 3) = 1 ; pair 1: std(2, 1) = 0.5
    a = np.array([[1.0, 2.0], [3.0, 2.0]])
    b = np.array([[0.0, 0.0], [0.0, 1.0]])
    assert pair_disagreement(a, b).tolist() == [1.0, 0.5]


def test_shared_offsets_cancel():
    # members that differ only by a per-member constant agree on every preference
    a = np.array([[1.0, 5.0], [11.0, 15.0]])
    b = np.array([[0.0, 2.0], [10.0, 12.0]])
    assert pair_disagreement(a, b).tolist() == [0.0, 0.0]


def test_select_max_disagreement_and_random():
    u = np.array([0.1, 0.9, 0.5, 0.9, 0.0])
    assert select_max_disagreement([0, 1, 2, 3, 4], 3, u) == [1, 3, 2]
    assert select_max_disagreement([0, 2, 4], 2, u) == [2, 0]
    picked = select_random(range(10), 4, random.Random(0))
    assert len(set(picked)) == 4 and set(picked) <= set(range(10))
    assert select_random([1, 2], 5, random.Random(0)) in ([1, 2], [2, 1])


def _word_reward(prompts, responses):
    return [r.split().count("good") - r.split().count("bad") for r in responses]


def test_bow_ensemble_learns_word_preferences():
    labels = [Comparison("p", "good day", "bad day", mu=1.0), Comparison("p", "bad one", "good one", mu=0.0)] * 20
    ens = BowRewardEnsemble.from_texts(["good day bad one"], n_members=3, seed=0).fit(labels)
    scores = ens.score(["p", "p"], ["good", "bad"])
    assert scores[0] > scores[1]
    assert ens.score_members(["p"], ["good"]).shape == (3, 1)
    acc = preference_accuracy(ens, [("p", "good", "bad"), ("p", "bad", "good")], [1, -1])
    assert acc == 1.0
    # words never seen in training: all members score 0, so no disagreement
    assert ensemble_disagreement(ens, [("p", "zebra", "lion")]).tolist() == [0.0]


def test_active_learning_curve_shapes_and_strategies():
    rng = random.Random(0)
    words = ["good", "bad", "fine", "meh", "ok"]
    def resp():
        return " ".join(rng.choice(words) for _ in range(4))
    pool = [("p", resp(), resp()) for _ in range(200)]
    test = [(p, a, b) for p, a, b in (("p", resp(), resp()) for _ in range(200))
            if _word_reward([p], [a])[0] != _word_reward([p], [b])[0]]
    prefs = [1 if _word_reward([p], [a])[0] > _word_reward([p], [b])[0] else -1 for p, a, b in test]
    ann = BoltzmannAnnotator(_word_reward, beta=3.0, seed=0)
    curves = {}
    for s in ("random", "disagreement", "info-gain"):
        curves[s] = active_learning_curve(
            pool, ann.label, test, prefs, strategy=s,
            make_ensemble=lambda: BowRewardEnsemble(words, n_members=4, seed=1),
            initial=10, batch=10, budget=60, seed=0,
        )
        assert [p.n_labels for p in curves[s]] == [10, 20, 30, 40, 50, 60]
        assert curves[s][-1].accuracy > 0.85  # a 1-feature-direction reward is easy to learn
    with pytest.raises(ConfigError, match="query strategy"):
        active_learning_curve(pool, ann.label, test, prefs, strategy="greedy", make_ensemble=lambda: None)


def test_labels_to_reach():
    curve = [CurvePoint(10, 0.6), CurvePoint(20, 0.8), CurvePoint(30, 0.75), CurvePoint(40, 0.9)]
    assert labels_to_reach(curve, 0.8) == 20
    assert labels_to_reach(curve, 0.85) == 40
    assert labels_to_reach(curve, 0.95) is None


def test_info_gain_avoids_pairs_the_ensemble_agrees_on_however_far_apart():
    """Score-difference disagreement grows with |Δ| even when every member agrees on the sign;
    information gain does not: members (Δ = 10, 14) vs (Δ = 0.5, −0.5)."""
    from alignkit.humans.query import ensemble_pair_probs, information_gain

    sa = np.array([[10.0, 0.5], [14.0, -0.5]])
    sb = np.zeros((2, 2))
    assert pair_disagreement(sa, sb).tolist() == [2.0, 0.5]       # prefers the easy, far-apart pair
    ig = information_gain(ensemble_pair_probs(sa, sb))
    assert ig[1] > 100 * ig[0]                                   # info-gain prefers the contested one


def test_lm_loop_choose_queries_info_gain():
    from alignkit.recipes.loop import choose_queries

    labels = [Comparison("p", "good day", "bad day", mu=1.0), Comparison("p", "bad one", "good one", mu=0.0)] * 5
    pool = [("p", "good", "bad"), ("p", "fine", "meh"), ("p", "ok day", "ok one")]
    picked = choose_queries(pool, 2, "info-gain", labels, seed=0)
    assert len(picked) == 2 and set(picked) <= set(pool)
    with pytest.raises(ConfigError):
        choose_queries(pool, 2, "greedy", labels, seed=0)
