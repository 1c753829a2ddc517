"""A person in Chromium (Playwright, /usr/bin/chromium) against `alignkit chat serve`: log in,
chat two turns and see the tokens arrive, regenerate and say "better", pick one of two
answers, edit an answer, vote in the arena; the leaderboard lists both models with
intervals; the admin's TRL export trains a reward model and a DPO run as it is.

The models are two tiny random GPT-2s (their text is noise; the flow is what is tested).
``ALIGNKIT_CHAT_MODELS="PATH:NAME,PATH:NAME"`` runs the same flow on other models and
``ALIGNKIT_CHAT_SHOTS=DIR`` puts the screenshots there (docs/chat.md's come from a run with
SmolLM2 and the embedded task's base policy).
"""

import json
import os
from pathlib import Path

import pytest
from chat_helpers import ChatServer, scripted_model, serve

from alignkit.feedback.store import FeedbackStore

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, dialogs, console):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    return context, page


def log_in(page, url, name, password):
    page.goto(url + "/login")
    page.fill("#username", name)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("#login-submit")


def answers_done(page, selector, n):
    """Wait until ``n`` answers matching ``selector`` are finished (no JS eval: the CSP forbids it)."""
    finished = ", ".join(f"{part}[data-status={s}]" for part in selector.split(", ") for s in ("done", "stopped"))
    page.locator(finished).nth(n - 1).wait_for()


