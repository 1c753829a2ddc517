"""Issue 27 items 8 and 10: what an outside security test found in the hardened app, and the
command-line slips. One regression test per finding; each failed on the code before the fix."""

import asyncio
import json
import socket

import httpx
import pytest
from fastapi.testclient import TestClient
from test_api import csrf_of

from alignkit.app import bodies
from alignkit.app.server import create_app
from alignkit.cli import main
from alignkit.errors import DataError
from alignkit.feedback.media import import_video_pairs
from alignkit.feedback.store import FeedbackStore

PAIR = {"prompt": "2+2?", "responses": ["4", "5"]}


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture
def env(tmp_path):
    store = FeedbackStore(tmp_path / "f.db")
    store.ensure_project("p", gold_every=0)
    store.add_items("p", [PAIR])
    admin = store.add_user("boss", role="admin", password=False)
    ann = store.add_user("ann", projects=["p"])
    yield store, admin, ann
    store.close()


# ---------------------------------------------------------------------- logins


def test_simultaneous_guesses_are_counted_before_hashing(env, monkeypatch):
    """120 guesses for one account at once, the right password among them: at most 5 reach
    a password check (before: all 120, and the right one logged in)."""
    store, _, ann = env
    app = create_app(store.url, "p", store=store)
    checked = []
    real = store.check_password

    def check(name, password):
        checked.append(password)
        return real(name, password)

    monkeypatch.setattr(store, "check_password", check)

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            page = await client.get("/login")
            token, cookies = csrf_of(page.text), dict(client.cookies)
        guesses = [f"wrong{i}" for i in range(120)]
        guesses[60] = ann.password

        async def one(pw):  # a client each: one guess's answer must not change another's cookie
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", cookies=cookies) as c:
                r = await c.post("/login", data={"username": "ann", "password": pw, "csrf_token": token})
                return r.status_code

        return await asyncio.gather(*(one(pw) for pw in guesses))

    codes = asyncio.run(burst())
    assert len(checked) <= 5 and ann.password not in checked[5:]
    assert codes.count(303) == 0 or ann.password in checked  # logged in only if it was checked
    assert codes.count(429) >= 115


def rotating_forwarded_logins(url: str, n: int = 32) -> list[int]:
    """Status codes of ``n`` failed logins to the server at ``url``, each claiming another
    client in X-Forwarded-For (10.0.i.1)."""
    with httpx.Client(base_url=url) as client:
        token = csrf_of(client.get("/login").text)
        codes = []
        for i in range(n):
            r = client.post(
                "/login",
                data={"username": f"guess{i}", "password": "x", "csrf_token": token},
                headers={"X-Forwarded-For": f"10.0.{i}.1"},
            )
            codes.append(r.status_code)
            token = csrf_of(r.text)  # every login page starts a new pre-session
    return codes


def test_forwarded_for_is_believed_only_from_a_configured_proxy(env, start_server, tmp_path):
    """Rotating X-Forwarded-For from loopback no longer dodges the per-client limit of the
    real server (uvicorn believed it from 127.0.0.1); behind a --trusted-proxy it counts."""
    store, _, _ = env
    server = start_server(tmp_path / "f.db", "p")
    codes = rotating_forwarded_logins(server.url)
    assert codes[:30] == [401] * 30 and codes[30:] == [429, 429]
    # the same in-process, and with the proxy configured the forwarded address is the client
    app = create_app(store.url, "p", store=store, trusted_proxies=("testclient",))
    with TestClient(app) as client:
        for i in range(35):
            token = csrf_of(client.get("/login").text)
            r = client.post(
                "/login",
                data={"username": f"g{i}", "password": "x", "csrf_token": token},
                headers={"X-Forwarded-For": f"203.0.113.{i}, testclient"},
            )
            assert r.status_code == 401, i


# ---------------------------------------------------------------------- bodies


def test_a_label_takes_what_an_answer_can_hold_not_the_global_limit(env):
    """A 32 MiB JSON array posted to /label (before: read and parsed whole, 117 MB → 2.45 GB)."""
    store, _, ann = env
    app = create_app(store.url, "p", store=store)
    auth = {"Authorization": f"Bearer {ann.token}"}
    with TestClient(app) as client:
        aid = client.get("/api/v1/tasks/next", headers=auth).json()["assignment_id"]
        url = f"/api/v1/assignments/{aid}/label"
        limit = bodies.label_limit(2)
        assert limit < bodies.MAX_API / 8
        big = b"[" + b"1," * (16 * 2**20 - 1) + b"1]"
        r = client.post(url, content=big, headers=auth | {"Content-Type": "application/json"})
        assert r.status_code == 413 and f"{limit // 1024} KiB" in r.json()["detail"]
        small_array = b"[" + b"1," * 1000 + b"1]"
        r = client.post(url, content=small_array, headers=auth | {"Content-Type": "application/json"})
        assert r.status_code == 422
        # the longest real answer still fits: an edit of MAX_TEXT characters per response and a comment
        from alignkit.feedback.answers import MAX_TEXT

        text = "é" * MAX_TEXT
        body = json.dumps({"choice": "A", "comment": text, "edits": [text, text]})  # \u00e9: 6 bytes each
        assert len(body) < limit
        r = client.post(url, content=body, headers=auth | {"Content-Type": "application/json"})
        assert r.status_code == 201, r.text
        # other small routes: a skip, a new user
        admin_auth = {"Authorization": f"Bearer {env[1].token}"}
        r = client.post("/api/v1/users", content=b"{" + b" " * bodies.MAX_SMALL + b"}",
                        headers=admin_auth | {"Content-Type": "application/json"})
        assert r.status_code == 413


