"""Labelling latency of `alignkit annotate serve`, source trees side by side (PostgreSQL or SQLite).

One annotator client labels ``--labels`` pairs, one request after another (``GET
/api/v1/tasks/next`` then ``POST …/label``), against a server run from each source tree
in turn; the order of the trees rotates every repeat (paired, interleaved), each run on a
fresh database. Per tree: p50/p95 of the label request and of next+label, and the SQL
statements and connection checkouts one label costs (counted in-process with SQLAlchemy
events, so they do not depend on the machine's load) and, on PostgreSQL, the round trips
they make: every checkout adds three (the pool's pre-ping ``SELECT 1``, ``BEGIN``,
``COMMIT``/``ROLLBACK`` — seen in the server's log with ``log_statement = all``). Ratios are per repeat, against the
first tree.

    python benchmarks/app_label_latency.py --db pg --tree 1201=/tmp/src_05fcb4f/src \\
        --tree main=/tmp/src_main/src --tree i27=src [--repeats 3] [--labels 200]

Each tree is a ``src`` directory (e.g. ``git archive COMMIT src | tar -x -C DIR``). The
PostgreSQL URL comes from ``ALIGNKIT_TEST_PG_URL`` (the database is emptied). Writes a JSON
report with the CPU model and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fair import cpu_model  # noqa: E402

SETUP = r"""
import inspect, json, sys
from alignkit.feedback.store import FeedbackStore
url, n = sys.argv[1], int(sys.argv[2])
s = FeedbackStore(url)
if sys.argv[3] == "fresh":
    s.drop_all()
    s = FeedbackStore(url)
s.ensure_project("bench", gold_every=0)
s.add_items("bench", [{"prompt": f"q{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(n)])
add = getattr(s, "accounts", s).add_user
kw = {"projects": ["bench"]} if "projects" in inspect.signature(add).parameters else {}
print(json.dumps({"token": s.add_user("bench_user", password=False, **kw).token}))
"""

COUNT = r"""
import inspect, json, sys
from sqlalchemy import event
from fastapi.testclient import TestClient
from alignkit.feedback.store import FeedbackStore
from alignkit.app.server import create_app
url = sys.argv[1]
s = FeedbackStore(url); s.drop_all(); s = FeedbackStore(url)
s.ensure_project("p", gold_every=0)
s.add_items("p", [{"prompt": f"q{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(5)])
add = getattr(s, "accounts", s).add_user
kw = {"projects": ["p"]} if "projects" in inspect.signature(add).parameters else {}
u = s.add_user("u", password=False, **kw)
counts = {"statements": 0, "checkouts": 0}
event.listen(s.engine, "before_cursor_execute", lambda *a: counts.__setitem__("statements", counts["statements"] + 1))
event.listen(s.engine.pool, "checkout", lambda *a: counts.__setitem__("checkouts", counts["checkouts"] + 1))
h = {"Authorization": f"Bearer {u.token}"}
out = {}
with TestClient(create_app(s.url, "p", store=s)) as c:
    for _ in range(2):  # the second pass: warm caches
        counts.update(statements=0, checkouts=0)
        t = c.get("/api/v1/tasks/next", headers=h).json()
        out["next"] = dict(counts)
        counts.update(statements=0, checkouts=0)
        c.post(f"/api/v1/assignments/{t['assignment_id']}/label", json={"choice": "A"}, headers=h)
        out["label"] = dict(counts)
s.drop_all()
print(json.dumps(out))
"""


def wipe(url: str) -> None:
    """Empty a PostgreSQL database whatever tables the trees made (an older tree's
    ``drop_all`` does not know a newer tree's tables, which reference its own)."""
    if not url.startswith("postgresql"):
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def env_for(tree: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(Path(tree).resolve()), ALIGNKIT_NO_PROGRESS="1")


def run_tree(tree: str, url: str, n_labels: int, workdir: Path) -> dict[str, float]:
    """Labelling latencies (ms) of one server run from ``tree`` on a fresh database."""
    wipe(url)
    setup = subprocess.run([sys.executable, "-c", SETUP, url, str(n_labels), "fresh"], env=env_for(tree),
                           capture_output=True, text=True, check=True)
    token = json.loads(setup.stdout.strip().splitlines()[-1])["token"]
    port = free_port()
    log = open(workdir / f"server-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", "from alignkit.cli import main; main()", "annotate", "serve",
                             "--db", url, "--project", "bench", "--port", str(port)],
                            env=env_for(tree), stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"server from {tree} did not start; see {log.name}")
            time.sleep(0.2)
        label_ms, cycle_ms = [], []
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
            for _ in range(10):  # warm-up: connections, caches
                c.get("/api/v1/me")
            for _ in range(n_labels):
                t0 = time.perf_counter()
                task = c.get("/api/v1/tasks/next").json()
                t1 = time.perf_counter()
                r = c.post(f"/api/v1/assignments/{task['assignment_id']}/label", json={"choice": "A"})
                t2 = time.perf_counter()
                assert r.status_code == 201, r.text
                label_ms.append((t2 - t1) * 1000)
                cycle_ms.append((t2 - t0) * 1000)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    return {"label_p50_ms": pct(label_ms, 0.5), "label_p95_ms": pct(label_ms, 0.95),
            "cycle_p50_ms": pct(cycle_ms, 0.5), "cycle_p95_ms": pct(cycle_ms, 0.95)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["pg", "sqlite"], default="pg")
    ap.add_argument("--tree", action="append", required=True, help="NAME=SRC_DIR (repeat; the first is the base)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--labels", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/app_label_latency.json")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    work = Path(tempfile.mkdtemp(prefix="label_latency_"))
    if args.db == "pg":
        url = os.environ.get("ALIGNKIT_TEST_PG_URL")
        if not url:
            sys.exit("set ALIGNKIT_TEST_PG_URL (the database is emptied)")
    load_start = os.getloadavg()
    counts = {}
    for name, tree in trees.items():
        count_url = url if args.db == "pg" else f"sqlite:///{work / f'count-{name}.db'}"
        wipe(count_url)
        res = subprocess.run([sys.executable, "-c", COUNT, count_url], env=env_for(tree), capture_output=True,
                             text=True, check=True)
        counts[name] = json.loads(res.stdout.strip().splitlines()[-1])
        if args.db == "pg":  # each checkout: the pool's ping (SELECT 1), BEGIN and COMMIT/ROLLBACK
            for c in counts[name].values():
                c["round_trips"] = c["statements"] + 3 * c["checkouts"]
        print(name, "per request:", counts[name], flush=True)
    names = list(trees)
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            db_url = url if args.db == "pg" else f"sqlite:///{work / f'{name}-{rep}.db'}"
            r = run_tree(trees[name], db_url, args.labels, work)
            runs[name].append(r)
            print(f"repeat {rep} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    base = names[0]
    ratios = {n: [runs[n][i]["label_p50_ms"] / runs[base][i]["label_p50_ms"] for i in range(args.repeats)]
              for n in names}
    report = {
        "benchmark": "app_label_latency", "db": args.db, "labels_per_run": args.labels, "repeats": args.repeats,
        "trees": trees, "cpu": cpu_model(), "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
        "per_request": counts, "runs": runs, "label_p50_ratio_vs_" + base: ratios,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    for n in names:
        print(n, "label p50 ratio vs", base, [f"{x:.2f}" for x in ratios[n]])
    print("wrote", args.out)


if __name__ == "__main__":
    main()
