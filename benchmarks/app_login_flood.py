"""Login flood vs. an annotator's API latency: GET /api/v1/me p50/p95/p99 under attack.

Starts ``alignkit annotate serve`` (SQLite, one uvicorn process) and measures the latency
of an annotator's ``GET /api/v1/me``, one request after another, in three phases:

* ``baseline`` — nobody else;
* ``flood_wrong`` — ATTACKERS threads POST /login with wrong passwords as fast as they
  can (each with a fresh CSRF cookie/token, as a browser would), half against one
  account, half against random names: the failed-login limits answer 429 without hashing;
* ``flood_valid`` — ATTACKERS threads log in *successfully* in a loop (not rate limited:
  every one costs a full scrypt), which is what moving the hashing off the event loop is for.

    python benchmarks/app_login_flood.py [--seconds 10] [--attackers 4] [--out FILE]

Writes a JSON report (latency percentiles in ms, login attempts and their status codes per
phase, CPU model, load average at start and end). Timings depend on the machine and on
what else runs on it; report them as measured.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fair import cpu_model  # noqa: E402

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def attacker(url: str, names: str, password: str, stop, codes, ready) -> None:
    """One attacker process: POST /login until ``stop`` is set; status counts into ``codes``.

    ``names`` is one account name, or a prefix ending in ``*`` for a new name each time."""
    mine: Counter = Counter()
    with httpx.Client(base_url=url, timeout=60) as c:
        token = CSRF.search(c.get("/login").text).group(1)
        i = 0
        while not stop.is_set():
            name = f"{names[:-1]}{i}" if names.endswith("*") else names
            r = c.post(
                "/login",
                data={"username": name, "password": password, "csrf_token": token},
                follow_redirects=False,
            )
            mine[r.status_code] += 1
            if i == 0:
                ready.put(1)  # attacking: the victim may start measuring
            i += 1
            if r.status_code == 303:  # logged in: the login form again, for a new token
                r = c.get("/login")
            found = CSRF.search(r.text)
            if found:
                token = found.group(1)
    codes.put(dict(mine))


def victim(url: str, token: str, seconds: float) -> list[float]:
    lat = []
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as c:
        c.get("/api/v1/me")  # connection set up outside the measurement
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.perf_counter()
            r = c.get("/api/v1/me")
            lat.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, r.status_code
            time.sleep(0.005)
    return lat


def phase(url, token, seconds, attackers) -> dict:
    """The victim's latencies while ``attackers`` (separate processes, so they do not share
    the victim's interpreter) flood the login."""
    ctx = multiprocessing.get_context("spawn")
    stop, queue, ready = ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(target=attacker, args=(*a, stop, queue, ready), daemon=True) for a in attackers
    ]
    for p in procs:
        p.start()
    for _ in procs:  # every attacker has had a reply: they are all flooding now
        ready.get(timeout=120)
    time.sleep(1.0 if attackers else 0)
    lat = victim(url, token, seconds)
    stop.set()
    codes: Counter = Counter()
    for _ in procs:
        codes.update(queue.get(timeout=120))
    for p in procs:
        p.join(timeout=60)
    return {
        "requests": len(lat),
        "p50_ms": round(percentile(lat, 0.50), 2),
        "p95_ms": round(percentile(lat, 0.95), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
        "max_ms": round(max(lat), 2),
        "login_attempts": sum(codes.values()),
        "login_status": dict(sorted(codes.items())),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="Measurement per phase.")
    ap.add_argument("--attackers", type=int, default=4, help="Attacker threads.")
    ap.add_argument("--out", default="benchmarks/results/app_login_flood.json")
    args = ap.parse_args()
    from alignkit.feedback.store import FeedbackStore  # here: attacker processes skip it

    tmp = Path(tempfile.mkdtemp(prefix="ak_flood_"))
    db = tmp / "flood.db"
    store = FeedbackStore(db)
    store.ensure_project("flood")
    ann = store.add_user("ann", password=False, projects=["flood"])
    valid = store.add_user("regular", projects=["flood"])
    store.add_user("victim", projects=["flood"])
    store.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "server.log", "wb")
    cmd = [
        sys.executable,
        "-m",
        "alignkit",
        "annotate",
        "serve",
        "--db",
        str(db),
        "--project",
        "flood",
        "--port",
        str(port),
    ]
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    load_start = os.getloadavg()
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        half = max(1, args.attackers // 2)
        wrong = [(url, "victim", "wrong")] * half
        wrong += [(url, f"guess{k}_*", "wrong") for k in range(args.attackers - half)]
        good = [(url, "regular", valid.password)] * args.attackers
        results = {
            "baseline": phase(url, ann.token, args.seconds, []),
            # valid logins first: after the wrong-password flood this client address is
            # over its failed-login limit for a minute and would get only 429s
            "flood_valid": phase(url, ann.token, args.seconds, good),
            "flood_wrong": phase(url, ann.token, args.seconds, wrong),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    report = {
        "what": "GET /api/v1/me latency of one annotator while attacker threads POST /login",
        "attackers": args.attackers,
        "seconds_per_phase": args.seconds,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "phases": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for name, r in results.items():
        print(
            f"{name:12s} p50 {r['p50_ms']:7.2f} ms  p95 {r['p95_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms"
            f"  ({r['requests']} requests; {r['login_attempts']} logins {r['login_status']})"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
