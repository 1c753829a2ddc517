"""The annotation web app: server-rendered HTML for people, a JSON API for bots.

``create_app(db_url, project)`` returns a FastAPI app over a
:class:`~alignkit.feedback.store.FeedbackStore`; ``alignkit annotate serve`` runs it
under uvicorn. The app holds no state of its own: every label is committed by the store
before the response is sent. Where things are:

* :mod:`~alignkit.app.pages` — the HTML routes (login, labelling, admin page, exports);
* :mod:`~alignkit.app.api` — the JSON API under ``/api/v1``;
* :mod:`~alignkit.app.auth` — sessions, CSRF, bearer tokens;
* :mod:`~alignkit.app.bodies` — request bodies and their size limits;
* :mod:`~alignkit.app.clips` — serving the clips of ``video_pair`` items;
* :mod:`~alignkit.app.errors` — which HTTP status each library error gets;
* :mod:`~alignkit.app.context` — the store, project and templates every route uses;
* this module — assembling them, security headers, error pages.

Security, since prompts and model outputs are untrusted text:

* Jinja2 autoescapes every template; untrusted text is only ever placed in element
  content or a ``<textarea>``, never in attributes that load URLs, inline scripts or
  ``innerHTML``. The only script is ``/static/annotate.js`` (keyboard shortcuts), and the
  Content-Security-Policy allows scripts and styles from ``'self'`` only (no
  ``unsafe-inline``), so injected markup could not run even if it got through.
* People log in with a password (scrypt-hashed); the session cookie is HttpOnly and
  SameSite=Strict, and every form carries a per-session CSRF token checked server-side
  (the login form uses a double-submit cookie). Bots send ``Authorization: Bearer
  <token>``; the API never reads cookies, so it needs no CSRF token.
* No CORS headers are sent at all: other origins cannot read API responses.
* No default account: ``alignkit annotate add-user`` prints a one-time secret.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders

from alignkit.app import api, pages
from alignkit.app.bodies import BodyLimit
from alignkit.app.context import HERE, AppContext, context
from alignkit.app.errors import HTTPProblem, status_of
from alignkit.errors import AlignkitError
from alignkit.feedback.answers import DEFAULT_TAGS
from alignkit.feedback.store import FeedbackStore

__all__ = ["DEFAULT_TAGS", "create_app"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` (and no-store outside /static)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    headers.setdefault(k, v)
                if not static:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class SafeJSONResponse(JSONResponse):
    """JSON that cannot fail on text stored before validation existed (a lone surrogate is
    written as its JSON escape)."""

    def render(self, content) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8", "backslashreplace")


async def on_problem(request: Request, exc: HTTPProblem):
    if request.url.path.startswith("/api/"):
        return SafeJSONResponse({"detail": exc.message}, exc.status, headers=exc.headers)
    return context(request).page("error.html", exc.status, message=exc.message, code=exc.status)


async def on_user_error(request: Request, exc: AlignkitError):
    return await on_problem(request, HTTPProblem(status_of(exc), str(exc)))


async def on_invalid_request(request: Request, exc: RequestValidationError):
    # a path parameter that is not an integer, say: one line, like every other error
    where = ", ".join(".".join(str(x) for x in e.get("loc", ())) for e in exc.errors()[:3])
    return await on_problem(request, HTTPProblem(422, f"invalid request ({where})"))


def create_app(
    db_url: str, project: str, *, secure_cookies: bool = False, store: FeedbackStore | None = None
) -> FastAPI:
    """The annotation app for ``project`` in the database at ``db_url``.

    ``secure_cookies=True`` adds the Secure flag to cookies (set it behind HTTPS; it is
    also added automatically when the request itself arrives over https).
    """
    store = store or FeedbackStore(db_url)
    store.ensure_project(project)
    app = FastAPI(
        title="alignkit annotate",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        default_response_class=SafeJSONResponse,
    )
    app.state.ctx = AppContext(store, project, secure_cookies)
    app.state.store, app.state.project = store, project
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(BodyLimit, store_of=lambda scope: store)
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(HTTPProblem, on_problem)
    app.add_exception_handler(AlignkitError, on_user_error)
    app.add_exception_handler(RequestValidationError, on_invalid_request)
    app.include_router(pages.router)
    app.include_router(api.router)
    return app
