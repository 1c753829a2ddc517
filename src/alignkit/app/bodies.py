"""Request bodies: size limits enforced while the body streams in, and JSON parsed safely.

Memory is never taken before a check: :class:`BodyLimit` refuses a declared
``Content-Length`` over the limit before reading anything, and counts the bytes of a
chunked body as they arrive, answering 413 as soon as the limit is passed. The limit
depends on who asks: a request without valid credentials (no live session cookie, no
valid bearer token) may send :data:`MAX_ANONYMOUS` bytes — enough for the login form —
an annotator's form :data:`MAX_FORM`, an API call :data:`MAX_API`.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from alignkit.app.errors import HTTPProblem, problem_response
from alignkit.feedback.text import json_problem

__all__ = ["MAX_ANONYMOUS", "MAX_API", "MAX_FORM", "BodyLimit", "json_body"]

MAX_ANONYMOUS = 64 * 2**10
MAX_FORM = 16 * 2**20  # a labelling form carries the (possibly long) corrected texts
MAX_API = 32 * 2**20  # bytes of JSON in one API request (an import of many items)


def _too_large(limit: int) -> HTTPProblem:
    hint = "; send fewer items at once" if limit == MAX_API else ""
    return HTTPProblem(413, f"request body over {limit // 2**10} KiB{hint}")


class BodyLimit:
    """ASGI middleware: at most ``limit_for(scope)`` bytes of request body, counted as they
    arrive (with or without Content-Length)."""

    def __init__(self, app, store_of):
        self.app = app
        self.store_of = store_of  # scope -> FeedbackStore (to check credentials)

    def _limit(self, scope, headers: dict[bytes, bytes]) -> int:
        store = self.store_of(scope)
        if scope["path"].startswith("/api/"):
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and store.user_by_token(token.strip()) is not None:
                return MAX_API
            return MAX_ANONYMOUS
        cookie = headers.get(b"cookie", b"").decode("latin-1")
        for part in cookie.split(";"):
            name, _, value = part.strip().partition("=")
            if name == "ak_session" and store.session(value) is not None:
                return MAX_FORM
        return MAX_ANONYMOUS

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if declared is None and not chunked:
            return await self.app(scope, receive, send)  # no body
        limit = await run_in_threadpool(self._limit, scope, headers)
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await problem_response(_too_large(limit))(scope, receive, send)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPProblem as exc:  # raised while a body was read outside any route
            if started:
                raise
            await problem_response(exc)(scope, receive, send)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object: 400 when it is not JSON (or nested past reason), 422 when
    it is not an object or holds text the store cannot keep (NUL, a lone surrogate)."""
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
    except RecursionError:
        raise HTTPProblem(400, "the request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):  # also: integers past Python's digit limit
        raise HTTPProblem(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPProblem(422, "expected a JSON object")
    if found := json_problem(body):
        path, problem = found
        raise HTTPProblem(422, f"field '{path}': {problem}")
    return body
