"""Serving a ``video_pair`` clip: its bytes with its content type, byte ranges for seeking.

Browsers fetch ``<video>`` sources with ``Range: bytes=…`` requests; answering them (206)
lets the player seek and restart without downloading the clip again.
"""

from __future__ import annotations

import re

from fastapi import Request
from fastapi.responses import Response

__all__ = ["clip_response"]

_RANGE = re.compile(r"^bytes=(\d{0,15})-(\d{0,15})$")


def clip_response(request: Request, content_type: str, data: bytes) -> Response:
    """The clip, whole (200) or the one byte range asked for (206; 416 when unsatisfiable)."""
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, no-store"}
    asked = _RANGE.match(request.headers.get("range", "").strip())
    if asked is None or asked.groups() == ("", ""):
        return Response(data, media_type=content_type, headers=headers)
    first, last = asked.groups()
    size = len(data)
    if first == "":  # the last N bytes
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return Response(status_code=416, headers=headers | {"Content-Range": f"bytes */{size}"})
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(data[start : end + 1], 206, media_type=content_type, headers=headers)
