"""Votes out of the store: export formats (TRL rows, alignkit records, raw) and statistics.

Every function here is pure: it takes the store's raw votes
(:meth:`~alignkit.feedback.store.FeedbackStore.raw_votes`, one dict per vote with its
item and annotator) and returns rows, records or numbers.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alignkit.data.records import Comparison, Correction, Ranking, Rating, Record, record_to_dict
from alignkit.feedback import agreement
from alignkit.feedback.answers import PAIR_TYPES, choice_mu, gold_score
from alignkit.feedback.errors import UnknownFormat
from alignkit.feedback.values import Project

__all__ = [
    "EXPORT_FORMATS",
    "RECORD_KINDS",
    "combine_labels",
    "export_rows",
    "format_stat",
    "json_safe",
    "trl_rows",
    "vote_records",
    "vote_stats",
    "write_jsonl",
]

EXPORT_FORMATS = (
    "trl",
    "trl_conversational",
    "comparisons",
    "rankings",
    "ratings",
    "corrections",
    "raw",
)
RECORD_KINDS = ("comparisons", "rankings", "ratings", "corrections")


def vote_records(raw: Iterable[dict[str, Any]], kind: str) -> list[Record]:
    """Votes as alignkit records: ``comparisons``, ``rankings``, ``ratings`` or ``corrections``.

    Comparisons keep incomparable votes (``incomparable=True``; training loaders drop
    them); ties and "both bad" have ``mu = ½``. Every record carries the annotator,
    their group and ``meta = {item_id, vote_id, ...}``, plus ``comment`` when the
    annotator wrote one and ``tags`` when they ticked any: one list per response of the
    record (a comparison ``[tags of a, tags of b]``, a ranking one per response), or the
    one response's list for a rating or a correction. A ``video_pair`` vote is a comparison of two clips (``a``/``b``
    = ``"media:<sha256>"``) whose ``meta.item_meta`` is the item's own meta (e.g. the
    segment ids given at import).
    """
    out: list[Record] = []
    for v in raw:
        ans = v["answer"]
        common = {
            "annotator": v["annotator"],
            "group": v["group_name"],
            "meta": {"item_id": v["item_id"], "item_key": v["key"], "vote_id": v["id"]},
        }
        if v["turns"]:
            common["meta"]["prompt_messages"] = v["turns"]
        if ans.get("comment"):  # the annotator's free text travels with every record
            common["meta"]["comment"] = ans["comment"]
        if v["type"] == "video_pair":  # the clips' own meta (e.g. segment ids) comes back
            common["meta"]["item_meta"] = v["item_meta"]
        responses = v["responses"]
        tags = _tags(ans, len(responses))
        if any(tags) and v["type"] != "rating":  # a rating's records: one response's tags each
            common["meta"]["tags"] = tags
        if kind == "comparisons" and v["type"] in PAIR_TYPES:
            choice = ans["choice"]
            if choice == "both_bad":
                common["meta"]["both_bad"] = True
            out.append(
                Comparison(
                    v["prompt"],
                    responses[0],
                    responses[1],
                    mu=choice_mu(choice) if choice != "incomparable" else 0.5,
                    incomparable=choice == "incomparable",
                    strength=ans.get("strength"),
                    **common,
                )
            )
        elif kind == "rankings" and v["type"] == "ranking":
            out.append(Ranking(v["prompt"], list(responses), ans["order"], ans["ties"], **common))
        elif kind == "ratings" and v["type"] == "rating":
            for i, score in enumerate(ans["scores"]):
                meta = dict(common["meta"], response_index=i)
                if tags[i]:
                    meta["tags"] = tags[i]
                out.append(
                    Rating(
                        v["prompt"],
                        responses[i],
                        float(score),
                        scale=(1.0, 7.0),
                        annotator=v["annotator"],
                        group=v["group_name"],
                        meta=meta,
                    )
                )
        elif kind == "corrections":
            for i, edited in enumerate(ans.get("edits") or []):
                if edited is not None:
                    meta = dict(common["meta"], response_index=i)
                    meta.pop("tags", None)
                    if tags[i]:
                        meta["tags"] = tags[i]
                    out.append(
                        Correction(
                            v["prompt"],
                            responses[i],
                            edited,
                            annotator=v["annotator"],
                            group=v["group_name"],
                            meta=meta,
                        )
                    )
        elif kind not in RECORD_KINDS:
            raise UnknownFormat(kind, RECORD_KINDS)
    return out


def _tags(answer: dict[str, Any], k: int) -> list[list[str]]:
    """The answer's tags, one list per response in original order (empty lists if none)."""
    tags = answer.get("tags") or []
    return [list(tags[i]) if i < len(tags) and tags[i] else [] for i in range(k)]


