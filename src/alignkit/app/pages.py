"""The HTML side, for people: log in, label one task after another, the admin page."""

from __future__ import annotations

import json
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from alignkit.app.auth import (
    SESSION_COOKIE,
    check_login_csrf,
    checked_form,
    client_address,
    login_csrf,
    login_csrf_cookie,
    require_session,
    session_of,
)
from alignkit.app.clips import clip_response
from alignkit.app.context import AppContext, context
from alignkit.app.errors import HTTPProblem
from alignkit.app.render import MAX_RENDER_CHARS, render_markdown
from alignkit.data.records import Ranking
from alignkit.feedback.answers import MAX_TEXT
from alignkit.feedback.errors import InvalidAnswer
from alignkit.feedback.exports import EXPORT_FORMATS
from alignkit.feedback.values import Task, User

__all__ = ["jsonl_response", "router"]

router = APIRouter()
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@router.get("/healthz")
def healthz():
    return {"ok": True}


@router.get("/favicon.ico")
def favicon():
    return Response(status_code=204)


@router.get("/")
def root():
    return RedirectResponse("/annotate", 303)


# ---------------------------------------------------------------------- log in / out


def login_page(
    request: Request, status: int = 200, error: str | None = None, headers: dict | None = None
) -> HTMLResponse:
    """The login form with a fresh pre-session (cookie) and its token (hidden field)."""
    c = context(request)
    pre_session, token = login_csrf(c)
    resp = c.page("login.html", status, csrf=token, error=error)
    resp.headers.update(headers or {})
    resp.set_cookie(
        login_csrf_cookie(c, request), pre_session, max_age=3600, **c.cookie_flags(request)
    )
    return resp


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request):
    return login_page(request)


def _too_many(request: Request, wait: float) -> HTMLResponse:
    seconds = int(wait) + 1
    return login_page(
        request,
        429,
        error=f"Too many failed logins; try again in {seconds} s.",
        headers={"Retry-After": str(seconds)},
    )


@router.post("/login")
async def login(request: Request):
    """Check a password — off the event loop, and only within the failed-login limits.

    The attempt is counted against the client and the account *before* the (slow)
    password check, so simultaneous guesses cannot all slip past the limits."""
    c = context(request)
    client = client_address(request)
    wait = c.client_failures.retry_after(client)  # before reading the form: a flood is cheap
    if wait > 0:
        return _too_many(request, wait)
    form = await checked_form(request, check_login_csrf(c, request))
    name, password = str(form.get("username", "")), str(form.get("password", ""))
    wait, client_stamp = c.client_failures.attempt(client)
    if wait > 0:
        return _too_many(request, wait)
    wait, account_stamp = c.account_failures.attempt(name)
    if wait > 0:
        c.client_failures.forgive(client, client_stamp)  # refused unchecked: not a guess
        return _too_many(request, wait)
    user = await anyio.to_thread.run_sync(
        c.store.check_password, name, password, limiter=c.hash_slots
    )
    if user is None:  # both attempts stay counted as failures
        return login_page(request, 401, error="Wrong user name or password.")
    c.account_failures.clear(name)
    c.client_failures.forgive(client, client_stamp)
    if not await run_in_threadpool(c.store.is_member, c.project, user):
        return login_page(request, 403, error=f"You are not a member of project {c.project!r}.")
    sid, _ = await run_in_threadpool(c.store.create_session, user)
    resp = RedirectResponse("/admin" if user.is_admin else "/annotate", 303)
    resp.set_cookie(
        SESSION_COOKIE, sid, max_age=int(c.store.session_ttl), **c.cookie_flags(request)
    )
    resp.delete_cookie(login_csrf_cookie(c, request), path="/", secure=c.is_secure(request))
    return resp


