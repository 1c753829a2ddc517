"""A very long unbroken response on the annotation page, in Chromium: source trees side by side.

For each tree and each response (N characters without a break: ASCII letters, or CJK, an
emoji and combining marks — the slowest text for a browser to lay out), the time from the
login's submit to the labelling page laid out, and — where the tree offers it — the time of
"show all" until the whole text is on the page. Trees run alternately (paired repeats); a
page that takes longer than ``--limit`` seconds is recorded as over the limit.

    python benchmarks/app_long_response.py --tree main=/tmp/src_main/src --tree i27=src \\
        [--chars 300000 1000000] [--repeats 2] [--limit 150]

Writes a JSON report (CPU model, load average). Needs /usr/bin/chromium and playwright.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fair import cpu_model  # noqa: E402

ALPHABETS = {"ascii": "abcdefghijklmnopqrstuvwxyz", "cjk_emoji_marks": "漢字仮名交じり文😀é́"}
SETUP = r"""
import json, sys
from alignkit.feedback.store import FeedbackStore
db, text = sys.argv[1], open(sys.argv[2], encoding="utf-8").read()
s = FeedbackStore(db)
s.ensure_project("long", gold_every=0)
s.add_items("long", [{"prompt": "Judge", "responses": [text, "short"]}])
kw = {"projects": ["long"]}
print(json.dumps({"password": s.add_user("ann", **kw).password}))
"""


def run(tree: str, text_file: Path, work: Path, limit: float) -> dict[str, float | None]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
    db = work / f"{time.time_ns()}.db"
    password = json.loads(subprocess.run([sys.executable, "-c", SETUP, str(db), str(text_file)], env=env,
                                         capture_output=True, text=True, check=True).stdout)["password"]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", "from alignkit.cli import main; main()", "annotate", "serve",
                             "--db", str(db), "--project", "long", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    out: dict[str, float | None] = {"page_s": None, "show_all_s": None}
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(limit * 1000)
            page.goto(url + "/login")
            page.fill("#username", "ann")
            page.fill("#password", password)
            t0 = time.perf_counter()
            try:
                page.click("#login-submit")
                page.wait_for_url(url + "/annotate")
                page.evaluate("() => document.body.getBoundingClientRect().height")
                out["page_s"] = time.perf_counter() - t0
                link = page.locator("a.show-all")
                if link.count():
                    t1 = time.perf_counter()
                    link.first.click()
                    page.wait_for_selector(".long[data-full='1']")
                    page.evaluate("() => document.body.getBoundingClientRect().height")
                    out["show_all_s"] = time.perf_counter() - t1
            except PlaywrightTimeout:
                pass  # over the limit: recorded as None
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", required=True, help="NAME=SRC_DIR (repeat)")
    ap.add_argument("--chars", type=int, nargs="+", default=[300_000, 1_000_000])
    ap.add_argument("--alphabet", nargs="+", default=list(ALPHABETS), choices=list(ALPHABETS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--limit", type=float, default=150.0)
    ap.add_argument("--out", default="benchmarks/results/app_long_response.json")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    work = Path(tempfile.mkdtemp(prefix="long_response_"))
    load_start = os.getloadavg()
    results = []
    for alphabet in args.alphabet:
        for n in args.chars:
            rnd = random.Random(0)
            text_file = work / f"{alphabet}-{n}.txt"
            text_file.write_text("".join(rnd.choice(ALPHABETS[alphabet]) for _ in range(n)), encoding="utf-8")
            names = list(trees)
            for rep in range(args.repeats):
                for name in names[rep % len(names):] + names[: rep % len(names)]:
                    r = run(trees[name], text_file, work, args.limit)
                    results.append({"tree": name, "alphabet": alphabet, "chars": n, "repeat": rep, **r})
                    print(json.dumps(results[-1]), flush=True)
    report = {"benchmark": "app_long_response", "trees": trees, "limit_s": args.limit, "cpu": cpu_model(),
              "load_avg_start": load_start, "load_avg_end": os.getloadavg(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
