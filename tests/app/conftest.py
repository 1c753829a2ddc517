"""Fixtures for the feedback store and the annotation app (SQLite file, or PostgreSQL)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`alignkit annotate serve` in a subprocess; .kill() sends SIGKILL."""

    def __init__(self, db, project, log_path, port=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "ab")
        cmd = [
            sys.executable,
            "-c",
            "from alignkit.cli import main; main()",
            "annotate",
            "serve",
            "--db",
            str(db),
            "--project",
            project,
            "--port",
            str(self.port),
        ]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {log_path}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not start within 60 s; see {log_path}")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self):
        if self.log.closed:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def start_server(tmp_path):
    """Factory: ``start_server(db, project, port=None)`` → a running :class:`Server` (on
    ``port``, e.g. to restart one, or a free port); all stopped at teardown."""
    started = []

    def start(db, project, port=None):
        server = Server(db, project, tmp_path / f"server{len(started)}.log", port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
