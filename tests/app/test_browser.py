"""A real browser (Debian's chromium, driven by Playwright) against `alignkit annotate serve`.

Never downloads a browser: it launches /usr/bin/chromium and skips when it is missing.
Screenshots go to test-artifacts/ in the repository root (git-ignored).
"""

from pathlib import Path

import pytest

from alignkit.feedback.store import FeedbackStore

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
XSS = [
    "<script>window.__xss = 1; alert('script')</script>",
    "<img src=x onerror=\"window.__xss = 2; alert('img')\">",
    "</textarea><script>window.__xss = 3; alert('textarea')</script>",
    "[click me](javascript:alert('md-link')) <a href=\"javascript:alert('a')\">link</a>",
    "**bold** <b onmouseover=\"alert('hover')\">hover</b> <svg onload=\"alert('svg')\"></svg>",
    "<iframe srcdoc=\"<script>parent.alert('iframe')</script>\"></iframe>",
    "{{ 7*7 }} ${alert('tpl')} <style>body{display:none}</style>",
]


def plain_text(markdown: str) -> str:
    """The text a reader sees of the page's rendering of ``markdown`` (tags dropped)."""
    from html.parser import HTMLParser

    from alignkit.app.render import render_markdown

    parts = []
    parser = HTMLParser()
    parser.handle_data = parts.append
    parser.feed(str(render_markdown(markdown).html))
    return "".join(parts)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        yield b
        b.close()


def open_page(browser, url, dialogs, console):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)

    def on_dialog(d):
        dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    return context, page


def log_in(page, url, name, password):
    page.goto(url + "/login")
    page.fill("#username", name)
    page.fill("#password", password)
    page.click("#login-submit")
    page.wait_for_url(url + "/annotate")


def next_page(page, action):
    with page.expect_navigation():
        action()


@pytest.mark.timeout(180)
def test_annotate_every_task_type_by_click_and_keyboard(browser, tmp_path, start_server):
    db = tmp_path / "web.db"
    store = FeedbackStore(db)
    store.ensure_project("web", guidelines="Prefer the kinder, truer reply.", gold_every=0)
    store.add_items(
        "web",
        [
            {"prompt": "Click: which is kinder?", "responses": ["kind", "rude"]},
            {"prompt": "Keyboard: which is kinder?", "responses": ["kind", "rude"]},
            {
                "type": "ranking",
                "prompt": [
                    {"role": "user", "content": "Rank these"},
                    {"role": "assistant", "content": "Sure?"},
                    {"role": "user", "content": "Go"},
                ],
                "responses": ["best", "middle", "worst"],
            },
            {"type": "rating", "prompt": "Rate these", "responses": ["great", "awful"]},
            {"prompt": "Skip me", "responses": ["x", "y"]},
        ],
    )
    ann = store.add_user("ann", group="uk", projects=["web"])
    boss = store.add_user("boss", role="admin")
    server = start_server(db, "web")
    dialogs, console = [], []
    context, page = open_page(browser, server.url, dialogs, console)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        log_in(page, server.url, "ann", ann.password)
        assert "Prefer the kinder, truer reply." in page.inner_text(".guidelines")

        # 1. pairwise by clicking: pick the rude one as "much" better (a deliberate choice)
        assert "Click:" in page.inner_text("#prompt")
        rude = "A" if page.inner_text("#response-A .text") == "rude" else "B"
        page.click(f"#choice-{rude}")
        page.click("#strength-much")
        page.check(f"#tag-{rude}-harmful")
        next_page(page, lambda: page.click("#submit"))

        # 2. pairwise by keyboard: 1 = A, then Enter submits
        assert "Keyboard:" in page.inner_text("#prompt")
        left_text = page.inner_text("#response-A .text")
        page.keyboard.press("t")
        assert page.is_checked("#choice-tie")
        page.keyboard.press("1")
        assert page.is_checked("#choice-A")
        next_page(page, lambda: page.keyboard.press("Enter"))

        # 3. rank three responses (a tie-free ranking), correct one, comment
        assert page.locator(".turn").count() == 3
        ranks = {"best": "1", "middle": "2", "worst": "3"}
        for letter in "ABC":
            page.select_option(
                f"#rank-{letter}", ranks[page.inner_text(f"#response-{letter} .text")]
            )
        mid = next(x for x in "ABC" if page.inner_text(f"#response-{x} .text") == "middle")
        page.click(f"#edit-toggle-{mid}")
        page.fill(f"#edit-{mid}", "middle, corrected")
        page.fill("#comment", "clear order")
        page.screenshot(path=str(ARTIFACTS / "annotate-ranking.png"), full_page=True)
        next_page(page, lambda: page.click("#submit"))

        # 4. rate both responses on the 1–7 scale, tag one
        for letter in "AB":
            text = page.inner_text(f"#response-{letter} .text")
            page.check(f"#rating-{letter}-{7 if text == 'great' else 1}")
            if text == "awful":
                page.check(f"#tag-{letter}-unhelpful")
        next_page(page, lambda: page.click("#submit"))

        # 5. skip with the keyboard
        assert "Skip me" in page.inner_text("#prompt")
        next_page(page, lambda: page.keyboard.press("s"))
        assert page.is_visible("#all-done")
        assert page.inner_text("#progress").startswith("4 labelled · 1 skipped · 5 items")
        page.screenshot(path=str(ARTIFACTS / "annotate-done.png"), full_page=True)
    finally:
        context.close()
    # the admin page shows the quality statistics
    context, page = open_page(browser, server.url, dialogs, console)
    try:
        page.goto(server.url + "/login")
        page.fill("#username", "boss")
        page.fill("#password", boss.password)
        next_page(page, lambda: page.click("#login-submit"))
        assert page.url == server.url + "/admin"
        assert "Krippendorff" in page.inner_text("#agreement")
        row = page.inner_text("#annotators")
        assert "ann" in row and "uk" in row
        assert "uk" in page.inner_text("#groups")
        page.screenshot(path=str(ARTIFACTS / "admin.png"), full_page=True)
    finally:
        context.close()
    assert dialogs == [] and not [c for c in console if "error" in c.lower()], console

    raw = {v["prompt"]: v for v in store.raw_votes("web")}
    assert len(raw) == 4
    click = raw["Click: which is kinder?"]["answer"]
    assert (
        click["choice"] == "b"
        and click["strength"] == "much"
        and click["tags"] == [[], ["harmful"]]
    )
    kb = raw["Keyboard: which is kinder?"]
    assert kb["answer"]["choice"] == ("a" if left_text == "kind" else "b")
    rk = raw["user: Rank these\nassistant: Sure?\nuser: Go"]["answer"]
    assert rk["order"] == [0, 1, 2] and rk["ties"] == [] and rk["comment"] == "clear order"
    assert rk["edits"] == [None, "middle, corrected", None]
    rt = raw["Rate these"]["answer"]
    assert rt["scores"] == [7, 1] and rt["tags"] == [[], ["unhelpful"]]
    assert store.progress("web", store.user_by_token(ann.token))["skipped"] == 1
    assert (ARTIFACTS / "annotate-ranking.png").stat().st_size > 0
    store.close()


