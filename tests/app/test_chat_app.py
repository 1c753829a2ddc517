"""The chat page, the arena and the leaderboard over HTTP (a real uvicorn in a thread: the
answers stream as server-sent events)."""

import json
import re
import time

import httpx
import pytest
from chat_helpers import events, login, scripted_model, serve

from alignkit.app.chat import create_chat_app
from alignkit.app.chat_service import ChatConfig, ChatService
from alignkit.app.generation import ChatModel
from alignkit.data import load_records
from alignkit.feedback.store import FeedbackStore

pytestmark = pytest.mark.usefixtures("one_thread")

XSS = (
    "<script>alert('s')</script> <img src=x onerror=\"alert('i')\"> "
    "[link](javascript:alert('l')) <a href=\"javascript:alert('a')\">a</a> "
    "```\n</code><script>alert('c')</script>\n```"
)


@pytest.fixture(scope="module")
def tiny_models(tiny_lm_dir, tmp_path_factory):
    from alignkit.models import make_tiny_lm_dir
    from alignkit.models.loading import load_causal_lm, load_tokenizer

    other = make_tiny_lm_dir(tmp_path_factory.mktemp("tiny_b"), n_layer=2, n_embd=64, seed=1)
    return [
        ChatModel("tiny-a", load_causal_lm(tiny_lm_dir).eval(), load_tokenizer(tiny_lm_dir)),
        ChatModel("tiny-b", load_causal_lm(other).eval(), load_tokenizer(other)),
    ]


@pytest.fixture
def env(tmp_path):
    store = FeedbackStore(tmp_path / "chat.db")
    store.ensure_project("p", gold_every=0)
    store.ensure_project("other")
    people = {
        "ann": store.add_user("ann", projects=["p"]),
        "boss": store.add_user("boss", role="admin"),
        "eve": store.add_user("eve", projects=["other"]),
    }
    yield store, people
    store.close()


def parse_markup(html):
    """(tag names, attributes) of every element in ``html``."""
    from html.parser import HTMLParser

    tags, attrs = set(), []

    class P(HTMLParser):
        def handle_starttag(self, tag, a):
            tags.add(tag)
            attrs.extend(a)

    P().feed(html)
    return tags, attrs


def app_with(store, models, **cfg):
    config = ChatConfig(**{"max_new_tokens": 12, "temperature": 1.0, "seed": 0, **cfg})
    svc = ChatService(store, models, config)
    return create_chat_app(store.url, "p", svc, store=store), svc


def client_for(url):
    return httpx.Client(base_url=url, timeout=60, follow_redirects=False)


def post(c, csrf, path, body=None):
    return c.post(path, json=body or {}, headers={"X-CSRF-Token": csrf})


def test_accounts_csrf_and_membership_guard_every_route(env, tiny_models):
    store, people = env
    app, svc = app_with(store, tiny_models)
    with serve(app) as url, client_for(url) as c, client_for(url) as other:
        assert c.get("/").headers["location"] == "/chat"
        assert c.get("/chat").headers["location"] == "/login"
        r = c.post("/chat/api/send", json={"text": "hi"})
        assert r.status_code == 401 and r.json()["detail"] == "not logged in"
        assert c.get("/chat/api/stream/1").status_code == 401
        csrf = login(c, "ann", people["ann"].password)
        r = c.post("/chat/api/send", json={"text": "hi"})  # no X-CSRF-Token header
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
        assert c.get("/chat-admin").status_code == 403
        page = c.get("/chat")
        assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
        assert 'id="composer"' in page.text and "tiny-b" in page.text
        r = post(c, csrf, "/chat/api/send", {"text": "hi"})
        assert r.status_code == 200
        mid = r.json()["answers"][0]["id"]
        events(c, mid)
        # eve is not a member of this project: she cannot log in to this server
        token = re.search(r'name="csrf_token" value="([^"]+)"', other.get("/login").text).group(1)
        r = other.post("/login", data={"username": "eve", "password": people["eve"].password, "csrf_token": token})
        assert r.status_code == 403
        # an admin may log in, but another person's answers are not theirs to read or judge
        csrf_boss = login(other, "boss", people["boss"].password)
        assert other.get(f"/chat/api/stream/{mid}").status_code == 404
        assert post(other, csrf_boss, f"/chat/api/messages/{mid}/thumb", {"up": True}).status_code == 404
        assert other.get("/chat-admin").status_code == 200
    svc.worker.close()


