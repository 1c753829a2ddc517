"""The chat page, the arena and the leaderboard: routes over :class:`~alignkit.app.chat_service.ChatService`.

Mounted on the annotation app by :func:`mount_chat` (``alignkit chat serve`` uses
:func:`create_chat_app`). Same accounts, sessions, CSRF, CSP, body limits and store as the
annotation pages. People only: the page's script (``/static/chat.js``) calls the JSON routes
under ``/chat/api`` with the session cookie and the session's CSRF token in an
``X-CSRF-Token`` header; answers stream as server-sent events from
``/chat/api/stream/{message_id}``:

* ``event: queued`` ``{"position"}`` while the answer waits for the worker;
* ``event: token`` ``{"text"}`` — plain text as decoded (the script puts it in a text node);
* ``event: done`` ``{"status", "html", ...}`` — the whole answer rendered by
  :func:`~alignkit.app.render.render_markdown` (sanitised, raw HTML escaped), sent after
  the answer is committed; the script swaps it in for the streamed text.

A client that goes away cancels its answer (what was written is kept as ``stopped``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.concurrency import run_in_threadpool

from alignkit.app.auth import checked_form, require_session, session_of
from alignkit.app.bodies import json_body
from alignkit.app.context import context
from alignkit.app.errors import HTTPProblem, status_of
from alignkit.app.generation import Busy
from alignkit.app.render import render_markdown
from alignkit.errors import AlignkitError
from alignkit.feedback.conversations import CHAT_EXPORT_FORMATS, Conversation, Message, TooLong
from alignkit.feedback.errors import NotFound
from alignkit.feedback.exports import json_safe

__all__ = ["create_chat_app", "mount_chat", "router", "service"]

router = APIRouter()
HEARTBEAT_S = 5.0  # a comment line this often: proxies keep the stream, a gone client is noticed


def service(request: Request):
    chat = getattr(request.app.state, "chat", None)
    if chat is None:  # pragma: no cover - the router is only mounted with a service
        raise HTTPProblem(404, "this server has no chat")
    return chat


def mount_chat(app, chat) -> None:
    """Add the chat page, the arena and the leaderboard of ``chat`` (a
    :class:`~alignkit.app.chat_service.ChatService`) to an app made by
    :func:`~alignkit.app.server.create_app`; ``/`` then leads to the chat."""
    app.state.chat = chat
    app.state.ctx.templates.globals["chat_enabled"] = True
    before = list(app.router.routes)
    app.include_router(router)
    # matched first, so that "/" leads to the chat, not to /annotate (no other path is shared)
    added = [r for r in app.router.routes if r not in before]
    app.router.routes[:] = added + before


def create_chat_app(db_url: str, project: str, chat, **kwargs):
    """:func:`~alignkit.app.server.create_app` (same arguments) with the chat mounted."""
    from alignkit.app.server import create_app

    app = create_app(db_url, project, **kwargs)
    mount_chat(app, chat)
    return app


# ---------------------------------------------------------------------- JSON plumbing


def _json_error(exc: Exception) -> JSONResponse:
    headers: dict[str, str] = {}
    if isinstance(exc, HTTPProblem):
        status, message, headers = exc.status, exc.message, exc.headers
    elif isinstance(exc, Busy):
        status, message = 429, str(exc)
        headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, TooLong):
        status, message = 413, str(exc)
    else:
        status, message = status_of(exc), str(exc)
    return JSONResponse({"detail": message}, status, headers=headers)


def _session_user(request: Request, *, csrf_header: bool):
    """The logged-in member of this project (401/403), CSRF header checked for writes."""
    user, csrf = require_session(request)
    c = context(request)
    if not c.store.is_member(c.project, user):
        raise HTTPProblem(403, f"you are not a member of project {c.project!r}")
    if csrf_header:
        sent = request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(sent, csrf):
            raise HTTPProblem(403, "the CSRF token is missing or wrong; reload the page")
    return user


async def _call(request: Request, fn, *, body: bool = True) -> Response:
    """Run ``fn(user, body)`` in a worker thread; library errors become JSON errors."""
    try:
        user = await run_in_threadpool(_session_user, request, csrf_header=True)
        data = await json_body(request) if body else {}
        result = await run_in_threadpool(fn, user, data)
    except (HTTPProblem, AlignkitError) as e:
        return _json_error(e)
    if isinstance(result, Response):
        return result
    return JSONResponse(json_safe(result))


def _int(data: dict, key: str, *, optional: bool = False) -> int | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise HTTPProblem(422, f"field '{key}': expected an integer id")
    return value


def message_json(m: Message, *, reveal: bool = True) -> dict[str, Any]:
    """A message for the page: its text, its sanitised HTML, and (unless an unvoted arena
    answer) the model that wrote it."""
    shown = render_markdown(m.content) if m.role == "assistant" else None
    out = {
        "id": m.id,
        "parent_id": m.parent_id,
        "role": m.role,
        "text": m.content,
        "html": str(shown.html) if shown else None,
        "truncated": bool(shown and shown.truncated),
        "status": m.status,
        "origin": m.origin,
        "side": m.side,
        "model": m.model if reveal else None,
        "stats": {k: m.meta[k] for k in ("tokens", "ttft_ms", "tokens_per_s", "context_cut", "prompt_tokens", "error")
                  if k in m.meta},
    }
    return out


# ---------------------------------------------------------------------- pages


def _page_user(request: Request):
    s = session_of(request)
    if s is None:
        return None, None
    user, csrf = s
    c = context(request)
    if not c.store.is_member(c.project, user):
        raise HTTPProblem(403, f"you are not a member of project {c.project!r}")
    return user, csrf


def _view(conv: Conversation, signals: list[dict]) -> dict[str, Any]:
    """The path of a conversation as the page shows it: turns, a pending pair to pick from,
    a pending "better or worse?" after a regeneration, the thumbs already given."""
    thumbs = {s["message_id"]: s["answer"]["thumb"] for s in signals if s["kind"] == "thumb"}
    compared = {s["message_id"] for s in signals if s["kind"] == "compare"}
    path = conv.path()
    pair: list[Message] = []
    if path and path[-1].role == "user":
        kids = [m for m in conv.children(path[-1].id) if m.role == "assistant"]
        if len(kids) >= 2:
            pair = kids[-2:]
    pending_compare = None
    leaf = path[-1] if path else None
    if leaf is not None and "regenerated_from" in leaf.meta and leaf.id not in compared:
        old = conv.messages.get(leaf.meta["regenerated_from"])
        if old is not None and old.status in ("done", "stopped") and leaf.status in ("done", "stopped"):
            pending_compare = {"new": leaf.id, "old": old.id}
    return {"path": path, "pair": pair, "thumbs": thumbs, "pending_compare": pending_compare}


@router.get("/")
def root():
    return RedirectResponse("/chat", 303)


@router.get("/chat", response_class=HTMLResponse)
def chat_home(request: Request):
    return _chat_page(request, None)


@router.get("/chat/{conversation_id}", response_class=HTMLResponse)
def chat_page(request: Request, conversation_id: int):
    return _chat_page(request, conversation_id)


def _chat_page(request: Request, conversation_id: int | None):
    user, csrf = _page_user(request)
    if user is None:
        return RedirectResponse("/login", 303)
    c, svc = context(request), service(request)
    conv, view = None, {"path": [], "pair": [], "thumbs": {}, "pending_compare": None}
    if conversation_id is not None:
        conv = svc.chat.conversation(conversation_id, user, project=c.project)
        if conv.mode == "arena":
            return RedirectResponse(f"/arena/{conv.id}", 303)
        view = _view(conv, svc.chat.signals_of(conv.id, user))
    return c.page(
        "chat.html",
        user=user,
        csrf=csrf,
        conv=conv,
        history=svc.chat.list_conversations(c.project, user, mode="chat"),
        models=list(svc.models),
        tags=c.store.project(c.project).all_tags,
        limits={"message": svc.config.max_message_chars},
        render=render_markdown,
        **view,
    )


@router.get("/arena", response_class=HTMLResponse)
def arena_home(request: Request):
    user, csrf = _page_user(request)
    if user is None:
        return RedirectResponse("/login", 303)
    c, svc = context(request), service(request)
    return c.page("arena.html", user=user, csrf=csrf, conv=None, answers=[], voted=None,
                  n_models=len(svc.models), render=render_markdown,
                  limits={"message": svc.config.max_message_chars})


@router.post("/arena/new")
async def arena_new(request: Request):
    user, csrf = await run_in_threadpool(_page_user, request)
    if user is None:
        return RedirectResponse("/login", 303)
    await checked_form(request, csrf)
    c, svc = context(request), service(request)
    cid = await run_in_threadpool(svc.new_battle, user, project=c.project)
    return RedirectResponse(f"/arena/{cid}", 303)


@router.get("/arena/{conversation_id}", response_class=HTMLResponse)
def arena_page(request: Request, conversation_id: int):
    user, csrf = _page_user(request)
    if user is None:
        return RedirectResponse("/login", 303)
    c, svc = context(request), service(request)
    conv = svc.chat.conversation(conversation_id, user, project=c.project)
    if conv.mode != "arena":
        return RedirectResponse(f"/chat/{conv.id}", 303)
    votes = [s for s in svc.chat.signals_of(conv.id, user) if s["kind"] == "arena"]
    voted = votes[0]["answer"]["choice"] if votes else None
    answers = sorted((m for m in conv.messages.values() if m.role == "assistant"), key=lambda m: m.side)
    question = next((m for m in conv.messages.values() if m.role == "user"), None)
    return c.page("arena.html", user=user, csrf=csrf, conv=conv, question=question, answers=answers,
                  voted=voted, n_models=len(svc.models), render=render_markdown,
                  limits={"message": svc.config.max_message_chars})


@router.get("/leaderboard", response_class=HTMLResponse)
def leaderboard_page(request: Request):
    user, csrf = _page_user(request)
    if user is None:
        return RedirectResponse("/login", 303)
    c, svc = context(request), service(request)
    standings = svc.standings(c.project)
    return c.page("leaderboard.html", user=user, csrf=csrf, standings=standings,
                  finite=lambda x: isinstance(x, float) and math.isfinite(x))


@router.get("/chat-admin", response_class=HTMLResponse)
def chat_admin(request: Request):
    user, csrf = _page_user(request)
    if user is None:
        return RedirectResponse("/login", 303)
    if not user.is_admin:
        raise HTTPProblem(403, "the chat admin page needs an admin account")
    c, svc = context(request), service(request)
    return c.page("chat_admin.html", user=user, csrf=csrf, stats=svc.chat.stats(c.project),
                  formats=CHAT_EXPORT_FORMATS, busy=svc.worker.busy())


@router.post("/chat-admin/review")
async def chat_review(request: Request):
    user, csrf = await run_in_threadpool(_page_user, request)
    if user is None or not user.is_admin:
        raise HTTPProblem(403, "queuing for review needs an admin account")
    await checked_form(request, csrf)
    c, svc = context(request), service(request)
    await run_in_threadpool(svc.chat.queue_for_review, c.project)
    return RedirectResponse("/chat-admin", 303)


@router.get("/chat-admin/export/{fmt}")
def chat_export(request: Request, fmt: str):
    user, _ = require_session(request)
    if not user.is_admin:
        raise HTTPProblem(403, "exports need an admin account")
    c, svc = context(request), service(request)
    rows = svc.chat.export_rows(c.project, fmt)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return Response(
        body.encode("utf-8", "backslashreplace"),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{c.safe_name}-chat-{fmt}.jsonl"'},
    )


# ---------------------------------------------------------------------- JSON routes


@router.post("/chat/api/send")
async def api_send(request: Request):
    """``{"conversation_id"?, "text", "parent_id"?, "two"?, "model"?}`` → the user turn and
    the answers being written (a new chat when ``conversation_id`` is absent)."""
    c, svc = context(request), service(request)

    def send(user, data):
        cid = _int(data, "conversation_id", optional=True)
        arena = cid is not None and svc.chat.conversation(cid, user, project=c.project).mode == "arena"
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            raise HTTPProblem(422, "field 'model': expected a model name")
        cid, turn, answers = svc.send(
            cid, user, data.get("text"), parent_id=_int(data, "parent_id", optional=True),
            two=bool(data.get("two")), model=model, project=c.project,
        )
        return {
            "conversation_id": cid,
            "turn": message_json(turn),
            "answers": [message_json(a, reveal=not arena) for a in answers],
        }

    return await _call(request, send)


@router.post("/chat/api/messages/{message_id}/regenerate")
async def api_regenerate(request: Request, message_id: int):
    c, svc = context(request), service(request)

    def regenerate(user, data):
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            raise HTTPProblem(422, "field 'model': expected a model name")
        new = svc.regenerate(message_id, user, model=model, project=c.project)
        return {"answer": message_json(new), "replaces": message_id}

    return await _call(request, regenerate)


@router.post("/chat/api/messages/{message_id}/stop")
async def api_stop(request: Request, message_id: int):
    c, svc = context(request), service(request)
    return await _call(
        request, lambda user, _: {"stopped": svc.stop(message_id, user, project=c.project)}, body=False
    )


@router.post("/chat/api/messages/{message_id}/thumb")
async def api_thumb(request: Request, message_id: int):
    """``{"up": true|false, "tags"?: [...], "comment"?: "what was the issue"}``."""
    c, svc = context(request), service(request)

    def thumb(user, data):
        up = data.get("up")
        if not isinstance(up, bool):
            raise HTTPProblem(422, "field 'up': expected true or false")
        tags = data.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise HTTPProblem(422, "field 'tags': expected a list of tags")
        r = svc.chat.thumb(message_id, user, up, tags=tags, comment=data.get("comment") or "", project=c.project)
        return {"signal_id": r.vote_id, "duplicate": r.duplicate}

    return await _call(request, thumb)


@router.post("/chat/api/messages/{message_id}/compare")
async def api_compare(request: Request, message_id: int):
    """After Regenerate: ``{"old_id", "choice": "better"|"worse"|"same"}`` (this answer vs the old)."""
    c, svc = context(request), service(request)

    def compare(user, data):
        r = svc.chat.compare(message_id, _int(data, "old_id"), user, str(data.get("choice") or ""),
                             project=c.project)
        return {"signal_id": r.vote_id, "duplicate": r.duplicate}

    return await _call(request, compare)


@router.post("/chat/api/messages/{message_id}/pick")
async def api_pick(request: Request, message_id: int):
    """Of two answers, continue with this one: ``{"other_id"}``."""
    c, svc = context(request), service(request)

    def pick(user, data):
        r = svc.chat.pick(message_id, _int(data, "other_id"), user, project=c.project)
        return {"signal_id": r.vote_id, "duplicate": r.duplicate, "leaf_id": message_id}

    return await _call(request, pick)


@router.post("/chat/api/messages/{message_id}/edit")
async def api_edit(request: Request, message_id: int):
    """``{"text"}`` → the corrected answer, now the one the conversation continues from."""
    c, svc = context(request), service(request)

    def edit(user, data):
        m, r = svc.chat.edit(message_id, user, data.get("text"), project=c.project)
        return {"answer": message_json(m), "replaces": message_id, "signal_id": r.vote_id,
                "duplicate": r.duplicate}

    return await _call(request, edit)


@router.post("/arena/api/{conversation_id}/vote")
async def api_vote(request: Request, conversation_id: int):
    """``{"choice": "A"|"B"|"tie"|"both_bad"}`` → the two models' names, now shown."""
    c, svc = context(request), service(request)

    def vote(user, data):
        r, models = svc.chat.arena_vote(conversation_id, user, str(data.get("choice") or ""),
                                        project=c.project)
        return {"signal_id": r.vote_id, "duplicate": r.duplicate, "models": models}

    return await _call(request, vote)


