"""A small Python client for the annotation app's JSON API (bots, scripts, tests).

    client = AnnotationClient("http://127.0.0.1:8000", token)
    while (task := client.next_task()) is not None:
        client.submit(task["assignment_id"], choice="A")   # A = first response shown

Answers are given in *display* terms, exactly as the task lists its responses (see
``docs/api.md``). Only ``httpx`` is needed (the ``app`` extra).

A server that does not answer (not started, restarting, a proxy's 502/503/504) is retried
with exponential backoff for ``retry_s`` seconds — every call of this client is safe to
repeat (imports are idempotent, a repeated label is recognised as a duplicate) — and then
raised as one :class:`ServerUnreachable` line, never a transport traceback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from alignkit.data.records import Record, record_from_dict, record_to_dict
from alignkit.errors import AlignkitError

__all__ = ["AnnotationClient", "ApiError", "ServerUnreachable", "backoff_delays"]

RETRY_STATUSES = (502, 503, 504)  # a proxy in front of a server that is (re)starting


class ApiError(AlignkitError):
    """The server refused a request; ``status`` is the HTTP status code."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class ServerUnreachable(AlignkitError):
    """The server did not answer within the client's retry budget."""


def backoff_delays(first: float = 0.5, factor: float = 2.0, cap: float = 15.0):
    """0.5, 1, 2, 4, 8, 15, 15, ... seconds: the waits between tries."""
    delay = first
    while True:
        yield delay
        delay = min(cap, delay * factor)


class AnnotationClient:
    """Talks to ``alignkit annotate serve`` with a bearer token (no cookies, no CSRF)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        retry_s: float = 0.0,
        on_retry: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.retry_s = retry_s
        self.on_retry = on_retry
        self.sleep = sleep
        self._project: str | None = None
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AnnotationClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw) -> Any:
        import httpx

        waited = 0.0
        delays = backoff_delays()
        while True:
            try:
                r = self._http.request(method, path, **kw)
                problem = f"HTTP {r.status_code}" if r.status_code in RETRY_STATUSES else None
            except httpx.TransportError as e:  # refused, reset, timed out, DNS, ...
                r, problem = None, _reason(e)
            if problem is None:
                break
            delay = next(delays)
            if waited + delay > self.retry_s:
                tried = f" for {waited:g} s" if waited else ""
                raise ServerUnreachable(
                    f"annotation server {self.base_url} not answering{tried} ({problem}); is "
                    "`alignkit annotate serve` running there?"
                ) from None
            if self.on_retry is not None:
                self.on_retry(
                    f"annotation server {self.base_url} not answering ({problem}); retrying in "
                    f"{delay:g} s (gives up after {self.retry_s:g} s)"
                )
            self.sleep(delay)
            waited += delay
        if r.is_error:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ApiError(r.status_code, str(detail))
        return r

    def me(self) -> dict[str, Any]:
        return self._call("GET", "/api/v1/me").json()

    def next_task(self) -> dict[str, Any] | None:
        """The next assignment (responses in display order), or None when none is left."""
        r = self._call("GET", "/api/v1/tasks/next")
        return None if not r.content else r.json()  # no content: nothing left

    def submit(self, assignment_id: int, **answer: Any) -> dict[str, Any]:
        """Label an assignment: ``choice=``/``strength=`` (pairwise), ``ranks=`` (ranking),
        ``ratings=`` (rating), and optionally ``tags=``, ``comment=``, ``edits=``.

        Returns ``{"vote_id", "duplicate"}``; re-sending the same answer is harmless.
        """
        return self._call("POST", f"/api/v1/assignments/{assignment_id}/label", json=answer).json()

    def skip(self, assignment_id: int) -> None:
        self._call("POST", f"/api/v1/assignments/{assignment_id}/skip")

    def progress(self) -> dict[str, int]:
        return self._call("GET", "/api/v1/progress").json()

    # admin ---------------------------------------------------------------

    def import_items(
        self, items: list[dict[str, Any] | Record], *, gold: bool = False
    ) -> dict[str, Any]:
        """Add items (item dicts or alignkit records) to the server's project (admin)."""
        payload = [x if isinstance(x, dict) else record_to_dict(x) for x in items]
        return self._call("POST", "/api/v1/items", json={"items": payload, "gold": gold}).json()

    def submit_pairs(
        self, pairs: list[tuple[str, str, str]], *, project: str | None = None
    ) -> list[int]:
        """Queue ``(prompt, a, b)`` pairs as pairwise items (admin); returns their item ids.

        Pairs already on the server get their existing id (imports are idempotent).
        """
        return self.post_pairs(pairs, project=project)["item_ids"]

    def post_pairs(
        self, pairs: list[tuple[str, str, str]], *, project: str | None = None
    ) -> dict[str, Any]:
        """:meth:`submit_pairs` with the whole answer: ``{"item_ids", "added", "skipped"}``
        (``skipped``: pairs already on the server, whose earlier labels count)."""
        self._check_project(project)
        items = [{"type": "pairwise", "prompt": p, "responses": [a, b]} for p, a, b in pairs]
        return self.import_items(items)

    def close_items(self, item_ids: list[int], *, project: str | None = None) -> int:
        """Close items whose labels were taken (admin): offered no more, labels final."""
        self._check_project(project)
        return self._call("POST", "/api/v1/items/close", json={"ids": list(item_ids)}).json()[
            "closed"
        ]

    def fetch_labels(self, item_ids: list[int], *, project: str | None = None) -> dict[int, Record]:
        """``{item id: Comparison}`` for the items labelled so far (admin); see
        :meth:`alignkit.feedback.store.FeedbackStore.item_labels` for how votes combine."""
        self._check_project(project)
        labels = self._call("POST", "/api/v1/items/labels", json={"ids": list(item_ids)}).json()
        return {int(k): record_from_dict(v) for k, v in labels["labels"].items()}

    def _check_project(self, project: str | None) -> None:
        if project is None:
            return
        if self._project is None:
            self._project = self.me()["project"]
        if project != self._project:
            raise AlignkitError(
                f"the server at {self.base_url} serves project {self._project!r}, not {project!r}"
            )

    def add_user(
        self, name: str, *, role: str = "annotator", group: str | None = None
    ) -> dict[str, Any]:
        """Create an account (admin); the reply holds its one-time token."""
        body = {"name": name, "role": role, "group": group}
        return self._call("POST", "/api/v1/users", json=body).json()

    def export(self, format: str = "raw") -> list[dict[str, Any]]:
        """Exported rows (see ``alignkit annotate export``) as a list of dicts (admin)."""
        text = self._call("GET", "/api/v1/export", params={"format": format}).text
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/api/v1/stats").json()


def _reason(e: Exception) -> str:
    """A transport error in a few words (httpx's messages can be long)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    name = type(e).__name__
    if "refused" in text.lower():
        return "connection refused"
    return f"{name}: {text[:120]}" if text else name
