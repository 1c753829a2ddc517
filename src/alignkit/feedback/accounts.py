"""Accounts: annotators and admins, their passwords and API tokens, login sessions.

Only hashes of secrets are stored (see :mod:`alignkit.feedback.auth`). A password check
does the same scrypt work whether or not the account exists or has a password.
"""

from __future__ import annotations

import functools
import re
import time

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from alignkit.feedback.auth import (
    hash_password,
    hash_token,
    new_password,
    new_token,
    verify_password,
)
from alignkit.feedback.db import Database
from alignkit.feedback.errors import InvalidRequest
from alignkit.feedback.schema import sessions, users
from alignkit.feedback.values import NewUser, User

__all__ = ["NAME_PATTERN", "ROLES", "Accounts"]

ROLES = ("annotator", "admin")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")  # user names and tags


@functools.cache
def _dummy_hash() -> str:
    return hash_password(new_password())


def _now() -> float:
    return time.time()


class Accounts:
    """Users and sessions in one :class:`~alignkit.feedback.db.Database`."""

    def __init__(self, db: Database):
        self.db = db
        self.session_ttl = 12 * 3600.0

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
        if not NAME_PATTERN.match(name or ""):
            raise InvalidRequest(
                f"user name {name!r}: use 1–64 letters, digits and _ . @ - characters"
            )
        if group is not None and (not isinstance(group, str) or len(group) > 64):
            raise InvalidRequest(f"group must be text of at most 64 characters, got {group!r}")
        if role not in ROLES:
            raise InvalidRequest(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if not (password or token):
            raise InvalidRequest("a user needs a password, a token or both")
        pw = new_password() if password else None
        tok = new_token() if token else None
        try:
            with self.db.write() as conn:
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
            raise InvalidRequest(f"a user named {name!r} already exists") from None
        return NewUser(User(uid, name, role, group or None), pw, tok)

    def list_users(self) -> list[User]:
        with self.db.read() as conn:
            rows = conn.execute(select(users).order_by(users.c.id)).all()
        return [self._user(r) for r in rows]

    @staticmethod
    def _user(row) -> User:
        return User(row.id, row.name, row.role, row.group_name)

    def user_by_token(self, token: str) -> User | None:
        if not token:
            return None
        with self.db.read() as conn:
            row = conn.execute(
                select(users).where(users.c.token_hash == hash_token(token), users.c.active)
            ).first()
        return self._user(row) if row else None

    def check_password(self, name: str, password: str) -> User | None:
        with self.db.read() as conn:
            row = conn.execute(select(users).where(users.c.name == name, users.c.active)).first()
        if row is None:
            verify_password(password, _dummy_hash())  # same work as for a real account
            return None
        return self._user(row) if verify_password(password, row.password_hash) else None

    def create_session(self, user: User) -> tuple[str, str]:
        """A new login session: returns (session id for the cookie, CSRF token)."""
        sid, csrf = new_token("aks_"), new_token("akc_")
        now = _now()
        with self.db.write() as conn:
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