def test_chat_routes_take_long_messages_up_to_their_own_limit():
    """A chat message far over the chat's character limit reaches the route (which names the
    limit); a body over MAX_CHAT is refused while it streams in; other routes stay small."""
    assert bodies.route_limit("/chat/api/send", None) == bodies.MAX_CHAT
    assert bodies.route_limit("/chat/api/messages/12/edit", None) == bodies.MAX_CHAT
    assert bodies.route_limit("/arena/api/3/vote", None) == bodies.MAX_CHAT
    assert bodies.route_limit("/chat", None) == bodies.MAX_SMALL
    assert bodies.route_limit("/api/v1/chat/api/send", None) == bodies.MAX_SMALL
    assert 100 * 2**10 * 6 < bodies.MAX_CHAT < bodies.MAX_FORM


# ---------------------------------------------------------------------- the login form's CSRF


def test_login_csrf_cannot_be_planted_by_another_origin(env):
    """A page on another port of the same host could set the login CSRF cookie and log the
    victim into the attacker's account (double-submit with a value of its choice)."""
    store, _, ann = env
    app = create_app(store.url, "p", store=store)
    form = {"username": "ann", "password": ann.password}
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        # a cookie value the server never issued: refused, whatever the form says
        client.cookies.set("ak_login_csrf", "planted")
        r = client.post("/login", data=form | {"csrf_token": "planted"}, follow_redirects=False)
        assert r.status_code == 403
        client.cookies.clear()
        # a real pre-session, but the form posted from another origin (another port)
        token = csrf_of(client.get("/login").text)
        for headers in ({"Origin": "http://127.0.0.1:9999"}, {"Sec-Fetch-Site": "same-site"},
                        {"Sec-Fetch-Site": "cross-site"}):
            r = client.post("/login", data=form | {"csrf_token": token}, headers=headers, follow_redirects=False)
            assert r.status_code == 403, headers
        ok = {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}
        r = client.post("/login", data=form | {"csrf_token": token}, headers=ok, follow_redirects=False)
        assert r.status_code == 303
    with TestClient(app, base_url="https://annotate.example") as client:  # over HTTPS: __Host-
        r = client.get("/login")
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("__Host-ak_login_csrf=") and "Secure" in cookie and "Path=/" in cookie
        assert "Domain" not in cookie
        r = client.post("/login", data=form | {"csrf_token": csrf_of(r.text)}, follow_redirects=False)
        assert r.status_code == 303


# ---------------------------------------------------------------------- clips


def test_clips_stay_inside_the_dataset_folder(tmp_path, capsys):
    from test_video_pair import make_webm

    data = tmp_path / "data"
    data.mkdir()
    outside = make_webm(tmp_path / "secret.webm", 10, n=4)
    (data / "ok.webm").write_bytes(outside.read_bytes())
    (data / "link.webm").symlink_to(outside)
    (data / "sub").symlink_to(tmp_path)
    store = FeedbackStore(tmp_path / "f.db")
    store.ensure_project("ctl")
    for bad, why in ((str(outside), "absolute path"), ("../secret.webm", "leaves the dataset folder"),
                     ("link.webm", "symbolic link"), ("sub/secret.webm", "symbolic link")):
        with pytest.raises(DataError, match=why):
            import_video_pairs(store, "ctl", [{"video_a": "ok.webm", "video_b": bad}], base_dir=data)
        items = data / "pairs.jsonl"
        items.write_text(json.dumps({"type": "video_pair", "video_a": "ok.webm", "video_b": bad}) + "\n")
        code, _, err = run_cli(["annotate", "import", "--db", str(tmp_path / "f.db"), "--project", "ctl",
                                str(items)], capsys)
        assert code == 2 and "pairs.jsonl:1: field 'video_b'" in err and why in err and "Traceback" not in err
    assert store.count_items("ctl")["items"] == 0
    store.close()


# ---------------------------------------------------------------------- the command line (item 8)


def test_cli_refuses_typos_and_taken_ports(tmp_path, capsys):
    db = str(tmp_path / "f.db")
    code, _, err = run_cli(["annotate", "stats", "--db", str(tmp_path / "typo.db"), "--project", "p"], capsys)
    assert code == 2 and "no database at" in err and not (tmp_path / "typo.db").exists()
    code, _, err = run_cli(["annotate", "export", "--db", str(tmp_path / "typo.db"), "--out",
                            str(tmp_path / "x.jsonl")], capsys)
    assert code == 2 and not (tmp_path / "typo.db").exists()
    store = FeedbackStore(db)
    store.ensure_project("demo")
    store.close()
    code, _, err = run_cli(["annotate", "serve", "--db", db, "--project", "dmeo"], capsys)
    assert code == 2 and "no project named 'dmeo'" in err and "(projects: demo)" in err
    assert FeedbackStore(db).project_names() == ["demo"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, out, err = run_cli(["annotate", "serve", "--db", db, "--project", "demo", "--port", str(port)], capsys)
    assert code == 2 and f"127.0.0.1:{port} is already in use" in err
    assert "alignkit annotate: project" not in err  # it did not claim to be serving
    assert err.splitlines()[-1].startswith("error: --port") and "Traceback" not in err
    with socket.socket() as taken:  # --create makes nothing when it cannot serve
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, _, err = run_cli(["annotate", "serve", "--db", db, "--project", "new", "--create", "--port", str(port)],
                               capsys)
    assert code == 2 and FeedbackStore(db).project_names() == ["demo"]
    # the socket the server listens on is a TCP one as asyncio knows it (proto set): its
    # connections get TCP_NODELAY, else each response waits out a 40 ms delayed ACK
    from alignkit.cli.annotate import _listen

    sock = _listen("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP
    sock.close()
