"""`alignkit chat serve` killed with SIGKILL while answers stream: no acknowledged vote is
lost (SQLite and PostgreSQL); restarted (SQLite), the answers cut off are marked interrupted
and the conversations carry on."""

import os
import threading
import time

import httpx
import pytest
from chat_helpers import ChatServer, login

from alignkit.feedback.conversations import ChatStore
from alignkit.feedback.store import FeedbackStore

PG_URL = os.environ.get("ALIGNKIT_TEST_PG_URL")
N_CLIENTS = 4


def chatter(url, name, password, acked, errors, streaming, stop):
    """Talk, and vote on every answer; ``acked`` gets every vote the server confirmed."""
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            csrf = login(c, name, password)
            head = {"X-CSRF-Token": csrf}
            cid = parent = None
            for turn in range(200):
                if stop.is_set():
                    return
                body = {"conversation_id": cid, "parent_id": parent, "text": f"{name} turn {turn}"}
                d = c.post("/chat/api/send", json=body, headers=head).json()
                cid, answer = d["conversation_id"], d["answers"][0]["id"]
                streaming[name] = answer
                with c.stream("GET", f"/chat/api/stream/{answer}") as r:
                    for line in r.iter_lines():
                        if line.startswith("event: done"):
                            break
                streaming.pop(name, None)
                up = turn % 2 == 0
                r = c.post(f"/chat/api/messages/{answer}/thumb", json={"up": up, "comment": f"c{turn}"}, headers=head)
                r.raise_for_status()
                acked.append((name, r.json()["signal_id"], answer, up))
                parent = answer
    except (httpx.HTTPError, KeyError, ValueError) as e:
        errors.append(repr(e))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sigkill_mid_stream_loses_no_acknowledged_vote(tmp_path, tiny_lm_dir, backend):
    db = tmp_path / "kill.db"
    if backend == "postgres":
        if not PG_URL:
            pytest.skip("ALIGNKIT_TEST_PG_URL is not set")
        fresh = FeedbackStore(PG_URL, create=False)
        fresh.drop_all()
        fresh.close()
        db = PG_URL
    store = FeedbackStore(db)
    store.ensure_project("kill", gold_every=0)
    users = {f"u{i}": store.add_user(f"u{i}", projects=["kill"]).password for i in range(N_CLIENTS)}
    model = [f"{tiny_lm_dir}:tiny"]
    server = ChatServer(db, "kill", model, tmp_path / "server.log", ["--max-new-tokens", "16"])
    acked, errors, streaming, stop = [], [], {}, threading.Event()
    threads = [threading.Thread(target=chatter, args=(server.url, n, p, acked, errors, streaming, stop), daemon=True)
               for n, p in users.items()]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 150
        while (len(acked) < 8 or not streaming) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(acked) >= 8 and streaming, f"only {len(acked)} votes; errors: {errors[:3]}"
        cut = dict(streaming)
        server.kill()  # SIGKILL while answers are being written
        stop.set()
        for t in threads:
            t.join(timeout=60)
    finally:
        server.stop()
    assert errors, "the clients should have seen the server die"

    chat = ChatStore(store)
    stored = {s["id"]: s for s in chat.raw_signals("kill")}
    lost = [(sid, mid) for _, sid, mid, up in acked
            if sid not in stored or stored[sid]["message_id"] != mid
            or stored[sid]["answer"]["thumb"] != ("up" if up else "down")]
    assert lost == [], f"{len(lost)} acknowledged votes lost"
    assert len(acked) <= len(stored) <= len(acked) + N_CLIENTS  # at most one unacknowledged each

    if backend == "postgres":  # the restart is the same code on both (a server start costs ~10 s)
        store.close()
        return
    # restarted on the same database: the answers cut off are marked, the chats go on
    server = ChatServer(db, "kill", model, tmp_path / "server2.log", ["--max-new-tokens", "8"])
    try:
        name = next(n for n in cut if any(a[0] == n for a in acked))
        answer = cut[name]
        with httpx.Client(base_url=server.url, timeout=60) as c:
            csrf = login(c, name, users[name])
            conv = chat.conversation_of(answer, store.check_password(name, users[name]))
            assert conv.messages[answer].status == "interrupted"
            d = c.post("/chat/api/send", json={"conversation_id": conv.id, "parent_id": answer, "text": "still there?"},
                       headers={"X-CSRF-Token": csrf})
            assert d.status_code == 200, d.text
            with c.stream("GET", f"/chat/api/stream/{d.json()['answers'][0]['id']}") as r:
                assert any(line.startswith("event: done") for line in r.iter_lines())
            # a vote sent again after the crash (a retry) is the same vote, not a second row
            _, sid, mid, up = next(a for a in acked if a[0] == name)  # turn 0: up, "c0"
            again = c.post(f"/chat/api/messages/{mid}/thumb", json={"up": up, "comment": "c0"},
                           headers={"X-CSRF-Token": csrf})
            assert again.status_code == 200 and again.json() == {"signal_id": sid, "duplicate": True}
    finally:
        server.stop()
    store.close()


@pytest.mark.timeout(240)
def test_chat_serve_believes_forwarded_for_only_from_a_trusted_proxy(tmp_path, tiny_lm_dir):
    """`chat serve` counts login failures per client like `annotate serve`: rotating
    X-Forwarded-For from loopback does not make each guess a new client (uvicorn's default
    would believe it from 127.0.0.1); with `--trusted-proxy 127.0.0.1` each forwarded
    address is its own client."""
    from test_hardening27 import rotating_forwarded_logins

    db = tmp_path / "fwd.db"
    FeedbackStore(db).ensure_project("p", gold_every=0)
    for extra, expected in (([], [401] * 30 + [429, 429]), (["--trusted-proxy", "127.0.0.1"], [401] * 32)):
        server = ChatServer(db, "p", [f"{tiny_lm_dir}:tiny"], tmp_path / f"server{len(extra)}.log", extra)
        try:
            assert rotating_forwarded_logins(server.url) == expected, extra
        finally:
            server.stop()
