"""Issue 27 in Chromium: the annotation page as people use it (items 4 and 9) and the two
findings of item 10 that only a browser shows (a very long response, a login CSRF cookie
planted by a page on another port)."""

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from test_api import csrf_of
from test_browser import ARTIFACTS, browser, log_in, next_page, open_page  # noqa: F401 (fixture)

from alignkit.feedback.store import FeedbackStore

pytestmark = pytest.mark.browser

CODE_ANSWER = "Use a loop:\n\n```python\nfor i in range(3):\n    print(i)\n```\n\nThat is **all**."


@pytest.mark.timeout(180)
def test_markdown_keys_strength_history_undo_new_items_and_404(browser, tmp_path, start_server):  # noqa: F811
    db = tmp_path / "web.db"
    store = FeedbackStore(db)
    store.ensure_project("web", gold_every=0)
    store.add_items("web", [{"prompt": "Print 0..2 in Python.", "responses": [CODE_ANSWER, "print(0, 1, 2)"]},
                            {"type": "ranking", "prompt": "Rank", "responses": ["x", "y", "z"]}])
    ann = store.add_user("ann", projects=["web"])
    server = start_server(db, "web")
    dialogs, console = [], []
    context, page = open_page(browser, server.url, dialogs, console)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        log_in(page, server.url, "ann", ann.password)
        # 1. model output as markdown: a code block in a monospace font, no ``` left
        code = "A" if "Use a loop" in page.inner_text("#response-A") else "B"
        block = page.locator(f"#response-{code} pre code")
        assert block.count() == 1 and "for i in range(3):" in block.inner_text()
        assert "mono" in block.evaluate("e => getComputedStyle(e).fontFamily").lower()
        assert "```" not in page.inner_text(f"#response-{code}")
        assert page.locator(f"#response-{code} strong").inner_text() == "all"
        # 2. the keys panel speaks of this task's buttons, in the buttons' words
        keys = page.inner_text("#keys")
        assert "Can't compare" in keys and "Both bad" in keys and "Play" not in keys and "can't tell" not in keys
        # 3. "how much better" only for A or B
        page.keyboard.press("t")
        assert page.is_disabled("#strength-much")
        page.keyboard.press("b")
        assert page.is_disabled("#strength-much")
        page.keyboard.press("1")
        assert page.is_enabled("#strength-much")
        page.check("#strength-much")
        page.keyboard.press("c")
        assert page.is_disabled("#strength-much") and page.is_checked("#strength-none")
        page.keyboard.press("1")
        page.check("#strength-much")
        page.screenshot(path=str(ARTIFACTS / "annotate-markdown.png"), full_page=True)
        next_page(page, lambda: page.click("#submit"))
        # 4. the ranking task; the history lists the first label; undo brings it back
        assert "Rank" in page.inner_text("#prompt")
        assert "Tie" not in page.inner_text("#keys")
        history = page.inner_text("#history")
        assert "A is better (much)" in history and "Print 0..2" in history
        (entry,) = store.history("web", store.list_users()[0])
        next_page(page, lambda: page.click(f"#undo-{entry['assignment_id']}"))
        assert "Print 0..2" in page.inner_text("#prompt")  # the task is back, to answer anew
        assert "None yet." in page.inner_text("#history")
        page.keyboard.press("2")
        next_page(page, lambda: page.keyboard.press("Enter"))
        assert "B is better" in page.inner_text("#history")
        for i, letter in enumerate("ABC"):
            page.select_option(f"#rank-{letter}", str(i + 1))
        next_page(page, lambda: page.click("#submit"))
        # 5. the round closes: its labels become final (no undo)
        first = store.history("web", store.list_users()[0])[-1]
        store.close_items("web", [first["item_id"]])
        page.reload()
        assert page.locator(f"#undo-{first['assignment_id']}").count() == 0
        assert "final" in page.inner_text(f"#history-{first['assignment_id']}")
        # 6. nothing left: the page waits, and shows new items without a reload
        assert page.is_visible("#all-done")
        page.screenshot(path=str(ARTIFACTS / "annotate-waiting.png"), full_page=True)
        store.add_items("web", [{"prompt": "A new round's pair", "responses": ["one", "two"]}])
        page.wait_for_selector("#prompt", timeout=20_000)
        assert "A new round's pair" in page.inner_text("#prompt")
        # 7. a page that does not exist is a page, not JSON
        r = page.goto(server.url + "/no/such/page")
        assert r.status == 404 and r.headers["content-type"].startswith("text/html")
        assert "Error 404" in page.inner_text("h1") and page.is_visible("a[href='/annotate']")
    finally:
        context.close()
    assert dialogs == [] and not [c for c in console if "pageerror" in c or "Content Security" in c], console
    store.close()


