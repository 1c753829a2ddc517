"""Simulated and AI annotators: Boltzmann probabilities, tie band, noise, groups, judges."""

import math

import pytest

from alignkit.data.records import Comparison
from alignkit.errors import AlignkitError, ConfigError
from alignkit.humans.annotators import (
    AnnotatorPopulation,
    HumanAnnotator,
    LMJudge,
    RewardModelJudge,
    agreement_rate,
    gold_agreement,
)
from alignkit.humans.human_models import BiasedAnnotator, BoltzmannAnnotator, length_bias


def table_reward(table):
    """A reward function that looks responses up in a dict."""
    return lambda prompts, responses: [table[r] for r in responses]


REWARD = table_reward({"good": 1.0, "bad": 0.0, "meh": 0.95, "long answer here": 0.0})


def test_boltzmann_probability_matches_sigmoid_within_sampling_error():
    # Δ = 1, β = 2: P(a ≻ b) = σ(2) = 1 / (1 + e^-2) = 0.880797
    ann = BoltzmannAnnotator(REWARD, beta=2.0, seed=0)
    n = 4000
    labels = ann.label([("p", "good", "bad")] * n)
    frac = sum(c.mu for c in labels) / n
    p = 1 / (1 + math.exp(-2.0))
    assert abs(p - 0.880797) < 1e-6
    se = math.sqrt(p * (1 - p) / n)  # ≈ 0.0051
    assert abs(frac - p) < 4 * se
    assert labels[0].meta["p"] == pytest.approx(p)
    assert labels[0].meta["delta"] == 1.0


def test_boltzmann_beta_zero_is_a_coin_and_swapping_sides_mirrors():
    coin = BoltzmannAnnotator(REWARD, beta=0.0, seed=1)
    frac = sum(c.mu for c in coin.label([("p", "good", "bad")] * 2000)) / 2000
    assert abs(frac - 0.5) < 4 * math.sqrt(0.25 / 2000)
    sharp = BoltzmannAnnotator(REWARD, beta=50.0, seed=1)
    assert all(c.mu == 0.0 for c in sharp.label([("p", "bad", "good")] * 50))


def test_soft_labels_are_the_probability():
    ann = BoltzmannAnnotator(REWARD, beta=1.0, soft=True)
    c = ann.compare("p", "good", "bad")
    assert c.mu == pytest.approx(1 / (1 + math.exp(-1.0)))


def test_tie_band():
    # |Δ| = 0.05 < 0.1 -> tie; |Δ| = 1 -> not a tie
    ann = BoltzmannAnnotator(REWARD, beta=100.0, tie_band=0.1)
    assert ann.compare("p", "good", "meh").mu == 0.5
    assert ann.compare("p", "good", "meh").is_tie
    assert ann.compare("p", "good", "bad").mu == 1.0


def test_noise_flips_the_given_fraction():
    # a perfectly rational annotator (β huge) with 20% noise is wrong 20% of the time
    ann = BoltzmannAnnotator(REWARD, beta=1e4, noise=0.2, seed=3)
    n = 3000
    wrong = sum(c.mu == 0.0 for c in ann.label([("p", "good", "bad")] * n)) / n
    assert abs(wrong - 0.2) < 4 * math.sqrt(0.16 / n)


def test_bad_settings_are_user_errors():
    with pytest.raises(ConfigError):
        BoltzmannAnnotator(REWARD, beta=-1)
    with pytest.raises(ConfigError):
        BoltzmannAnnotator(REWARD, noise=1.5)


def test_biased_annotator_prefers_longer_regardless():
    biased = BiasedAnnotator(REWARD, length_bias(per_word=1.0), beta=100.0)
    # "good": 1 + 1 = 2 ; "long answer here": 0 + 3 = 3  -> prefers the long, worse answer
    c = biased.compare("p", "good", "long answer here")
    assert c.mu == 0.0
    assert c.meta["delta"] == pytest.approx(-1.0)
    honest = BoltzmannAnnotator(REWARD, beta=100.0)
    assert honest.compare("p", "good", "long answer here").mu == 1.0


