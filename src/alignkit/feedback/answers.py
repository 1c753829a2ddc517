"""Answers: what each task type asks, how a submitted answer is checked and stored.

Answers arrive in *display* terms (what the annotator saw: "A" is the response shown
first) and are stored in *original* terms (``a`` = ``responses[0]``), next to the display
order. :func:`canonical_answer` does both the checking and the mapping;
:func:`gold_score` compares a stored answer with a known (gold) one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from alignkit.data.records import Ranking
from alignkit.feedback.errors import InvalidAnswer
from alignkit.feedback.text import text_problem

__all__ = [
    "CHOICES",
    "DEFAULT_TAGS",
    "LIKERT",
    "MAX_TEXT",
    "PAIR_TYPES",
    "STRENGTHS",
    "TASK_TYPES",
    "canonical_answer",
    "choice_mu",
    "gold_score",
]

TASK_TYPES = ("pairwise", "ranking", "rating", "video_pair")
PAIR_TYPES = ("pairwise", "video_pair")  # two things side by side, one choice
CHOICES = ("a", "b", "tie", "both_bad", "incomparable")
STRENGTHS = ("slightly", "much")
DEFAULT_TAGS = ("harmful", "untrue", "unhelpful")
LIKERT = (1, 7)
VIDEO_OTHERS = ("tie", "incomparable")  # besides A and B: a tie, or "can't tell"
MAX_TEXT = 100_000  # characters in one comment or edit


def canonical_answer(
    item_type: str,
    responses: list[str],
    display_order: list[int],
    submitted: dict[str, Any],
    allowed_tags: Iterable[str] = DEFAULT_TAGS,
) -> dict[str, Any]:
    """Validate an answer given in display terms and return it in original terms.

    ``submitted`` (display terms: position 0 is the response shown first, "A"):

    * pairwise: ``choice`` ∈ A, B, tie, both_bad, incomparable; optional ``strength``
      ∈ slightly, much (only with A or B);
    * video_pair (two clips): ``choice`` ∈ A, B, tie, incomparable ("can't tell");
      clips have no strength and cannot be edited;
    * ranking: ``ranks`` — one integer per shown response, 1 = best, equal = tied;
    * rating: ``ratings`` — one integer 1–7 per shown response;
    * any type: ``tags`` (one list per shown response), ``comment`` (text), ``edits``
      (one corrected text or null per shown response).

    The result maps back through ``display_order``: choice ``a`` means ``responses[0]``,
    ``order``/``ties``/``scores``/``tags``/``edits`` index the original responses.
    """
    if not isinstance(submitted, dict):
        raise InvalidAnswer("expected a JSON object with the answer")
    k = len(responses)
    unknown = set(submitted) - {
        "choice",
        "strength",
        "ranks",
        "ratings",
        "tags",
        "comment",
        "edits",
    }
    if unknown:
        raise InvalidAnswer(f"unknown answer field(s): {', '.join(sorted(unknown))}")

    def per_response(name: str, default: Any) -> list[Any]:
        value = submitted.get(name)
        if value is None:
            return [default] * k
        if not isinstance(value, list) or len(value) != k:
            raise InvalidAnswer(
                f"field '{name}': expected a list with one entry per response ({k})"
            )
        return [value[display_order.index(orig)] for orig in range(k)]  # → original order

    answer: dict[str, Any] = {}
    if item_type in PAIR_TYPES:
        choice = str(submitted.get("choice") or "").strip()
        mapping = {"A": display_order[0], "B": display_order[1]}
        others = ("tie", "both_bad", "incomparable") if item_type == "pairwise" else VIDEO_OTHERS
        if choice.upper() in mapping:
            choice = "a" if mapping[choice.upper()] == 0 else "b"
        elif choice.lower() in others:
            choice = choice.lower()
        else:
            raise InvalidAnswer(f"field 'choice': expected one of A, B, {', '.join(others)}")
        strength = submitted.get("strength") or None
        if strength is not None and item_type == "video_pair":
            raise InvalidAnswer("field 'strength': a clip comparison takes no strength")
        if strength is not None:
            if strength not in STRENGTHS:
                raise InvalidAnswer("field 'strength': expected 'slightly' or 'much'")
            if choice not in ("a", "b"):
                strength = None  # strength only qualifies a preference
        answer.update(choice=choice, strength=strength)
    elif item_type == "ranking":
        ranks = per_response("ranks", None)
        if any(isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= k for r in ranks):
            raise InvalidAnswer(f"field 'ranks': expected an integer 1..{k} for every response")
        order = sorted(range(k), key=lambda i: (ranks[i], i))
        groups: dict[int, list[int]] = defaultdict(list)
        for i in order:
            groups[ranks[i]].append(i)
        answer.update(order=order, ties=[g for g in groups.values() if len(g) > 1])
    elif item_type == "rating":
        scores = per_response("ratings", None)
        lo, hi = LIKERT
        if any(isinstance(s, bool) or not isinstance(s, int) or not lo <= s <= hi for s in scores):
            raise InvalidAnswer(
                f"field 'ratings': expected an integer {lo}..{hi} for every response"
            )
        answer["scores"] = scores
    else:  # pragma: no cover - items are validated on import
        raise InvalidAnswer(f"unknown task type {item_type!r}")

    allowed = set(allowed_tags)
    tags = per_response("tags", [])
    for t in tags:
        if not isinstance(t, list) or any(not isinstance(x, str) or x not in allowed for x in t):
            raise InvalidAnswer(f"field 'tags': expected lists of tags from {sorted(allowed)}")
    answer["tags"] = [sorted(set(t)) for t in tags]
    comment = submitted.get("comment") or ""
    if not isinstance(comment, str) or len(comment) > MAX_TEXT:
        raise InvalidAnswer(f"field 'comment': expected text of at most {MAX_TEXT} characters")
    if problem := text_problem(comment):
        raise InvalidAnswer(f"field 'comment': {problem}")
    answer["comment"] = comment
    edits = per_response("edits", None)
    for i, e in enumerate(edits):
        if e is not None and not isinstance(e, str):
            raise InvalidAnswer("field 'edits': expected a corrected text or null per response")
        if e is not None and (e.strip() == "" or as_shown(e) == as_shown(responses[i])):
            edits[i] = None  # unchanged (or emptied) text is not a correction
    if item_type == "video_pair" and any(e is not None for e in edits):
        raise InvalidAnswer("field 'edits': clips cannot be edited")
    for i, e in enumerate(edits):  # limits only for real corrections: long items stay labelable
        if e is not None and len(e) > MAX_TEXT + len(responses[i]):
            raise InvalidAnswer(
                f"field 'edits': a correction may be at most {MAX_TEXT} characters longer "
                "than the response"
            )
        if e is not None and (problem := text_problem(e)):
            raise InvalidAnswer(f"field 'edits': {problem}")
    answer["edits"] = edits
    return answer


def as_shown(text: str) -> str:
    """``text`` as a browser's text box gives it back untouched: line ends become LF (the
    form's CRLF, a lone CR) and NUL becomes U+FFFD (as the HTML parser does)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "\ufffd")


def choice_mu(choice: str) -> float | None:
    """The soft label μ of a pairwise choice (a 1, b 0, tie and both bad ½; incomparable None)."""
    return {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}.get(choice)


def gold_score(item_type: str, gold: dict[str, Any], answer: dict[str, Any]) -> float:
    """Agreement of one answer with a gold answer, in [0, 1].

    pairwise: 1 if the choice matches; ranking: share of the gold's strictly ordered pairs
    put in the same order; rating: share of responses scored within ±1 of gold.
    """
    if item_type in PAIR_TYPES:
        return float(answer["choice"] == gold["choice"])
    if item_type == "ranking":
        blank = [""] * len(answer["order"])
        g = Ranking("", blank, gold["order"], gold.get("ties", []))
        a = Ranking("", blank, answer["order"], answer.get("ties", []))
        gt, at = g.tier(), a.tier()
        pairs = [(i, j) for i in range(len(gt)) for j in range(len(gt)) if gt[i] < gt[j]]
        return sum(at[i] < at[j] for i, j in pairs) / len(pairs) if pairs else 1.0
    return sum(
        abs(x - y) <= 1 for x, y in zip(answer["scores"], gold["scores"], strict=True)
    ) / len(gold["scores"])