@pytest.mark.timeout(180)
def test_untrusted_text_runs_no_script(browser, tmp_path, start_server):
    db = tmp_path / "xss.db"
    store = FeedbackStore(db)
    store.ensure_project("xss", guidelines=XSS[0] + XSS[1], gold_every=0)
    store.add_items(
        "xss",
        [
            {"prompt": XSS[0] + XSS[3], "responses": [XSS[1], XSS[2]]},
            {
                "type": "ranking",
                "prompt": [{"role": XSS[2], "content": XSS[4]}],
                "responses": XSS[4:7],
            },
        ],
    )
    ann = store.add_user("ann", projects=["xss"])
    server = start_server(db, "xss")
    dialogs, console = [], []
    context, page = open_page(browser, server.url, dialogs, console)
    try:
        log_in(page, server.url, "ann", ann.password)
        for round_ in range(2):
            body = page.inner_text("main")
            page.mouse.move(400, 300)
            for el in page.locator(".text").all():
                el.hover()
                el.click()
            page.wait_for_timeout(200)
            assert page.evaluate("window.__xss") is None
            assert (
                page.locator("main script, main img, main svg, main iframe, main style").count()
                == 0
            )
            assert page.locator("a[href^='javascript']").count() == 0
            assert page.locator("main b").count() == 0
            n = len(page.locator(".response").all())
            assert page.locator("textarea").count() == n + 1  # one edit box per response + comment
            for letter in "AB"[:n]:
                original = page.input_value(f"#edit-{letter}")  # the textarea was not broken out of
                assert original in XSS
                # markdown (bold, links) is rendered; every raw tag stays visible as text
                shown = " ".join(page.inner_text(f"#response-{letter} .text").split())
                assert shown == " ".join(plain_text(original).split())
            if round_ == 0:
                assert "<script>window.__xss = 1;" in body and "onerror=" in body
            if round_ == 0:
                page.click("#choice-A")
            else:
                for i, letter in enumerate("ABC"):
                    page.select_option(f"#rank-{letter}", str(i + 1))
            page.screenshot(path=str(ARTIFACTS / f"xss-{round_}.png"), full_page=True)
            next_page(page, lambda: page.click("#submit"))
        assert page.is_visible("#all-done")
    finally:
        context.close()
    assert dialogs == []
    assert not [c for c in console if "Content Security Policy" in c or "pageerror" in c], console
    assert store.count_votes("xss") == 2
    store.close()


