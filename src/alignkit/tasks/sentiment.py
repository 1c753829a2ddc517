"""Controlled sentiment: continue the opening of a review so that it reads positive.

The task of the DPO paper's first experiment (Rafailov et al. 2023, §6.1: IMDb prefixes,
gpt2-large, a sentiment classifier as the gold reward), rebuilt offline:

* **Prompts** — :func:`build_prompts`: every combination of :data:`SUBJECTS` (63 things one
  writes a review of: films, books, restaurants, hotels, gadgets, games, albums, shows,
  services) and :data:`OPENINGS` (20 neutral review openings, each ending where the
  reviewer's verdict would start) — 1,260 distinct prompts of 3–12 words, built by code, no
  data set downloaded. :func:`split_prompts` splits them into train and evaluation prompts
  *by prompt* (a seeded shuffle of the sorted list; no prompt is in both parts; a subject or
  an opening can appear in both).
* **Continuations** are the policy's raw-text continuation of the prompt (no chat
  template), at most ``max_new_tokens`` ≤ 32 new tokens.
* **Gold reward** — :func:`vader_gold`: the VADER compound score (Hutto & Gilbert 2014,
  ``vaderSentiment`` 3.3.2, lexicon inside the wheel) of the continuation alone, stripped of
  surrounding white space: ``SentimentIntensityAnalyzer().polarity_scores(y)["compound"]``
  ∈ [−1, 1] — the sum of its lexicon valences (with VADER's negation, booster, "but",
  capitals and "!" rules) squashed by s/√(s² + 15).
* **Second gold** — :func:`afinn_gold`: the AFINN-165 score (Nielsen 2011, ``afinn`` 0.1,
  lexicon inside the package; ``Afinn(language="en").score(y)``, the plain sum of word
  valences −5…+5, no negation rule) of the same continuation, normalised the way VADER
  normalises its sum: a/√(a² + 15) ∈ (−1, 1). No training step ever sees it: it is the
  check that the policy has not learned VADER's lexicon and rules rather than sentiment
  (repeating "great" scores +0.97 under VADER; the two part ways when a policy hacks
  one's quirks, e.g. "!!!" or capitals, which AFINN ignores).

Both are pure Python and deterministic; :class:`SentimentGold` is the
``gold(prompts, responses) -> list[float]`` callable the evaluation code takes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

from alignkit.errors import ConfigError

SUBJECTS: tuple[str, ...] = (
    # films and shows
    "this movie", "the film", "this documentary", "the sequel", "this spy film", "the new sitcom",
    "this slasher film", "the animated film", "this drama", "the remake", "this TV series", "the show",
    "the season finale", "the stage production", "the musical",
    # books
    "this book", "the paperback", "this memoir", "the cookbook", "this biography", "the short story collection",
    "this textbook",
    # places to eat and stay
    "this restaurant", "the cafe", "the pizza place", "this sushi bar", "the bakery", "the food truck",
    "the hotel", "this hostel", "the resort", "the campsite",
    # things one buys
    "this phone", "the laptop", "these headphones", "the vacuum", "this coffee maker", "the blender",
    "the running shoes", "this backpack", "the mattress", "this camera", "the electric toothbrush",
    "the smartwatch", "this keyboard",
    # games and music
    "this game", "the board game", "the video game", "this album", "the concert", "the new single",
    "the trade show",
    # services and everything else
    "the airline", "the dentist", "this gym", "the car rental", "the museum", "the tour", "the hair salon",
    "the moving company", "this online course", "the theme park", "the app",
)
"""What the reviews are about (63)."""

OPENINGS: tuple[str, ...] = (
    "{X} is",
    "{X} was",
    "I tried {x} last week and",
    "My opinion of {x}:",
    "So, {x}",
    "I have to say that {x}",
    "After a month with {x}, I",
    "Let me tell you about {x}. It",
    "We finally tried {x} and",
    "My review of {x}:",
    "Before you spend money on {x}, know that",
    "Here is what I think of {x}:",
    "The first time I saw {x}, I",
    "My neighbours told me about {x}, and",
    "Compared to the last one, {x}",
    "The first thing you notice about {x} is",
    "In my view, {x}",
    "I went to {x} expecting",
    "Overall, {x}",
    "In a few words, {x}",
)
"""Neutral review openings; ``{x}`` is the subject, ``{X}`` the subject at a sentence start (20)."""


def build_prompts() -> list[str]:
    """Every subject in every opening: 63 × 20 = 1,260 distinct prompts, in a fixed order."""
    out = []
    for subject in SUBJECTS:
        for opening in OPENINGS:
            out.append(opening.format(x=subject, X=subject[0].upper() + subject[1:]))
    if len(set(out)) != len(out):  # a guard on the tables above, not on user input
        raise AssertionError("sentiment prompts are not distinct")
    return out


def split_prompts(prompts: list[str], eval_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(train, eval)``: a seeded shuffle of the sorted distinct prompts, the last
    ``round(eval_fraction · n)`` for evaluation. No prompt is in both."""
    if not 0 < eval_fraction < 1:
        raise ConfigError(f"eval_fraction: expected a number in (0, 1), got {eval_fraction}")
    unique = sorted(set(prompts))
    random.Random(seed).shuffle(unique)
    n_eval = round(eval_fraction * len(unique))
    if n_eval == 0 or n_eval == len(unique):
        raise ConfigError(f"eval_fraction {eval_fraction} leaves an empty part of {len(unique)} prompts")
    return unique[: len(unique) - n_eval], unique[len(unique) - n_eval :]


