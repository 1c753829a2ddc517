"""The web app through FastAPI's TestClient: JSON API for every task type, HTML forms, security."""

import re

import pytest
from fastapi.testclient import TestClient

from alignkit.app.server import create_app
from alignkit.feedback.store import FeedbackStore

ITEMS = [
    {"type": "pairwise", "prompt": "p1", "responses": ["a1", "b1"]},
    {"type": "ranking", "prompt": "p2", "responses": ["r0", "r1", "r2"]},
    {"type": "rating", "prompt": "p3", "responses": ["s0", "s1"]},
]


@pytest.fixture
def env(tmp_path):
    store = FeedbackStore(tmp_path / "f.db")
    store.ensure_project("proj", gold_every=0)
    admin = store.add_user("boss", role="admin", password=False)
    ann = store.add_user("ann", group="fr", projects=["proj"])  # password + token
    app = create_app(store.url, "proj", store=store)
    with TestClient(app, base_url="http://testserver") as client:
        yield store, client, admin, ann
    store.close()


def bearer(user):
    return {"Authorization": f"Bearer {user.token}"}


def csrf_of(html):
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, name, password):
    token = csrf_of(client.get("/login").text)
    return client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": token},
        follow_redirects=False,
    )


def test_every_task_type_through_the_api(env):
    store, client, admin, ann = env
    r = client.post("/api/v1/items", json={"items": ITEMS}, headers=bearer(admin))
    assert r.status_code == 201 and r.json()["added"] == 3
    answers = {
        "pairwise": {"choice": "A", "strength": "slightly", "tags": [["untrue"], []]},
        "ranking": {"ranks": [2, 1, 1], "comment": "two good ones"},
        "rating": {"ratings": [7, 1], "edits": [None, "a better text"]},
    }
    seen = []
    while (r := client.get("/api/v1/tasks/next", headers=bearer(ann))).status_code == 200:
        task = r.json()
        assert set(task) >= {
            "assignment_id",
            "item_id",
            "type",
            "prompt",
            "responses",
            "display_order",
        }
        seen.append(task["type"])
        url = f"/api/v1/assignments/{task['assignment_id']}/label"
        r = client.post(url, json=answers[task["type"]], headers=bearer(ann))
        assert r.status_code == 201, r.text
        again = client.post(url, json=answers[task["type"]], headers=bearer(ann))
        assert again.status_code == 200 and again.json() == {
            "vote_id": r.json()["vote_id"],
            "duplicate": True,
        }
        if task["type"] == "pairwise":
            assert client.post(url, json={"choice": "B"}, headers=bearer(ann)).status_code == 409
    assert r.status_code == 204 and sorted(seen) == ["pairwise", "ranking", "rating"]
    assert store.count_votes("proj") == 3
    assert client.get("/api/v1/progress", headers=bearer(ann)).json()["done"] == 3

    def export(fmt):
        r = client.get("/api/v1/export", params={"format": fmt}, headers=bearer(admin))
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        return [line for line in r.text.splitlines() if line]

    assert len(export("trl")) == 1
    assert len(export("comparisons")) == 1
    assert len(export("rankings")) == 1
    assert len(export("ratings")) == 2
    assert len(export("corrections")) == 1
    assert len(export("raw")) == 3
    assert (
        client.get("/api/v1/export", params={"format": "xml"}, headers=bearer(admin)).status_code
        == 404
    )
    stats = client.get("/api/v1/stats", headers=bearer(admin)).json()
    assert stats["votes"] == 3 and stats["agreement"]["pairwise"]["krippendorff_alpha"] is None


def test_invalid_answers_and_skip(env):
    store, client, admin, ann = env
    store.add_items("proj", ITEMS[:1])
    task = client.get("/api/v1/tasks/next", headers=bearer(ann)).json()
    url = f"/api/v1/assignments/{task['assignment_id']}"
    assert client.post(url + "/label", json={"choice": "Z"}, headers=bearer(ann)).status_code == 422
    assert client.post(url + "/label", content=b"{not json", headers=bearer(ann)).status_code == 400
    assert client.post(url + "/skip", headers=bearer(ann)).status_code == 200
    assert client.get("/api/v1/tasks/next", headers=bearer(ann)).status_code == 204
    assert (
        client.post(
            "/api/v1/assignments/999/label", json={"choice": "A"}, headers=bearer(ann)
        ).status_code
        == 404
    )
    assert store.count_votes("proj") == 0


