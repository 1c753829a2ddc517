"""Record formats: how one row (a JSON object) maps to and from a feedback record.

A *format* is about the fields of a row; the *container* (JSONL, gzip, Parquet, a
saved HF dataset) is handled in :mod:`alignkit.data.io`. The formats:

``alignkit``
    Our own: :func:`record_to_dict` output, tagged with ``kind``; holds every record type.
``trl``
    TRL's standard preference rows: ``prompt``, ``chosen``, ``rejected`` strings
    (optional ``mu`` soft label, ``incomparable`` flag, ``annotator``, ``group``).
``trl_conversational``
    The same with lists of ``{"role", "content"}`` messages; ``prompt`` may be absent
    (then the shared leading messages of ``chosen`` and ``rejected`` are the prompt).
    The text fields hold a plain rendering; the messages are kept in ``meta``
    (``prompt_messages``, ``chosen_messages`` for ``a``, ``rejected_messages`` for ``b``)
    so writing back restores them exactly.
``trl_implicit``
    ``chosen`` / ``rejected`` strings only; the prompt is their common prefix
    (cut back to a whitespace boundary so no word is split).
``hh``
    Anthropic HH transcripts (``"\\n\\nHuman: … \\n\\nAssistant: …"``) in implicit
    ``chosen`` / ``rejected``; see :func:`split_hh`.

Every converter raises :class:`~alignkit.errors.DataError` naming the field and what was
expected; the reader adds the file and line.
"""

from __future__ import annotations

import json
from typing import Any

from alignkit.data.records import Comparison, Record, record_from_dict, record_to_dict
from alignkit.errors import DataError

__all__ = [
    "FORMATS",
    "HH_ASSISTANT",
    "HH_HUMAN",
    "detect_row_format",
    "record_to_row",
    "render_messages",
    "row_to_record",
    "split_hh",
]

FORMATS = ("alignkit", "trl", "trl_conversational", "trl_implicit", "hh")
HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"

# Row fields that map onto Comparison fields (the rest of a TRL row goes to meta).
_TRL_KNOWN = {"prompt", "chosen", "rejected", "mu", "incomparable", "annotator", "group"}


def detect_row_format(row: dict[str, Any]) -> str:
    """Name the format of one row from its fields (see the module docstring)."""
    if "kind" in row:
        return "alignkit"
    if "chosen" in row or "rejected" in row:
        sample = row.get("chosen", row.get("rejected"))
        if isinstance(sample, list):
            return "trl_conversational"
        if "prompt" in row:
            return "trl"
        if isinstance(sample, str) and HH_HUMAN in sample and HH_ASSISTANT in sample:
            return "hh"
        return "trl_implicit"
    if {"prompt", "a", "b"} <= row.keys():
        return "alignkit"
    keys = ", ".join(map(str, row)) or "none"
    raise DataError(
        "unrecognised row: expected 'kind' (alignkit) or 'chosen'/'rejected' (TRL/HH) "
        f"fields, got keys: {keys}"
    )


# --------------------------------------------------------------------------- HH


def split_hh(transcript_chosen: str, transcript_rejected: str) -> tuple[str, str, str]:
    """Split two HH transcripts into ``(prompt, chosen, rejected)``.

    The prompt is everything up to and including the last ``"\\n\\nAssistant:"`` that
    both transcripts share (i.e. that ends inside their common prefix); the replies are
    what follows it in each, so ``prompt + chosen == transcript_chosen`` exactly
    (replies keep their leading space). Identical transcripts split at their last
    Assistant marker into two equal replies.

    Raises :class:`DataError` when no shared Assistant marker exists.
    """
    _check_str(transcript_chosen, "chosen")
    _check_str(transcript_rejected, "rejected")
    n = 0
    limit = min(len(transcript_chosen), len(transcript_rejected))
    while n < limit and transcript_chosen[n] == transcript_rejected[n]:
        n += 1
    common = transcript_chosen[:n]
    cut = common.rfind(HH_ASSISTANT)
    if cut < 0:
        for field, text in (("chosen", transcript_chosen), ("rejected", transcript_rejected)):
            if HH_ASSISTANT not in text:
                raise DataError(
                    f"expected an HH transcript with an {HH_ASSISTANT.strip()!r} turn", field=field
                )
        raise DataError(
            "expected both transcripts to share the conversation up to an "
            f"{HH_ASSISTANT.strip()!r} turn, but they differ before the first one",
            field="rejected",
        )
    end = cut + len(HH_ASSISTANT)
    return common[:end], transcript_chosen[end:], transcript_rejected[end:]


