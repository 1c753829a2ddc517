"""The controlled-sentiment task: prompts, the split, and both gold rewards by hand."""

import math
from pathlib import Path

import pytest

from alignkit.errors import ConfigError
from alignkit.tasks.sentiment import (
    OPENINGS,
    SUBJECTS,
    SentimentGold,
    afinn_gold,
    afinn_raw,
    afinn_score,
    build_prompts,
    check_installed,
    split_prompts,
    vader_gold,
    vader_score,
)


def test_prompts_are_distinct_neutral_review_openings():
    prompts = build_prompts()
    assert len(prompts) == len(SUBJECTS) * len(OPENINGS) == 1260
    assert len(set(prompts)) == len(prompts) and prompts == build_prompts()
    assert "I tried the laptop last week and" in prompts and "This movie is" in prompts
    # the prompt carries no sentiment of its own under either gold (only the continuation counts)
    assert all(vader_score(p) == 0.0 and afinn_raw(p) == 0.0 for p in prompts)
    assert all(3 <= len(p.split()) <= 12 for p in prompts)


def test_split_is_by_prompt_disjoint_and_seeded():
    prompts = build_prompts()
    train, ev = split_prompts(prompts, 0.2, seed=0)
    assert len(ev) == 252 and len(train) == 1008
    assert not set(train) & set(ev) and set(train) | set(ev) == set(prompts)
    assert split_prompts(list(reversed(prompts)), 0.2, seed=0) == (train, ev)  # order of the input is irrelevant
    assert split_prompts(prompts, 0.2, seed=1)[1] != ev
    for bad in (0.0, 1.0, 1e-6):
        with pytest.raises(ConfigError):
            split_prompts(prompts, bad)


def test_vader_by_hand():
    """VADER's lexicon gives "good" valence 1.9; compound = s/√(s² + 15), rounded to 4 places."""
    assert vader_score("good") == round(1.9 / math.sqrt(1.9**2 + 15), 4) == 0.4404
    assert vader_score("  good ") == 0.4404  # stripped
    assert vader_score("not good") < 0 < vader_score("good!!!") and vader_score("good!!!") > 0.4404
    assert vader_score("the table is wooden") == 0.0


def test_afinn_by_hand():
    """AFINN-165: good = +3, great = +3, terrible = −3; normalised a/√(a² + 15)."""
    assert afinn_raw("good") == 3.0 and afinn_raw("great great great") == 9.0 and afinn_raw("terrible") == -3.0
    assert afinn_score("good") == pytest.approx(3 / math.sqrt(24))
    assert afinn_score("great great great") == pytest.approx(9 / math.sqrt(96))
    # AFINN has no capitals or punctuation rules (VADER boosts both): where the two golds part ways
    assert afinn_raw("GOOD!!!") == afinn_raw("good") and vader_score("GOOD!!!") > vader_score("good")


def test_gold_scores_the_continuation_only():
    prompts = ["This movie is", "The hotel was"]
    responses = [" great.", " dirty and awful"]
    assert vader_gold(prompts, responses) == [vader_score("great."), vader_score("dirty and awful")]
    assert afinn_gold(prompts, responses) == [afinn_score("great."), afinn_score("dirty and awful")]
    assert SentimentGold("afinn")(prompts, responses) == afinn_gold(prompts, responses)
    assert SentimentGold()(prompts, responses)[0] > 0 > SentimentGold()(prompts, responses)[1]
    with pytest.raises(ConfigError):
        vader_gold(prompts, responses[:1])
    with pytest.raises(ConfigError):
        SentimentGold("imdb")


def test_lexicons_ship_inside_the_packages():
    """Both golds work offline: the lexicon files are inside the installed packages."""
    import afinn
    import vaderSentiment

    check_installed()
    assert (Path(vaderSentiment.__file__).parent / "vader_lexicon.txt").stat().st_size > 100_000
    assert (Path(afinn.__file__).parent / "data" / "AFINN-en-165.txt").stat().st_size > 10_000
