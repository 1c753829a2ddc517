"""The durable feedback store: items to judge, annotators, assignments and raw votes.

SQLAlchemy Core over SQLite (default: one file, WAL journal, ``synchronous=FULL``) or
PostgreSQL (``postgresql://…``). Usable without the web app: tests, bots and the CLI
talk to :class:`FeedbackStore` directly; the app is a thin HTTP layer over it.

Vocabulary
----------
* An *item* is a prompt (optionally a multi-turn transcript) with 1..K responses and a
  task type: ``pairwise`` (exactly 2), ``ranking`` (K ≥ 2, ties allowed) or ``rating``
  (Likert 1–7 per response). Every type also takes tags, a comment and edits.
* An *assignment* gives an item to one annotator, with the order the responses are
  shown in (``display_order[i]`` = original index of the response shown at position
  i, shuffled per assignment). Each non-gold item goes to ``overlap`` different
  annotators; gold items (known answer) go to everyone, one every ``gold_every`` tasks.
* A *vote* is the committed answer to one assignment (unique per assignment, so a
  repeated submit never creates a second row). Answers arrive in *display* terms (what
  the annotator saw: A = the response shown first) and are stored in *original* terms
  (``a`` = ``responses[0]``) next to the display order, the time served and the time
  spent.

Durability: every write runs in its own transaction and :meth:`FeedbackStore.record_vote`
returns only after the commit, so a label acknowledged to a client survives a crash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import re
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from alignkit.data.formats import render_messages
from alignkit.data.records import (
    Comparison,
    Correction,
    Ranking,
    Rating,
    Record,
    record_from_dict,
    record_to_dict,
)
from alignkit.errors import AlignkitError, DataError
from alignkit.feedback import agreement
from alignkit.feedback.auth import (
    hash_password,
    hash_token,
    new_password,
    new_token,
    verify_password,
)

__all__ = [
    "DEFAULT_TAGS",
    "EXPORT_FORMATS",
    "FeedbackStore",
    "NewUser",
    "Project",
    "StoreError",
    "Task",
    "User",
    "VoteResult",
    "canonical_answer",
    "normalise_db_url",
]

TASK_TYPES = ("pairwise", "ranking", "rating")
CHOICES = ("a", "b", "tie", "both_bad", "incomparable")
STRENGTHS = ("slightly", "much")
ROLES = ("annotator", "admin")
DEFAULT_TAGS = ("harmful", "untrue", "unhelpful")
LIKERT = (1, 7)
EXPORT_FORMATS = ("trl", "comparisons", "rankings", "ratings", "corrections", "raw")
MAX_TEXT = 100_000  # characters in one comment or edit
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class StoreError(AlignkitError):
    """A request the store refuses; ``status`` is the HTTP code the app answers with."""

    status = 400


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


class InvalidAnswer(StoreError):
    status = 422


# --------------------------------------------------------------------------- schema

metadata = MetaData()

projects = Table(
    "ak_projects",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("guidelines", Text, nullable=False),
    Column("tags", JSON, nullable=False),  # project-defined tags, besides DEFAULT_TAGS
    Column("overlap", Integer, nullable=False),
    Column("gold_every", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

users = Table(
    "ak_users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("group_name", String(64)),
    Column("password_hash", String(200)),
    Column("token_hash", String(64), unique=True),
    Column("active", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
)

sessions = Table(
    "ak_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("ak_users.id"), nullable=False),
    Column("csrf", String(100), nullable=False),
    Column("expires_at", Float, nullable=False),
)

items = Table(
    "ak_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("ak_projects.id"), nullable=False),
    Column("key", String(200), nullable=False),
    Column("type", String(16), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("turns", JSON),
    Column("responses", JSON, nullable=False),
    Column("is_gold", Boolean, nullable=False),
    Column("gold", JSON),
    Column("meta", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("project_id", "key", name="uq_item_key"),
)

assignments = Table(
    "ak_assignments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("ak_items.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("ak_users.id"), nullable=False),
    Column("display_order", JSON, nullable=False),
    Column("status", String(12), nullable=False),  # open | done | skipped
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
    UniqueConstraint("item_id", "user_id", name="uq_assignment_item_user"),
    Index("ix_assignment_user", "user_id", "status"),
)

votes = Table(
    "ak_votes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("assignment_id", Integer, ForeignKey("ak_assignments.id"), nullable=False),
    Column("item_id", Integer, ForeignKey("ak_items.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("ak_users.id"), nullable=False),
    Column("display_order", JSON, nullable=False),
    Column("answer", JSON, nullable=False),
    Column("served_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("time_spent_ms", Integer, nullable=False),
    UniqueConstraint("assignment_id", name="uq_vote_assignment"),
    Index("ix_vote_item", "item_id"),
)


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    guidelines: str
    tags: tuple[str, ...]
    overlap: int
    gold_every: int

    @property
    def all_tags(self) -> tuple[str, ...]:
        return DEFAULT_TAGS + tuple(t for t in self.tags if t not in DEFAULT_TAGS)


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    group: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class NewUser:
    """A created account and its one-time secrets (only their hashes are stored)."""

    user: User
    password: str | None
    token: str | None


@dataclass
class Task:
    """One assignment as the annotator sees it: responses already in display order."""

    assignment_id: int
    item_id: int
    type: str
    prompt: str
    turns: list[dict[str, str]] | None
    responses: list[str]
    display_order: list[int]
    status: str

    def to_json(self) -> dict[str, Any]:
        return {
            "assignment_id": self.assignment_id,
            "item_id": self.item_id,
            "type": self.type,
            "prompt": self.prompt,
            "turns": self.turns,
            "responses": self.responses,
            "display_order": self.display_order,
        }


@dataclass(frozen=True)
class VoteResult:
    vote_id: int
    duplicate: bool


@dataclass
class ImportResult:
    added: int = 0
    skipped: int = 0  # already present (same key): imports are idempotent
    item_ids: list[int] = field(default_factory=list)  # one per entry, new or existing


def normalise_db_url(url_or_path: str | os.PathLike) -> str:
    """A SQLAlchemy URL; a plain path means a SQLite file (``feedback.db`` → sqlite:///…)."""
    s = str(url_or_path)
    if "://" in s:
        if s.startswith("postgresql://"):  # the app extra ships psycopg2
            return "postgresql+psycopg2://" + s[len("postgresql://") :]
        if not s.startswith(("sqlite://", "postgresql+psycopg2://", "postgresql+psycopg://")):
            raise AlignkitError(f"--db: expected a SQLite path or a postgresql:// URL, got {s!r}")
        return s
    return "sqlite:///" + str(Path(s).expanduser().resolve())


@functools.cache
def _dummy_hash() -> str:
    return hash_password(new_password())


def _now() -> float:
    return time.time()


def _flatten_turns(turns: list[dict[str, str]]) -> str:
    return render_messages(turns)  # the data layer's plain-text form of a transcript


# --------------------------------------------------------------------------- answers


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
    if item_type == "pairwise":
        choice = str(submitted.get("choice") or "").strip()
        mapping = {"A": display_order[0], "B": display_order[1]}
        if choice.upper() in mapping:
            choice = "a" if mapping[choice.upper()] == 0 else "b"
        elif choice.lower() in ("tie", "both_bad", "incomparable"):
            choice = choice.lower()
        else:
            raise InvalidAnswer("field 'choice': expected one of A, B, tie, both_bad, incomparable")
        strength = submitted.get("strength") or None
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
    answer["comment"] = comment
    edits = per_response("edits", None)
    for i, e in enumerate(edits):
        if e is not None and (not isinstance(e, str) or len(e) > MAX_TEXT):
            raise InvalidAnswer("field 'edits': expected a corrected text or null per response")
        if e is not None and (e.strip() == "" or e.replace("\r\n", "\n") == responses[i]):
            edits[i] = None  # unchanged (or emptied) text is not a correction
    answer["edits"] = edits
    return answer


def _mu(choice: str) -> float | None:
    return {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}.get(choice)


def _gold_score(item_type: str, gold: dict[str, Any], answer: dict[str, Any]) -> float:
    """Agreement of one answer with a gold answer, in [0, 1].

    pairwise: 1 if the choice matches; ranking: share of the gold's strictly ordered pairs
    put in the same order; rating: share of responses scored within ±1 of gold.
    """
    if item_type == "pairwise":
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


# --------------------------------------------------------------------------- store


class FeedbackStore:
    """All reads and writes of feedback data; one instance per process (thread-safe).

    ``FeedbackStore("feedback.db")`` opens (and creates) a SQLite file;
    ``FeedbackStore("postgresql://user:pw@host/db")`` a PostgreSQL database.
    """

    def __init__(self, url: str | os.PathLike, *, create: bool = True, shuffle: bool = True):
        self.url = normalise_db_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        self.shuffle = shuffle
        self._rng = random.SystemRandom()
        self.assignment_ttl = 3600.0  # an open assignment holds its overlap slot this long
        self.session_ttl = 12 * 3600.0
        self.engine = self._make_engine()
        self._writer = self.engine.execution_options(alignkit_write=True)
        self._write_lock = threading.Lock()
        if create:
            metadata.create_all(self.engine)

    def _make_engine(self) -> Engine:
        if self.is_sqlite:
            engine = create_engine(
                self.url,
                connect_args={"timeout": 60, "check_same_thread": False},
                pool_size=8,
                max_overflow=56,
                pool_timeout=120,
            )

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn, _record):
                dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=60000")
                cur.close()

            @event.listens_for(engine, "begin")
            def _on_begin(conn):
                # Writers take the write lock up front: no lock upgrades, no deadlocks.
                write = conn.get_execution_options().get("alignkit_write", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

            return engine
        return create_engine(
            self.url, pool_size=8, max_overflow=56, pool_timeout=120, pool_pre_ping=True
        )

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        if self.is_sqlite:
            # One writer at a time in this process: threads queue on a lock instead of
            # SQLite's busy handler, which sleeps up to 100 ms per retry under contention.
            # (Other processes, e.g. the CLI while serving, still wait via busy_timeout.)
            with self._write_lock, self._writer.begin() as conn:
                yield conn
        else:
            with self._writer.begin() as conn:
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    def drop_all(self) -> None:
        """Delete every table (tests only)."""
        metadata.drop_all(self.engine)

    # ------------------------------------------------------------------ projects

    def ensure_project(
        self,
        name: str,
        *,
        guidelines: str | None = None,
        tags: Iterable[str] | None = None,
        overlap: int | None = None,
        gold_every: int | None = None,
    ) -> Project:
        """Create project ``name`` or update the given settings of an existing one.

        ``overlap`` = how many different annotators label each non-gold item (default 1);
        ``gold_every`` = serve an unseen gold item every n-th task (0 = only at the end).
        """
        if not name or len(name) > 200:
            raise AlignkitError("project name must be 1–200 characters")
        values: dict[str, Any] = {}
        if guidelines is not None:
            values["guidelines"] = guidelines
        if tags is not None:
            tags = [t.strip() for t in tags if t.strip()]
            if any(not _NAME.match(t) for t in tags):
                raise AlignkitError("tags may use letters, digits and _ . @ - only")
            values["tags"] = tags
        if overlap is not None:
            if overlap < 1:
                raise AlignkitError(f"overlap must be ≥ 1, got {overlap}")
            values["overlap"] = overlap
        if gold_every is not None:
            if gold_every < 0:
                raise AlignkitError(f"gold_every must be ≥ 0, got {gold_every}")
            values["gold_every"] = gold_every
        try:
            with self._write() as conn:
                row = conn.execute(select(projects.c.id).where(projects.c.name == name)).first()
                if row is None:
                    base = {"guidelines": "", "tags": [], "overlap": 1, "gold_every": 5}
                    conn.execute(
                        insert(projects).values(name=name, created_at=_now(), **(base | values))
                    )
                elif values:
                    conn.execute(update(projects).where(projects.c.id == row.id).values(**values))
        except IntegrityError:  # created concurrently by another process: update it
            if values:
                with self._write() as conn:
                    conn.execute(update(projects).where(projects.c.name == name).values(**values))
        return self.project(name)

    def project(self, name: str) -> Project:
        with self._read() as conn:
            row = conn.execute(select(projects).where(projects.c.name == name)).first()
        if row is None:
            raise NotFound(
                f"no project named {name!r}; import items with `alignkit annotate import "
                f"--project {name} FILE` first"
            )
        return Project(
            row.id, row.name, row.guidelines, tuple(row.tags), row.overlap, row.gold_every
        )

    # ------------------------------------------------------------------ users

    def add_user(
        self,
        name: str,
        *,
        role: str = "annotator",
        group: str | None = None,
        password: bool = True,
        token: bool = True,
    ) -> NewUser:
        """Create an account; returns the one-time password and/or API token in clear."""
        if not _NAME.match(name or ""):
            raise AlignkitError(
                f"user name {name!r}: use 1–64 letters, digits and _ . @ - characters"
            )
        if group is not None and (not isinstance(group, str) or len(group) > 64):
            raise AlignkitError(f"group must be text of at most 64 characters, got {group!r}")
        if role not in ROLES:
            raise AlignkitError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if not (password or token):
            raise AlignkitError("a user needs a password, a token or both")
        pw = new_password() if password else None
        tok = new_token() if token else None
        try:
            with self._write() as conn:
                uid = conn.execute(
                    insert(users).values(
                        name=name,
                        role=role,
                        group_name=group or None,
                        password_hash=hash_password(pw) if pw else None,
                        token_hash=hash_token(tok) if tok else None,
                        active=True,
                        created_at=_now(),
                    )
                ).inserted_primary_key[0]
        except IntegrityError:
            raise AlignkitError(f"a user named {name!r} already exists") from None
        return NewUser(User(uid, name, role, group or None), pw, tok)

    def list_users(self) -> list[User]:
        with self._read() as conn:
            rows = conn.execute(select(users).order_by(users.c.id)).all()
        return [User(r.id, r.name, r.role, r.group_name) for r in rows]

    @staticmethod
    def _user(row) -> User:
        return User(row.id, row.name, row.role, row.group_name)

    def user_by_token(self, token: str) -> User | None:
        if not token:
            return None
        with self._read() as conn:
            row = conn.execute(
                select(users).where(users.c.token_hash == hash_token(token), users.c.active)
            ).first()
        return self._user(row) if row else None

    def check_password(self, name: str, password: str) -> User | None:
        with self._read() as conn:
            row = conn.execute(select(users).where(users.c.name == name, users.c.active)).first()
        if row is None:
            verify_password(password, _dummy_hash())  # same work as for a real account
            return None
        return self._user(row) if verify_password(password, row.password_hash) else None

    def create_session(self, user: User) -> tuple[str, str]:
        """A new login session: returns (session id for the cookie, CSRF token)."""
        sid, csrf = new_token("aks_"), new_token("akc_")
        now = _now()
        with self._write() as conn:
            conn.execute(delete(sessions).where(sessions.c.expires_at < now))
            conn.execute(
                insert(sessions).values(
                    id_hash=hash_token(sid),
                    user_id=user.id,
                    csrf=csrf,
                    expires_at=now + self.session_ttl,
                )
            )
        return sid, csrf

    def session(self, sid: str) -> tuple[User, str] | None:
        """(user, CSRF token) of a live session, or None."""
        if not sid:
            return None
        with self._read() as conn:
            row = conn.execute(
                select(users, sessions.c.csrf)
                .join(sessions, sessions.c.user_id == users.c.id)
                .where(
                    sessions.c.id_hash == hash_token(sid),
                    sessions.c.expires_at > _now(),
                    users.c.active,
                )
            ).first()
        return (self._user(row), row.csrf) if row else None

    def end_session(self, sid: str) -> None:
        with self._write() as conn:
            conn.execute(delete(sessions).where(sessions.c.id_hash == hash_token(sid)))

    # ------------------------------------------------------------------ items

    def add_items(
        self, project: str, entries: Iterable[dict[str, Any] | Record], *, gold: bool = False
    ) -> ImportResult:
        """Import items; each entry is an item dict or an alignkit record.

        Item dict: ``{"type": "pairwise"|"ranking"|"rating", "prompt": str or
        [{"role", "content"}, ...], "responses": [str, ...], "id"?: str, "gold"?: answer
        in original terms, "meta"?: {...}}``. Records: a Comparison becomes a pairwise
        item, a Ranking a ranking item, a Rating a rating item; with ``gold=True`` their
        labels become the gold answers. Entries already present (same ``id``, or same
        content) are skipped, so importing a file twice adds nothing.
        """
        proj = self.project(project)
        rows = [self._item_row(proj, e, gold, n) for n, e in enumerate(entries, start=1)]
        result = ImportResult()
        with self._write() as conn:
            present = dict(
                conn.execute(
                    select(items.c.key, items.c.id).where(items.c.project_id == proj.id)
                ).all()
            )
            for row in rows:
                if row["key"] in present:
                    result.skipped += 1
                else:
                    present[row["key"]] = conn.execute(
                        insert(items).values(**row)
                    ).inserted_primary_key[0]
                    result.added += 1
                result.item_ids.append(present[row["key"]])
        return result

    def _item_row(self, proj: Project, entry: Any, gold_flag: bool, n: int) -> dict[str, Any]:
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
            turns = [{"role": t["role"], "content": t["content"]} for t in turns]
            prompt = prompt if isinstance(prompt, str) else _flatten_turns(turns)
        if not isinstance(prompt, str):
            raise DataError("expected a string or a list of turns", line=n, field="prompt")
        lo = 1 if kind == "rating" else 2
        if (
            not isinstance(responses, list)
            or not all(isinstance(r, str) for r in responses)
            or not lo <= len(responses) <= 26
            or (kind == "pairwise" and len(responses) != 2)
        ):
            want = "exactly 2" if kind == "pairwise" else f"{lo}..26"
            raise DataError(
                f"expected a list of {want} strings for a {kind} item", line=n, field="responses"
            )
        if gold_answer is not None:
            try:  # validate the gold answer in original terms (identity display order)
                k = len(responses)
                if kind == "pairwise":
                    c = gold_answer.get("choice")
                    sub = {"choice": {"a": "A", "b": "B"}.get(c, c)}
                elif kind == "ranking":
                    r = Ranking(
                        prompt, responses, gold_answer["order"], gold_answer.get("ties", [])
                    )
                    sub = {"ranks": [t + 1 for t in r.tier()]}
                else:
                    sub = {"ratings": gold_answer["scores"]}
                full = canonical_answer(kind, responses, list(range(k)), sub)
                keep = {
                    "pairwise": ("choice",),
                    "ranking": ("order", "ties"),
                    "rating": ("scores",),
                }
                gold_answer = {key: full[key] for key in keep[kind]}
            except (StoreError, DataError, KeyError, TypeError, AttributeError) as e:
                raise DataError(f"bad gold answer: {e}", line=n, field="gold") from None
        key = entry.get("id") if isinstance(entry, dict) and entry.get("id") is not None else None
        if key is None:
            key = hashlib.sha256(json.dumps([kind, prompt, turns, responses]).encode()).hexdigest()
        return {
            "project_id": proj.id,
            "key": str(key)[:200],
            "type": kind,
            "prompt": prompt,
            "turns": turns,
            "responses": responses,
            "is_gold": gold_answer is not None,
            "gold": gold_answer,
            "meta": meta,
            "created_at": _now(),
        }

    def count_items(self, project: str) -> dict[str, int]:
        proj = self.project(project)
        with self._read() as conn:
            total = conn.execute(
                select(func.count()).select_from(items).where(items.c.project_id == proj.id)
            ).scalar_one()
            gold = conn.execute(
                select(func.count())
                .select_from(items)
                .where(items.c.project_id == proj.id, items.c.is_gold)
            ).scalar_one()
        return {"items": total, "gold": gold}

    # ------------------------------------------------------------------ assignments

    def _task(self, a, it) -> Task:
        shown = [it.responses[i] for i in a.display_order]
        return Task(
            a.id, it.id, it.type, it.prompt, it.turns, shown, list(a.display_order), a.status
        )

    def next_task(self, project: str, user: User) -> Task | None:
        """The user's open assignment, or a new one; None when nothing is left for them.

        A non-gold item is offered while fewer than ``overlap`` annotators hold it (done,
        or open for less than ``assignment_ttl``); items already partly labelled come
        first so overlap sets complete. Every ``gold_every``-th task is an unseen gold item.
        """
        proj = self.project(project)
        now = _now()
        with self._write() as conn:
            if not self.is_sqlite:  # serialise assignment per project (SQLite: BEGIN IMMEDIATE)
                conn.execute(
                    select(projects.c.id).where(projects.c.id == proj.id).with_for_update()
                )
            mine = (
                select(assignments, items.c.type)
                .join(items, items.c.id == assignments.c.item_id)
                .where(assignments.c.user_id == user.id, items.c.project_id == proj.id)
            )
            current = conn.execute(
                mine.where(assignments.c.status == "open").order_by(assignments.c.id).limit(1)
            ).first()
            if current is None:
                n_mine = conn.execute(
                    select(func.count()).select_from(mine.subquery())
                ).scalar_one()
                gold_turn = proj.gold_every > 0 and n_mine % proj.gold_every == proj.gold_every - 1
                item_id = None
                for want_gold in (True, False) if gold_turn else (False, True):
                    item_id = self._pick_item(conn, proj, user, want_gold, now)
                    if item_id is not None:
                        break
                if item_id is None:
                    return None
                k = len(
                    conn.execute(
                        select(items.c.responses).where(items.c.id == item_id)
                    ).scalar_one()
                )
                order = list(range(k))
                if self.shuffle:
                    self._rng.shuffle(order)
                aid = conn.execute(
                    insert(assignments).values(
                        item_id=item_id,
                        user_id=user.id,
                        display_order=order,
                        status="open",
                        created_at=now,
                    )
                ).inserted_primary_key[0]
                current = conn.execute(select(assignments).where(assignments.c.id == aid)).first()
            it = conn.execute(select(items).where(items.c.id == current.item_id)).first()
        return self._task(current, it)

    def _pick_item(self, conn: Connection, proj: Project, user: User, gold: bool, now: float):
        holding = (
            select(func.count())
            .select_from(assignments)
            .where(
                assignments.c.item_id == items.c.id,
                or_(
                    assignments.c.status == "done",
                    and_(
                        assignments.c.status == "open",
                        assignments.c.created_at > now - self.assignment_ttl,
                    ),
                ),
            )
            .correlate(items)
            .scalar_subquery()
        )
        seen = select(assignments.c.item_id).where(assignments.c.user_id == user.id)
        q = select(items.c.id).where(
            items.c.project_id == proj.id, items.c.is_gold == gold, items.c.id.not_in(seen)
        )
        if not gold:
            q = q.where(holding < proj.overlap)
        return conn.execute(q.order_by(holding.desc(), items.c.id).limit(1)).scalar()

    def task(self, assignment_id: int, user: User) -> Task:
        """One of the user's own assignments (404 for anyone else's)."""
        with self._read() as conn:
            row = conn.execute(
                select(assignments).where(
                    assignments.c.id == assignment_id, assignments.c.user_id == user.id
                )
            ).first()
            if row is None:
                raise NotFound(f"no assignment {assignment_id} for user {user.name!r}")
            it = conn.execute(select(items).where(items.c.id == row.item_id)).first()
        return self._task(row, it)

    def skip(self, assignment_id: int, user: User) -> None:
        """Give an open assignment back (the item will not be offered to this user again)."""
        with self._write() as conn:
            n = conn.execute(
                update(assignments)
                .where(
                    assignments.c.id == assignment_id,
                    assignments.c.user_id == user.id,
                    assignments.c.status == "open",
                )
                .values(status="skipped", finished_at=_now())
            ).rowcount
            if n == 0:
                exists = conn.execute(
                    select(assignments.c.status).where(
                        assignments.c.id == assignment_id, assignments.c.user_id == user.id
                    )
                ).scalar()
                if exists is None:
                    raise NotFound(f"no assignment {assignment_id} for user {user.name!r}")

    def record_vote(self, assignment_id: int, user: User, submitted: dict[str, Any]) -> VoteResult:
        """Validate and commit an answer; returns after the commit.

        Submitting the same assignment again returns the first vote (``duplicate=True``)
        when the answer is the same and raises :class:`Conflict` when it differs.
        """
        now = _now()
        with self._read() as conn:
            row = conn.execute(
                select(assignments, items.c.type, items.c.responses, items.c.project_id)
                .join(items, items.c.id == assignments.c.item_id)
                .where(assignments.c.id == assignment_id, assignments.c.user_id == user.id)
            ).first()
            if row is None:
                raise NotFound(f"no assignment {assignment_id} for user {user.name!r}")
            tags = conn.execute(
                select(projects.c.tags).where(projects.c.id == row.project_id)
            ).scalar_one()
        allowed = DEFAULT_TAGS + tuple(tags)
        answer = canonical_answer(row.type, row.responses, row.display_order, submitted, allowed)
        try:
            with self._write() as conn:
                prior = conn.execute(
                    select(votes.c.id, votes.c.answer).where(votes.c.assignment_id == assignment_id)
                ).first()
                if prior is None:
                    vid = conn.execute(
                        insert(votes).values(
                            assignment_id=assignment_id,
                            item_id=row.item_id,
                            user_id=user.id,
                            display_order=row.display_order,
                            answer=answer,
                            served_at=row.created_at,
                            created_at=now,
                            time_spent_ms=max(0, int(round((now - row.created_at) * 1000))),
                        )
                    ).inserted_primary_key[0]
                    conn.execute(
                        update(assignments)
                        .where(assignments.c.id == assignment_id)
                        .values(status="done", finished_at=now)
                    )
                    return VoteResult(vid, duplicate=False)
        except IntegrityError:  # a concurrent submit of the same assignment won the race
            with self._read() as conn:
                prior = conn.execute(
                    select(votes.c.id, votes.c.answer).where(votes.c.assignment_id == assignment_id)
                ).first()
        if prior.answer != answer:
            raise Conflict(f"assignment {assignment_id} was already answered differently")
        return VoteResult(prior.id, duplicate=True)

    def progress(self, project: str, user: User) -> dict[str, int]:
        """The user's done/skipped counts and how many items they could still get."""
        proj = self.project(project)
        with self._read() as conn:
            mine = (
                select(assignments.c.status, func.count())
                .join(items, items.c.id == assignments.c.item_id)
                .where(assignments.c.user_id == user.id, items.c.project_id == proj.id)
                .group_by(assignments.c.status)
            )
            counts = dict(conn.execute(mine).all())
            total = conn.execute(
                select(func.count()).select_from(items).where(items.c.project_id == proj.id)
            ).scalar_one()
        return {
            "done": counts.get("done", 0),
            "skipped": counts.get("skipped", 0),
            "items": total,
        }

    # ------------------------------------------------------------------ reading votes

    def raw_votes(self, project: str) -> list[dict[str, Any]]:
        """Every vote with who, when, display order, time spent, item and answer."""
        proj = self.project(project)
        q = (
            select(
                votes,
                users.c.name.label("annotator"),
                users.c.group_name,
                items.c.key,
                items.c.type,
                items.c.prompt,
                items.c.turns,
                items.c.responses,
                items.c.is_gold,
                items.c.gold,
            )
            .join(users, users.c.id == votes.c.user_id)
            .join(items, items.c.id == votes.c.item_id)
            .where(items.c.project_id == proj.id)
            .order_by(votes.c.id)
        )
        with self._read() as conn:
            rows = conn.execute(q).all()
        return [dict(r._mapping) for r in rows]

    def count_votes(self, project: str | None = None) -> int:
        q = select(func.count()).select_from(votes)
        if project is not None:
            proj = self.project(project)
            q = q.join(items, items.c.id == votes.c.item_id).where(items.c.project_id == proj.id)
        with self._read() as conn:
            return conn.execute(q).scalar_one()

    def export_records(self, project: str, kind: str) -> list[Record]:
        """Votes as alignkit records: ``comparisons``, ``rankings``, ``ratings`` or ``corrections``.

        Comparisons keep incomparable votes (``incomparable=True``; training loaders drop
        them); ties and "both bad" have ``mu = ½``. Every record carries the annotator,
        their group and ``meta = {item_id, vote_id, ...}``, plus ``comment`` when the
        annotator wrote one.
        """
        out: list[Record] = []
        for v in self.raw_votes(project):
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
            responses = v["responses"]
            if kind == "comparisons" and v["type"] == "pairwise":
                choice = ans["choice"]
                if choice == "both_bad":
                    common["meta"]["both_bad"] = True
                out.append(
                    Comparison(
                        v["prompt"],
                        responses[0],
                        responses[1],
                        mu=_mu(choice) if choice != "incomparable" else 0.5,
                        incomparable=choice == "incomparable",
                        strength=ans.get("strength"),
                        **common,
                    )
                )
            elif kind == "rankings" and v["type"] == "ranking":
                out.append(
                    Ranking(v["prompt"], list(responses), ans["order"], ans["ties"], **common)
                )
            elif kind == "ratings" and v["type"] == "rating":
                for i, score in enumerate(ans["scores"]):
                    meta = dict(common["meta"], response_index=i)
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
            elif kind not in ("comparisons", "rankings", "ratings", "corrections"):
                raise AlignkitError(f"unknown record kind {kind!r}")
        return out

    def item_labels(self, project: str, item_ids: Iterable[int]) -> dict[int, Comparison]:
        """One soft label per labelled pairwise item among ``item_ids``.

        With several votes (overlap > 1) ``mu`` is the mean of their μ (a, b, tie/both
        bad = 1, 0, ½), ignoring "can't compare"; an item whose every vote is "can't
        compare" gives an ``incomparable=True`` record. Unlabelled items are absent.
        """
        wanted = set(item_ids)
        grouped: dict[int, list[Comparison]] = defaultdict(list)
        for c in self.export_records(project, "comparisons"):
            if c.meta["item_id"] in wanted:
                grouped[c.meta["item_id"]].append(c)
        out = {}
        for item_id, cs in grouped.items():
            usable = [c for c in cs if not c.incomparable]
            first = cs[0]
            meta = {"item_id": item_id, "n_votes": len(cs), "annotators": [c.annotator for c in cs]}
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

    def export_rows(self, project: str, fmt: str) -> list[dict[str, Any]]:
        """JSON rows for ``alignkit annotate export --format FMT``.

        * ``trl``: ``{"prompt", "chosen", "rejected"}`` per pairwise vote, plus ``"mu": 0.5``
          for ties and "both bad"; incomparable votes are left out. Multi-turn items use
          TRL's conversational form (prompt = list of turns, chosen/rejected = one
          assistant turn).
        * ``comparisons`` / ``rankings`` / ``ratings`` / ``corrections``: alignkit records.
        * ``raw``: one row per vote with everything stored.
        """
        if fmt not in EXPORT_FORMATS:
            raise AlignkitError(
                f"--format: expected one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}"
            )
        if fmt == "raw":
            rows = []
            for v in self.raw_votes(project):
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
        if fmt == "trl":
            rows = []
            for v in self.raw_votes(project):
                if v["type"] != "pairwise" or v["answer"]["choice"] == "incomparable":
                    continue
                mu = _mu(v["answer"]["choice"])
                a, b = v["responses"]
                chosen, rejected = (a, b) if mu >= 0.5 else (b, a)
                if v["turns"]:
                    row = {
                        "prompt": v["turns"],
                        "chosen": [{"role": "assistant", "content": chosen}],
                        "rejected": [{"role": "assistant", "content": rejected}],
                    }
                else:
                    row = {"prompt": v["prompt"], "chosen": chosen, "rejected": rejected}
                if mu == 0.5:
                    row["mu"] = 0.5
                rows.append(row)
            return rows
        return [record_to_dict(r) for r in self.export_records(project, fmt)]

    def export(self, project: str, fmt: str, path: str | os.PathLike) -> int:
        """Write :meth:`export_rows` as JSONL to ``path`` atomically; returns the row count."""
        rows = self.export_rows(project, fmt)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return len(rows)

    # ------------------------------------------------------------------ quality

    def stats(self, project: str) -> dict[str, Any]:
        """Counts, agreement per task type, gold accuracy per annotator, group rates.

        Agreement units: a pairwise item (value = choice), a ranking item (value = the
        tier of each response), one response of a rating item (value = its score).
        """
        proj = self.project(project)
        raw = self.raw_votes(project)
        triples: dict[str, list] = {"pairwise": [], "ranking": [], "rating": []}
        gold_scores: dict[str, list[float]] = defaultdict(list)
        per_user: dict[str, dict[str, Any]] = {}
        group_pairs = []
        for v in raw:
            ans, name = v["answer"], v["annotator"]
            u = per_user.setdefault(name, {"group": v["group_name"], "votes": 0, "times": []})
            u["votes"] += 1
            u["times"].append(v["time_spent_ms"])
            if v["type"] == "pairwise":
                triples["pairwise"].append((v["item_id"], name, ans["choice"]))
                if not v["is_gold"]:
                    group_pairs.append((v["group_name"] or "(none)", ans["choice"]))
            elif v["type"] == "ranking":
                r = Ranking("", [""] * len(ans["order"]), ans["order"], ans["ties"])
                triples["ranking"].append((v["item_id"], name, tuple(r.tier())))
            else:
                for i, s in enumerate(ans["scores"]):
                    triples["rating"].append(((v["item_id"], i), name, s))
            if v["is_gold"]:
                gold_scores[name].append(_gold_score(v["type"], v["gold"], ans))
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
        counts = self.count_items(project)
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