# ---------------------------------------------------------------- conversational


def render_messages(messages: list[dict[str, str]]) -> str:
    """Plain-text rendering of chat messages: one ``"role: content"`` per line."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _render_completion(messages: list[dict[str, str]]) -> str:
    # A completion that is only assistant turns reads as its text; anything else keeps
    # the roles so no speaker is silently merged into the reply.
    if all(m["role"] == "assistant" for m in messages):
        return "\n".join(m["content"] for m in messages)
    return render_messages(messages)


def _check_messages(value: Any, field: str) -> list[dict[str, str]]:
    expected = "expected a list of {'role': str, 'content': str} messages"
    if value is None:
        raise DataError(f"missing ({expected})", field=field)
    if not isinstance(value, list):
        raise DataError(f"{expected}, got {type(value).__name__}", field=field)
    out = []
    for i, m in enumerate(value):
        if not (
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
        ):
            raise DataError(f"{expected}; message {i} is {m!r:.80}", field=field)
        out.append({"role": m["role"], "content": m["content"]})
    return out


# ----------------------------------------------------------------- row -> record


def _check_str(value: Any, field: str) -> str:
    if value is None:
        raise DataError("missing (expected a string)", field=field)
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", field=field)
    return value


def _comparison_extras(row: dict[str, Any]) -> dict[str, Any]:
    """mu / incomparable / annotator / group of a TRL-family row, validated."""
    out: dict[str, Any] = {}
    mu = row.get("mu")
    if mu is not None:
        if isinstance(mu, bool) or not isinstance(mu, (int, float)):
            raise DataError(f"expected a number in [0, 1], got {mu!r}", field="mu")
        out["mu"] = float(mu)
    inc = row.get("incomparable")
    if inc is not None:
        if not isinstance(inc, bool):
            raise DataError(f"expected true or false, got {inc!r}", field="incomparable")
        out["incomparable"] = inc
    for name in ("annotator", "group"):
        v = row.get(name)
        if v is not None:
            out[name] = str(v)
    return out


def _extra_meta(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in _TRL_KNOWN and v is not None}


def row_to_record(row: dict[str, Any], fmt: str) -> Record:
    """Convert one row in format ``fmt`` to a record (raises :class:`DataError`)."""
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}")
    if fmt == "alignkit":
        return _alignkit_from_row(row)
    if fmt == "trl":
        prompt = _check_str(row.get("prompt"), "prompt")
        chosen = _check_str(row.get("chosen"), "chosen")
        rejected = _check_str(row.get("rejected"), "rejected")
        return Comparison(
            prompt, chosen, rejected, meta=_extra_meta(row), **_comparison_extras(row)
        )
    if fmt == "hh":
        chosen = _check_str(row.get("chosen"), "chosen")
        rejected = _check_str(row.get("rejected"), "rejected")
        prompt, a, b = split_hh(chosen, rejected)
        return Comparison(prompt, a, b, meta=_extra_meta(row), **_comparison_extras(row))
    if fmt == "trl_implicit":
        chosen = _check_str(row.get("chosen"), "chosen")
        rejected = _check_str(row.get("rejected"), "rejected")
        prompt, a, b = _split_implicit(chosen, rejected)
        return Comparison(prompt, a, b, meta=_extra_meta(row), **_comparison_extras(row))
    if fmt == "trl_conversational":
        return _conversational_from_row(row)
    raise DataError(f"expected a format in {FORMATS}, got {fmt!r}")


def _split_implicit(chosen: str, rejected: str) -> tuple[str, str, str]:
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    # Back up to a whitespace boundary so a shared word-start stays with the replies.
    if n < len(chosen) or n < len(rejected):
        while n > 0 and not chosen[n - 1].isspace():
            n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def _shared_messages(chosen: list, rejected: list) -> tuple[list, list, list]:
    """Split off the leading messages both share (at least one completion message stays)."""
    k = 0
    while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
        k += 1
    return chosen[:k], chosen[k:], rejected[k:]


def _conversational_from_row(row: dict[str, Any]) -> Comparison:
    chosen = _check_messages(row.get("chosen"), "chosen")
    rejected = _check_messages(row.get("rejected"), "rejected")
    raw_prompt = row.get("prompt")
    if raw_prompt is None:  # implicit prompt: the shared leading messages
        prompt, chosen, rejected = _shared_messages(chosen, rejected)
    elif isinstance(raw_prompt, str):
        # A text prompt beside whole conversations (as in UltraFeedback-binarized): the
        # shared leading messages are the prompt; if none, the text is the user turn.
        prompt, chosen, rejected = _shared_messages(chosen, rejected)
        prompt = prompt or [{"role": "user", "content": raw_prompt}]
    else:
        prompt = _check_messages(raw_prompt, "prompt")
    if not chosen:
        raise DataError("expected at least one completion message", field="chosen")
    if not rejected:
        raise DataError("expected at least one completion message", field="rejected")
    meta = _extra_meta(row)
    meta.update(prompt_messages=prompt, chosen_messages=chosen, rejected_messages=rejected)
    return Comparison(
        render_messages(prompt),
        _render_completion(chosen),
        _render_completion(rejected),
        meta=meta,
        **_comparison_extras(row),
    )


_JSON_FIELDS = ("meta", "segment_a", "segment_b")


def _alignkit_from_row(row: dict[str, Any]) -> Record:
    # Columnar containers (Parquet, HF datasets) store nested dicts as JSON strings and
    # fill absent fields of other kinds with None; undo both here.
    d = {k: v for k, v in row.items() if v is not None}
    for name in _JSON_FIELDS:
        if isinstance(d.get(name), str):
            try:
                d[name] = json.loads(d[name])
            except json.JSONDecodeError:
                raise DataError("expected a JSON object", field=name) from None
    return record_from_dict(d)


# ----------------------------------------------------------------- record -> row


def record_to_row(record: Record, fmt: str) -> dict[str, Any]:
    """Convert a record to a row in format ``fmt``.

    For the TRL-family formats the record must be a :class:`Comparison` (use
    :func:`alignkit.data.to_comparisons` first); ``chosen`` is the preferred response,
    so a record with ``mu < ½`` is written swapped with ``mu`` → ``1 - mu``. A ``mu``
    column is written only when the label is not 1 (see :mod:`alignkit.data.io`).
    """
    if fmt == "alignkit":
        return record_to_dict(record)
    if not isinstance(record, Comparison):
        raise DataError(
            f"the {fmt!r} format holds only comparisons, got a {record.kind}; "
            "convert with alignkit.data.to_comparisons first"
        )
    swap = record.mu < 0.5
    mu = 1.0 - record.mu if swap else record.mu
    chosen, rejected = (record.b, record.a) if swap else (record.a, record.b)
    if fmt == "trl":
        row: dict[str, Any] = {"prompt": record.prompt, "chosen": chosen, "rejected": rejected}
    elif fmt in ("trl_implicit", "hh"):
        if fmt == "hh" and not record.prompt.endswith(HH_ASSISTANT):
            raise DataError(
                f"expected an HH prompt ending in {HH_ASSISTANT!r}, got ...{record.prompt[-30:]!r}",
                field="prompt",
            )
        row = {"chosen": record.prompt + chosen, "rejected": record.prompt + rejected}
    elif fmt == "trl_conversational":
        meta = record.meta
        prompt_msgs = meta.get("prompt_messages")
        a_msgs, b_msgs = meta.get("chosen_messages"), meta.get("rejected_messages")
        if prompt_msgs is None or a_msgs is None or b_msgs is None:
            prompt_msgs = [{"role": "user", "content": record.prompt}]
            a_msgs = [{"role": "assistant", "content": record.a}]
            b_msgs = [{"role": "assistant", "content": record.b}]
        if swap:
            a_msgs, b_msgs = b_msgs, a_msgs
        row = {"prompt": prompt_msgs, "chosen": a_msgs, "rejected": b_msgs}
    else:
        raise DataError(f"expected a format in {FORMATS}, got {fmt!r}")
    if mu != 1.0:
        row["mu"] = mu
    if record.incomparable:
        row["incomparable"] = True
    if record.annotator is not None:
        row["annotator"] = record.annotator
    if record.group is not None:
        row["group"] = record.group
    return row
