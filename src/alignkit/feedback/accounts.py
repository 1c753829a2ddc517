"""Accounts: annotators and admins, their passwords and API tokens, projects, login sessions.

Only hashes of secrets are stored (see :mod:`alignkit.feedback.auth`). A password check
does the same scrypt work whether or not the account exists, is active or has a password,
so timing does not tell which names exist. Deactivating an account, rotating its token or
resetting its password ends all of its sessions; so does a new login (one live session
per account). Annotators work only on the projects they are members of; admins on all.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from alignkit.feedback.auth import (
    hash_password,
    hash_token,
    new_password,
    new_token,
    verify_password,
)
from alignkit.feedback.db import Database
from alignkit.feedback.errors import InvalidRequest, NotFound, ProjectNotFound
from alignkit.feedback.schema import members, projects, sessions, users
from alignkit.feedback.text import text_problem
from alignkit.feedback.values import NewUser, User

__all__ = ["NAME_PATTERN", "ROLES", "Accounts"]

ROLES = ("annotator", "admin")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")  # user names and tags (fullmatch)


@functools.cache
def _dummy_hash() -> str:
    return hash_password(new_password())


def _now() -> float:
    return time.time()


def check_group(group: object) -> str | None:
    if group is None or group == "":
        return None
    if not isinstance(group, str) or len(group) > 64:
        raise InvalidRequest(f"group must be text of at most 64 characters, got {group!r}")
    if problem := text_problem(group):
        raise InvalidRequest(f"group {problem}")
    return group


class Accounts:
    """Users, project memberships and sessions in one :class:`~alignkit.feedback.db.Database`."""

    def __init__(self, db: Database):
        self.db = db
        self.session_ttl = 12 * 3600.0

    # ------------------------------------------------------------------ accounts

    def add_user(
        self,
        name: str,
        *,
        role: str = "annotator",
        group: str | None = None,
        password: bool = True,
        token: bool = True,
        projects: Iterable[str] = (),
    ) -> NewUser:
        """Create an account, a member of ``projects``; returns its one-time secrets in clear."""
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise InvalidRequest(
                f"user name {name!r}: use 1–64 letters, digits and _ . @ - characters"
            )
        group = check_group(group)
        if role not in ROLES:
            raise InvalidRequest(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if not (password or token):
            raise InvalidRequest("a user needs a password, a token or both")
        pw = new_password() if password else None
        tok = new_token() if token else None
        pw_hash = hash_password(pw) if pw else None  # before the write lock: scrypt is slow
        try:
            with self.db.write() as conn:
                project_ids = [self._project_id(conn, p) for p in projects]
                uid = conn.execute(
                    insert(users).values(
                        name=name,
                        role=role,
                        group_name=group,
                        password_hash=pw_hash,
                        token_hash=hash_token(tok) if tok else None,
                        active=True,
                        created_at=_now(),
                    )
                ).inserted_primary_key[0]
                for pid in project_ids:
                    conn.execute(insert(members).values(project_id=pid, user_id=uid))
        except IntegrityError:
            raise InvalidRequest(f"a user named {name!r} already exists") from None
        return NewUser(User(uid, name, role, group), pw, tok)

    def list_users(self) -> list[User]:
        with self.db.read() as conn:
            rows = conn.execute(select(users).order_by(users.c.id)).all()
        return [self._user(r) for r in rows]

    @staticmethod
    def _user(row) -> User:
        return User(row.id, row.name, row.role, row.group_name)

    def _user_id(self, conn: Connection, name: str) -> int:
        uid = None
        if isinstance(name, str) and NAME_PATTERN.fullmatch(name):
            uid = conn.execute(select(users.c.id).where(users.c.name == name)).scalar()
        if uid is None:
            raise NotFound(f"no user named {name!r}")
        return uid

    @staticmethod
    def _project_id(conn: Connection, project: str) -> int:
        pid = conn.execute(select(projects.c.id).where(projects.c.name == project)).scalar()
        if pid is None:
            raise ProjectNotFound(project)
        return pid

    # ------------------------------------------------------------------ revocation

    def set_active(self, name: str, active: bool) -> None:
        """Deactivate (or reactivate) an account; deactivating ends its sessions at once."""
        with self.db.write() as conn:
            uid = self._user_id(conn, name)
            conn.execute(update(users).where(users.c.id == uid).values(active=active))
            conn.execute(delete(sessions).where(sessions.c.user_id == uid))

    def rotate_token(self, name: str) -> str:
        """A new API token for ``name`` (the old one stops working); ends its sessions."""
        tok = new_token()
        with self.db.write() as conn:
            uid = self._user_id(conn, name)
            conn.execute(update(users).where(users.c.id == uid).values(token_hash=hash_token(tok)))
            conn.execute(delete(sessions).where(sessions.c.user_id == uid))
        return tok

    def reset_password(self, name: str) -> str:
        """A new one-time password for ``name`` (the old one stops working); ends its sessions."""
        pw = new_password()
        pw_hash = hash_password(pw)
        with self.db.write() as conn:
            uid = self._user_id(conn, name)
            conn.execute(update(users).where(users.c.id == uid).values(password_hash=pw_hash))
            conn.execute(delete(sessions).where(sessions.c.user_id == uid))
        return pw

    # ------------------------------------------------------------------ projects

    def add_to_project(self, name: str, project: str) -> None:
        """Make ``name`` a member of ``project`` (no-op when it already is)."""
        try:
            with self.db.write() as conn:
                uid, pid = self._user_id(conn, name), self._project_id(conn, project)
                known = conn.execute(
                    select(members.c.id).where(
                        members.c.user_id == uid, members.c.project_id == pid
                    )
                ).first()
                if known is None:
                    conn.execute(insert(members).values(project_id=pid, user_id=uid))
        except IntegrityError:  # added concurrently
            pass

    def is_member(self, conn: Connection, project_id: int, user: User) -> bool:
        if user.is_admin:
            return True
        row = conn.execute(
            select(members.c.id).where(
                members.c.project_id == project_id, members.c.user_id == user.id
            )
        ).first()
        return row is not None

    def projects_of(self, user: User) -> list[str]:
        with self.db.read() as conn:
            q = select(projects.c.name).order_by(projects.c.id)
            if not user.is_admin:
                q = q.join(members, members.c.project_id == projects.c.id).where(
                    members.c.user_id == user.id
                )
            return list(conn.execute(q).scalars())

    def backfill_members(self) -> None:
        """Make every annotator a member of every project: how a database made before
        memberships existed keeps working (run once, when the members table is created)."""
        with self.db.write() as conn:
            uids = conn.execute(select(users.c.id).where(users.c.role == "annotator")).scalars()
            pids = list(conn.execute(select(projects.c.id)).scalars())
            for uid in list(uids):
                for pid in pids:
                    conn.execute(insert(members).values(project_id=pid, user_id=uid))

    # ------------------------------------------------------------------ credentials

    def user_by_token(self, token: str, conn: Connection | None = None) -> User | None:
        """The active user of an API token (None for an unknown or inactive one); in
        ``conn`` when given."""
        if not token:
            return None
        if conn is None:
            with self.db.read() as conn:
                return self.user_by_token(token, conn)
        row = conn.execute(
            select(users).where(users.c.token_hash == hash_token(token), users.c.active)
        ).first()
        return self._user(row) if row else None

    def check_password(self, name: str, password: str) -> User | None:
        """The active user with this name and password, or None — after the same scrypt
        work in every case (unknown name, inactive, token-only account, wrong password)."""
        row = None
        if isinstance(name, str) and NAME_PATTERN.fullmatch(name):
            with self.db.read() as conn:
                row = conn.execute(
                    select(users).where(users.c.name == name, users.c.active)
                ).first()
        stored = row.password_hash if row is not None and row.password_hash else None
        ok = verify_password(password, stored or _dummy_hash())
        return self._user(row) if ok and stored else None

    def create_session(self, user: User) -> tuple[str, str]:
        """A new login session, replacing the user's others: (session id, CSRF token)."""
        sid, csrf = new_token("aks_"), new_token("akc_")
        now = _now()
        with self.db.write() as conn:
            conn.execute(
                delete(sessions).where(
                    (sessions.c.expires_at < now) | (sessions.c.user_id == user.id)
                )
            )
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
        with self.db.read() as conn:
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
        with self.db.write() as conn:
            conn.execute(delete(sessions).where(sessions.c.id_hash == hash_token(sid)))
