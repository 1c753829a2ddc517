"""What every route needs: the store, the project, the templates and the cookie settings.

:func:`create_app <alignkit.app.server.create_app>` builds one :class:`AppContext` and keeps
it on ``app.state``; a route gets it with ``context(request)``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from alignkit.app.limits import HASH_THREADS, FailureWindow
from alignkit.feedback.exports import format_stat
from alignkit.feedback.store import FeedbackStore

__all__ = ["HERE", "AppContext", "context"]

HERE = Path(__file__).parent


@dataclass
class AppContext:
    store: FeedbackStore
    project: str
    secure_cookies: bool = False
    trusted_proxies: tuple[str, ...] = ()
    """Peer addresses whose X-Forwarded-For / -Proto / -Host headers are believed (none by default)."""

    def __post_init__(self) -> None:
        self.login_secret = os.urandom(32)  # signs the login form's pre-session (auth.py)
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"), autoescape=True, undefined=StrictUndefined
        )
        self.templates.filters["stat"] = format_stat
        # the project name as it may appear in a download's file name
        self.safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", self.project)[:80]
        self.account_failures = FailureWindow(max_failures=5, window_s=60.0)
        self.client_failures = FailureWindow(max_failures=30, window_s=60.0)
        self._hash_slots: anyio.CapacityLimiter | None = None

    @property
    def hash_slots(self) -> anyio.CapacityLimiter:
        """Worker threads for password checks (made on first use, inside the event loop)."""
        if self._hash_slots is None:
            self._hash_slots = anyio.CapacityLimiter(HASH_THREADS)
        return self._hash_slots

    def page(self, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        """Render template ``name`` (user, csrf and project default to none / this project)."""
        ctx.setdefault("user", None)
        ctx.setdefault("csrf", "")
        ctx.setdefault("project", self.store.project(self.project))
        html = self.templates.get_template(name).render(**ctx)
        # "replace": text stored before validation existed (a lone surrogate) cannot break a page
        return HTMLResponse(html.encode("utf-8", "replace"), status_code=status)

    def is_secure(self, request: Request) -> bool:
        """Served over HTTPS: ``--secure-cookies``, an https request, or a trusted proxy's
        ``X-Forwarded-Proto: https``."""
        if self.secure_cookies or request.url.scheme == "https":
            return True
        peer = request.client.host if request.client else ""
        proto = request.headers.get("x-forwarded-proto", "").split(",")[-1].strip().lower()
        return peer in self.trusted_proxies and proto == "https"

    def cookie_flags(self, request: Request) -> dict[str, Any]:
        """HttpOnly, SameSite=Strict; Secure behind HTTPS (or when the request is https)."""
        return {
            "httponly": True,
            "samesite": "strict",
            "secure": self.is_secure(request),
            "path": "/",
        }


def context(request: Request) -> AppContext:
    return request.app.state.ctx
