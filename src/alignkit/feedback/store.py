"""The durable feedback store: items to judge, annotators, assignments and raw votes.

Usable without the web app: tests, bots and the CLI talk to :class:`FeedbackStore`
directly; the app is a thin HTTP layer over it. The pieces live in their own modules:

* :mod:`~alignkit.feedback.schema` — the tables; :mod:`~alignkit.feedback.db` — the
  engine (SQLite default, PostgreSQL) and transactions;
* :mod:`~alignkit.feedback.answers` — task types and answer validation;
  :mod:`~alignkit.feedback.items` — import entries → items;
* :mod:`~alignkit.feedback.accounts` — users, passwords, tokens, sessions;
* :mod:`~alignkit.feedback.exports` — export formats and statistics;
* :mod:`~alignkit.feedback.errors` — what the store refuses (the app and the CLI
  decide how to say it).

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

import os
import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from alignkit.data.records import Comparison, Record
from alignkit.feedback import exports
from alignkit.feedback import media as media_mod
from alignkit.feedback.accounts import NAME_PATTERN, Accounts
from alignkit.feedback.answers import DEFAULT_TAGS, canonical_answer
from alignkit.feedback.db import Database, normalise_db_url
from alignkit.feedback.errors import (
    Conflict,
    InvalidAnswer,
    InvalidRequest,
    NotFound,
    NotMember,
    ProjectNotFound,
    StoreError,
    UnknownFormat,
)
from alignkit.feedback.exports import EXPORT_FORMATS, format_stat, json_safe
from alignkit.feedback.items import item_row
from alignkit.feedback.schema import assignments, closed, items, projects, users, votes, withdrawn
from alignkit.feedback.text import text_problem
from alignkit.feedback.values import ImportResult, NewUser, Project, Task, User, VoteResult

__all__ = [
    "DEFAULT_TAGS",
    "EXPORT_FORMATS",
    "Conflict",
    "FeedbackStore",
    "ImportResult",
    "InvalidAnswer",
    "InvalidRequest",
    "NewUser",
    "NotFound",
    "NotMember",
    "Project",
    "ProjectNotFound",
    "StoreError",
    "Task",
    "UnknownFormat",
    "User",
    "VoteResult",
    "canonical_answer",
    "format_stat",
    "json_safe",
    "normalise_db_url",
]


def _now() -> float:
    return time.time()


class FeedbackStore:
    """All reads and writes of feedback data; one instance per process (thread-safe).

    ``FeedbackStore("feedback.db")`` opens (and creates) a SQLite file;
    ``FeedbackStore("postgresql://user:pw@host/db")`` a PostgreSQL database.
    """

    def __init__(self, url: str | os.PathLike, *, create: bool = True, shuffle: bool = True):
        self.db = Database(url, create=create)
        self.url, self.is_sqlite, self.engine = self.db.url, self.db.is_sqlite, self.db.engine
        self.accounts = Accounts(self.db)
        self.shuffle = shuffle
        self._rng = random.SystemRandom()
        self.assignment_ttl = 3600.0  # an open assignment holds its overlap slot this long
        if "ak_members" in self.db.created_tables and "ak_users" not in self.db.created_tables:
            self.accounts.backfill_members()  # a database from before project memberships

    def close(self) -> None:
        self.db.close()

    def drop_all(self) -> None:
        """Delete every table (tests only)."""
        self.db.drop_all()

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
        ``gold_every`` = serve an unseen gold item with probability 1/n per task (0 = only
        when nothing else is left).
        """
        if not isinstance(name, str) or not name or len(name) > 200:
            raise InvalidRequest("project name must be 1–200 characters")
        if problem := text_problem(name):
            raise InvalidRequest(f"project name {problem}")
        values: dict[str, Any] = {}
        if guidelines is not None:
            if problem := text_problem(guidelines):
                raise InvalidRequest(f"guidelines {problem}")
            values["guidelines"] = guidelines
        if tags is not None:
            tags = [t.strip() for t in tags if t.strip()]
            if any(not NAME_PATTERN.fullmatch(t) for t in tags):
                raise InvalidRequest("tags may use letters, digits and _ . @ - only")
            values["tags"] = tags
        if overlap is not None:
            if overlap < 1:
                raise InvalidRequest(f"overlap must be ≥ 1, got {overlap}")
            values["overlap"] = overlap
        if gold_every is not None:
            if gold_every < 0:
                raise InvalidRequest(f"gold_every must be ≥ 0, got {gold_every}")
            values["gold_every"] = gold_every
        try:
            with self.db.write() as conn:
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
                with self.db.write() as conn:
                    conn.execute(update(projects).where(projects.c.name == name).values(**values))
        return self.project(name)

    def project(self, name: str) -> Project:
        with self.db.read() as conn:
            return self._project_in(conn, name)

    @staticmethod
    def _project_in(conn: Connection, name: str) -> Project:
        if not isinstance(name, str) or text_problem(name):
            raise ProjectNotFound(str(name))
        row = conn.execute(select(projects).where(projects.c.name == name)).first()
        if row is None:
            raise ProjectNotFound(name)
        return Project(
            row.id, row.name, row.guidelines, tuple(row.tags), row.overlap, row.gold_every
        )

    def project_names(self) -> list[str]:
        with self.db.read() as conn:
            return list(conn.execute(select(projects.c.name).order_by(projects.c.id)).scalars())

    # ------------------------------------------------------------------ users (accounts.py)

    @property
    def session_ttl(self) -> float:
        return self.accounts.session_ttl

    @session_ttl.setter
    def session_ttl(self, seconds: float) -> None:
        self.accounts.session_ttl = seconds

    def add_user(self, name: str, **kw: Any) -> NewUser:
        """Create an account (``projects=[...]`` it may work on); see :meth:`Accounts.add_user`."""
        return self.accounts.add_user(name, **kw)

    def add_to_project(self, name: str, project: str) -> None:
        self.accounts.add_to_project(name, project)

    def set_active(self, name: str, active: bool) -> None:
        """Deactivate (False) or reactivate an account; ends its sessions."""
        self.accounts.set_active(name, active)

    def rotate_token(self, name: str) -> str:
        return self.accounts.rotate_token(name)

    def reset_password(self, name: str) -> str:
        return self.accounts.reset_password(name)

    def is_member(self, project: str, user: User) -> bool:
        proj = self.project(project)
        with self.db.read() as conn:
            return self.accounts.is_member(conn, proj.id, user)

    def _require_member(self, proj: Project, user: User, conn: Connection | None = None) -> None:
        if conn is None:
            with self.db.read() as conn:
                return self._require_member(proj, user, conn)
        if not self.accounts.is_member(conn, proj.id, user):
            raise NotMember(f"user {user.name!r} is not a member of project {proj.name!r}")

    def member_by_token(self, project: str, token: str) -> tuple[User | None, bool]:
        """(the active user of an API token or None, whether they may work on ``project``),
        in one connection: what every API request asks first."""
        with self.db.read() as conn:
            user = self.accounts.user_by_token(token, conn)
            if user is None:
                return None, False
            return user, self.accounts.is_member(conn, self._project_in(conn, project).id, user)

    def list_users(self) -> list[User]:
        return self.accounts.list_users()

    def user_by_token(self, token: str) -> User | None:
        return self.accounts.user_by_token(token)

    def check_password(self, name: str, password: str) -> User | None:
        return self.accounts.check_password(name, password)

    def create_session(self, user: User) -> tuple[str, str]:
        return self.accounts.create_session(user)

    def session(self, sid: str) -> tuple[User, str] | None:
        return self.accounts.session(sid)

    def end_session(self, sid: str) -> None:
        self.accounts.end_session(sid)

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
        rows = [item_row(proj.id, e, gold, n) for n, e in enumerate(entries, start=1)]
        result = ImportResult()
        with self.db.write() as conn:
            present = dict(
                conn.execute(
                    select(items.c.key, items.c.id).where(items.c.project_id == proj.id)
                ).all()
            )
            clips = [r for row in rows if row["type"] == "video_pair" for r in row["responses"]]
            if missing := media_mod.missing_clips(conn, proj.id, clips):
                raise NotFound(
                    f"{len(missing)} clip(s) referenced by video_pair items are not stored in "
                    f"project {project!r}; import clips with import_video_pairs"
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

    def count_items(self, project: str) -> dict[str, int]:
        proj = self.project(project)
        with self.db.read() as conn:
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

    def _task(self, conn: Connection, a, it) -> Task:
        shown = [it.responses[i] for i in a.display_order]
        video = it.type == "video_pair"
        types = media_mod.clip_types(conn, it.project_id, shown) if video else None
        return Task(
            a.id,
            it.id,
            it.type,
            it.prompt,
            it.turns,
            shown,
            list(a.display_order),
            a.status,
            types,
        )

    def clip(
        self, assignment_id: int, user: User, position: int, *, project: str | None = None
    ) -> tuple[str, bytes]:
        """(content type, bytes) of the clip shown at ``position`` of the user's assignment."""
        task = self.task(assignment_id, user, project=project)
        if task.type != "video_pair" or position not in (0, 1):
            raise NotFound(f"assignment {assignment_id} has no clip {position}")
        with self.db.read() as conn:
            project_id = conn.execute(
                select(items.c.project_id).where(items.c.id == task.item_id)
            ).scalar_one()
            found = media_mod.read_clip(conn, project_id, task.responses[position])
        if found is None:
            raise NotFound(f"clip {position} of assignment {assignment_id} is missing")
        return found

    def next_task(self, project: str, user: User) -> Task | None:
        """The user's open assignment, or a new one; None when nothing is left for them.

        A non-gold item is offered while fewer than ``overlap`` annotators hold it (done,
        or open for less than ``assignment_ttl``); items already partly labelled come
        first so overlap sets complete. A task is an unseen gold item with probability
        1/``gold_every`` (at random positions, so annotators cannot tell which are gold).
        Raises :class:`NotMember` when the user is not a member of the project.
        """
        now = _now()
        with self.db.write() as conn:  # one transaction: each connection costs round trips
            proj = self._project_in(conn, project)
            self._require_member(proj, user, conn)
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
                gold_turn = proj.gold_every > 0 and self._rng.random() * proj.gold_every < 1
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
            return self._task(conn, current, it)

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
            items.c.project_id == proj.id,
            items.c.is_gold == gold,
            items.c.id.not_in(seen),
            items.c.id.not_in(select(closed.c.item_id)),  # their round took its labels
        )
        if not gold:
            q = q.where(holding < proj.overlap)
        return conn.execute(q.order_by(holding.desc(), items.c.id).limit(1)).scalar()

    def has_task(self, project: str, user: User) -> bool:
        """Whether :meth:`next_task` would give the user something now (assigns nothing:
        what a waiting page asks every few seconds)."""
        proj = self.project(project)
        self._require_member(proj, user)
        now = _now()
        with self.db.read() as conn:
            open_one = conn.execute(
                select(assignments.c.id)
                .join(items, items.c.id == assignments.c.item_id)
                .where(
                    assignments.c.user_id == user.id,
                    assignments.c.status == "open",
                    items.c.project_id == proj.id,
                )
                .limit(1)
            ).first()
            return open_one is not None or any(
                self._pick_item(conn, proj, user, gold, now) is not None for gold in (False, True)
            )

    def _own_assignment(
        self, conn: Connection, assignment_id: int, user: User, project: str | None
    ):
        """The user's assignment (with its item's type, responses and project), in
        ``project`` when given; :class:`NotFound` for anyone else's or a malformed id."""
        row = None
        if isinstance(assignment_id, int) and 0 < assignment_id < 2**63:
            q = (
                select(assignments, items.c.type, items.c.responses, items.c.project_id)
                .join(items, items.c.id == assignments.c.item_id)
                .where(assignments.c.id == assignment_id, assignments.c.user_id == user.id)
            )
            if project is not None:
                q = q.join(projects, projects.c.id == items.c.project_id).where(
                    projects.c.name == project
                )
            row = conn.execute(q).first()
        if row is None:
            where = f" in project {project!r}" if project is not None else ""
            raise NotFound(f"no assignment {assignment_id} for user {user.name!r}{where}")
        return row

    def assignment_size(self, assignment_id: int) -> int | None:
        """How many responses the item of an assignment has (None: no such assignment);
        the app sizes a label's body limit by it."""
        if not 0 < assignment_id < 2**63:
            return None
        with self.db.read() as conn:  # counted by the database: responses may be long
            return conn.execute(
                select(func.json_array_length(items.c.responses))
                .join(assignments, assignments.c.item_id == items.c.id)
                .where(assignments.c.id == assignment_id)
            ).scalar()

    def task(self, assignment_id: int, user: User, *, project: str | None = None) -> Task:
        """One of the user's own assignments (:class:`NotFound` for anyone else's)."""
        with self.db.read() as conn:
            row = self._own_assignment(conn, assignment_id, user, project)
            it = conn.execute(select(items).where(items.c.id == row.item_id)).first()
            return self._task(conn, row, it)

    def skip(self, assignment_id: int, user: User, *, project: str | None = None) -> None:
        """Give an open assignment back (the item will not be offered to this user again)."""
        with self.db.write() as conn:
            self._own_assignment(conn, assignment_id, user, project)
            conn.execute(
                update(assignments)
                .where(
                    assignments.c.id == assignment_id,
                    assignments.c.user_id == user.id,
                    assignments.c.status == "open",
                )
                .values(status="skipped", finished_at=_now())
            )

    def record_vote(
        self,
        assignment_id: int,
        user: User,
        submitted: dict[str, Any],
        *,
        project: str | None = None,
    ) -> VoteResult:
        """Validate and commit an answer; returns after the commit.

        Submitting the same assignment again returns the first vote (``duplicate=True``)
        when the answer is the same and raises :class:`Conflict` when it differs, or when
        the assignment was skipped (a skipped item is given to someone else).
        """
        now = _now()
        try:
            # one transaction: on PostgreSQL every connection costs three round trips besides
            # its statements (pool ping, BEGIN, COMMIT; benchmarks/app_label_latency.py)
            with self.db.write() as conn:
                row = self._own_assignment(conn, assignment_id, user, project)
                if row.status == "skipped":
                    raise Conflict(f"assignment {assignment_id} was skipped; it cannot be labelled")
                tags = conn.execute(
                    select(projects.c.tags).where(projects.c.id == row.project_id)
                ).scalar_one()
                allowed = DEFAULT_TAGS + tuple(tags)
                answer = canonical_answer(
                    row.type, row.responses, row.display_order, submitted, allowed
                )
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
            with self.db.read() as conn:
                prior = conn.execute(
                    select(votes.c.id, votes.c.answer).where(votes.c.assignment_id == assignment_id)
                ).first()
        if prior.answer != answer:
            raise Conflict(f"assignment {assignment_id} was already answered differently")
        return VoteResult(prior.id, duplicate=True)

    def progress(self, project: str, user: User) -> dict[str, int]:
        """The user's done/skipped counts and how many items they could still get."""
        proj = self.project(project)
        self._require_member(proj, user)
        with self.db.read() as conn:
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

    # ------------------------------------------------------------------ rounds: history, undo, close

    def history(self, project: str, user: User, limit: int = 20) -> list[dict[str, Any]]:
        """The user's latest labels in ``project``, newest first: ``assignment_id``,
        ``item_id``, ``type``, ``prompt``, ``answer`` (original terms), ``display_order``,
        ``created_at`` and ``closed`` (the item's round took its labels: no undo)."""
        proj = self.project(project)
        self._require_member(proj, user)
        q = (
            select(
                votes.c.assignment_id,
                votes.c.item_id,
                votes.c.answer,
                votes.c.display_order,
                votes.c.created_at,
                items.c.type,
                func.substr(items.c.prompt, 1, 200).label("prompt"),
                closed.c.item_id.label("closed_item"),
            )
            .join(items, items.c.id == votes.c.item_id)
            .outerjoin(closed, closed.c.item_id == votes.c.item_id)
            .where(votes.c.user_id == user.id, items.c.project_id == proj.id)
            .order_by(votes.c.id.desc())
            .limit(limit)
        )
        with self.db.read() as conn:
            rows = conn.execute(q).all()
        out = []
        for r in rows:
            row = dict(r._mapping)
            row["closed"] = row.pop("closed_item") is not None
            out.append(row)
        return out

    def undo(self, assignment_id: int, user: User, *, project: str | None = None) -> None:
        """Take back the user's label on an assignment: the vote is withdrawn (kept in
        ``ak_withdrawn``) and the assignment is open again — served to the user next, to
        answer anew. :class:`Conflict` once the item is closed (its round took the label)."""
        now = _now()
        with self.db.write() as conn:
            row = self._own_assignment(conn, assignment_id, user, project)
            vote = conn.execute(select(votes).where(votes.c.assignment_id == assignment_id)).first()
            if vote is None:
                raise Conflict(f"assignment {assignment_id} has no label to take back")
            if conn.execute(
                select(closed.c.item_id).where(closed.c.item_id == row.item_id)
            ).first():
                raise Conflict(
                    f"assignment {assignment_id}: its round has closed and its label is in use; "
                    "it can no longer be changed"
                )
            conn.execute(
                insert(withdrawn).values(
                    vote_id=vote.id,
                    assignment_id=assignment_id,
                    item_id=vote.item_id,
                    user_id=user.id,
                    answer=vote.answer,
                    created_at=vote.created_at,
                    withdrawn_at=now,
                )
            )
            conn.execute(votes.delete().where(votes.c.id == vote.id))
            conn.execute(
                update(assignments)
                .where(assignments.c.id == assignment_id)
                .values(status="open", created_at=now, finished_at=None)
            )

    def close_items(self, project: str, item_ids: Iterable[int]) -> int:
        """Close items of ``project`` (their round took its labels): they are offered no
        more and their labels can no longer be taken back. Returns how many were newly closed."""
        proj = self.project(project)
        wanted = sorted({int(i) for i in item_ids})
        if not wanted:
            return 0
        now = _now()
        try:
            return self._close(proj, wanted, now)
        except IntegrityError:  # closed concurrently: what is left is already closed
            return self._close(proj, wanted, now)

    def _close(self, proj: Project, wanted: list[int], now: float) -> int:
        with self.db.write() as conn:
            mine = set(
                conn.execute(
                    select(items.c.id).where(items.c.project_id == proj.id, items.c.id.in_(wanted))
                ).scalars()
            )
            done = set(
                conn.execute(select(closed.c.item_id).where(closed.c.item_id.in_(wanted))).scalars()
            )
            new = sorted(mine - done)
            if new:
                conn.execute(insert(closed), [{"item_id": i, "closed_at": now} for i in new])
        return len(new)

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
                items.c.meta.label("item_meta"),
            )
            .join(users, users.c.id == votes.c.user_id)
            .join(items, items.c.id == votes.c.item_id)
            .where(items.c.project_id == proj.id)
            .order_by(votes.c.id)
        )
        with self.db.read() as conn:
            rows = conn.execute(q).all()
        return [dict(r._mapping) for r in rows]

    def count_votes(self, project: str | None = None) -> int:
        q = select(func.count()).select_from(votes)
        if project is not None:
            proj = self.project(project)
            q = q.join(items, items.c.id == votes.c.item_id).where(items.c.project_id == proj.id)
        with self.db.read() as conn:
            return conn.execute(q).scalar_one()

    # ------------------------------------------------------------------ exports (exports.py)

    def export_records(self, project: str, kind: str) -> list[Record]:
        """Votes as alignkit records; see :func:`exports.vote_records`."""
        return exports.vote_records(self.raw_votes(project), kind)

    def item_labels(self, project: str, item_ids: Iterable[int]) -> dict[int, Comparison]:
        """One soft label per labelled pairwise item; see :func:`exports.combine_labels`."""
        return exports.combine_labels(self.export_records(project, "comparisons"), item_ids)

    def export_rows(self, project: str, fmt: str) -> list[dict[str, Any]]:
        """The rows of export format ``fmt``; see :func:`exports.export_rows`."""
        if fmt not in EXPORT_FORMATS:
            raise UnknownFormat(fmt, EXPORT_FORMATS)
        return exports.export_rows(self.raw_votes(project), fmt)

    def export(self, project: str, fmt: str, path: str | os.PathLike) -> int:
        """Write :meth:`export_rows` as JSONL to ``path`` atomically; returns the row count."""
        return exports.write_jsonl(self.export_rows(project, fmt), Path(path))

    def stats(self, project: str) -> dict[str, Any]:
        """Counts, agreement, gold accuracy, group rates; see :func:`exports.vote_stats`."""
        proj = self.project(project)
        return exports.vote_stats(proj, self.raw_votes(project), self.count_items(project))
