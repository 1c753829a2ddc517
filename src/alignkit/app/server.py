"""The annotation web app: server-rendered HTML for people, a JSON API for bots.

``create_app(db_url, project)`` returns a FastAPI app over a
:class:`~alignkit.feedback.store.FeedbackStore`; ``alignkit annotate serve`` runs it
under uvicorn. The app holds no state of its own: every label is committed by the store
before the response is sent.

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

import hmac
import json
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.datastructures import MutableHeaders

from alignkit.data.records import record_to_dict
from alignkit.errors import AlignkitError
from alignkit.feedback.auth import new_token
from alignkit.feedback.store import (
    DEFAULT_TAGS,
    EXPORT_FORMATS,
    FeedbackStore,
    InvalidAnswer,
    User,
    format_stat,
    json_safe,
)

HERE = Path(__file__).parent
SESSION_COOKIE = "ak_session"
LOGIN_CSRF_COOKIE = "ak_login_csrf"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_BODY = 32 * 2**20  # bytes of JSON in one API request


class HTTPProblem(Exception):
    """An error answered with ``status`` (JSON for the API, a page for people)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


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


def create_app(
    db_url: str, project: str, *, secure_cookies: bool = False, store: FeedbackStore | None = None
) -> FastAPI:
    """The annotation app for ``project`` in the database at ``db_url``.

    ``secure_cookies=True`` adds the Secure flag to cookies (set it behind HTTPS; it is
    also added automatically when the request itself arrives over https).
    """
    store = store or FeedbackStore(db_url)
    store.ensure_project(project)
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=True, undefined=StrictUndefined
    )
    env.filters["stat"] = format_stat
    app = FastAPI(title="alignkit annotate", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.project = store, project
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", project)[:80]  # for download file names
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    app.add_middleware(SecurityHeaders)

    def is_api(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    def page(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("user", None)
        ctx.setdefault("csrf", "")
        ctx.setdefault("project", store.project(project))
        return HTMLResponse(env.get_template(name).render(**ctx), status_code=status)

    @app.exception_handler(HTTPProblem)
    async def on_problem(request: Request, exc: HTTPProblem):
        if is_api(request):
            return JSONResponse({"detail": exc.message}, exc.status, headers=exc.headers)
        return page("error.html", exc.status, message=exc.message, code=exc.status)

    @app.exception_handler(AlignkitError)
    async def on_user_error(request: Request, exc: AlignkitError):
        # StoreError carries its HTTP status; other user errors (a bad item) are 422.
        return await on_problem(request, HTTPProblem(getattr(exc, "status", 422), str(exc)))

    def cookie_flags(request: Request) -> dict[str, Any]:
        secure = secure_cookies or request.url.scheme == "https"
        return {"httponly": True, "samesite": "strict", "secure": secure, "path": "/"}

    # ------------------------------------------------------------------ auth helpers

    def session_of(request: Request) -> tuple[User, str] | None:
        return store.session(request.cookies.get(SESSION_COOKIE, ""))

    def require_session(request: Request) -> tuple[User, str]:
        s = session_of(request)
        if s is None:
            raise HTTPProblem(401, "not logged in")
        return s

    async def checked_form(request: Request, csrf: str):
        form = await request.form()
        sent = form.get("csrf_token")
        if not isinstance(sent, str) or not hmac.compare_digest(sent, csrf):
            raise HTTPProblem(403, "the form's CSRF token is missing or wrong; reload the page")
        return form

    def bearer_user(request: Request) -> User:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        user = store.user_by_token(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise HTTPProblem(
                401,
                "missing or invalid API token (send 'Authorization: Bearer <token>')",
                {"WWW-Authenticate": "Bearer"},
            )
        return user

    def bearer_admin(request: Request) -> User:
        user = bearer_user(request)
        if not user.is_admin:
            raise HTTPProblem(403, "this needs an admin account")
        return user

    # ------------------------------------------------------------------ pages

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/")
    def root():
        return RedirectResponse("/annotate", 303)

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request):
        token = new_token("akl_")
        resp = page("login.html", csrf=token, error=None)
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, **cookie_flags(request))
        return resp

    @app.post("/login")
    async def login(request: Request):
        await checked_form(request, request.cookies.get(LOGIN_CSRF_COOKIE) or "\0")
        form = await request.form()
        user = store.check_password(str(form.get("username", "")), str(form.get("password", "")))
        if user is None:
            token = new_token("akl_")
            resp = page("login.html", 401, csrf=token, error="Wrong user name or password.")
            resp.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, **cookie_flags(request))
            return resp
        sid, _ = store.create_session(user)
        resp = RedirectResponse("/admin" if user.is_admin else "/annotate", 303)
        resp.set_cookie(
            SESSION_COOKIE, sid, max_age=int(store.session_ttl), **cookie_flags(request)
        )
        resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
        return resp

    @app.post("/logout")
    async def logout(request: Request):
        _user, csrf = require_session(request)
        await checked_form(request, csrf)
        store.end_session(request.cookies.get(SESSION_COOKIE, ""))
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @app.get("/annotate", response_class=HTMLResponse)
    def annotate(request: Request):
        s = session_of(request)
        if s is None:
            return RedirectResponse("/login", 303)
        user, csrf = s
        return task_page(user, csrf, store.next_task(project, user))

    def task_page(user: User, csrf: str, task, error: str | None = None, status: int = 200):
        proj = store.project(project)
        return page(
            "annotate.html",
            status,
            user=user,
            csrf=csrf,
            task=task,
            error=error,
            letters=LETTERS,
            tags=proj.all_tags,
            progress=store.progress(project, user),
        )

    @app.post("/annotate/{assignment_id}")
    async def submit_form(request: Request, assignment_id: int):
        user, csrf = require_session(request)
        form = await checked_form(request, csrf)
        task = store.task(assignment_id, user)
        k = len(task.responses)
        answer: dict[str, Any] = {
            "tags": [form.getlist(f"tags_{i}") for i in range(k)],
            "comment": str(form.get("comment") or ""),
            "edits": [
                str(form[f"edit_{i}"]).replace("\r\n", "\n") if f"edit_{i}" in form else None
                for i in range(k)
            ],
        }
        try:
            if task.type == "pairwise":
                answer["choice"] = str(form.get("choice") or "")
                answer["strength"] = str(form.get("strength") or "") or None
            elif task.type == "ranking":
                answer["ranks"] = [_int(form.get(f"rank_{i}")) for i in range(k)]
            else:
                answer["ratings"] = [_int(form.get(f"rating_{i}")) for i in range(k)]
            store.record_vote(assignment_id, user, answer)
        except InvalidAnswer as e:
            return task_page(user, csrf, task, error=str(e), status=422)
        return RedirectResponse("/annotate", 303)

    @app.post("/annotate/{assignment_id}/skip")
    async def skip_form(request: Request, assignment_id: int):
        user, csrf = require_session(request)
        await checked_form(request, csrf)
        store.skip(assignment_id, user)
        return RedirectResponse("/annotate", 303)

    @app.get("/admin", response_class=HTMLResponse)
    def admin(request: Request):
        s = session_of(request)
        if s is None:
            return RedirectResponse("/login", 303)
        user, csrf = s
        if not user.is_admin:
            raise HTTPProblem(403, "the admin page needs an admin account")
        return page(
            "admin.html", user=user, csrf=csrf, stats=store.stats(project), formats=EXPORT_FORMATS
        )

    @app.get("/admin/export/{fmt}")
    def admin_export(request: Request, fmt: str):
        user, _ = require_session(request)
        if not user.is_admin:
            raise HTTPProblem(403, "exports need an admin account")
        return jsonl_response(fmt)

    def jsonl_response(fmt: str) -> Response:
        if fmt not in EXPORT_FORMATS:
            raise HTTPProblem(
                404, f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}"
            )
        rows = store.export_rows(project, fmt)
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return Response(
            body,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{safe_name}-{fmt}.jsonl"'},
        )

    # ------------------------------------------------------------------ JSON API

    @app.get("/api/v1/me")
    def api_me(request: Request):
        user = bearer_user(request)
        return {"name": user.name, "role": user.role, "group": user.group, "project": project}

    @app.get("/api/v1/tasks/next")
    def api_next(request: Request):
        user = bearer_user(request)
        task = store.next_task(project, user)
        if task is None:
            return Response(status_code=204)
        return task.to_json()

    @app.get("/api/v1/assignments/{assignment_id}")
    def api_assignment(request: Request, assignment_id: int):
        return store.task(assignment_id, bearer_user(request)).to_json()

    @app.post("/api/v1/assignments/{assignment_id}/label")
    async def api_label(request: Request, assignment_id: int):
        user = bearer_user(request)
        body = await json_body(request)
        result = store.record_vote(assignment_id, user, body)
        return JSONResponse(
            {"vote_id": result.vote_id, "duplicate": result.duplicate},
            status_code=200 if result.duplicate else 201,
        )

    @app.post("/api/v1/assignments/{assignment_id}/skip")
    def api_skip(request: Request, assignment_id: int):
        store.skip(assignment_id, bearer_user(request))
        return {"skipped": assignment_id}

    @app.get("/api/v1/progress")
    def api_progress(request: Request):
        return store.progress(project, bearer_user(request))

    @app.post("/api/v1/items")
    async def api_items(request: Request):
        bearer_admin(request)
        body = await json_body(request)
        entries = body.get("items")
        if not isinstance(entries, list):
            raise HTTPProblem(422, "expected {'items': [...], 'gold': false}")
        result = store.add_items(project, entries, gold=bool(body.get("gold", False)))
        return JSONResponse(
            {"added": result.added, "skipped": result.skipped, "item_ids": result.item_ids}, 201
        )

    @app.post("/api/v1/items/labels")
    async def api_item_labels(request: Request):
        bearer_admin(request)
        ids = (await json_body(request)).get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise HTTPProblem(422, "expected {'ids': [item id, ...]}")
        labels = store.item_labels(project, ids)
        return {"labels": {str(k): record_to_dict(v) for k, v in labels.items()}}

    @app.post("/api/v1/users")
    async def api_users(request: Request):
        bearer_admin(request)
        body = await json_body(request)
        new = store.add_user(
            str(body.get("name", "")),
            role=str(body.get("role", "annotator")),
            group=body.get("group"),
            password=bool(body.get("password", False)),
            token=True,
        )
        return JSONResponse(
            {
                "name": new.user.name,
                "role": new.user.role,
                "group": new.user.group,
                "token": new.token,
                "password": new.password,
            },
            201,
        )

    @app.get("/api/v1/export")
    def api_export(request: Request, format: str = "raw"):
        bearer_admin(request)
        return jsonl_response(format)

    @app.get("/api/v1/stats")
    def api_stats(request: Request):
        bearer_admin(request)
        return json_safe(store.stats(project))

    async def json_body(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > MAX_BODY:
            raise HTTPProblem(
                413, f"request body over {MAX_BODY // 2**20} MiB; send fewer items at once"
            )
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise HTTPProblem(413, f"request body over {MAX_BODY // 2**20} MiB")
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise HTTPProblem(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HTTPProblem(422, "expected a JSON object")
        return body

    return app


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


__all__ = ["DEFAULT_TAGS", "create_app"]
