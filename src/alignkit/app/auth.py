"""Who is asking: session cookies and CSRF tokens for people, bearer tokens for bots.

People log in with a password; the session cookie is HttpOnly and SameSite=Strict and
every form carries the session's CSRF token. The API only reads ``Authorization: Bearer
<token>``, never cookies, so it needs no CSRF token.

Cookies do not keep ports apart: a page on another port of the same host is *same-site*,
its requests carry our SameSite=Strict cookies, and it can set cookies for our host. So:

* every form POST is refused when the browser says it comes from another origin
  (``Sec-Fetch-Site`` other than ``same-origin``/``none``, or an ``Origin`` whose host
  is not ours) — this is what stops a page on another port;
* the login form (no session yet) is bound to a pre-session: the cookie holds a random
  id, the form a MAC of it under a key only this server process knows, so a cookie
  value the server did not issue is refused; over HTTPS the cookie is
  ``__Host-ak_login_csrf`` (Secure, host-only, Path=/: a plain-HTTP page cannot set it).

The client address (for the login limits) is the TCP peer; ``X-Forwarded-For`` is read
only when the peer is one of the configured trusted proxies.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from fastapi import Request

from alignkit.app.bodies import MAX_FORM
from alignkit.app.context import AppContext, context
from alignkit.app.errors import HTTPProblem
from alignkit.feedback.auth import new_token
from alignkit.feedback.values import User

__all__ = [
    "LOGIN_CSRF_COOKIE",
    "SESSION_COOKIE",
    "bearer_admin",
    "bearer_user",
    "check_login_csrf",
    "check_origin",
    "checked_form",
    "client_address",
    "login_csrf",
    "login_csrf_cookie",
    "require_session",
    "session_of",
]

SESSION_COOKIE = "ak_session"
LOGIN_CSRF_COOKIE = "ak_login_csrf"
SAME_ORIGIN = ("same-origin", "none")  # Sec-Fetch-Site values of our own pages / typed URLs


def session_of(request: Request) -> tuple[User, str] | None:
    """(user, CSRF token) of the request's live session, or None."""
    return context(request).store.session(request.cookies.get(SESSION_COOKIE, ""))


def require_session(request: Request) -> tuple[User, str]:
    s = session_of(request)
    if s is None:
        raise HTTPProblem(401, "not logged in")
    return s


def client_address(request: Request) -> str:
    """The client's address: the TCP peer, or — only when the peer is a trusted proxy —
    the last address in ``X-Forwarded-For`` that is not itself a trusted proxy."""
    c = context(request)
    peer = request.client.host if request.client else "?"
    if peer not in c.trusted_proxies:
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if hop not in c.trusted_proxies:
            return hop[:64]
    return peer


def _own_host(request: Request) -> str:
    c = context(request)
    host = request.headers.get("host", "")
    peer = request.client.host if request.client else ""
    forwarded = request.headers.get("x-forwarded-host", "")
    if forwarded and peer in c.trusted_proxies:
        host = forwarded.split(",")[-1].strip()
    return host.lower()


def check_origin(request: Request) -> None:
    """403 for a form posted from another origin (see the module docstring)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site.lower() not in SAME_ORIGIN:
        raise HTTPProblem(
            403, f"a form from another site ({site}) is refused; use this server's own pages"
        )
    origin = request.headers.get("origin")
    # "null": an opaque origin, also what a no-referrer page sends for its own forms; the
    # CSRF token decides then
    if origin and origin != "null" and urlsplit(origin).netloc.lower() != _own_host(request):
        raise HTTPProblem(403, "a form from another origin is refused; use this server's own pages")


async def checked_form(request: Request, csrf: str):
    """The request's form, once it comes from our own origin and its ``csrf_token``
    matches ``csrf`` (403 otherwise)."""
    check_origin(request)
    form = await request.form(max_part_size=MAX_FORM)  # BodyLimit bounds the whole body
    sent = form.get("csrf_token")
    if not isinstance(sent, str) or not csrf or not hmac.compare_digest(sent, csrf):
        raise HTTPProblem(403, "the form's CSRF token is missing or wrong; reload the page")
    return form


# ---------------------------------------------------------------------- the login form


def login_csrf_cookie(c: AppContext, request: Request) -> str:
    """The login form's cookie name: ``__Host-`` prefixed over HTTPS."""
    return f"__Host-{LOGIN_CSRF_COOKIE}" if c.is_secure(request) else LOGIN_CSRF_COOKIE


def _mac(c: AppContext, pre_session: str) -> str:
    return hmac.new(c.login_secret, pre_session.encode(), hashlib.sha256).hexdigest()


def login_csrf(c: AppContext) -> tuple[str, str]:
    """A new pre-session: (cookie value, the form's token)."""
    pre = new_token("akl_")
    return pre, _mac(c, pre)


def check_login_csrf(c: AppContext, request: Request) -> str:
    """The expected form token of the request's pre-session cookie ("" when it has none
    or one this server did not issue: every form token is refused then)."""
    pre = request.cookies.get(login_csrf_cookie(c, request), "")
    return _mac(c, pre) if pre.startswith("akl_") else ""


# ---------------------------------------------------------------------- bearer tokens


def bearer_user(request: Request) -> User:
    """The active user of the request's bearer token, a member of the served project."""
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    c = context(request)
    user, member = (None, False)
    if scheme.lower() == "bearer":
        user, member = c.store.member_by_token(c.project, token.strip())  # one connection
    if user is None:
        raise HTTPProblem(
            401,
            "missing or invalid API token (send 'Authorization: Bearer <token>')",
            {"WWW-Authenticate": "Bearer"},
        )
    if not member:
        raise HTTPProblem(403, f"user {user.name!r} is not a member of project {c.project!r}")
    return user


def bearer_admin(request: Request) -> User:
    user = bearer_user(request)
    if not user.is_admin:
        raise HTTPProblem(403, "this needs an admin account")
    return user