@pytest.mark.timeout(120)
def test_video_pair_plays_in_sync_and_takes_a_keyboard_choice(browser, tmp_path, start_server):
    """Two WebM clips (VP9 and VP8) decode in Debian's chromium, one control plays and
    pauses both in step, and the keyboard choice is stored in original terms."""
    from test_video_pair import make_webm

    from alignkit.feedback.media import import_video_pairs

    db = tmp_path / "clips.db"
    store = FeedbackStore(db)
    store.ensure_project("ctl", gold_every=0)
    a = make_webm(tmp_path / "a.webm", 10, n=30)
    b = make_webm(tmp_path / "b.webm", 150, codec="libvpx", n=30)
    (item_id,) = import_video_pairs(
        store, "ctl", [{"video_a": a.name, "video_b": b.name, "meta": {"segments": [7, 8]}}], base_dir=tmp_path
    ).item_ids
    ann = store.add_user("ann", projects=["ctl"])
    server = start_server(db, "ctl")
    dialogs, console = [], []
    context, page = open_page(browser, server.url, dialogs, console)
    times = "() => ['A','B'].map(x => document.getElementById('clip-' + x).currentTime)"
    try:
        log_in(page, server.url, "ann", ann.password)
        page.wait_for_function(
            "() => ['A','B'].every(x => { const v = document.getElementById('clip-' + x);"
            " return v.readyState >= 2 && v.videoWidth === 48; })"
        )
        page.keyboard.press("p")  # play both
        page.wait_for_function(
            "() => ['A','B'].every(x => { const v = document.getElementById('clip-' + x);"
            " return !v.paused && v.currentTime > 0.5; })"
        )
        page.keyboard.press("p")  # pause both
        page.wait_for_function("['A','B'].every(x => document.getElementById('clip-' + x).paused)")
        ta, tb = page.evaluate(times)
        assert ta > 0.5 and abs(ta - tb) < 0.25, (ta, tb)
        page.click("#clips-restart")  # the button drives both too
        page.wait_for_function("['A','B'].every(x => !document.getElementById('clip-' + x).paused)")
        ta, tb = page.evaluate(times)
        assert ta < 0.5 and tb < 0.5, (ta, tb)
        page.screenshot(path=str(ARTIFACTS / "annotate-video-pair.png"), full_page=True)
        page.keyboard.press("c")
        assert page.is_checked("#choice-incomparable")
        page.keyboard.press("2")
        assert page.is_checked("#choice-B")
        next_page(page, lambda: page.keyboard.press("Enter"))
        assert page.is_visible("#all-done")
    finally:
        context.close()
    (vote,) = store.raw_votes("ctl")
    assert vote["answer"]["choice"] == ("a" if vote["display_order"][1] == 0 else "b")
    label = store.item_labels("ctl", [item_id])[item_id]
    assert label.mu == (1.0 if vote["answer"]["choice"] == "a" else 0.0)
    assert label.meta["item_meta"] == {"segments": [7, 8]}
    assert dialogs == [] and not [c for c in console if "error" in c.lower()], console


@pytest.mark.timeout(120)
def test_untouched_edit_boxes_make_no_corrections_even_for_long_texts(
    browser, tmp_path, start_server
):
    """Issue 15 items 2 and 3 in a real browser: CRLF / lone CR responses and a 1.2 MB one,
    labelled by clicking A without touching the edit boxes → votes, and no corrections."""
    db = tmp_path / "edits.db"
    store = FeedbackStore(db)
    store.ensure_project("ed", gold_every=0)
    store.add_items(
        "ed",
        [
            {"prompt": "line ends", "responses": ["line one\r\nline two\r\n", "before\rafter"]},
            {"prompt": "long", "responses": ["z" * 1_200_000, "short"]},
        ],
    )
    ann = store.add_user("ann", projects=["ed"])
    server = start_server(db, "ed")
    dialogs, console = [], []
    context, page = open_page(browser, server.url, dialogs, console)
    try:
        log_in(page, server.url, "ann", ann.password)
        for _ in range(2):
            page.click("#choice-A")
            next_page(page, lambda: page.click("#submit"))
        assert page.is_visible("#all-done")
    finally:
        context.close()
    assert store.count_votes("ed") == 2
    assert store.export_records("ed", "corrections") == []
    assert dialogs == [] and not [c for c in console if "error" in c.lower()], console