# ------------------------------------------------------------------------ gold rewards

AFINN_ALPHA = 15.0
"""The squashing constant of VADER's ``normalize`` (s/√(s² + α)), used for AFINN too."""


@lru_cache(maxsize=1)
def _vader():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise ConfigError("the sentiment task needs vaderSentiment: pip install 'alignkit[sentiment]'") from None
    return SentimentIntensityAnalyzer()


@lru_cache(maxsize=1)
def _afinn():
    try:
        from afinn import Afinn
    except ImportError:
        raise ConfigError("the sentiment task needs afinn: pip install 'alignkit[sentiment]'") from None
    return Afinn(language="en")


def vader_score(text: str) -> float:
    """VADER compound score of ``text`` (stripped) ∈ [−1, 1]."""
    return float(_vader().polarity_scores(text.strip())["compound"])


def afinn_raw(text: str) -> float:
    """AFINN-165 sum of word valences of ``text`` (stripped)."""
    return float(_afinn().score(text.strip()))


def afinn_score(text: str) -> float:
    """AFINN-165 sum a, normalised as VADER normalises its sum: a / √(a² + 15) ∈ (−1, 1)."""
    a = afinn_raw(text)
    return a / math.sqrt(a * a + AFINN_ALPHA)


def vader_gold(prompts: list[str], responses: list[str]) -> list[float]:
    """The gold reward: VADER compound of each continuation (the prompt is not scored)."""
    return [vader_score(r) for r in _check(prompts, responses)]


def afinn_gold(prompts: list[str], responses: list[str]) -> list[float]:
    """The second gold, never trained on: normalised AFINN of each continuation."""
    return [afinn_score(r) for r in _check(prompts, responses)]


def _check(prompts: list[str], responses: list[str]) -> list[str]:
    if len(prompts) != len(responses):
        raise ConfigError(f"got {len(prompts)} prompts and {len(responses)} responses")
    return responses


@dataclass(frozen=True)
class SentimentGold:
    """A gold reward as a callable ``(prompts, responses) -> list[float]``: ``kind`` is
    ``vader`` (the gold) or ``afinn`` (the held-back second gold)."""

    kind: str = "vader"

    def __post_init__(self):
        if self.kind not in ("vader", "afinn"):
            raise ConfigError(f"gold: expected vader or afinn, got {self.kind!r}")

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        return (vader_gold if self.kind == "vader" else afinn_gold)(prompts, responses)


def check_installed() -> None:
    """Raise :class:`ConfigError` (one line, how to install) unless both lexicons load."""
    _vader()
    _afinn()
