"""``alignkit annotate serve`` (or another ``serve`` command) in a subprocess, for the app tests
and the benchmarks that put tests/app on ``sys.path``.

A plain module rather than conftest.py: every conftest.py here is imported as the module
``conftest`` (tests/ holds no packages), so ``from conftest import …`` gets whichever one
pytest loaded last.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``alignkit COMMAND --db DB --project PROJECT --port PORT EXTRA…`` in a subprocess,
    waited for until ``/healthz`` answers 200 (at most ``start_timeout`` s); ``.stop()``
    terminates it (SIGKILL after ``stop_timeout`` s), ``.kill()`` sends SIGKILL."""

    def __init__(self, db, project, log_path, port=None, *, command=("annotate", "serve"), extra=(),
                 start_timeout=60, stop_timeout=15):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.stop_timeout = stop_timeout
        self.log = open(log_path, "ab")
        cmd = [sys.executable, "-c", "from alignkit.cli import main; main()", *command,
               "--db", str(db), "--project", project, "--port", str(self.port), *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {log_path}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not start within {start_timeout} s; see {log_path}")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self):
        if self.log.closed:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