def test_a_chat_over_http_streams_and_records_every_signal(env, tiny_models, tmp_path):
    store, people = env
    app, svc = app_with(store, tiny_models)
    with serve(app) as url, client_for(url) as c:
        csrf = login(c, "ann", people["ann"].password)
        # turn 1: the tokens arrive before the stored answer
        d = post(c, csrf, "/chat/api/send", {"text": "Human question one", "model": "tiny-a"}).json()
        cid, a1 = d["conversation_id"], d["answers"][0]
        assert a1["status"] == "generating" and a1["model"] == "tiny-a"
        evs = events(c, a1["id"])
        names = [n for n, _ in evs]
        assert names[-1] == "done" and "token" in names
        done = evs[-1][1]
        assert done["status"] == "done" and done["stats"]["tokens"] == 12
        streamed = "".join(x["text"] for n, x in evs if n == "token")
        assert done["text"].startswith(streamed[:5])
        assert post(c, csrf, f"/chat/api/messages/{a1['id']}/thumb", {"up": True}).json()["duplicate"] is False
        # turn 2, regenerate, "better"
        d = post(c, csrf, "/chat/api/send", {"conversation_id": cid, "parent_id": a1["id"], "text": "turn two"}).json()
        a2 = d["answers"][0]
        events(c, a2["id"])
        r = post(c, csrf, f"/chat/api/messages/{a2['id']}/regenerate", {"model": "tiny-b"}).json()
        a3 = r["answer"]
        assert r["replaces"] == a2["id"] and a3["model"] == "tiny-b"
        events(c, a3["id"])
        page = c.get(f"/chat/{cid}").text  # a reload still asks "better or worse?"
        assert f'<div class="compare card" data-old="{a2["id"]}">' in page
        assert post(c, csrf, f"/chat/api/messages/{a3['id']}/compare", {"old_id": a2["id"], "choice": "better"}).status_code == 200
        r = post(c, csrf, f"/chat/api/messages/{a3['id']}/thumb", {"up": False, "tags": ["untrue"], "comment": "wrong"})
        assert r.status_code == 200
        # two answers, pick one
        d = post(c, csrf, "/chat/api/send",
                 {"conversation_id": cid, "parent_id": a3["id"], "text": "third", "two": True}).json()
        p1, p2 = d["answers"]
        assert {p1["model"], p2["model"]} == {"tiny-a", "tiny-b"}
        for p in (p1, p2):
            events(c, p["id"])
        r = post(c, csrf, "/chat/api/send", {"conversation_id": cid, "parent_id": d["turn"]["id"], "text": "x"})
        assert r.status_code == 409 and "pick one of the two answers" in r.json()["detail"]
        assert post(c, csrf, f"/chat/api/messages/{p2['id']}/pick", {"other_id": p1["id"]}).json()["leaf_id"] == p2["id"]
        # edit the chosen answer: the conversation continues from the correction
        r = post(c, csrf, f"/chat/api/messages/{p2['id']}/edit", {"text": "A **better** answer."}).json()
        assert r["answer"]["origin"] == "edit" and "<strong>better</strong>" in r["answer"]["html"]
        page = c.get(f"/chat/{cid}").text
        assert page.count('class="msg msg-user" id=') == 3 and "edited by you" in page
        assert '<div class="compare card" data-old' not in page  # nothing left to compare
        assert "<strong>better</strong>" in page
        bad = post(c, csrf, f"/chat/api/messages/{p2['id']}/compare", {"old_id": p1["id"], "choice": "meh"})
        assert bad.status_code == 422 and "better, worse or same" in bad.json()["detail"]
        # the admin's exports: TRL conversational rows the data layer reads as they are
        boss = client_for(url)
        login(boss, "boss", people["boss"].password)
        trl = boss.get("/chat-admin/export/trl")
        assert trl.status_code == 200
        rows = [json.loads(x) for x in trl.text.splitlines()]
        assert [r["signal"] for r in rows] == ["compare", "pick", "edit"]
        assert [m["content"] for m in rows[0]["prompt"]] == ["Human question one", done["text"], "turn two"]
        (tmp_path / "chat.jsonl").write_text(trl.text)
        assert len(load_records(tmp_path / "chat.jsonl").records) == 3
        admin = boss.get("/chat-admin").text
        assert "thumb 2" in admin and "compare 1" in admin and "pick 1" in admin
        token = re.search(r'name="csrf_token" value="([^"]+)"', admin).group(1)
        assert boss.post("/chat-admin/review", data={"csrf_token": token}).status_code == 303
        assert store.count_items("p")["items"] == 2  # the compare and the pick, for reviewers
        assert boss.get("/chat-admin/export/nope").status_code == 422
        boss.close()
    svc.worker.close()


