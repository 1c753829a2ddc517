"""Who is asking: session cookies and CSRF tokens for people, bearer tokens for bots.

People log in with a password; the session cookie is HttpOnly and SameSite=Strict and
every form carries the session's CSRF token (the login form a double-submit cookie).
The API only reads ``Authorization: Bearer <token>``, never cookies, so it needs no CSRF
token.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from alignkit.app.bodies import MAX_FORM
from alignkit.app.context import context
from alignkit.app.errors import HTTPProblem
from alignkit.feedback.values import User

__all__ = [
    "LOGIN_CSRF_COOKIE",
    "SESSION_COOKIE",
    "bearer_admin",
    "bearer_user",
    "checked_form",
    "require_session",
    "session_of",
]

SESSION_COOKIE = "ak_session"
LOGIN_CSRF_COOKIE = "ak_login_csrf"


def session_of(request: Request) -> tuple[User, str] | None:
    """(user, CSRF token) of the request's live session, or None."""
    return context(request).store.session(request.cookies.get(SESSION_COOKIE, ""))


def require_session(request: Request) -> tuple[User, str]:
    s = session_of(request)
    if s is None:
        raise HTTPProblem(401, "not logged in")
    return s


async def checked_form(request: Request, csrf: str):
    """The request's form, once its ``csrf_token`` matches ``csrf`` (403 otherwise)."""
    form = await request.form(max_part_size=MAX_FORM)  # BodyLimit bounds the whole body
    sent = form.get("csrf_token")
    if not isinstance(sent, str) or not hmac.compare_digest(sent, csrf):
        raise HTTPProblem(403, "the form's CSRF token is missing or wrong; reload the page")
    return form


def bearer_user(request: Request) -> User:
    """The active user of the request's bearer token, a member of the served project."""
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    c = context(request)
    user = c.store.user_by_token(token.strip()) if scheme.lower() == "bearer" else None
    if user is None:
        raise HTTPProblem(
            401,
            "missing or invalid API token (send 'Authorization: Bearer <token>')",
            {"WWW-Authenticate": "Bearer"},
        )
    if not c.store.is_member(c.project, user):
        raise HTTPProblem(403, f"user {user.name!r} is not a member of project {c.project!r}")
    return user


def bearer_admin(request: Request) -> User:
    user = bearer_user(request)
    if not user.is_admin:
        raise HTTPProblem(403, "this needs an admin account")
    return user