@pytest.mark.timeout(180)
def test_a_megabyte_unbroken_response_is_cut_and_shown_whole_on_demand(browser, tmp_path, start_server):  # noqa: F811
    """1,000,000 characters without a break (CJK, emoji and combining marks: the slowest
    text to lay out). The page shows the first 20,000 and fetches the rest in blocks."""
    rnd = random.Random(0)
    long = "".join(rnd.choice("漢字仮名交じり文😀é́") for _ in range(1_000_000))
    db = tmp_path / "long.db"
    store = FeedbackStore(db)
    store.ensure_project("long", gold_every=0)
    store.add_items("long", [{"prompt": "Judge", "responses": [long, "short"]}])
    ann = store.add_user("ann", projects=["long"])
    store.close()
    server = start_server(db, "long")
    dialogs, console = [], []
    context, page = open_page(browser, server.url, dialogs, console)
    try:
        log_in(page, server.url, "ann", ann.password)
        side = "A" if "short" not in page.inner_text("#response-A .text") else "B"
        note = page.inner_text(f"#response-{side} .cut")
        assert "Showing the first 20,000 of 1,000,000 characters" in note
        assert "Too long to correct here" in page.inner_text(f"#response-{side}")
        started = time.perf_counter()
        page.click(f"#response-{side} a.show-all")
        page.wait_for_selector(f"#response-{side} .long[data-full='1']", timeout=120_000)
        print(f"show all of 1,000,000 characters: {time.perf_counter() - started:.2f} s")
        got = page.evaluate(f"() => Array.from(document.querySelectorAll('#response-{side} .chunk'))"
                            ".map(e => e.textContent).join('')")
        assert got == long
        page.keyboard.press("1")
        next_page(page, lambda: page.keyboard.press("Enter"))
        assert page.is_visible("#all-done")
    finally:
        context.close()
    assert dialogs == [] and not [c for c in console if "pageerror" in c], console


class _Attacker(BaseHTTPRequestHandler):
    page = b""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args):
        pass


@pytest.mark.timeout(120)
def test_a_page_on_another_port_cannot_log_the_victim_in_as_the_attacker(browser, tmp_path, start_server):  # noqa: F811
    """The attacker fetches a login form of their own, then their page on another port of the
    same host plants that pre-session cookie in the victim's browser and posts the form with
    the attacker's password. Before: the victim ended up logged in as the attacker."""
    db = tmp_path / "csrf.db"
    store = FeedbackStore(db)
    store.ensure_project("p", gold_every=0)
    eve = store.add_user("eve", projects=["p"])
    store.close()
    server = start_server(db, "p")
    with httpx.Client(base_url=server.url) as attacker:
        form_page = attacker.get("/login")
        cookie = next(iter(attacker.cookies.items()))
        token = csrf_of(form_page.text)
    fields = {"username": "eve", "password": eve.password, "csrf_token": token}
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
    _Attacker.page = (
        f"<!doctype html><html><body><form id=f method=post action='{server.url}/login'>{inputs}</form>"
        f"<script>document.cookie = {json.dumps(f'{cookie[0]}={cookie[1]}; path=/')};"
        "document.getElementById('f').submit();</script></body></html>"
    ).encode()
    evil = ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    context, page = open_page(browser, server.url, [], [])
    try:
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        page.wait_for_load_state("load")
        page.wait_for_timeout(500)
        assert page.url.startswith(server.url + "/login")
        assert "another site" in page.inner_text("main")
        assert not [c for c in context.cookies() if c["name"] == "ak_session"]
        page.goto(server.url + "/annotate")
        assert page.url == server.url + "/login"  # not logged in as anyone
    finally:
        context.close()
        evil.shutdown()
