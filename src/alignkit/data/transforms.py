"""Turning mixed feedback into what trainers eat: pairwise comparisons and splits."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from alignkit.data.records import (
    Comparison,
    Correction,
    Ranking,
    Rating,
    Record,
    TrajectoryPair,
)
from alignkit.errors import ConfigError, DataError

__all__ = [
    "correction_comparison",
    "correction_sft_examples",
    "ranking_orders",
    "ranking_pairs",
    "rating_pairs",
    "to_comparisons",
    "train_eval_split",
]

MAX_TIE_ORDERS = 720
"""Most strict orders one tied ranking may expand to (a tied group of 6 is 6! = 720)."""


def ranking_pairs(ranking: Ranking) -> list[Comparison]:
    """All K·(K−1)/2 pairs of a ranking: the better-ranked response is ``a`` (mu = 1);
    pairs inside a tied group get mu = ½."""
    tier = ranking.tier()
    order = ranking.order
    pairs = []
    for p in range(len(order)):
        for q in range(p + 1, len(order)):
            i, j = order[p], order[q]
            pairs.append(
                Comparison(
                    ranking.prompt,
                    ranking.responses[i],
                    ranking.responses[j],
                    mu=0.5 if tier[i] == tier[j] else 1.0,
                    annotator=ranking.annotator,
                    group=ranking.group,
                    meta={**ranking.meta, "source": "ranking", "pair": [i, j]},
                )
            )
    return pairs


def ranking_orders(ranking: Ranking) -> list[list[int]]:
    """The strict orders consistent with a ranking: every tied group in every internal order.

    A strict ranking gives ``[ranking.order]``. With ties the ranking is read as a uniform
    soft label over these orders (each weight 1/len), the K-way analogue of μ = ½ for a
    tied pair; the Plackett–Luce losses train on them. Groups keep their place in
    ``order``; the first order is ``ranking.order`` itself.
    Raises :class:`DataError` past :data:`MAX_TIE_ORDERS` orders.
    """
    import itertools
    import math

    if not ranking.ties:
        return [list(ranking.order)]
    n = math.prod(math.factorial(len(g)) for g in ranking.ties)
    if n > MAX_TIE_ORDERS:
        raise DataError(
            f"tied groups expand to {n} orders (at most {MAX_TIE_ORDERS}); split the ranking", field="ties"
        )
    tier = ranking.tier()
    blocks: list[list[int]] = []  # consecutive runs of one tier, in order
    for idx in ranking.order:
        if blocks and tier[blocks[-1][0]] == tier[idx]:
            blocks[-1].append(idx)
        else:
            blocks.append([idx])
    perms = [list(itertools.permutations(b)) for b in blocks]
    return [[i for block in choice for i in block] for choice in itertools.product(*perms)]


def rating_pairs(ratings: Iterable[Rating]) -> list[Comparison]:
    """Pair every two ratings of the same prompt (different responses).

    Scores are first mapped to [0, 1] by their scale so ratings on different scales
    compare; the higher-scored response is ``a`` with mu = 1, equal scores give mu = ½.
    The annotator is kept when both ratings share it.
    """
    by_prompt: dict[str, list[Rating]] = {}
    for r in ratings:
        by_prompt.setdefault(r.prompt, []).append(r)
    pairs = []
    for prompt, group in by_prompt.items():
        for x in range(len(group)):
            for y in range(x + 1, len(group)):
                r1, r2 = group[x], group[y]
                if r1.response == r2.response:
                    continue
                s1, s2 = _unit_score(r1), _unit_score(r2)
                hi, lo = (r1, r2) if s1 >= s2 else (r2, r1)
                pairs.append(
                    Comparison(
                        prompt,
                        hi.response,
                        lo.response,
                        mu=0.5 if s1 == s2 else 1.0,
                        annotator=r1.annotator if r1.annotator == r2.annotator else None,
                        group=r1.group if r1.group == r2.group else None,
                        meta=_shared_comment(r1, r2) | {"source": "ratings", "scores": [hi.score, lo.score]},
                    )
                )
    return pairs


def _shared_comment(r1: Rating, r2: Rating) -> dict[str, Any]:
    """The annotator's comment when both ratings carry the same one (one vote rated both)."""
    c = r1.meta.get("comment")
    return {"comment": c} if c and c == r2.meta.get("comment") else {}


def _unit_score(r: Rating) -> float:
    lo, hi = r.scale
    return (r.score - lo) / (hi - lo) if hi > lo else 0.5