def combine_labels(
    comparisons: Iterable[Comparison], item_ids: Iterable[int]
) -> dict[int, Comparison]:
    """One soft label per labelled pairwise item among ``item_ids``.

    With several votes (overlap > 1) ``mu`` is the mean of their μ (a, b, tie/both
    bad = 1, 0, ½), ignoring "can't compare"; an item whose every vote is "can't
    compare" gives an ``incomparable=True`` record. Unlabelled items are absent.
    """
    wanted = set(item_ids)
    grouped: dict[int, list[Comparison]] = defaultdict(list)
    for c in comparisons:
        if c.meta["item_id"] in wanted:
            grouped[c.meta["item_id"]].append(c)
    out = {}
    for item_id, cs in grouped.items():
        usable = [c for c in cs if not c.incomparable]
        first = cs[0]
        meta = {"item_id": item_id, "n_votes": len(cs), "annotators": [c.annotator for c in cs]}
        if "item_meta" in first.meta:
            meta["item_meta"] = first.meta["item_meta"]
        out[item_id] = Comparison(
            first.prompt,
            first.a,
            first.b,
            mu=sum(c.mu for c in usable) / len(usable) if usable else 0.5,
            incomparable=not usable,
            annotator=first.annotator if len(cs) == 1 else None,
            group=first.group if len(cs) == 1 else None,
            meta=meta,
        )
    return out