@router.post("/logout")
async def logout(request: Request):
    _user, csrf = require_session(request)
    await checked_form(request, csrf)
    await run_in_threadpool(
        context(request).store.end_session, request.cookies.get(SESSION_COOKIE, "")
    )
    resp = RedirectResponse("/login", 303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


# ---------------------------------------------------------------------- labelling


SHOWN_CHARS = MAX_RENDER_CHARS  # of one response, prompt or turn; the rest on demand
KEYS = {
    "pairwise": [
        ("1", "A is better"),
        ("2", "B is better"),
        ("t", "Tie"),
        ("b", "Both bad"),
        ("c", "Can't compare"),
        ("s", "Skip"),
        ("Enter", "Submit"),
    ],
    "video_pair": [
        ("1", "A is better"),
        ("2", "B is better"),
        ("t", "Tie"),
        ("c", "Can't tell"),
        ("p", "Play / pause both"),
        ("r", "Restart both"),
        ("s", "Skip"),
        ("Enter", "Submit"),
    ],
    "ranking": [("s", "Skip"), ("Enter", "Submit")],
    "rating": [("s", "Skip"), ("Enter", "Submit")],
}
CHOICE_WORDS = {"tie": "Tie", "both_bad": "Both bad", "incomparable": "Can't compare"}


def shown_text(text: str, part: str, markdown: bool) -> dict[str, Any]:
    """A text as the page shows it: model output as sanitised markdown, anything else as
    plain text; cut at :data:`SHOWN_CHARS` (the whole text is fetched on demand by
    ``part``: an unbroken megabyte would take Chromium minutes to lay out)."""
    shown = min(len(text), SHOWN_CHARS)
    html = render_markdown(text, SHOWN_CHARS).html if markdown else None
    return {
        "html": html,
        "text": None if markdown else text[:shown],
        "truncated": shown < len(text),
        "chars": len(text),
        "shown": shown,
        "part": part,
    }


def answer_summary(kind: str, answer: dict[str, Any], display_order: list[int]) -> str:
    """A stored answer (original terms) in the words and letters its annotator saw."""
    letter = {orig: LETTERS[pos] for pos, orig in enumerate(display_order)}
    if kind in ("pairwise", "video_pair"):
        choice = answer["choice"]
        if choice in ("a", "b"):
            text = f"{letter[0 if choice == 'a' else 1]} is better"
            return text + (f" ({answer['strength']})" if answer.get("strength") else "")
        if kind == "video_pair" and choice == "incomparable":
            return "Can't tell"
        return CHOICE_WORDS.get(choice, choice)
    if kind == "ranking":
        tiers = Ranking("", [""] * len(answer["order"]), answer["order"], answer["ties"]).tier()
        return "ranks " + ", ".join(f"{letter[i]} {tiers[i] + 1}" for i in display_order)
    return "ratings " + ", ".join(f"{letter[i]} {answer['scores'][i]}" for i in display_order)


def history_rows(c: AppContext, user: User) -> list[dict[str, Any]]:
    rows = c.store.history(c.project, user, limit=10)
    for r in rows:
        r["summary"] = answer_summary(r["type"], r["answer"], r["display_order"])
    return rows


def task_page(
    c: AppContext, user: User, csrf: str, task: Task | None, error: str | None = None, status=200
) -> HTMLResponse:
    shown = None
    if task is not None:
        video = task.type == "video_pair"
        shown = {
            "prompt": shown_text(task.prompt, "prompt", markdown=False),
            "turns": [
                shown_text(t["content"], f"turn{i}", markdown=t["role"] == "assistant")
                for i, t in enumerate(task.turns or [])
            ],
            "responses": [
                None if video else shown_text(text, f"response{i}", markdown=True)
                for i, text in enumerate(task.responses)
            ],
            "editable": [len(text) <= MAX_TEXT for text in task.responses],
        }
    return c.page(
        "annotate.html",
        status,
        user=user,
        csrf=csrf,
        task=task,
        shown=shown,
        error=error,
        letters=LETTERS,
        keys=KEYS[task.type] if task is not None else [],
        tags=c.store.project(c.project).all_tags,
        progress=c.store.progress(c.project, user),
        history=history_rows(c, user),
        max_text=MAX_TEXT,
    )


@router.get("/annotate", response_class=HTMLResponse)
def annotate(request: Request):
    s = session_of(request)
    if s is None:
        return RedirectResponse("/login", 303)
    c = context(request)
    user, csrf = s
    return task_page(c, user, csrf, c.store.next_task(c.project, user))


@router.get("/annotate/poll")
def poll(request: Request):
    """For a page with nothing to label: is there something now? (assigns nothing)"""
    user, _ = require_session(request)
    c = context(request)
    return {
        "task": c.store.has_task(c.project, user),
        "progress": c.store.progress(c.project, user),
    }


@router.get("/annotate/{assignment_id}/full/{part}")
def full_text(request: Request, assignment_id: int, part: str):
    """The whole of a cut text of the annotator's own assignment, as plain text:
    ``prompt``, ``turnK`` or ``responseK`` (display position K)."""
    user, _ = require_session(request)
    c = context(request)
    task = c.store.task(assignment_id, user, project=c.project)
    texts = {"prompt": task.prompt}
    texts |= {f"turn{i}": t["content"] for i, t in enumerate(task.turns or [])}
    if task.type != "video_pair":
        texts |= {f"response{i}": r for i, r in enumerate(task.responses)}
    if part not in texts:
        raise HTTPProblem(404, f"assignment {assignment_id} has no text {part!r}")
    return Response(texts[part], media_type="text/plain; charset=utf-8")


@router.post("/annotate/history/{assignment_id}/undo")
async def undo(request: Request, assignment_id: int):
    """Take back one's own label (until its round closes): the task comes back to answer again."""
    c = context(request)
    user, csrf = await run_in_threadpool(require_session, request)
    await checked_form(request, csrf)
    await run_in_threadpool(c.store.undo, assignment_id, user, project=c.project)
    return RedirectResponse("/annotate", 303)


def form_answer(task: Task, form) -> dict[str, Any]:
    """The answer a submitted task form carries, in the store's terms (display order)."""
    k = len(task.responses)
    answer: dict[str, Any] = {
        "tags": [form.getlist(f"tags_{i}") for i in range(k)],
        "comment": str(form.get("comment") or ""),
        "edits": [
            str(form[f"edit_{i}"]).replace("\r\n", "\n") if f"edit_{i}" in form else None
            for i in range(k)
        ],
    }
    if task.type == "pairwise":
        answer["choice"] = str(form.get("choice") or "")
        answer["strength"] = str(form.get("strength") or "") or None
    elif task.type == "video_pair":
        answer["choice"] = str(form.get("choice") or "")
    elif task.type == "ranking":
        answer["ranks"] = [_int(form.get(f"rank_{i}")) for i in range(k)]
    else:
        answer["ratings"] = [_int(form.get(f"rating_{i}")) for i in range(k)]
    return answer


@router.post("/annotate/{assignment_id}")
async def submit_form(request: Request, assignment_id: int):
    c = context(request)
    user, csrf = await run_in_threadpool(require_session, request)
    form = await checked_form(request, csrf)

    def record():  # in a worker thread: the store's calls block
        task = c.store.task(assignment_id, user, project=c.project)
        try:
            c.store.record_vote(assignment_id, user, form_answer(task, form), project=c.project)
        except InvalidAnswer as e:
            return task_page(c, user, csrf, task, error=str(e), status=422)
        return RedirectResponse("/annotate", 303)

    return await run_in_threadpool(record)


@router.get("/annotate/{assignment_id}/clip/{position}")
def clip(request: Request, assignment_id: int, position: int):
    """A clip of the logged-in annotator's own video_pair assignment."""
    user, _ = require_session(request)
    c = context(request)
    content_type, data = c.store.clip(assignment_id, user, position, project=c.project)
    return clip_response(request, content_type, data)


@router.post("/annotate/{assignment_id}/skip")
async def skip_form(request: Request, assignment_id: int):
    user, csrf = await run_in_threadpool(require_session, request)
    await checked_form(request, csrf)
    c = context(request)
    await run_in_threadpool(c.store.skip, assignment_id, user, project=c.project)
    return RedirectResponse("/annotate", 303)


# ---------------------------------------------------------------------- admin


@router.get("/admin", response_class=HTMLResponse)
def admin(request: Request):
    s = session_of(request)
    if s is None:
        return RedirectResponse("/login", 303)
    c = context(request)
    user, csrf = s
    if not user.is_admin:
        raise HTTPProblem(403, "the admin page needs an admin account")
    stats = c.store.stats(c.project)
    return c.page("admin.html", user=user, csrf=csrf, stats=stats, formats=EXPORT_FORMATS)


@router.get("/admin/export/{fmt}")
def admin_export(request: Request, fmt: str):
    user, _ = require_session(request)
    if not user.is_admin:
        raise HTTPProblem(403, "exports need an admin account")
    return jsonl_response(context(request), fmt)


def jsonl_response(c: AppContext, fmt: str) -> Response:
    """Export format ``fmt`` as a JSONL download (404 for an unknown format)."""
    rows = c.store.export_rows(c.project, fmt)
    # backslashreplace: a lone surrogate stored before validation existed is written as its
    # JSON escape (the exact stored text), never a 500
    lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    body = "".join(lines).encode("utf-8", "backslashreplace")
    return Response(
        body,
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{c.safe_name}-{fmt}.jsonl"'},
    )


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None
