"""Failed-login limits: per account and per client, so guessing is slow and cheap to refuse.

A sliding window: after ``max_failures`` failed logins within ``window_s`` seconds a key
(an account name, a client address) is refused with 429 until the oldest of those
failures leaves the window — at most ``window_s`` seconds, so the real user is never
locked out for long. Refusals do no password hashing at all; the hashing itself runs
in worker threads, at most :data:`HASH_THREADS` at once, never on the event loop.

An attempt counts *before* its password is checked (:meth:`FailureWindow.attempt`
checks and records in one step, under a lock), and is taken back only if the password
was right. So a burst of simultaneous guesses cannot all pass the check while the first
of them is still hashing: at most ``max_failures`` of them reach a password check.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

__all__ = ["HASH_THREADS", "FailureWindow"]

HASH_THREADS = 1  # concurrent scrypt checks (each ~45 ms of one core, 16 MiB): at most one
# core hashes, so a flood of (even valid) logins leaves the others to the annotators


class FailureWindow:
    """Recent failures (and attempts still being checked) per key, in memory (one server
    process), at most ``max_keys`` keys."""

    def __init__(self, max_failures: int, window_s: float, *, max_keys: int = 100_000):
        self.max_failures, self.window_s, self.max_keys = max_failures, window_s, max_keys
        self._fails: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _wait(self, key: str, now: float) -> float:
        q = self._fails.get(key)
        if q is None:
            return 0.0
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if len(q) < self.max_failures:
            return 0.0
        return q[0] + self.window_s - now

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Seconds until ``key`` may try again (0: it may now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return self._wait(key, now)

    def attempt(self, key: str, now: float | None = None) -> tuple[float, float]:
        """Check and count one attempt at once: ``(0, stamp)`` when ``key`` may try now —
        the attempt is recorded as a failure until :meth:`forgive` takes it back — or
        ``(seconds to wait, 0)`` when it may not (nothing is recorded)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            wait = self._wait(key, now)
            if wait > 0:
                return wait, 0.0
            self._record(key, now)
            return 0.0, now

    def forgive(self, key: str, stamp: float) -> None:
        """Take back the attempt recorded at ``stamp`` (its password was right, or it was
        refused before any check)."""
        with self._lock:
            q = self._fails.get(key)
            if q is not None:
                try:
                    q.remove(stamp)
                except ValueError:  # already left the window
                    pass

    def failed(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._record(key, now)

    def _record(self, key: str, now: float) -> None:
        q = self._fails.pop(key, None) or deque()
        q.append(now)
        while len(q) > self.max_failures:  # only the newest max_failures matter
            q.popleft()
        self._fails[key] = q  # most recent last
        while len(self._fails) > self.max_keys:
            self._fails.popitem(last=False)

    def clear(self, key: str) -> None:
        with self._lock:
            self._fails.pop(key, None)