def export_rows(raw: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """The rows of export format ``fmt`` (one of :data:`EXPORT_FORMATS`).

    * ``trl`` / ``trl_conversational``: TRL preference rows, see :func:`trl_rows`.
    * ``comparisons`` / ``rankings`` / ``ratings`` / ``corrections``: alignkit records.
    * ``raw``: one row per vote with everything stored.
    """
    if fmt not in EXPORT_FORMATS:
        raise UnknownFormat(fmt, EXPORT_FORMATS)
    if fmt == "raw":
        rows = []
        for v in raw:
            rows.append(
                {
                    "vote_id": v["id"],
                    "assignment_id": v["assignment_id"],
                    "item_id": v["item_id"],
                    "item_key": v["key"],
                    "type": v["type"],
                    "annotator": v["annotator"],
                    "group": v["group_name"],
                    "served_at": v["served_at"],
                    "created_at": v["created_at"],
                    "time_spent_ms": v["time_spent_ms"],
                    "display_order": v["display_order"],
                    "answer": v["answer"],
                    "is_gold": bool(v["is_gold"]),
                }
            )
        return rows
    if fmt in ("trl", "trl_conversational"):
        return trl_rows(raw, conversational=fmt == "trl_conversational")
    return [record_to_dict(r) for r in vote_records(raw, fmt)]


def trl_rows(
    raw: Iterable[dict[str, Any]], *, conversational: bool = False
) -> list[dict[str, Any]]:
    """TRL preference rows, one per pairwise vote: ``{"prompt", "chosen", "rejected"}``
    plus ``"mu": 0.5`` for ties and "both bad"; "can't compare" votes are left out.

    One form per file, because readers (TRL's and :func:`alignkit.data.load_records`)
    take the form of the first row for every row: the standard form (strings) when every
    exported prompt is plain text, else — or when ``conversational`` — TRL's
    conversational form for every row (``prompt`` = the turns, a plain prompt as one user
    turn; ``chosen``/``rejected`` = one assistant turn). Who labelled and what they added
    ride along as extra columns (the data layer reads them into ``meta``): ``annotator``,
    ``group``, ``item_id``, ``vote_id``, and when given ``comment``, ``chosen_tags``,
    ``rejected_tags``.
    """
    votes = [v for v in raw if v["type"] == "pairwise" and v["answer"]["choice"] != "incomparable"]
    conversational = conversational or any(v["turns"] for v in votes)
    rows = []
    for v in votes:
        ans = v["answer"]
        mu = choice_mu(ans["choice"])
        a, b = v["responses"]
        tags = _tags(ans, 2)
        (chosen, chosen_tags), (rejected, rejected_tags) = (
            ((a, tags[0]), (b, tags[1])) if mu >= 0.5 else ((b, tags[1]), (a, tags[0]))
        )
        if conversational:
            prompt = v["turns"] or [{"role": "user", "content": v["prompt"]}]
            row: dict[str, Any] = {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        else:
            row = {"prompt": v["prompt"], "chosen": chosen, "rejected": rejected}
        if mu == 0.5:
            row["mu"] = 0.5
        row["annotator"] = v["annotator"]
        if v["group_name"] is not None:
            row["group"] = v["group_name"]
        row["item_id"], row["vote_id"] = v["item_id"], v["id"]
        if ans.get("comment"):
            row["comment"] = ans["comment"]
        if chosen_tags:
            row["chosen_tags"] = chosen_tags
        if rejected_tags:
            row["rejected_tags"] = rejected_tags
        rows.append(row)
    return rows


def write_jsonl(rows: list[dict[str, Any]], path: str | os.PathLike) -> int:
    """Write rows (e.g. :func:`export_rows`) as JSONL to ``path`` atomically; returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        # backslashreplace: a lone surrogate stored before validation existed is written
        # as its JSON escape (the stored text, exactly) instead of failing the export
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(rows)


def vote_stats(proj: Project, raw: list[dict[str, Any]], counts: dict[str, int]) -> dict[str, Any]:
    """Counts, agreement per task type, gold accuracy per annotator, group rates.

    Agreement units: a pairwise item (value = choice), a ranking item (value = the
    tier of each response), one response of a rating item (value = its score).
    """
    triples: dict[str, list] = {"pairwise": [], "ranking": [], "rating": [], "video_pair": []}
    gold_scores: dict[str, list[float]] = defaultdict(list)
    per_user: dict[str, dict[str, Any]] = {}
    group_pairs = []
    for v in raw:
        ans, name = v["answer"], v["annotator"]
        u = per_user.setdefault(name, {"group": v["group_name"], "votes": 0, "times": []})
        u["votes"] += 1
        u["times"].append(v["time_spent_ms"])
        if v["type"] in PAIR_TYPES:
            triples[v["type"]].append((v["item_id"], name, ans["choice"]))
            if not v["is_gold"]:
                group_pairs.append((v["group_name"] or "(none)", ans["choice"]))
        elif v["type"] == "ranking":
            r = Ranking("", [""] * len(ans["order"]), ans["order"], ans["ties"])
            triples["ranking"].append((v["item_id"], name, tuple(r.tier())))
        else:
            for i, s in enumerate(ans["scores"]):
                triples["rating"].append(((v["item_id"], i), name, s))
        if v["is_gold"]:
            gold_scores[name].append(gold_score(v["type"], v["gold"], ans))
    annotators = []
    for name, u in sorted(per_user.items()):
        times = sorted(u["times"])
        g = gold_scores.get(name, [])
        annotators.append(
            {
                "annotator": name,
                "group": u["group"],
                "votes": u["votes"],
                "median_time_ms": times[len(times) // 2] if times else None,
                "gold_n": len(g),
                "gold_accuracy": sum(g) / len(g) if g else None,
            }
        )
    return {
        "project": proj.name,
        "items": counts["items"],
        "gold_items": counts["gold"],
        "votes": len(raw),
        "overlap": proj.overlap,
        "agreement": {t: agreement.agreement_summary(tr) for t, tr in triples.items() if tr},
        "annotators": annotators,
        "groups": agreement.group_rates(group_pairs),
    }


def format_stat(x: Any) -> str:
    """A number for people: 3 decimals, '—' for missing or undefined (NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def json_safe(x: Any) -> Any:
    """NaN (undefined agreement) → None, recursively, so the result is standard JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    return x
