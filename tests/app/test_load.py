"""A real uvicorn server under load, and killed with SIGKILL mid-load.

The server runs as `alignkit annotate serve` in a subprocess on 127.0.0.1 (free port);
annotator clients are threads using :class:`AnnotationClient` (httpx). Every loop is
bounded and every request has a timeout.
"""

import os
import threading
import time
from collections import Counter

import httpx
import pytest

from alignkit.errors import AlignkitError
from alignkit.feedback.client import AnnotationClient
from alignkit.feedback.store import FeedbackStore

PG_URL = os.environ.get("ALIGNKIT_TEST_PG_URL")
N_CLIENTS, N_ITEMS, OVERLAP = 50, 1000, 2  # → exactly 2,000 labels


def setup_store(db, project, n_items, n_users, overlap):
    store = FeedbackStore(db)
    store.ensure_project(project, overlap=overlap, gold_every=0)
    store.add_items(
        project, [{"prompt": f"q{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(n_items)]
    )
    tokens = [
        store.add_user(
            f"u{i:02d}", group="g" + str(i % 3), password=False, projects=[project]
        ).token
        for i in range(n_users)
    ]
    admin = store.add_user("admin", role="admin", password=False).token
    return store, tokens, admin


def annotate_until_done(url, token, acked, errors, stop, max_labels=200):
    """One annotator: take tasks and label them until none is left (or the server dies)."""
    try:
        with AnnotationClient(url, token, timeout=60) as client:
            for _ in range(max_labels):
                if stop.is_set():
                    return
                task = client.next_task()
                if task is None:
                    return
                choice = "AB"[task["assignment_id"] % 2]
                result = client.submit(task["assignment_id"], choice=choice)
                acked.append((task["assignment_id"], result["vote_id"]))
    except (httpx.HTTPError, AlignkitError) as e:  # ServerUnreachable, ApiError
        errors.append(repr(e))


def run_clients(url, tokens, stop=None):
    acked, errors, stop = [], [], stop or threading.Event()
    threads = [
        threading.Thread(
            target=annotate_until_done, args=(url, t, acked, errors, stop), daemon=True
        )
        for t in tokens
    ]
    for t in threads:
        t.start()
    return threads, acked, errors


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow])]
)
def test_50_clients_2000_labels_none_lost_or_duplicated(tmp_path, start_server, backend):
    db = tmp_path / "load.db"
    if backend == "postgres":  # opt-in (--runslow): the store tests already cover PostgreSQL
        if not PG_URL:
            pytest.skip("ALIGNKIT_TEST_PG_URL is not set")
        fresh = FeedbackStore(PG_URL, create=False)
        fresh.drop_all()
        fresh.close()
        db = PG_URL
    store, tokens, _ = setup_store(db, "load", N_ITEMS, N_CLIENTS, OVERLAP)
    server = start_server(db, "load")
    try:
        threads, acked, errors = run_clients(server.url, tokens)
        for t in threads:
            t.join(timeout=200)
        assert not any(t.is_alive() for t in threads), "clients still running after 200 s"
    finally:
        server.stop()
    assert errors == []
    assert len(acked) == N_ITEMS * OVERLAP == 2000
    raw = store.raw_votes("load")
    assert len(raw) == 2000
    assert len({v["assignment_id"] for v in raw}) == 2000
    assert {vid for _, vid in acked} == {v["id"] for v in raw}
    per_item = Counter(v["item_id"] for v in raw)
    assert set(per_item.values()) == {OVERLAP} and len(per_item) == N_ITEMS
    pairs = {(v["item_id"], v["annotator"]) for v in raw}
    assert len(pairs) == 2000  # never the same annotator twice on an item
    store.close()


@pytest.mark.timeout(240)
def test_sigkill_mid_load_keeps_every_acknowledged_label(tmp_path, start_server):
    db = tmp_path / "kill.db"
    n_clients = 20
    store, tokens, admin = setup_store(db, "kill", 2000, n_clients, 1)
    server = start_server(db, "kill")
    stop = threading.Event()
    try:
        threads, acked, errors = run_clients(server.url, tokens, stop)
        deadline = time.monotonic() + 120
        while len(acked) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(acked) >= 300, f"only {len(acked)} labels in 120 s; errors: {errors[:3]}"
        server.kill()  # SIGKILL while the clients are still sending
        stop.set()
        for t in threads:
            t.join(timeout=60)
    finally:
        server.stop()
    assert errors, "the clients should have seen the server die"
    got = {v["assignment_id"]: v["id"] for v in store.raw_votes("kill")}
    missing = [(a, v) for a, v in acked if got.get(a) != v]
    assert missing == [], f"{len(missing)} acknowledged labels lost"
    assert len(got) <= len(acked) + n_clients  # at most one unacknowledged commit per client

    # Restarted on the same file, the server carries on where it stopped.
    server = start_server(db, "kill")
    try:
        with AnnotationClient(server.url, tokens[0]) as client:
            task = client.next_task()
            client.submit(task["assignment_id"], choice="tie")
            assert client.submit(task["assignment_id"], choice="tie")["duplicate"] is True
        with AnnotationClient(server.url, admin) as boss:
            rows = boss.export("raw")
            assert len(rows) == len(got) + 1
            ids = boss.submit_pairs([("new q", "x", "y"), ("q0", "a0", "b0")], project="kill")
            assert ids[1] == 1 and ids[0] > 2000  # q0 already existed: its id comes back
            labels = boss.fetch_labels([ids[0], task["item_id"]], project="kill")
            assert list(labels) == [task["item_id"]] and labels[task["item_id"]].mu == 0.5
            with pytest.raises(AlignkitError, match="serves project 'kill'"):
                boss.fetch_labels(ids, project="other")
            assert boss.stats()["votes"] == len(got) + 1
    finally:
        server.stop()
    store.close()