def test_stop_and_a_closed_page_keep_what_was_written(env, tiny_models):
    store, people = env
    tok = tiny_models[0].tokenizer
    slow = scripted_model("slow", tok, "one two three four five six seven eight nine ten " * 3, delay=0.05)
    app, svc = app_with(store, [slow], max_new_tokens=200)
    with serve(app) as url, client_for(url) as c:
        csrf = login(c, "ann", people["ann"].password)
        d = post(c, csrf, "/chat/api/send", {"text": "count"}).json()
        mid = d["answers"][0]["id"]

        def stop_once(evs):
            if sum(n == "token" for n, _ in evs) == 3:
                assert post(c, csrf, f"/chat/api/messages/{mid}/stop").json() == {"stopped": True}
            return False

        evs = events(c, mid, stop_after=stop_once)
        done = evs[-1][1]
        assert done["status"] == "stopped" and 3 <= done["stats"]["tokens"] < 60
        assert done["text"] and ("one two three " * 3).startswith(done["text"])
        # closing the page mid-answer cancels it too
        d = post(c, csrf, "/chat/api/send", {"conversation_id": d["conversation_id"], "parent_id": mid,
                                             "text": "again"}).json()
        mid2 = d["answers"][0]["id"]
        evs = events(c, mid2, stop_after=lambda e: sum(n == "token" for n, _ in e) >= 2)
        assert evs[-1][0] == "token"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = svc.chat.conversation(d["conversation_id"], store.check_password("ann", people["ann"].password)).messages[mid2]
            if msg.status != "generating":
                break
            time.sleep(0.1)
        assert msg.status == "stopped" and 2 <= msg.meta["tokens"] < 60
    svc.worker.close()


def test_limits_speak_clearly_and_long_prompts_keep_their_end(env, tiny_models):
    store, people = env
    tok = tiny_models[0].tokenizer
    slow = scripted_model("slow", tok, "word " * 100, delay=0.05)
    app, svc = app_with(store, [slow, tiny_models[0]], max_new_tokens=100, max_active=1)
    with serve(app) as url, client_for(url) as c:
        csrf = login(c, "ann", people["ann"].password)
        big = "x" * 102_400  # a 100 KB prompt
        r = post(c, csrf, "/chat/api/send", {"text": big})
        assert r.status_code == 413
        assert r.json()["detail"] == (
            "the message is 102,400 characters; the limit is 16,000 — shorten it"
        )
        assert svc.chat.list_conversations("p", store.check_password("ann", people["ann"].password)) == []
        # two answers at once is the most one person may have running: a third is refused
        d = post(c, csrf, "/chat/api/send", {"text": "pair", "two": True, "model": "slow"}).json()
        r = post(c, csrf, "/chat/api/send", {"text": "third"})
        assert r.status_code == 429 and "at most 2 at a time" in r.json()["detail"]
        assert int(r.headers["retry-after"]) > 0
        ann = store.check_password("ann", people["ann"].password)
        assert len(svc.chat.list_conversations("p", ann)) == 1  # the refused one left nothing behind
        # one answer decoded at a time (max_active=1): the second one says it is waiting
        first_event = events(c, d["answers"][1]["id"], stop_after=lambda e: True)
        assert first_event == [("queued", {"position": 1})]
        for a in d["answers"]:
            post(c, csrf, f"/chat/api/messages/{a['id']}/stop")
            events(c, a["id"])
    svc.worker.close()
    # with the limit raised, a 100 KB prompt is taken and the model reads its last tokens
    app, svc = app_with(store, [tiny_models[0]], max_message_chars=200_000, max_new_tokens=16)
    with serve(app) as url, client_for(url) as c:
        csrf = login(c, "ann", people["ann"].password)
        t0 = time.monotonic()
        r = post(c, csrf, "/chat/api/send", {"text": "Hello " * 17_067})  # 102,402 characters
        assert r.status_code == 200 and time.monotonic() - t0 < 30
        done = events(c, r.json()["answers"][0]["id"])[-1][1]
        assert done["status"] == "done" and done["stats"]["context_cut"] is True
        assert done["stats"]["prompt_tokens"] > 17_000
        page = c.get(f"/chat/{r.json()['conversation_id']}").text
        assert "the model saw only the end of this conversation" in page
    svc.worker.close()


