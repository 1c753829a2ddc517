"""Fixtures for the feedback store and the annotation app (SQLite file, or PostgreSQL)."""

import os
import shutil

import pytest
from app_server import Server

PG_URL = os.environ.get("ALIGNKIT_TEST_PG_URL")
CHROMIUM = "/usr/bin/chromium"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "browser" in item.keywords and not shutil.which(CHROMIUM):
            item.add_marker(pytest.mark.skip(reason=f"{CHROMIUM} not installed"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """A fresh empty database: a SQLite file, and (when ALIGNKIT_TEST_PG_URL is set) PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'feedback.db'}"
        return
    if not PG_URL:
        pytest.skip("ALIGNKIT_TEST_PG_URL is not set")
    from alignkit.feedback.store import FeedbackStore

    s = FeedbackStore(PG_URL, create=False)
    s.drop_all()
    s.close()
    yield PG_URL


@pytest.fixture
def store(db_url):
    from alignkit.feedback.store import FeedbackStore

    s = FeedbackStore(db_url, shuffle=False)
    yield s
    s.close()


@pytest.fixture
def start_server(tmp_path):
    """Factory: ``start_server(db, project, port=None)`` → a running ``annotate serve``
    :class:`~app_server.Server` (on ``port``, e.g. to restart one, or a free port); all
    stopped at teardown."""
    started = []

    def start(db, project, port=None):
        server = Server(db, project, tmp_path / f"server{len(started)}.log", port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
