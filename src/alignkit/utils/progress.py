"""Progress bars for long work (rich), quiet when not attached to a terminal or in tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    if os.environ.get("ALIGNKIT_NO_PROGRESS"):
        return False
    return sys.stderr.isatty()


def track(it: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr (plain iteration when not a TTY)."""
    if not progress_enabled():
        yield from it
        return
    from rich.progress import track as rich_track

    yield from rich_track(it, description=description, total=total, transient=False)