def run_flow(browser, url, ann, boss, names, shots, tmp_path, streaming_shot=False):
    """The person's flow and the admin's download; returns the exported TRL file."""
    from playwright.sync_api import expect

    dialogs, console = [], []
    context, page = open_page(browser, dialogs, console)
    try:
        log_in(page, url, "ann", ann.password)
        with page.expect_navigation():
            page.click("nav >> text=Chat")
        assert page.url == url + "/chat"

        # 1. two turns; the text arrives as events before the stored answer (a tiny model may
        # finish before the page subscribes, and then its text comes as one event: that it
        # arrives in several is checked with a slowed model below)
        page.fill("#chat-input", "How do I fix a flat bike tyre?")
        page.keyboard.press("Enter")
        if streaming_shot:  # slow enough models (the docs' run): the answer mid-stream
            page.locator("#messages .msg-assistant.receiving").first.wait_for()
            page.screenshot(path=str(shots / "chat-streaming.png"), full_page=True)
        answers_done(page, "#messages .msg-assistant", 1)
        first = page.locator("#messages .msg-assistant").nth(0)
        assert int(first.get_attribute("data-token-events")) >= 1
        assert page.url.startswith(url + "/chat/")
        first.locator(".thumb-up").click()
        page.wait_for_selector("#messages .msg-assistant .thumb-up.pressed")
        page.fill("#chat-input", "And if the tube is torn?")
        page.keyboard.press("Enter")
        answers_done(page, "#messages .msg-assistant", 2)
        assert page.locator("#messages .msg-user").count() == 2

        # 2. regenerate the latest answer, then "better"
        page.locator("#messages .msg-assistant.leaf .regen").click()
        answers_done(page, "#messages .msg-assistant", 3)
        fresh = page.locator("#messages .msg-assistant.leaf")
        fresh.locator(".compare button[data-choice=better]").click()
        page.wait_for_selector("#messages .compare.answered")
        # thumbs down with a tag and "what was the issue"
        fresh.locator(".thumb-down").click()
        fresh.locator(".feedback input[value=unhelpful]").check()
        fresh.locator(".feedback textarea").fill("It does not say how to find the hole.")
        page.screenshot(path=str(shots / "chat-feedback.png"), full_page=True)
        fresh.locator(".send-feedback").click()
        page.wait_for_selector("#messages .msg-assistant.leaf .thumb-down.pressed")

        # 3. two answers: pick the one the conversation continues with
        page.check("#two")
        page.fill("#chat-input", "Which tools do I need?")
        page.keyboard.press("Enter")
        answers_done(page, "#messages .pair .msg-assistant", 2)
        page.screenshot(path=str(shots / "chat-pair.png"), full_page=True)
        page.locator("#messages .pair .msg-assistant").nth(1).locator(".pick").click()
        page.wait_for_selector("#messages .pair .msg-assistant.chosen")
        page.uncheck("#two")

        # 4. edit the chosen answer: the corrected text continues the conversation
        chosen = page.locator("#messages .msg-assistant.chosen")
        chosen.locator(".edit").click()
        chosen.locator(".editor textarea").fill("Tyre levers, a patch kit and a pump.")
        chosen.locator(".editor button[type=submit]").click()
        page.wait_for_selector("#messages .msg-assistant.leaf .badge")
        assert page.locator("#messages .msg-assistant.leaf .body").inner_text() == (
            "Tyre levers, a patch kit and a pump.")
        page.screenshot(path=str(shots / "chat.png"), full_page=True)
        page.reload()  # what was stored is what the page shows again
        assert page.locator("#messages .msg-assistant.leaf .badge").count() == 1
        assert page.locator("#messages .msg-user").count() == 3

        # 5. the arena: two anonymous answers, a vote, then the names
        with page.expect_navigation():
            page.click("nav >> text=Arena")
        with page.expect_navigation():
            page.click("#new-battle")
        assert "hidden until you vote" in page.inner_text("#name-A")
        page.fill("#chat-input", "Give me one tip for sleeping better.")
        page.keyboard.press("Enter")
        answers_done(page, "#sides .msg-assistant", 2)
        page.wait_for_selector("#vote:not([hidden])")
        page.click("#vote-A")
        expect(page.locator("#name-A")).not_to_have_text("hidden until you vote")
        assert {page.inner_text("#name-A"), page.inner_text("#name-B")} == set(names)
        page.screenshot(path=str(shots / "arena.png"), full_page=True)

        # 6. the leaderboard lists both models with intervals
        with page.expect_navigation():
            page.click("nav >> text=Leaderboard")
        rows = page.locator("#standings tr.row")
        assert rows.count() == 2
        assert {rows.nth(i).get_attribute("data-model") for i in range(2)} == set(names)
        for i in range(2):
            assert " – " in rows.nth(i).locator(".interval").inner_text()
        page.screenshot(path=str(shots / "leaderboard.png"), full_page=True)
    finally:
        context.close()

    # 7. the admin downloads the TRL export; it trains a reward model and a DPO run unedited
    context, page = open_page(browser, dialogs, console)
    try:
        log_in(page, url, "boss", boss.password)
        with page.expect_navigation():
            page.click("nav >> text=Chat admin")
        assert "arena 1" in page.inner_text("#chat-summary")
        page.screenshot(path=str(shots / "chat-admin.png"), full_page=True)
        with page.expect_download() as dl:
            page.click("a.export >> text=trl")
        export = tmp_path / "chat-trl.jsonl"
        dl.value.save_as(export)
    finally:
        context.close()
    assert dialogs == [] and not [c for c in console if "error" in c.lower()], console
    return export


