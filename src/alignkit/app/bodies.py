"""Request bodies: JSON for the API, within a size limit."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from alignkit.app.errors import HTTPProblem

__all__ = ["MAX_BODY", "json_body"]

MAX_BODY = 32 * 2**20  # bytes of JSON in one API request


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object (413 when too large, 400 when not JSON, 422 when not an object)."""
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
