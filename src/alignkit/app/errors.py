"""Library errors → HTTP: the one place that knows which status code each error gets.

The feedback store raises kinds of error (:mod:`alignkit.feedback.errors`); this module
maps them to status codes. Other user errors (a malformed item, :class:`DataError`) are
422. An error is answered as JSON under ``/api/`` and as a page elsewhere.
"""

from __future__ import annotations

import json

from starlette.responses import Response

from alignkit.errors import AlignkitError
from alignkit.feedback.errors import (
    Conflict,
    InvalidAnswer,
    InvalidRequest,
    NotFound,
    NotMember,
    UnknownFormat,
)

__all__ = ["HTTPProblem", "problem_response", "status_of"]

# Most specific first: the first class an error is an instance of decides.
STATUS = (
    (UnknownFormat, 404),
    (NotFound, 404),
    (NotMember, 403),
    (Conflict, 409),
    (InvalidAnswer, 422),
    (InvalidRequest, 422),
)


class HTTPProblem(Exception):
    """An error answered with ``status`` (JSON for the API, a page for people)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def status_of(exc: AlignkitError) -> int:
    """The HTTP status for a library error (422 for any user error not listed)."""
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 422


def problem_response(exc: HTTPProblem) -> Response:
    """A bare JSON error (for middleware, before the app's templates are involved)."""
    body = json.dumps({"detail": exc.message}).encode()
    headers = dict(exc.headers) | {"Connection": "close"}  # the rest of the body is not read
    return Response(body, exc.status, headers=headers, media_type="application/json")
