"""Language feedback that trains: a model revises an answer given a person's comment, and the
revision ≻ the original joins the data, as a comparison and as an SFT target.

Scheurer et al., "Training Language Models with Language Feedback at Scale" (2023; ILF):
condition a model on (input, output, feedback) to write a refinement, then learn from the
refinements. Here the comment is the chat's "what was the issue with the response?" text
(a thumbs-down's comment) or an annotator's comment on a vote; :func:`requests_from_records`
finds the answer it is about, :func:`revise` asks a reviser (any ``generate`` callable —
:func:`lm_reviser` wraps a causal LM) and :func:`revision_records` returns

* ``Comparison(prompt, a=revision, b=original, mu=1)`` and
* ``{"messages": conversation + [revision]}`` SFT rows,

both with ``meta["machine_revised"] = True`` (and the comment, the reviser's name and where
the comment came from), so training can filter or weigh them. A revision that is empty or
the same as the original is dropped (it says nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignkit.data.formats import render_messages
from alignkit.data.records import Comparison, Correction, Ranking, Rating, Record

__all__ = [
    "RevisionRequest",
    "lm_reviser",
    "requests_from_records",
    "revise",
    "revision_messages",
    "revision_records",
    "revision_trl_rows",
]

FEEDBACK_TURN = (
    "Feedback on your answer: {comment}\n"
    "Rewrite your answer so that it addresses the feedback. Reply with the rewritten answer only."
)


@dataclass(frozen=True)
class RevisionRequest:
    """An answer and the comment on it: ``prompt_messages`` is the conversation before it."""

    prompt_messages: list[dict[str, str]]
    answer: str
    comment: str
    meta: dict[str, Any] = field(default_factory=dict)
    """Where the comment came from (signal or vote ids, annotator, ...)."""


def _messages(record: Record) -> list[dict[str, str]]:
    kept = record.meta.get("prompt_messages")
    if kept:
        return [{"role": m["role"], "content": m["content"]} for m in kept]
    return [{"role": "user", "content": record.prompt}]


def requests_from_records(records: Iterable[Record]) -> list[RevisionRequest]:
    """The answers people commented on, one request per comment:

    * a rating (the chat's thumbs, a Likert score) below the top of its scale: its response;
    * a comparison: the rejected response (``b`` for a tie or "both bad");
    * a ranking: the response ranked last.

    Corrections are skipped (a person already rewrote the answer); records without a
    comment and incomparable comparisons too.
    """
    out = []
    for r in records:
        comment = (r.meta.get("comment") or "").strip()
        if not comment or isinstance(r, Correction):
            continue
        source = {k: r.meta[k] for k in ("signal_id", "vote_id", "item_id", "conversation_id", "source")
                  if k in r.meta}
        source["annotator"] = r.annotator
        if isinstance(r, Rating):
            if r.score >= r.scale[1]:
                continue  # a top score with a comment is praise, not a defect to fix
            answer = r.response
        elif isinstance(r, Comparison):
            if r.incomparable:
                continue
            answer = r.b if r.mu >= 0.5 else r.a
        elif isinstance(r, Ranking):
            answer = r.responses[r.order[-1]]
        else:
            continue
        out.append(RevisionRequest(_messages(r), answer, comment, source))
    return out


def revision_messages(request: RevisionRequest) -> list[dict[str, str]]:
    """The chat the reviser reads: the conversation, the answer as the reviser's own turn,
    then the comment as the user's next turn (:data:`FEEDBACK_TURN`) — the refinement
    asked for the way a person would ask an assistant in a chat.

    (A first design put everything in one instruction block; on the smoke run SmolLM2-135M
    mostly echoed its labels — "The user's answer is:" — so this form replaced it before the
    measured runs; see docs/chat.md.)"""
    return [
        *request.prompt_messages,
        {"role": "assistant", "content": request.answer},
        {"role": "user", "content": FEEDBACK_TURN.format(comment=request.comment)},
    ]


def revise(
    requests: Sequence[RevisionRequest], generate: Callable[[list[list[dict[str, str]]]], list[str]]
) -> list[str]:
    """One revision per request: ``generate`` maps reviser chats (:func:`revision_messages`)
    to their replies, in order."""
    chats = [revision_messages(r) for r in requests]
    out = list(generate(chats)) if chats else []
    if len(out) != len(chats):
        raise ValueError(f"the reviser returned {len(out)} texts for {len(chats)} requests")
    return [t.strip() for t in out]


def revision_records(
    requests: Sequence[RevisionRequest], revisions: Sequence[str], reviser: str
) -> tuple[list[Comparison], list[dict[str, Any]]]:
    """``(comparisons, sft_rows)``: revision ≻ original (μ = 1) and the revision as the SFT
    target, each marked ``machine_revised``; empty or unchanged revisions are dropped."""
    comparisons, sft = [], []
    for req, rev in zip(requests, revisions, strict=True):
        if not rev.strip() or rev.strip() == req.answer.strip():
            continue
        meta = {
            "machine_revised": True,
            "reviser": reviser,
            "comment": req.comment,
            "revised_from": req.meta,
            "prompt_messages": req.prompt_messages,
            "chosen_messages": [{"role": "assistant", "content": rev}],
            "rejected_messages": [{"role": "assistant", "content": req.answer}],
        }
        comparisons.append(Comparison(render_messages(req.prompt_messages), rev, req.answer, mu=1.0, meta=meta))
        sft.append({
            "messages": req.prompt_messages + [{"role": "assistant", "content": rev}],
            "meta": {"machine_revised": True, "reviser": reviser, "comment": req.comment},
        })
    return comparisons, sft


def revision_trl_rows(comparisons: Iterable[Comparison]) -> list[dict[str, Any]]:
    """TRL conversational rows of :func:`revision_records`' comparisons, with
    ``"machine_revised": true``, ``"reviser"`` and ``"comment"`` beside them (the data layer
    keeps extra fields in ``meta``)."""
    rows = []
    for c in comparisons:
        rows.append({
            "prompt": c.meta["prompt_messages"],
            "chosen": c.meta["chosen_messages"],
            "rejected": c.meta["rejected_messages"],
            "machine_revised": True,
            "reviser": c.meta["reviser"],
            "comment": c.meta["comment"],
        })
    return rows


def lm_reviser(model, tokenizer, *, max_new_tokens: int = 96, batch_size: int = 16) -> Callable:
    """A ``generate`` callable for :func:`revise` from a causal LM: greedy decoding of each
    chat rendered with the tokenizer's chat template (plain "Role: text" lines without one)
    by :func:`alignkit.decoding.sampling.generate`."""

    def generate(chats: list[list[dict[str, str]]]) -> list[str]:
        from alignkit.decoding.sampling import generate as sample

        if getattr(tokenizer, "chat_template", None):
            texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        else:
            texts = ["\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in c) + "\nAssistant:" for c in chats]
        out: list[str] = []
        for i in range(0, len(texts), batch_size):
            out += sample(model, tokenizer, texts[i : i + batch_size], max_new_tokens, do_sample=False)
        return out

    return generate