def to_comparisons(
    records: Iterable[Record],
    *,
    ratings_to_pairs: bool = False,
    rankings_to_pairs: bool = True,
) -> list[Comparison]:
    """Every text record as pairwise comparisons, in input order.

    * Comparison: kept; incomparable ones are dropped.
    * Ranking: K-choose-2 pairs (tied pairs mu = ½) if ``rankings_to_pairs``, else dropped.
    * Rating: grouped by prompt and paired (see :func:`rating_pairs`) if
      ``ratings_to_pairs``, else dropped. The pairs come after the other records.
    * Correction: ``Comparison(prompt, a=edited, b=response, mu=1)``; an unchanged
      correction carries no preference and is dropped.
    * TrajectoryPair: not text; raises :class:`DataError`.
    """
    out: list[Comparison] = []
    ratings: list[Rating] = []
    for r in records:
        if isinstance(r, Comparison):
            if not r.incomparable:
                out.append(r)
        elif isinstance(r, Ranking):
            if rankings_to_pairs:
                out.extend(ranking_pairs(r))
        elif isinstance(r, Rating):
            ratings.append(r)
        elif isinstance(r, Correction):
            pair = correction_comparison(r)
            if pair is not None:
                out.append(pair)
        elif isinstance(r, TrajectoryPair):
            raise DataError(
                "trajectory pairs are not text comparisons; train them with alignkit.control"
            )
        else:
            raise DataError(f"expected a feedback record, got {type(r).__name__}")
    if ratings_to_pairs and ratings:
        out.extend(rating_pairs(ratings))
    return out


def correction_comparison(correction: Correction) -> Comparison | None:
    """An edit as a preference: ``Comparison(prompt, a=edited, b=response, mu=1)``.

    The annotator rewrote the response into what they wanted, so the edit is preferred
    with certainty (μ = 1) — for the reward model and for DPO alike. The record's meta
    (the annotator's comment among it) is kept, with ``source = "correction"``. An
    unchanged edit carries no preference: ``None``.
    """
    if correction.edited == correction.response:
        return None
    return Comparison(
        correction.prompt,
        correction.edited,
        correction.response,
        mu=1.0,
        annotator=correction.annotator,
        group=correction.group,
        meta={**correction.meta, "source": "correction"},
    )


def correction_sft_examples(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Corrections as SFT targets: ``{"prompt", "completion": edited, "meta"}`` rows.

    The rows are what ``alignkit sft`` reads from JSONL (``prompt`` + ``completion``);
    other record kinds are skipped. The meta (comment, annotator, item ids) rides along.
    """
    rows = []
    for r in records:
        if isinstance(r, Correction):
            meta = {**r.meta, "source": "correction"}
            if r.annotator is not None:
                meta["annotator"] = r.annotator
            rows.append({"prompt": r.prompt, "completion": r.edited, "meta": meta})
    return rows


def _split_key(record: Record, index: int) -> Any:
    prompt = getattr(record, "prompt", None)
    return ("prompt", prompt) if prompt is not None else ("record", index)


def train_eval_split(
    records: Iterable[Record], eval_fraction: float, seed: int = 0
) -> tuple[list[Record], list[Record]]:
    """Split by prompt: no prompt lands in both halves; deterministic in ``seed``.

    The distinct prompts are sorted, shuffled with ``random.Random(seed)`` and the first
    ``round(eval_fraction · n_prompts)`` (at least 1 when ``eval_fraction > 0``, at most
    ``n_prompts − 1``) go to eval. Records keep their input order within each half.
    Records without a prompt (trajectory pairs) are each their own group.
    """
    records = list(records)
    if isinstance(eval_fraction, bool) or not 0.0 <= float(eval_fraction) < 1.0:
        raise ConfigError(f"eval_fraction: expected a number in [0, 1), got {eval_fraction!r}")
    keys = [_split_key(r, i) for i, r in enumerate(records)]
    if eval_fraction == 0 or not records:
        return records, []
    distinct = sorted(set(keys), key=repr)
    if len(distinct) < 2:
        raise DataError(
            f"cannot split by prompt: need at least 2 distinct prompts, got {len(distinct)}"
        )
    n_eval = min(max(1, round(eval_fraction * len(distinct))), len(distinct) - 1)
    random.Random(seed).shuffle(distinct)
    eval_keys = set(distinct[:n_eval])
    train = [r for r, k in zip(records, keys, strict=True) if k not in eval_keys]
    eval_ = [r for r, k in zip(records, keys, strict=True) if k in eval_keys]
    return train, eval_