def test_html_and_script_in_model_output_never_become_markup(env, tiny_models):
    store, people = env
    evil = scripted_model("evil", tiny_models[0].tokenizer, XSS)
    app, svc = app_with(store, [evil], max_new_tokens=400)
    with serve(app) as url, client_for(url) as c:
        csrf = login(c, "ann", people["ann"].password)
        d = post(c, csrf, "/chat/api/send", {"text": "<b>say it</b>"}).json()
        assert d["turn"]["text"] == "<b>say it</b>"
        evs = events(c, d["answers"][0]["id"])
        streamed = "".join(x["text"] for n, x in evs if n == "token")
        done = evs[-1][1]
        assert streamed == XSS == done["text"]  # the stream carries text, as text
        html = done["html"]
        tags, attrs = parse_markup(html)
        assert tags <= {"p", "pre", "code"}, tags  # no script, img, a: markdown text only
        assert not [a for a in attrs if a[0].startswith("on") or "javascript" in (a[1] or "")]
        assert "&lt;script&gt;" in html
        page = c.get(f"/chat/{d['conversation_id']}").text
        assert "<script>alert" not in page and "<b>say it</b>" not in page and "&lt;b&gt;say it" in page
    svc.worker.close()


def test_arena_battle_vote_reveal_and_leaderboard(env, tiny_models):
    store, people = env
    app, svc = app_with(store, tiny_models)
    with serve(app) as url, client_for(url) as c:
        csrf = login(c, "ann", people["ann"].password)
        page = c.get("/arena").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        for choice in ("A", "both_bad", "B"):
            r = c.post("/arena/new", data={"csrf_token": token})
            assert r.status_code == 303
            cid = int(r.headers["location"].rsplit("/", 1)[1])
            battle = c.get(f"/arena/{cid}").text
            assert "tiny-a" not in battle and "tiny-b" not in battle  # anonymous
            d = post(c, csrf, "/chat/api/send", {"conversation_id": cid, "text": "Which is better?"}).json()
            assert [a["side"] for a in d["answers"]] == ["A", "B"] and all(a["model"] is None for a in d["answers"])
            dones = [events(c, a["id"])[-1][1] for a in d["answers"]]
            assert all(x["model"] is None for x in dones)  # still anonymous when done
            r = post(c, csrf, f"/arena/api/{cid}/vote", {"choice": choice}).json()
            assert sorted(r["models"]) == ["tiny-a", "tiny-b"]
            assert "tiny-a" in c.get(f"/arena/{cid}").text  # names after the vote
        board = c.get("/leaderboard").text
        rows = re.findall(r'<tr class="row" data-model="([^"]+)">.*?class="interval">([^<]+)<', board, re.S)
        assert {m for m, _ in rows} == {"tiny-a", "tiny-b"}
        assert all(re.fullmatch(r"\d+ – \d+", iv.strip()) for _, iv in rows)
        js = c.get("/chat/api/leaderboard").json()
        assert js["battles"] == 3 and sum(r["both_bad"] for r in js["rows"]) == 2
    svc.worker.close()
