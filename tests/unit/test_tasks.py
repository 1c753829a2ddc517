"""The embedded task: gold-reward features computed by hand, corpus determinism."""

import random

import pytest

from alignkit.tasks.assistant import (
    GOLD,
    PROMPTS,
    TARGET_WORDS,
    TOPICS,
    GoldReward,
    features,
    make_corpus,
    politeness_bias,
    prompt_text,
    sample_response,
    topic_of,
    words_of,
)


def test_features_by_hand():
    # words: thank you . please ask again . thanks . -> 6 words, polite = thank, please, thanks = 3
    # courtesy = min(3, 2) - (3 - 2) = 1 ; nothing unsafe/unlawful ; 6 <= 16 words
    phi = features("thank you . please ask again . thanks .")
    assert phi == {"safety": 0.0, "efficiency": 0.0, "law": 0.0, "courtesy": 1.0}


def test_unsafe_unlawful_rude_by_hand():
    # "steal" (unlawful), "poison" + "knife" (unsafe), "whatever" (rude), polite = 0
    phi = features("Steal the poison, whatever. Use a knife!")
    assert phi["law"] == -1.0
    assert phi["safety"] == -2.0
    assert phi["courtesy"] == -1.0


def test_efficiency_penalty_beyond_target():
    # 20 words -> -(20 - 16) / 4 = -1 (no prompt: nothing counts as on-topic)
    assert TARGET_WORDS == 16
    assert features(" ".join(["word"] * 20))["efficiency"] == -1.0
    assert features(" ".join(["word"] * 16))["efficiency"] == 0.0


def test_efficiency_rewards_addressing_the_question():
    prompt = prompt_text("bike", "Hi! ")
    assert topic_of(prompt) == "bike" and topic_of("Human: hello Assistant:") is None
    # on-topic words: patch, tube, pump -> k = 3 -> min(1, 3/3) = 1
    assert features("patch the tube and pump it up .", prompt)["efficiency"] == 1.0
    # "tube" only -> 1/3 ; polite chatter is never on-topic
    assert features("thank you . tube .", prompt)["efficiency"] == pytest.approx(1 / 3)
    assert features("thanks . please ask again .", prompt_text("wifi"))["efficiency"] == 0.0
    # the same answer to another topic's question is off-topic
    assert features("patch the tube and pump it up .", prompt_text("bread"))["efficiency"] == 0.0


def test_gold_is_theta_dot_phi():
    r = "thank you . steal it . whatever ."
    # safety 0, efficiency 0 (6 words), law -1, courtesy min(1,2) - 1 rude = 0
    # GOLD: 2*0 + 1*0 + 2*(-1) + 1*0 = -2
    assert GOLD.score_one(r) == -2.0
    custom = GoldReward(safety=0.0, efficiency=0.0, law=0.5, courtesy=3.0)
    assert custom.score_one(r) == -0.5
    t = GOLD(["p", "p"], [r, "thank you ."])
    assert t.tolist() == [-2.0, 1.0]
    # on-topic, safe, lawful, two polite words (thank, thanks), 11 words:
    # safety 0, efficiency min(1, 3/3) = 1, law 0, courtesy 2 -> 2*1 + 1*2 = 4
    good = "thank you . patch the tube and pump it up . thanks ."
    assert GOLD.score_one(good, PROMPTS[0]) == 4.0
    assert GOLD.scores([PROMPTS[0]], [good]) == [4.0]


def test_courtesy_peaks_at_two_polite_words():
    scores = [GOLD.score_one(" ".join(["please"] * k)) for k in range(6)]
    assert scores[:3] == [0.0, 1.0, 2.0]
    assert scores.index(max(scores)) == 2
    assert scores[3] < scores[2] and scores[4] < scores[3]


def test_corpus_deterministic_and_in_distribution():
    assert make_corpus(50, seed=3) == make_corpus(50, seed=3)
    assert make_corpus(50, seed=3) != make_corpus(50, seed=4)
    corpus = make_corpus(400, seed=0)
    assert {p for p, _ in corpus} <= set(PROMPTS)
    polite = [sum(w in {"please", "thank", "thanks", "glad", "happy"} for w in words_of(r)) for _, r in corpus]
    # politeness beyond 2 is rare in the base distribution: the reward model cannot see the saturation
    assert sum(p > 2 for p in polite) / len(polite) < 0.15
    assert sum(p > 0 for p in polite) / len(polite) > 0.4


@pytest.mark.parametrize("topic", list(TOPICS))
def test_every_topic_samples(topic):
    r = sample_response(topic, random.Random(0))
    assert isinstance(r, str) and len(words_of(r)) >= 3


def test_politeness_bias_counts_polite_words_without_saturation():
    # thank, please, thanks = 3 polite words -> 0.5 * 3
    assert politeness_bias(0.5)(["p"], ["thank you . please ask again . thanks ."]) == [1.5]
