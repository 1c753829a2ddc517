"""Request bodies: size limits enforced while the body streams in, and JSON parsed safely.

Memory is never taken before a check: :class:`BodyLimit` refuses a declared
``Content-Length`` over the limit before reading anything, and counts the bytes of a
chunked body as they arrive, answering 413 as soon as the limit is passed. The limit
is the smaller of two:

* who asks: a request without valid credentials (no live session cookie, no valid
  bearer token) may send :data:`MAX_ANONYMOUS` bytes (a login form), an annotator's form
  :data:`MAX_FORM`, an API call :data:`MAX_API`;
* what the route takes (:func:`route_limit`): a label —
  API or form — what its answer can hold (:func:`label_limit`: a comment and an edit per
  response, each at most :data:`~alignkit.feedback.answers.MAX_TEXT` characters); an
  import :data:`MAX_API`; a chat or arena call :data:`MAX_CHAT` (room for a message far
  over the chat's own character limit, so that the route can say by how much); everything
  else :data:`MAX_SMALL`.

JSON is parsed in a worker thread, never on the event loop: a large body never stalls
the other requests.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from alignkit.app.errors import HTTPProblem, problem_response
from alignkit.feedback.answers import MAX_TEXT
from alignkit.feedback.text import json_problem

__all__ = [
    "MAX_ANONYMOUS",
    "MAX_API",
    "MAX_CHAT",
    "MAX_FORM",
    "MAX_SMALL",
    "BodyLimit",
    "json_body",
    "label_limit",
    "route_limit",
]

MAX_ANONYMOUS = 16 * 2**10  # without credentials only the login form has a use for a body
MAX_FORM = 16 * 2**20  # a labelling form carries the (possibly long) corrected texts
MAX_API = 32 * 2**20  # bytes of JSON in one API request (an import of many items)
MAX_SMALL = 16 * 2**10  # a login, a skip, an undo, a new user: a few short fields
MAX_IDS = 2**20  # {"ids": [...]}: ~100,000 item ids
MAX_CHAT = 2 * 2**20  # a chat message, edit or comment; the chat checks its characters itself

# The worst case of one character on the wire: a 4-byte UTF-8 character percent-encoded in a
# form (12 bytes), or two \\uXXXX escapes in JSON (12 bytes).
_BYTES_PER_CHAR = 12
_LABEL = re.compile(r"^/(?:api/v1/assignments/(\d{1,18})/label|annotate/(\d{1,18}))$")
_FIXED = (
    (re.compile(r"^/api/v1/items$"), MAX_API),
    (re.compile(r"^/api/v1/items/(?:labels|close)$"), MAX_IDS),
    (re.compile(r"^/(?:chat/api|arena)/"), MAX_CHAT),
)


def label_limit(n_responses: int) -> int:
    """Bytes an answer to an item of ``n_responses`` responses may take: a comment and one
    edit per response at their longest, plus 64 KiB for the choice, ranks, ratings and tags."""
    return 64 * 2**10 + (n_responses + 1) * MAX_TEXT * _BYTES_PER_CHAR


def route_limit(path: str, store) -> int:
    """The most bytes the route at ``path`` takes (see the module docstring)."""
    if m := _LABEL.match(path):
        k = store.assignment_size(int(m.group(1) or m.group(2)))
        return label_limit(k) if k is not None else MAX_SMALL  # not an assignment: a 404 anyway
    for pattern, limit in _FIXED:
        if pattern.match(path):
            return limit
    return MAX_SMALL


def _too_large(limit: int) -> HTTPProblem:
    hint = "; send fewer items at once" if limit == MAX_API else ""
    return HTTPProblem(413, f"request body over {limit // 2**10} KiB{hint}")


class BodyLimit:
    """ASGI middleware: at most ``limit_for(scope)`` bytes of request body, counted as they
    arrive (with or without Content-Length)."""

    def __init__(self, app, store_of):
        self.app = app
        self.store_of = store_of  # scope -> FeedbackStore (to check credentials)

    def _credential_limit(self, scope, headers: dict[bytes, bytes]) -> int:
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

    def _limit(self, scope, headers: dict[bytes, bytes]) -> int:
        who = self._credential_limit(scope, headers)
        if who <= MAX_ANONYMOUS:
            return who
        return min(who, route_limit(scope["path"], self.store_of(scope)))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if declared is None and not chunked:
            return await self.app(scope, receive, send)  # no body
        if not chunked and declared.isdigit() and int(declared) <= MAX_SMALL:
            limit = MAX_SMALL  # under every limit: no need to ask the database who is asking
        else:
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


def _parse(raw: bytes) -> dict[str, Any]:
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


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object: 400 when it is not JSON (or nested past reason), 422 when
    it is not an object or holds text the store cannot keep (NUL, a lone surrogate).
    Parsed in a worker thread."""
    raw = await request.body()
    if raw.lstrip()[:1] == b"[":  # an array: refused before building millions of objects
        raise HTTPProblem(422, "expected a JSON object")
    return await run_in_threadpool(_parse, raw)
