"""The database under the feedback store: engine, connections, transactions.

SQLite (default: one file, WAL journal, ``synchronous=FULL``) or PostgreSQL
(``postgresql://…``). Every write runs in its own transaction; on SQLite writers take
the write lock up front (``BEGIN IMMEDIATE``) and queue on a process-wide lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Connection, Engine

from alignkit.feedback.errors import InvalidRequest
from alignkit.feedback.schema import metadata

__all__ = ["Database", "normalise_db_url"]


def normalise_db_url(url_or_path: str | os.PathLike) -> str:
    """A SQLAlchemy URL; a plain path means a SQLite file (``feedback.db`` → sqlite:///…)."""
    s = str(url_or_path)
    if "://" in s:
        if s.startswith("postgresql://"):  # the app extra ships psycopg2
            return "postgresql+psycopg2://" + s[len("postgresql://") :]
        if not s.startswith(("sqlite://", "postgresql+psycopg2://", "postgresql+psycopg://")):
            raise InvalidRequest(
                f"database: expected a SQLite path or a postgresql:// URL, got {s!r}"
            )
        return s
    return "sqlite:///" + str(Path(s).expanduser().resolve())


def _create_private(url: str) -> None:
    """Create a new SQLite file readable by its owner only (0600); labels are personal data.

    SQLite gives the -wal and -shm files the database file's permissions.
    """
    if not url.startswith("sqlite:///"):
        return
    path = url.removeprefix("sqlite:///")
    if not path or path == ":memory:" or path.startswith("file:") or os.path.exists(path):
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:  # created concurrently
        pass
    except OSError:  # e.g. a missing directory: let SQLite report it when connecting
        pass


class Database:
    """One engine and the two ways to use it: :meth:`read` and :meth:`write` (a transaction)."""

    def __init__(self, url: str | os.PathLike, *, create: bool = True):
        self.url = normalise_db_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite and create:
            _create_private(self.url)
        self.engine = self._make_engine()
        self._writer = self.engine.execution_options(alignkit_write=True)
        self._write_lock = threading.Lock()
        self.created_tables: set[str] = set()  # tables this call created (for backfills)
        if create:
            before = set(inspect(self.engine).get_table_names())
            metadata.create_all(self.engine)
            self.created_tables = set(metadata.tables) - before

    def _make_engine(self) -> Engine:
        if self.is_sqlite:
            engine = create_engine(
                self.url,
                connect_args={"timeout": 60, "check_same_thread": False},
                pool_size=8,
                max_overflow=56,
                pool_timeout=120,
            )

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn, _record):
                dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=60000")
                cur.close()

            @event.listens_for(engine, "begin")
            def _on_begin(conn):
                # Writers take the write lock up front: no lock upgrades, no deadlocks.
                write = conn.get_execution_options().get("alignkit_write", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

            return engine
        return create_engine(
            self.url, pool_size=8, max_overflow=56, pool_timeout=120, pool_pre_ping=True
        )

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection in a write transaction, committed when the block ends."""
        if self.is_sqlite:
            # One writer at a time in this process: threads queue on a lock instead of
            # SQLite's busy handler, which sleeps up to 100 ms per retry under contention.
            # (Other processes, e.g. the CLI while serving, still wait via busy_timeout.)
            with self._write_lock, self._writer.begin() as conn:
                yield conn
        else:
            with self._writer.begin() as conn:
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    def drop_all(self) -> None:
        """Delete every table (tests only)."""
        metadata.drop_all(self.engine)
