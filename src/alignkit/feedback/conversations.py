"""Conversations with models — the chat page and the arena — and the feedback given in them.

Library only: the web app (``alignkit.app.chat``) and the CLI (``alignkit chat``) are thin
layers over :class:`ChatStore`, which shares the annotation store's database, accounts and
projects (:class:`~alignkit.feedback.store.FeedbackStore`).

A conversation is a tree of messages. A user turn is the child of the answer it follows;
an answer is the child of the user turn it replies to, and a regenerated, edited or second
answer is its *sibling*. ``leaf_id`` is the message the conversation continues from, so
the conversation as the model sees it is the path root → leaf. An arena conversation is
one battle: one user turn, two answers (sides A and B) from two anonymous models.

Every piece of feedback is a *signal*, committed before the call returns, unique per
(user, kind, what was judged) — a repeated submit returns the first signal
(``duplicate=True``), a different answer to the same question is a :class:`Conflict`.
Each becomes a record the trainers already read, with the **whole conversation up to the
judged answer as the prompt** (kept as chat messages in ``meta["prompt_messages"]``):

============  ===========================================  =======================================
signal        the person gives                             record
============  ===========================================  =======================================
``thumb``     up / down, tags, "what was the issue" text   ``Rating(score 1 / 0, scale (0, 1))``
``compare``   after Regenerate: better / worse / same      ``Comparison(new, old, μ = 1 / 0 / ½)``
``pick``      of two answers, the one to continue with     ``Comparison(chosen, other, μ = 1)``
``edit``      a corrected answer                           ``Correction(original → edited)``
``arena``     A / B / tie / both bad                       ``Comparison(A, B, μ = 1 / 0 / ½ / ½)``
============  ===========================================  =======================================

"Both bad" is μ = ½ with ``meta["both_bad"] = True`` and counted in the statistics; the
comment and tags ride along on the record's meta. :func:`export_rows` writes them (TRL's
conversational format for comparisons; alignkit records; SFT rows; raw signals).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from alignkit.data.formats import render_messages
from alignkit.data.records import Comparison, Correction, Rating, Record, record_to_dict
from alignkit.feedback import agreement
from alignkit.feedback.answers import DEFAULT_TAGS, MAX_TEXT
from alignkit.feedback.errors import Conflict, InvalidAnswer, InvalidRequest, NotFound, NotMember
from alignkit.feedback.leaderboard import Battle
from alignkit.feedback.schema import chat_signals, conversations, messages, projects, users
from alignkit.feedback.text import text_problem
from alignkit.feedback.values import ImportResult, User, VoteResult

__all__ = [
    "ARENA_CHOICES",
    "CHAT_EXPORT_FORMATS",
    "COMPARE_CHOICES",
    "ChatStore",
    "Conversation",
    "Message",
    "TooLong",
    "export_rows",
    "signal_records",
]

COMPARE_CHOICES = {"better": 1.0, "worse": 0.0, "same": 0.5}
ARENA_CHOICES = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}
CHAT_EXPORT_FORMATS = ("trl", "comparisons", "ratings", "corrections", "sft", "raw")
FINISHED = ("done", "stopped")  # answers one can judge and continue from
REVIEW_PREFIX = "chat-signal-"


class TooLong(InvalidRequest):
    """A message or conversation over its size limit; ``what``, ``size`` and ``limit`` say
    which and by how much (characters)."""

    def __init__(self, what: str, size: int, limit: int):
        super().__init__(
            f"{what} is {size:,} characters; the limit is {limit:,} — shorten it"
            + (" or start a new conversation" if what.startswith("the conversation") else "")
        )
        self.what, self.size, self.limit = what, size, limit


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    parent_id: int | None
    role: str
    content: str
    model: str | None
    side: str | None
    origin: str
    status: str
    meta: dict[str, Any]
    created_at: float

    def as_turn(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass
class Conversation:
    id: int
    project_id: int
    user_id: int
    mode: str
    models: list[str]
    leaf_id: int | None
    title: str
    messages: dict[int, Message] = field(default_factory=dict)

    def path(self, leaf: int | None = None) -> list[Message]:
        """Root → ``leaf`` (default: the conversation's leaf)."""
        out, at = [], self.leaf_id if leaf is None else leaf
        while at is not None:
            m = self.messages[at]
            out.append(m)
            at = m.parent_id
        return out[::-1]

    def children(self, parent_id: int | None) -> list[Message]:
        return sorted(
            (m for m in self.messages.values() if m.parent_id == parent_id), key=lambda m: m.id
        )


def _now() -> float:
    return time.time()


def _message(row) -> Message:
    return Message(
        row.id,
        row.conversation_id,
        row.parent_id,
        row.role,
        row.content,
        row.model,
        row.side,
        row.origin,
        row.status,
        dict(row.meta or {}),
        row.created_at,
    )


def _clean_output(text: str) -> str:
    """Model output as storable text (NUL cannot be stored in PostgreSQL text)."""
    return str(text).replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


class ChatStore:
    """Conversations and their signals, in the database of ``store``.

    ``max_message_chars`` bounds one typed message (or edit); ``max_conversation_chars``
    the whole conversation a new message would extend (every message on its path).
    """

    def __init__(
        self, store, *, max_message_chars: int = 16_000, max_conversation_chars: int = 200_000
    ):
        self.store = store
        self.db = store.db
        self.max_message_chars = max_message_chars
        self.max_conversation_chars = max_conversation_chars

    # ------------------------------------------------------------------ conversations

    def _member(self, project: str, user: User) -> int:
        proj = self.store.project(project)
        if not self.store.is_member(project, user):
            raise NotMember(f"user {user.name!r} is not a member of project {project!r}")
        return proj.id

    def start(self, project: str, user: User, mode: str = "chat", models: Sequence[str] = ()) -> int:
        """A new conversation of ``user``: ``mode`` "chat", or "arena" with two ``models``
        (side A, side B). Returns its id."""
        project_id = self._member(project, user)
        if mode not in ("chat", "arena"):
            raise InvalidRequest(f"mode: expected 'chat' or 'arena', got {mode!r}")
        models = list(models)
        if mode == "arena" and (len(models) != 2 or models[0] == models[1]):
            raise InvalidRequest("an arena battle needs two different models")
        now = _now()
        with self.db.write() as conn:
            return conn.execute(
                insert(conversations).values(
                    project_id=project_id,
                    user_id=user.id,
                    mode=mode,
                    models=models,
                    leaf_id=None,
                    title="",
                    created_at=now,
                    updated_at=now,
                )
            ).inserted_primary_key[0]

    def _load(self, conn: Connection, conversation_id: int) -> Conversation | None:
        row = conn.execute(
            select(conversations).where(conversations.c.id == conversation_id)
        ).first()
        if row is None:
            return None
        conv = Conversation(
            row.id, row.project_id, row.user_id, row.mode, list(row.models), row.leaf_id, row.title
        )
        for m in conn.execute(
            select(messages).where(messages.c.conversation_id == conversation_id)
        ).all():
            conv.messages[m.id] = _message(m)
        return conv

    def _own(
        self, conn: Connection, conversation_id: int, user: User, project: str | None
    ) -> Conversation:
        conv = None
        if isinstance(conversation_id, int) and 0 < conversation_id < 2**63:
            conv = self._load(conn, conversation_id)
        if conv is not None and project is not None:
            name = conn.execute(
                select(projects.c.name).where(projects.c.id == conv.project_id)
            ).scalar_one()
            if name != project:
                conv = None
        if conv is None or conv.user_id != user.id:
            raise NotFound(f"no conversation {conversation_id} for user {user.name!r}")
        return conv

    def conversation(
        self, conversation_id: int, user: User, *, project: str | None = None
    ) -> Conversation:
        """One of the user's own conversations (:class:`NotFound` for anyone else's)."""
        with self.db.read() as conn:
            return self._own(conn, conversation_id, user, project)

    def _conversation_of(self, conn: Connection, message_id: int, user: User, project):
        cid = None
        if isinstance(message_id, int) and 0 < message_id < 2**63:
            cid = conn.execute(
                select(messages.c.conversation_id).where(messages.c.id == message_id)
            ).scalar()
        if cid is None:
            raise NotFound(f"no message {message_id} for user {user.name!r}")
        return self._own(conn, cid, user, project)

    def conversation_of(self, message_id: int, user: User, *, project: str | None = None):
        """The user's conversation that holds message ``message_id``."""
        with self.db.read() as conn:
            return self._conversation_of(conn, message_id, user, project)

    def list_conversations(
        self, project: str, user: User, *, mode: str | None = None, limit: int = 30
    ) -> list[dict[str, Any]]:
        """The user's latest conversations: ``{id, mode, title, updated_at}``."""
        project_id = self._member(project, user)
        q = select(
            conversations.c.id, conversations.c.mode, conversations.c.title,
            conversations.c.updated_at,
        ).where(conversations.c.project_id == project_id, conversations.c.user_id == user.id)
        if mode is not None:
            q = q.where(conversations.c.mode == mode)
        q = q.order_by(conversations.c.updated_at.desc(), conversations.c.id.desc()).limit(limit)
        with self.db.read() as conn:
            return [dict(r._mapping) for r in conn.execute(q).all()]

    # ------------------------------------------------------------------ turns

    def check_message(self, text: Any, what: str = "the message") -> str:
        """A typed message as stored: text, not empty, valid Unicode, within the limit."""
        if not isinstance(text, str):
            raise InvalidAnswer(f"{what}: expected text")
        text = text.replace("\r\n", "\n")
        if not text.strip():
            raise InvalidAnswer(f"{what} is empty")
        if len(text) > self.max_message_chars:
            raise TooLong(what, len(text), self.max_message_chars)
        if problem := text_problem(text):
            raise InvalidAnswer(f"{what} {problem}")
        return text

    def add_user_turn(
        self, conversation_id: int, user: User, text: str, *, parent_id: int | None,
        project: str | None = None,
    ) -> Message:
        """Append the user's message after ``parent_id``, which must be the conversation's
        leaf (None for the first turn): a finished answer, never one still being written."""
        text = self.check_message(text)
        with self.db.write() as conn:
            conv = self._own(conn, conversation_id, user, project)
            if conv.mode == "arena" and conv.messages:
                raise Conflict("an arena battle is one turn; start a new battle")
            if parent_id != conv.leaf_id:
                raise Conflict("the conversation has moved on (another tab?); reload the page")
            if parent_id is not None:
                leaf = conv.messages[parent_id]
                if leaf.role == "user":
                    raise Conflict("pick one of the two answers first (Continue with this answer)")
                if leaf.status not in FINISHED + ("error", "interrupted"):
                    raise Conflict("wait for the answer to finish (or stop it) before writing")
            size = sum(len(m.content) for m in conv.path()) + len(text)
            if size > self.max_conversation_chars:
                raise TooLong("the conversation", size, self.max_conversation_chars)
            now = _now()
            mid = conn.execute(
                insert(messages).values(
                    conversation_id=conv.id, parent_id=parent_id, role="user", content=text,
                    model=None, side=None, origin="typed", status="done", meta={},
                    created_at=now, finished_at=now,
                )
            ).inserted_primary_key[0]
            values: dict[str, Any] = {"leaf_id": mid, "updated_at": now}
            if not conv.title:
                values["title"] = " ".join(text.split())[:200]
            conn.execute(update(conversations).where(conversations.c.id == conv.id).values(**values))
            return _message(conn.execute(select(messages).where(messages.c.id == mid)).first())

    def add_answers(
        self, conversation_id: int, user: User, parent_id: int, specs: Sequence[tuple[str, str | None]],
        *, project: str | None = None, meta: dict[str, Any] | None = None,
    ) -> list[Message]:
        """Placeholders (status ``generating``) for answers to user turn ``parent_id``, one
        per ``(model, side)``; the worker fills them with :meth:`finish`. One answer
        becomes the leaf (the conversation continues from it); of two (a pair to pick
        from, an arena battle) neither does until a pick."""
        with self.db.write() as conn:
            conv = self._own(conn, conversation_id, user, project)
            parent = conv.messages.get(parent_id) if isinstance(parent_id, int) else None
            if parent is None or parent.role != "user":
                raise NotFound(f"no user turn {parent_id} in conversation {conversation_id}")
            if conv.mode == "arena" and (len(specs) != 2 or conv.children(parent_id)):
                raise Conflict("an arena battle has exactly one pair of answers")
            return self._insert_answers(conn, conv, parent_id, specs, meta or {})

    def _insert_answers(self, conn, conv: Conversation, parent_id: int, specs, meta) -> list[Message]:
        now = _now()
        out = []
        for model, side in specs:
            mid = conn.execute(
                insert(messages).values(
                    conversation_id=conv.id, parent_id=parent_id, role="assistant", content="",
                    model=model, side=side, origin="model", status="generating", meta=dict(meta),
                    created_at=now, finished_at=None,
                )
            ).inserted_primary_key[0]
            out.append(_message(conn.execute(select(messages).where(messages.c.id == mid)).first()))
        leaf = out[0].id if len(out) == 1 else parent_id
        conn.execute(
            update(conversations).where(conversations.c.id == conv.id).values(leaf_id=leaf, updated_at=now)
        )
        return out

    def regenerate(
        self, message_id: int, user: User, model: str, *, project: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Message:
        """A new answer beside the leaf answer ``message_id`` (same parent), which becomes
        the leaf; afterwards the person may say whether it is better (:meth:`compare`)."""
        with self.db.write() as conn:
            conv = self._conversation_of(conn, message_id, user, project)
            old = conv.messages[message_id]
            if conv.mode != "chat" or old.role != "assistant":
                raise InvalidRequest("only an answer in a chat can be regenerated")
            if conv.leaf_id != message_id:
                raise Conflict("only the latest answer can be regenerated; reload the page")
            if old.status == "generating":
                raise Conflict("wait for the answer to finish (or stop it) before regenerating")
            meta = {**(meta or {}), "regenerated_from": message_id}
            return self._insert_answers(conn, conv, old.parent_id, [(model, None)], meta)[0]

    def set_leaf(self, conversation_id: int, message_id: int) -> None:
        """Continue the conversation from ``message_id`` (one of its messages)."""
        with self.db.write() as conn:
            conn.execute(
                update(conversations)
                .where(conversations.c.id == conversation_id)
                .values(leaf_id=message_id, updated_at=_now())
            )

    def finish(self, message_id: int, text: str, status: str, meta: dict[str, Any] | None = None) -> None:
        """Store a generated answer (``done``, ``stopped`` or ``error``) with its statistics."""
        if status not in ("done", "stopped", "error"):
            raise InvalidRequest(f"status: expected done, stopped or error, got {status!r}")
        with self.db.write() as conn:
            old = conn.execute(select(messages.c.meta).where(messages.c.id == message_id)).scalar()
            conn.execute(
                update(messages)
                .where(messages.c.id == message_id, messages.c.status == "generating")
                .values(
                    content=_clean_output(text), status=status, finished_at=_now(),
                    meta={**(old or {}), **(meta or {})},
                )
            )

    def mark_interrupted(self) -> int:
        """Answers left ``generating`` by a server that died: ``interrupted`` (at start-up)."""
        with self.db.write() as conn:
            return conn.execute(
                update(messages).where(messages.c.status == "generating").values(status="interrupted")
            ).rowcount

    # ------------------------------------------------------------------ signals

    def _signal(
        self, conv: Conversation, user: User, kind: str, key: str, message_id: int,
        other_id: int | None, answer: dict[str, Any], after=None,
    ) -> VoteResult:
        """Commit one signal (idempotent per user/kind/key); ``after(conn)`` runs in the
        same transaction when the signal is new."""
        try:
            with self.db.write() as conn:
                prior = self._prior_signal(conn, user, kind, key)
                if prior is None:
                    sid = conn.execute(
                        insert(chat_signals).values(
                            conversation_id=conv.id, user_id=user.id, kind=kind, key=key,
                            message_id=message_id, other_id=other_id, answer=answer,
                            created_at=_now(),
                        )
                    ).inserted_primary_key[0]
                    if after is not None:
                        after(conn)
                    return VoteResult(sid, duplicate=False)
        except IntegrityError:  # a concurrent submit of the same signal won the race
            with self.db.read() as conn:
                prior = self._prior_signal(conn, user, kind, key)
        if prior.answer != answer:
            raise Conflict(f"this {kind} was already answered differently")
        return VoteResult(prior.id, duplicate=True)

    @staticmethod
    def _prior_signal(conn: Connection, user: User, kind: str, key: str):
        """The user's earlier signal of this kind and key (its id and answer), or None."""
        return conn.execute(
            select(chat_signals.c.id, chat_signals.c.answer).where(
                chat_signals.c.user_id == user.id, chat_signals.c.kind == kind, chat_signals.c.key == key,
            )
        ).first()

    def _judgeable(self, conv: Conversation, message_id: int) -> Message:
        m = conv.messages.get(message_id)
        if m is None or m.role != "assistant":
            raise NotFound(f"no answer {message_id} in conversation {conv.id}")
        if m.status not in FINISHED:
            raise Conflict(f"answer {message_id} is {m.status}; only a finished answer can be judged")
        return m

    def thumb(
        self, message_id: int, user: User, up: bool, *, tags: Iterable[str] = (),
        comment: str = "", project: str | None = None,
    ) -> VoteResult:
        """Thumbs up/down on an answer, with tags and an optional "what was the issue"."""
        conv = self.conversation_of(message_id, user, project=project)
        self._judgeable(conv, message_id)
        allowed = self._tags(conv.project_id)
        tags = sorted(set(tags))
        if any(t not in allowed for t in tags):
            raise InvalidAnswer(f"field 'tags': expected tags from {sorted(allowed)}")
        comment = self._comment(comment)
        answer = {"thumb": "up" if up else "down", "tags": tags, "comment": comment}
        return self._signal(conv, user, "thumb", f"m{message_id}", message_id, None, answer)

    def compare(
        self, new_id: int, old_id: int, user: User, choice: str, *, project: str | None = None
    ) -> VoteResult:
        """After Regenerate: is answer ``new_id`` better, worse or the same as ``old_id``?"""
        if choice not in COMPARE_CHOICES:
            raise InvalidAnswer("field 'choice': expected better, worse or same")
        conv = self.conversation_of(new_id, user, project=project)
        new, old = self._judgeable(conv, new_id), self._judgeable(conv, old_id)
        if new.parent_id != old.parent_id or new_id == old_id:
            raise InvalidAnswer("the two answers must reply to the same turn")
        return self._signal(conv, user, "compare", f"m{new_id}-{old_id}", new_id, old_id, {"choice": choice})

    def pick(
        self, chosen_id: int, other_id: int, user: User, *, project: str | None = None
    ) -> VoteResult:
        """Of two answers to the same turn, the one the conversation continues with (it
        becomes the leaf)."""
        conv = self.conversation_of(chosen_id, user, project=project)
        chosen, other = self._judgeable(conv, chosen_id), self._judgeable(conv, other_id)
        if chosen.parent_id != other.parent_id or chosen_id == other_id or conv.mode != "chat":
            raise InvalidAnswer("the two answers must reply to the same turn of a chat")
        if conv.leaf_id not in (chosen.parent_id, chosen_id):
            raise Conflict("the conversation has moved on; reload the page")
        lo, hi = sorted((chosen_id, other_id))

        def continue_with(conn):
            conn.execute(
                update(conversations).where(conversations.c.id == conv.id).values(
                    leaf_id=chosen_id, updated_at=_now()
                )
            )

        return self._signal(
            conv, user, "pick", f"p{lo}-{hi}", chosen_id, other_id, {"choice": "chosen"}, continue_with
        )

    def edit(
        self, message_id: int, user: User, text: str, *, project: str | None = None
    ) -> tuple[Message, VoteResult]:
        """Correct answer ``message_id``: the edited text is stored as a new answer beside it
        (origin ``edit``) and the conversation continues from it."""
        text = self.check_message(text, "the edited answer")
        conv = self.conversation_of(message_id, user, project=project)
        original = self._judgeable(conv, message_id)
        if conv.mode != "chat":
            raise InvalidRequest("only chat answers can be edited")
        if text == original.content.replace("\r\n", "\n"):
            raise InvalidAnswer("the edited answer is the same as the original")
        created: list[int] = []

        def add_edit(conn):
            now = _now()
            mid = conn.execute(
                insert(messages).values(
                    conversation_id=conv.id, parent_id=original.parent_id, role="assistant",
                    content=text, model=original.model, side=None, origin="edit", status="done",
                    meta={"edited_from": message_id}, created_at=now, finished_at=now,
                )
            ).inserted_primary_key[0]
            conn.execute(
                update(chat_signals).where(
                    chat_signals.c.user_id == user.id, chat_signals.c.kind == "edit",
                    chat_signals.c.key == key,
                ).values(other_id=mid)
            )
            if conv.leaf_id in (message_id, original.parent_id):
                conn.execute(
                    update(conversations).where(conversations.c.id == conv.id).values(
                        leaf_id=mid, updated_at=now
                    )
                )
            created.append(mid)

        key = f"e{message_id}-{_digest(text)}"
        result = self._signal(conv, user, "edit", key, message_id, None, {"text": text}, add_edit)
        with self.db.read() as conn:
            other = conn.execute(
                select(chat_signals.c.other_id).where(chat_signals.c.id == result.vote_id)
            ).scalar_one()
            return _message(conn.execute(select(messages).where(messages.c.id == other)).first()), result

    def arena_vote(
        self, conversation_id: int, user: User, choice: str, *, project: str | None = None
    ) -> tuple[VoteResult, list[str]]:
        """The vote of an arena battle: A, B, tie or both bad. Returns the signal and the two
        models' names (side A, side B), shown only now."""
        choice = str(choice).strip().lower()
        if choice not in ARENA_CHOICES:
            raise InvalidAnswer("field 'choice': expected A, B, tie or both_bad")
        with self.db.read() as conn:
            conv = self._own(conn, conversation_id, user, project)
        if conv.mode != "arena":
            raise InvalidRequest(f"conversation {conversation_id} is not an arena battle")
        sides = {m.side: m for m in conv.messages.values() if m.role == "assistant"}
        if set(sides) != {"A", "B"}:
            raise Conflict("this battle has no answers to vote on yet")
        for m in sides.values():
            self._judgeable(conv, m.id)
        result = self._signal(
            conv, user, "arena", f"c{conv.id}", sides["A"].id, sides["B"].id, {"choice": choice}
        )
        return result, [sides["A"].model, sides["B"].model]

    def _tags(self, project_id: int) -> tuple[str, ...]:
        with self.db.read() as conn:
            tags = conn.execute(select(projects.c.tags).where(projects.c.id == project_id)).scalar_one()
        return DEFAULT_TAGS + tuple(tags)

    @staticmethod
    def _comment(comment: Any) -> str:
        comment = comment or ""
        if not isinstance(comment, str) or len(comment) > MAX_TEXT:
            raise InvalidAnswer(f"field 'comment': expected text of at most {MAX_TEXT} characters")
        if problem := text_problem(comment):
            raise InvalidAnswer(f"field 'comment': {problem}")
        return comment.replace("\r\n", "\n")

    def signals_of(self, conversation_id: int, user: User) -> list[dict[str, Any]]:
        """The user's signals in one of their conversations (for the page)."""
        with self.db.read() as conn:
            self._own(conn, conversation_id, user, None)
            rows = conn.execute(
                select(chat_signals).where(
                    chat_signals.c.conversation_id == conversation_id,
                    chat_signals.c.user_id == user.id,
                ).order_by(chat_signals.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]

    # ------------------------------------------------------------------ reading out

    def raw_signals(self, project: str) -> list[dict[str, Any]]:
        """Every signal of the project with who, when, and the conversation it judges:
        ``prompt_messages`` (root → the judged answers' parent), the texts and models of
        ``message`` and ``other``."""
        proj = self.store.project(project)
        with self.db.read() as conn:
            rows = conn.execute(
                select(chat_signals, users.c.name.label("annotator"), users.c.group_name)
                .join(users, users.c.id == chat_signals.c.user_id)
                .join(conversations, conversations.c.id == chat_signals.c.conversation_id)
                .where(conversations.c.project_id == proj.id)
                .order_by(chat_signals.c.id)
            ).all()
            convs: dict[int, Conversation] = {}
            out = []
            for r in rows:
                conv = convs.get(r.conversation_id) or self._load(conn, r.conversation_id)
                convs[r.conversation_id] = conv
                m = conv.messages[r.message_id]
                other = conv.messages.get(r.other_id) if r.other_id is not None else None
                d = dict(r._mapping)
                d.update(
                    mode=conv.mode,
                    prompt_messages=[x.as_turn() for x in conv.path(m.parent_id)],
                    message={"id": m.id, "content": m.content, "model": m.model, "side": m.side, "origin": m.origin},
                    other=None if other is None else {
                        "id": other.id, "content": other.content, "model": other.model,
                        "side": other.side, "origin": other.origin,
                    },
                )
                out.append(d)
        return out

    def battles(self, project: str) -> list[Battle]:
        """The arena votes as leaderboard battles (model of side A, of side B, μ), in order."""
        proj = self.store.project(project)
        side_a, side_b = messages.alias("side_a"), messages.alias("side_b")
        q = (
            select(chat_signals.c.answer, side_a.c.model.label("a"), side_b.c.model.label("b"))
            .join(conversations, conversations.c.id == chat_signals.c.conversation_id)
            .join(side_a, side_a.c.id == chat_signals.c.message_id)
            .join(side_b, side_b.c.id == chat_signals.c.other_id)
            .where(conversations.c.project_id == proj.id, chat_signals.c.kind == "arena")
            .order_by(chat_signals.c.id)
        )
        with self.db.read() as conn:
            rows = conn.execute(q).all()
        return [
            Battle(r.a, r.b, ARENA_CHOICES[r.answer["choice"]], both_bad=r.answer["choice"] == "both_bad")
            for r in rows
        ]

    def arena_models_seen(self, project: str) -> list[str]:
        """Every model that took part in an arena battle of the project."""
        proj = self.store.project(project)
        with self.db.read() as conn:
            rows = conn.execute(
                select(conversations.c.models).where(
                    conversations.c.project_id == proj.id, conversations.c.mode == "arena"
                )
            ).all()
        return sorted({m for (models,) in rows for m in models})

    def export_records(self, project: str, kind: str) -> list[Record]:
        return signal_records(self.raw_signals(project), kind)

    def export_rows(self, project: str, fmt: str) -> list[dict[str, Any]]:
        return export_rows(self.raw_signals(project), fmt)

    def queue_for_review(self, project: str) -> ImportResult:
        """Every comparison signal (compare, pick, arena) as a pairwise item of the
        annotation project, so other annotators judge the same pair (overlap, gold and
        agreement as for any item). Items are keyed by signal: queuing again adds only
        new ones. Response ``a`` is the signal's first answer (new, chosen, side A)."""
        items = []
        for s in self.raw_signals(project):
            if s["kind"] not in ("compare", "pick", "arena"):
                continue
            items.append({
                "type": "pairwise",
                "id": f"{REVIEW_PREFIX}{s['id']}",
                "prompt": s["prompt_messages"],
                "responses": [s["message"]["content"], s["other"]["content"]],
                "meta": {"chat_signal_id": s["id"], "message_ids": [s["message"]["id"], s["other"]["id"]]},
            })
        return self.store.add_items(project, items)

    def stats(self, project: str) -> dict[str, Any]:
        """Counts per signal, "both bad" counted, thumbs per model, per-person counts, and
        agreement on the pairs queued for review (:meth:`queue_for_review`): the chatting
        person's choice and the reviewers' votes on the same pair, as for any task type."""
        raw = self.raw_signals(project)
        kinds = Counter(s["kind"] for s in raw)
        per_model: dict[str, Counter] = defaultdict(Counter)
        per_user: dict[str, Counter] = defaultdict(Counter)
        outcomes: dict[str, Counter] = defaultdict(Counter)
        for s in raw:
            per_user[s["annotator"]][s["kind"]] += 1
            if s["kind"] == "thumb":
                m = s["message"]
                per_model["(edited by people)" if m["origin"] == "edit" else m["model"]][s["answer"]["thumb"]] += 1
            elif s["kind"] in ("compare", "arena"):
                outcomes[s["kind"]][s["answer"]["choice"]] += 1
        triples = []
        by_signal = {s["id"]: s for s in raw}
        reviewed = set()
        for v in self.store.raw_votes(project):
            sid = (v["item_meta"] or {}).get("chat_signal_id")
            if sid in by_signal and v["type"] == "pairwise":
                triples.append((sid, v["annotator"], v["answer"]["choice"]))
                reviewed.add(sid)
        for sid in reviewed:
            s = by_signal[sid]
            triples.append((sid, "chat:" + s["annotator"], _review_value(s)))
        return {
            "project": project,
            "signals": dict(kinds),
            "both_bad": outcomes["arena"]["both_bad"],
            "compare": dict(outcomes["compare"]),
            "arena": dict(outcomes["arena"]),
            "thumbs_per_model": {m: dict(c) for m, c in sorted(per_model.items())},
            "people": {u: dict(c) for u, c in sorted(per_user.items())},
            "reviewed_pairs": len(reviewed),
            "agreement": agreement.agreement_summary(triples) if triples else None,
        }

    def count_signals(self, project: str | None = None) -> int:
        q = select(func.count()).select_from(chat_signals)
        if project is not None:
            proj = self.store.project(project)
            q = q.join(conversations, conversations.c.id == chat_signals.c.conversation_id).where(
                conversations.c.project_id == proj.id
            )
        with self.db.read() as conn:
            return conn.execute(q).scalar_one()


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _review_value(s: dict[str, Any]) -> str:
    """The chatting person's answer in the review item's terms (a = the signal's message)."""
    if s["kind"] == "pick":
        return "a"
    if s["kind"] == "compare":
        return {"better": "a", "worse": "b", "same": "tie"}[s["answer"]["choice"]]
    return s["answer"]["choice"]


# ---------------------------------------------------------------------- records, exports


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _meta(s: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "source": "chat",
        "signal": s["kind"],
        "signal_id": s["id"],
        "conversation_id": s["conversation_id"],
        "prompt_messages": s["prompt_messages"],
        "message_ids": [s["message_id"]] + ([s["other_id"]] if s["other_id"] is not None else []),
        "models": [s["message"]["model"]] + ([s["other"]["model"]] if s["other"] else []),
    }
    answer = s["answer"]
    if answer.get("comment"):
        meta["comment"] = answer["comment"]
    if answer.get("tags"):
        meta["tags"] = answer["tags"]
    return meta


def _pair(s: dict[str, Any]) -> tuple[str, str, float, dict[str, Any]] | None:
    """(a, b, μ, extra meta) of a comparison signal; None for other kinds."""
    kind, answer = s["kind"], s["answer"]
    a, b = s["message"]["content"], (s["other"] or {}).get("content")
    if kind == "compare":
        return a, b, COMPARE_CHOICES[answer["choice"]], {"choice": answer["choice"]}
    if kind == "pick":
        return a, b, 1.0, {}
    if kind == "arena":
        extra = {"both_bad": True} if answer["choice"] == "both_bad" else {}
        return a, b, ARENA_CHOICES[answer["choice"]], extra
    return None


def signal_records(raw: Iterable[dict[str, Any]], kind: str) -> list[Record]:
    """Signals as alignkit records: ``comparisons`` (compare, pick, arena), ``ratings``
    (thumbs: 1 up, 0 down on the scale (0, 1)), ``corrections`` (edits). The prompt is the
    conversation rendered as ``"role: content"`` lines; its messages are in
    ``meta["prompt_messages"]`` (and a comparison's answers in ``chosen_messages`` /
    ``rejected_messages`` for ``a`` / ``b``, so TRL's conversational form round-trips)."""
    if kind not in ("comparisons", "ratings", "corrections"):
        raise InvalidRequest(f"kind: expected comparisons, ratings or corrections, got {kind!r}")
    out: list[Record] = []
    for s in raw:
        prompt = render_messages(s["prompt_messages"])
        meta = _meta(s)
        common = {"annotator": s["annotator"], "group": s["group_name"]}
        if kind == "comparisons" and (pair := _pair(s)) is not None:
            a, b, mu, extra = pair
            meta.update(extra, chosen_messages=_assistant(a), rejected_messages=_assistant(b))
            out.append(Comparison(prompt, a, b, mu=mu, meta=meta, **common))
        elif kind == "ratings" and s["kind"] == "thumb":
            score = 1.0 if s["answer"]["thumb"] == "up" else 0.0
            out.append(Rating(prompt, s["message"]["content"], score, scale=(0.0, 1.0), meta=meta, **common))
        elif kind == "corrections" and s["kind"] == "edit":
            out.append(Correction(prompt, s["message"]["content"], s["answer"]["text"], meta=meta, **common))
    return out


def export_rows(raw: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """The rows of chat export format ``fmt`` (:data:`CHAT_EXPORT_FORMATS`):

    * ``trl`` — TRL's conversational preference rows, ``{"prompt": [messages], "chosen":
      [assistant], "rejected": [assistant]}``, from compare, pick and arena signals and
      from edits (edited ≻ original); ``"mu": 0.5`` for "same", ties and "both bad"
      (``"both_bad": true``), plus ``annotator`` and ``signal``. ``alignkit reward train``
      and ``alignkit dpo`` read it as is.
    * ``comparisons`` / ``ratings`` / ``corrections`` — alignkit records
      (:func:`signal_records`).
    * ``sft`` — ``{"messages": conversation + the target answer}`` for every edit (the
      corrected answer) and every pick (the chosen answer).
    * ``raw`` — one row per signal with everything stored.
    """
    if fmt not in CHAT_EXPORT_FORMATS:
        raise InvalidRequest(f"format: expected one of {', '.join(CHAT_EXPORT_FORMATS)}, got {fmt!r}")
    if fmt in ("comparisons", "ratings", "corrections"):
        return [record_to_dict(r) for r in signal_records(raw, fmt)]
    rows: list[dict[str, Any]] = []
    for s in raw:
        if fmt == "raw":
            rows.append({
                "signal_id": s["id"], "kind": s["kind"], "annotator": s["annotator"],
                "group": s["group_name"], "conversation_id": s["conversation_id"],
                "mode": s["mode"], "created_at": s["created_at"], "answer": s["answer"],
                "prompt_messages": s["prompt_messages"], "message": s["message"], "other": s["other"],
            })
            continue
        if fmt == "sft":
            if s["kind"] == "edit":
                target = s["answer"]["text"]
            elif s["kind"] == "pick":
                target = s["message"]["content"]
            else:
                continue
            rows.append({
                "messages": s["prompt_messages"] + _assistant(target),
                "meta": {"source": "chat", "signal": s["kind"], "signal_id": s["id"], "annotator": s["annotator"]},
            })
            continue
        if s["kind"] == "edit":
            a, b, mu, extra = s["answer"]["text"], s["message"]["content"], 1.0, {}
        elif (pair := _pair(s)) is not None:
            a, b, mu, extra = pair
        else:
            continue
        chosen, rejected = (a, b) if mu >= 0.5 else (b, a)
        row: dict[str, Any] = {
            "prompt": s["prompt_messages"],
            "chosen": _assistant(chosen),
            "rejected": _assistant(rejected),
        }
        if mu == 0.5:
            row["mu"] = 0.5
        row.update(extra)
        row.pop("choice", None)
        row.update(annotator=s["annotator"], signal=s["kind"])
        rows.append(row)
    return rows
