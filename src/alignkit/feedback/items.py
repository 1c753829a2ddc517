"""Item parsing: an import entry (an item dict or an alignkit record) → one row of ``ak_items``.

Item dict: ``{"type": "pairwise"|"ranking"|"rating"|"video_pair", "prompt": str or [{"role",
"content"}, ...], "responses": [str, ...], "id"?: str, "gold"?: answer in original terms,
"meta"?: {...}}``. Records: a Comparison becomes a pairwise item, a Ranking a ranking
item, a Rating a rating item; with ``gold=True`` their labels become the gold answers.
An item's key is its ``id`` or a hash of its content, so importing twice adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from alignkit.data.formats import render_messages
from alignkit.data.records import Comparison, Ranking, Rating, record_from_dict
from alignkit.errors import DataError
from alignkit.feedback.answers import PAIR_TYPES, TASK_TYPES, canonical_answer
from alignkit.feedback.errors import InvalidAnswer
from alignkit.feedback.text import json_problem

__all__ = ["MEDIA_REF", "item_row"]

MEDIA_REF = re.compile(r"^media:[0-9a-f]{64}$")  # a clip stored in ak_media, by SHA-256


def item_row(project_id: int, entry: Any, gold_flag: bool, n: int) -> dict[str, Any]:
    """The ``ak_items`` row for import entry number ``n`` (1-based, named in errors)."""
    meta: dict[str, Any] = {}
    gold_answer = None
    if isinstance(entry, dict) and "kind" in entry:  # an alignkit record as JSON
        try:
            entry = record_from_dict(entry)
        except DataError as e:
            raise DataError(e.reason, line=n, field=e.field) from None
    if isinstance(entry, Comparison):
        kind, prompt, responses, meta = (
            "pairwise",
            entry.prompt,
            [entry.a, entry.b],
            dict(entry.meta),
        )
        if gold_flag:
            choice = (
                "incomparable"
                if entry.incomparable
                else "tie"
                if entry.mu == 0.5
                else "a"
                if entry.mu > 0.5
                else "b"
            )
            gold_answer = {"choice": choice}
    elif isinstance(entry, Ranking):
        kind, prompt, responses, meta = (
            "ranking",
            entry.prompt,
            list(entry.responses),
            dict(entry.meta),
        )
        if gold_flag:
            gold_answer = {"order": list(entry.order), "ties": [list(t) for t in entry.ties]}
    elif isinstance(entry, Rating):
        kind, prompt, responses, meta = (
            "rating",
            entry.prompt,
            [entry.response],
            dict(entry.meta),
        )
        if gold_flag:
            gold_answer = {"scores": [int(round(entry.score))]}
    elif isinstance(entry, dict):
        kind = entry.get("type", "pairwise")
        prompt, responses = entry.get("prompt"), entry.get("responses")
        if kind == "video_pair" and prompt is None:
            prompt = ""  # the question may be all in the guidelines
        meta = entry.get("meta") or {}
        gold_answer = entry.get("gold")
        if not isinstance(meta, dict):
            raise DataError("expected an object", line=n, field="meta")
    else:
        raise DataError(
            f"cannot annotate a {type(entry).__name__}; expected an item, Comparison, "
            "Ranking or Rating",
            line=n,
        )
    if kind not in TASK_TYPES:
        raise DataError(
            f"expected one of {', '.join(TASK_TYPES)}, got {kind!r}", line=n, field="type"
        )
    turns = None
    for name in ("turns", "prompt_messages"):  # prompt_messages: TRL conversational rows
        if isinstance(meta.get(name), list):
            turns = meta.pop(name)
    if isinstance(prompt, list):
        turns, prompt = prompt, None
    if turns is not None:
        if not all(
            isinstance(t, dict)
            and isinstance(t.get("role"), str)
            and isinstance(t.get("content"), str)
            for t in turns
        ):
            raise DataError(
                "expected turns as [{'role': str, 'content': str}, ...]", line=n, field="prompt"
            )
        if not turns:
            raise DataError("expected at least one turn", line=n, field="prompt")
        turns = [{"role": t["role"], "content": t["content"]} for t in turns]
        prompt = prompt if isinstance(prompt, str) else render_messages(turns)
    if not isinstance(prompt, str):
        raise DataError("expected a string or a list of turns", line=n, field="prompt")
    lo = 1 if kind == "rating" else 2
    if (
        not isinstance(responses, list)
        or not all(isinstance(r, str) for r in responses)
        or not lo <= len(responses) <= 26
        or (kind in PAIR_TYPES and len(responses) != 2)
    ):
        want = "exactly 2" if kind in PAIR_TYPES else f"{lo}..26"
        raise DataError(
            f"expected a list of {want} strings for a {kind} item", line=n, field="responses"
        )
    if kind == "video_pair" and not all(MEDIA_REF.match(r) for r in responses):
        raise DataError(
            "expected two clip references 'media:<sha256>' (import clips with "
            "alignkit.feedback.media.import_video_pairs)",
            line=n,
            field="responses",
        )
    if gold_answer is not None:
        try:  # validate the gold answer in original terms (identity display order)
            k = len(responses)
            if kind in PAIR_TYPES:
                c = gold_answer.get("choice")
                sub = {"choice": {"a": "A", "b": "B"}.get(c, c)}
            elif kind == "ranking":
                r = Ranking(prompt, responses, gold_answer["order"], gold_answer.get("ties", []))
                sub = {"ranks": [t + 1 for t in r.tier()]}
            else:
                sub = {"ratings": gold_answer["scores"]}
            full = canonical_answer(kind, responses, list(range(k)), sub)
            keep = {
                "pairwise": ("choice",),
                "video_pair": ("choice",),
                "ranking": ("order", "ties"),
                "rating": ("scores",),
            }
            gold_answer = {key: full[key] for key in keep[kind]}
        except (InvalidAnswer, DataError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"bad gold answer: {e}", line=n, field="gold") from None
    key = entry.get("id") if isinstance(entry, dict) and entry.get("id") is not None else None
    content = {"prompt": prompt, "turns": turns, "responses": responses, "meta": meta, "id": key}
    if found := json_problem(content):
        path, problem = found
        raise DataError(problem, line=n, field=path)
    if key is None:
        key = hashlib.sha256(json.dumps([kind, prompt, turns, responses]).encode()).hexdigest()
    return {
        "project_id": project_id,
        "key": str(key)[:200],
        "type": kind,
        "prompt": prompt,
        "turns": turns,
        "responses": responses,
        "is_gold": gold_answer is not None,
        "gold": gold_answer,
        "meta": meta,
        "created_at": time.time(),
    }
