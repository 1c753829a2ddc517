"""One streamed chat answer read as a person's browser reads it, for the chat benchmarks."""

from __future__ import annotations

import json
import time


def read_answer(stream) -> tuple[float | None, dict | None]:
    """Read the server-sent events of ``stream`` (an open httpx response of
    ``GET /chat/api/stream/ID``) up to the ``done`` event.

    Returns ``(first, done)``: the ``time.perf_counter()`` at which the first ``token`` event
    arrived (None without one) and the ``done`` event's data (None when the stream ended
    without one).
    """
    first = done = None
    event = None
    for line in stream.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
            if event == "token" and first is None:
                first = time.perf_counter()
        elif line.startswith("data: ") and event == "done":
            done = json.loads(line[6:])
            break
    return first, done