@router.get("/chat/api/leaderboard")
def api_leaderboard(request: Request):
    try:
        _session_user(request, csrf_header=False)
    except HTTPProblem as e:
        return _json_error(e)
    c, svc = context(request), service(request)
    st = svc.standings(c.project)
    return JSONResponse(json_safe({
        "battles": st.battles, "regularised": st.regularised, "alpha": st.alpha,
        "rows": [r.__dict__ for r in st.rows],
    }))


# ---------------------------------------------------------------------- streams


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response that notices a client going away even while
    nothing is being sent, and then cancels the stream (whose ``finally`` stops the job)."""

    def __init__(self, events):
        super().__init__(events, 200, {"X-Accel-Buffering": "no"}, "text/event-stream")
        self.events = events

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        async with anyio.create_task_group() as tg:

            async def stream():
                try:
                    async for chunk in self.events:
                        await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except OSError:  # the client is gone (ASGI 2.4 servers raise on send)
                    pass
                finally:
                    tg.cancel_scope.cancel()

            async def watch():
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            tg.start_soon(watch)


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _done(message: Message, final: dict[str, Any] | None, reveal: bool) -> dict[str, Any]:
    m = message_json(message, reveal=reveal)
    if final is not None:  # the worker's outcome (the message row was read before it)
        shown = render_markdown(final["text"])
        m.update(status=final["status"], text=final["text"], html=str(shown.html), truncated=shown.truncated,
                 stats={k: final["meta"][k] for k in ("tokens", "ttft_ms", "tokens_per_s", "context_cut",
                                                       "prompt_tokens", "error") if k in final["meta"]})
    return m


@router.get("/chat/api/stream/{message_id}")
async def api_stream(request: Request, message_id: int):
    c, svc = context(request), service(request)
    try:
        user = await run_in_threadpool(_session_user, request, csrf_header=False)
        conv = await run_in_threadpool(svc.chat.conversation_of, message_id, user, project=c.project)
    except (HTTPProblem, AlignkitError) as e:
        return _json_error(e)
    message = conv.messages[message_id]
    if message.role != "assistant":
        return _json_error(NotFound(f"message {message_id} is not an answer"))
    reveal = conv.mode != "arena"
    job = svc.worker.job(message_id)

    async def events():
        if job is None:  # finished before this server started, or long ago: as stored
            yield _event("done", _done(message, None, reveal))
            return
        ev = job.subscribe()
        ended = False
        cursor = 0
        try:
            while True:
                ev.clear()
                pieces = job.read(cursor)
                if pieces:
                    cursor += len(pieces)
                    yield _event("token", {"text": "".join(pieces)})
                if job.final is not None:
                    ended = True
                    yield _event("done", _done(message, job.final, reveal))
                    return
                if job.state == "queued":
                    yield _event("queued", {"position": svc.worker.position(job)})
                if not pieces:
                    try:
                        await asyncio.wait_for(ev.wait(), HEARTBEAT_S)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
        finally:
            job.unsubscribe(ev)
            if not ended and job.listeners == 0:
                svc.worker.cancel(message_id)  # the page went away: stop writing

    return EventStream(events())