@pytest.mark.timeout(900)
def test_chat_arena_leaderboard_and_training_in_chromium(browser, tmp_path, tiny_lm_dir):
    from alignkit.cli import main
    from alignkit.models import make_tiny_lm_dir

    shots = Path(os.environ.get("ALIGNKIT_CHAT_SHOTS", ROOT / "test-artifacts"))
    shots.mkdir(parents=True, exist_ok=True)
    models = os.environ.get("ALIGNKIT_CHAT_MODELS")
    if models:
        specs = models.split(",")
    else:
        other = make_tiny_lm_dir(tmp_path / "tiny_b", n_layer=2, n_embd=64, seed=1)
        specs = [f"{tiny_lm_dir}:tiny-a", f"{other}:tiny-b"]
    names = [s.rsplit(":", 1)[1] for s in specs]
    db = tmp_path / "chat.db"
    store = FeedbackStore(db)
    store.ensure_project("demo", gold_every=0)
    ann = store.add_user("ann", projects=["demo"])
    boss = store.add_user("boss", role="admin")
    server = ChatServer(db, "demo", specs, tmp_path / "server.log", ["--max-new-tokens", "24"])
    try:
        export = run_flow(browser, server.url, ann, boss, names, shots, tmp_path, streaming_shot=bool(models))
    finally:
        server.stop()
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    assert [r["signal"] for r in rows] == ["compare", "pick", "edit", "arena"]
    assert all(isinstance(r["prompt"], list) and r["prompt"][-1]["role"] == "user" for r in rows)
    for cmd in (
        ["reward", "train", "--model", str(tiny_lm_dir), "--data", str(export), "--out", str(tmp_path / "rm"),
         "--epochs", "1", "--batch-size", "2", "--eval-fraction", "0", "--set", "tensorboard=false",
         "--set", "log_every=1"],
        ["dpo", "--policy", str(tiny_lm_dir), "--data", str(export), "--out", str(tmp_path / "dpo"),
         "--max-steps", "2", "--batch-size", "2", "--set", "tensorboard=false"],
    ):
        with pytest.raises(SystemExit) as e:
            main(cmd)
        assert e.value.code == 0
    rm_rows = [json.loads(x) for x in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    dpo_rows = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((tmp_path / "rm" / "eval.json").read_text())["data/train_pairs"] == 4
    assert len(rm_rows) == 2 and all(any(k.startswith("loss/") for k in r) for r in rm_rows)
    assert [r["step"] for r in dpo_rows] == [1, 2] and all(r["loss/dpo"] > 0 for r in dpo_rows)


@pytest.mark.timeout(120)
def test_markup_in_model_output_never_runs_in_the_page(browser, tmp_path, tiny_lm_dir):
    """An answer full of <script>, event handlers and javascript: links, streamed and then
    rendered: no dialog, no element from the model, the text shown as text."""
    from alignkit.app.chat import create_chat_app
    from alignkit.app.chat_service import ChatConfig, ChatService
    from alignkit.models.loading import load_tokenizer

    payload = ("<script>alert('s')</script><img src=x onerror=\"alert('i')\">"
               "<svg onload=\"alert('v')\"></svg> [x](javascript:alert('l')) **bold**")
    store = FeedbackStore(tmp_path / "x.db")
    store.ensure_project("p")
    ann = store.add_user("ann", projects=["p"])
    evil = scripted_model("evil", load_tokenizer(tiny_lm_dir), payload, delay=0.02)  # ~1 s: streamed
    svc = ChatService(store, [evil], ChatConfig(max_new_tokens=300))
    dialogs, console = [], []
    with serve(create_chat_app(store.url, "p", svc, store=store)) as url:
        context, page = open_page(browser, dialogs, console)
        try:
            log_in(page, url, "ann", ann.password)
            page.goto(url + "/chat")
            page.fill("#chat-input", "<img src=y onerror=\"alert('user')\">")
            page.keyboard.press("Enter")
            answers_done(page, "#messages .msg-assistant", 1)
            # the text arrived token by token, in several events, before the rendered answer
            assert int(page.locator("#messages .msg-assistant").first.get_attribute("data-token-events")) >= 2
            body = page.locator("#messages .msg-assistant .body")
            assert body.locator("script, img, svg, a").count() == 0
            assert body.locator("strong").inner_text() == "bold"
            assert "<script>alert('s')</script>" in body.inner_text()
            assert page.locator("#messages .msg-user img").count() == 0
            page.reload()
            assert page.locator("#messages script, #messages img, #messages svg").count() == 0
            assert page.evaluate("window.__xss === undefined")
        finally:
            context.close()
    svc.worker.close()
    assert dialogs == [] and not [c for c in console if "error" in c.lower()], console