def test_requests_without_valid_credentials_write_nothing(env):
    store, client, admin, ann = env
    store.add_items("proj", ITEMS)
    task = client.get("/api/v1/tasks/next", headers=bearer(ann)).json()
    url = f"/api/v1/assignments/{task['assignment_id']}/label"
    for headers in (
        {},
        {"Authorization": "Bearer akt_forged"},
        {"Authorization": f"Basic {ann.token}"},
    ):
        r = client.post(url, json={"choice": "A"}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert client.get("/api/v1/tasks/next", headers=headers).status_code == 401
    # an annotator is not an admin
    for method, path, body in [
        ("POST", "/api/v1/items", {"items": ITEMS}),
        ("POST", "/api/v1/users", {"name": "mallory"}),
        ("GET", "/api/v1/export?format=raw", None),
        ("GET", "/api/v1/stats", None),
    ]:
        assert client.request(method, path, json=body, headers=bearer(ann)).status_code == 403
    # HTML forms without a session, or with a forged CSRF token
    assert (
        client.post(f"/annotate/{task['assignment_id']}", data={"choice": "A"}).status_code == 401
    )
    assert client.get("/annotate", follow_redirects=False).headers["location"] == "/login"
    assert login(client, "ann", ann.password).status_code == 303
    page = client.get("/annotate").text
    aid = re.search(r'action="/annotate/(\d+)"', page).group(1)
    for forged in ({"csrf_token": "akc_forged"}, {}):
        r = client.post(f"/annotate/{aid}", data={"choice": "A", **forged})
        assert r.status_code == 403
        assert client.post(f"/annotate/{aid}/skip", data=forged).status_code == 403
    assert client.get("/admin").status_code == 403
    assert store.count_votes("proj") == 0
    assert store.count_items("proj")["items"] == 3
    assert [u.name for u in store.list_users()] == ["boss", "ann"]


def test_login_needs_csrf_and_right_password(env):
    store, client, admin, ann = env
    fresh = TestClient(client.app, base_url="http://testserver")
    r = fresh.post("/login", data={"username": "ann", "password": ann.password, "csrf_token": "x"})
    assert r.status_code == 403  # no login cookie: forged login form
    assert login(client, "ann", "wrong").status_code == 401
    assert login(client, "boss", "").status_code == 401  # token-only account has no password
    r = login(client, "ann", ann.password)
    cookie = r.headers["set-cookie"]
    assert "ak_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert r.headers["location"] == "/annotate"
    # logging out ends the session server-side
    csrf = csrf_of(client.get("/annotate").text)
    sid = client.cookies.get("ak_session")
    assert (
        client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    )
    assert store.session(sid) is None


def test_html_forms_for_every_task_type(env):
    store, client, admin, ann = env
    store.ensure_project("proj", guidelines="Prefer <b>honest</b> answers", tags=["verbose"])
    store.add_items("proj", ITEMS)
    login(client, "ann", ann.password)
    done = 0
    while True:
        page = client.get("/annotate").text
        if 'id="all-done"' in page:
            break
        assert "Prefer &lt;b&gt;honest&lt;/b&gt; answers" in page
        assert 'value="verbose"' in page
        csrf = csrf_of(page)
        aid = int(re.search(r'action="/annotate/(\d+)"', page).group(1))
        kind = re.search(r'data-type="(\w+)"', page).group(1)
        task = store.task(aid, store.user_by_token(ann.token))
        data = {"csrf_token": csrf, "comment": "via form", "tags_0": ["harmful", "verbose"]}
        data |= {f"edit_{i}": text for i, text in enumerate(task.responses)}  # untouched edit boxes
        if kind == "pairwise":
            data |= {"choice": "B", "strength": "much"}
        elif kind == "ranking":
            data |= {"rank_0": "3", "rank_1": "1", "rank_2": "2"}
            data["edit_1"] = "edited\r\nline two"
        else:
            data |= {"rating_0": "5", "rating_1": "bad"}
            r = client.post(f"/annotate/{aid}", data=data)
            assert r.status_code == 422 and "ratings" in r.text  # re-shown with the error
            data["rating_1"] = "4"
        r = client.post(f"/annotate/{aid}", data=data, follow_redirects=False)
        assert r.status_code == 303, r.text
        done += 1
    assert done == 3
    raw = {v["type"]: v for v in store.raw_votes("proj")}
    pw = raw["pairwise"]
    assert pw["answer"]["choice"] == ("a" if pw["display_order"][1] == 0 else "b")
    assert pw["answer"]["strength"] == "much" and pw["answer"]["comment"] == "via form"
    assert pw["answer"]["tags"][pw["display_order"][0]] == ["harmful", "verbose"]
    rk = raw["ranking"]
    assert rk["answer"]["order"] == [rk["display_order"][i] for i in (1, 2, 0)]
    assert rk["answer"]["edits"][rk["display_order"][1]] == "edited\nline two"
    assert sum(e is not None for e in rk["answer"]["edits"]) == 1  # unchanged texts are not edits
    rt = raw["rating"]
    assert rt["answer"]["scores"][rt["display_order"][0]] == 5


def test_security_headers_and_no_cors(env):
    store, client, admin, ann = env
    for path in ("/login", "/static/annotate.js", "/api/v1/me"):
        r = client.get(path, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        csp = r.headers["content-security-policy"]
        assert (
            "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        )
        assert r.headers["x-content-type-options"] == "nosniff"
    pre = client.options(
        "/api/v1/tasks/next",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in pre.headers
    assert "<script>" not in client.get("/login").text  # only <script src=...>


def test_admin_page_and_user_creation(env):
    store, client, admin, ann = env
    r = client.post("/api/v1/users", json={"name": "bot1", "group": "sim"}, headers=bearer(admin))
    assert (
        r.status_code == 201
        and r.json()["token"].startswith("akt_")
        and r.json()["password"] is None
    )
    bot_token = r.json()["token"]
    store.add_items("proj", ITEMS[:1])
    task = client.get("/api/v1/tasks/next", headers={"Authorization": f"Bearer {bot_token}"}).json()
    client.post(
        f"/api/v1/assignments/{task['assignment_id']}/label",
        json={"choice": "tie"},
        headers={"Authorization": f"Bearer {bot_token}"},
    )
    boss = store.add_user("chief", role="admin")
    r = login(client, "chief", boss.password)
    assert r.headers["location"] == "/admin"
    page = client.get("/admin").text
    assert "bot1" in page and "Krippendorff" in page and "sim" in page
    r = client.get("/admin/export/trl")
    assert r.status_code == 200 and '"mu": 0.5' in r.text