def test_population_groups_disagree_and_are_recorded():
    likes_good = BoltzmannAnnotator(REWARD, beta=100.0, name="a", group="g1")
    likes_bad = BoltzmannAnnotator(
        table_reward({"good": 0.0, "bad": 1.0}), beta=100.0, name="b", group="g2"
    )
    pop = AnnotatorPopulation([likes_good, likes_bad], weights=[3, 1], seed=0)
    labels = pop.label([("p", "good", "bad")] * 2000)
    groups = [c.group for c in labels]
    share = groups.count("g1") / len(groups)
    assert abs(share - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 2000)
    assert all((c.mu == 1.0) == (c.group == "g1") for c in labels)
    by_all = pop.label_by_all([("p", "good", "bad")] * 10)
    assert agreement_rate(by_all[0], by_all[1]) == 0.0
    assert agreement_rate(by_all[0], by_all[0]) == 1.0


def test_gold_agreement():
    labels = [Comparison("p", "good", "bad", mu=1.0), Comparison("p", "good", "bad", mu=0.0),
              Comparison("p", "bad", "good", mu=0.0), Comparison("p", "good", "good", mu=1.0)]
    # last pair is a gold tie (excluded): 2 of 3 agree
    assert gold_agreement(labels, table_reward({"good": 1.0, "bad": 0.0})) == pytest.approx(2 / 3)


class FakeRM:
    def score(self, prompts, responses):
        return [len(r) for r in responses]


def test_reward_model_judge_hard_and_soft():
    judge = RewardModelJudge(FakeRM())
    assert judge.compare("p", "xxx", "x").mu == 1.0
    assert judge.compare("p", "x", "xxx").mu == 0.0
    assert judge.compare("p", "x", "y").mu == 0.5
    soft = RewardModelJudge(FakeRM(), temperature=2.0)
    # Δ = 3 - 1 = 2, μ = σ(2 / 2) = σ(1)
    assert soft.compare("p", "xxx", "x").mu == pytest.approx(1 / (1 + math.exp(-1)))


def test_lm_judge_scores_are_yes_minus_no_logodds(tiny_lm_dir):
    import torch

    from alignkit.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(tiny_lm_dir).eval()
    tok = load_tokenizer(tiny_lm_dir)
    judge = LMJudge(model, tok)
    s = judge.score(["Human: hi Assistant:", "Human: hello there Assistant:"], ["thank you .", "no"])
    # recompute the first one by hand without padding
    text = judge.rubric.format(prompt="Human: hi Assistant:", response="thank you .")
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, -1], -1)
    assert s[0] == pytest.approx((logp[judge.yes_id] - logp[judge.no_id]).item(), abs=1e-4)
    c = judge.compare("Human: hi Assistant:", "thank you .", "no")
    assert c.mu in (0.0, 0.5, 1.0) and c.annotator == "lm-judge"


class FakeServer:
    """Stands in for AnnotationClient: labels arrive one poll after submission."""

    def __init__(self, answer_after=1):
        self.items = {}
        self.polls = 0
        self.answer_after = answer_after

    def submit_pairs(self, pairs, project):
        ids = []
        for p, a, b in pairs:
            i = f"item{len(self.items)}"
            self.items[i] = (p, a, b)
            ids.append(i)
        return ids

    def fetch_labels(self, ids, project):
        self.polls += 1
        if self.polls <= self.answer_after:
            return {}
        return {i: Comparison(*self.items[i], mu=1.0, annotator="alice") for i in ids}


def test_human_annotator_polls_until_labelled():
    server = FakeServer(answer_after=2)
    slept = []
    human = HumanAnnotator(server, poll_s=1.0, sleep=slept.append)
    labels = human.label([("p", "a1", "b1"), ("p", "a2", "b2")])
    assert [c.a for c in labels] == ["a1", "a2"]
    assert all(c.annotator == "alice" for c in labels)
    assert slept == [1.0, 1.0]


def test_human_annotator_times_out_with_a_message():
    human = HumanAnnotator(FakeServer(answer_after=10**9), poll_s=1.0, timeout_s=2.0, sleep=lambda s: None)
    with pytest.raises(AlignkitError, match="2 of 2 pairs still unlabelled"):
        human.label([("p", "a", "b"), ("p", "c", "d")])
