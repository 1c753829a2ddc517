"""Twenty people chatting at once while others browse: does the app stay up and quick?

`alignkit chat serve` runs in its own process on a tiny model (a 2 × 64 GPT-2, so the
worker is busy decoding all the time) and a SQLite database. Phases, interleaved and
repeated (``--repeats``):

* ``idle``: one prober fetches the other pages (``/annotate``, ``/leaderboard``, ``/chat``,
  ``/api/v1/me``, ``/healthz``) in a loop, nobody chats;
* ``chat``: the same prober while 20 people (each logged in, with their own session) send a
  message, read the streamed answer to the end, vote on it and send the next, all the time.

Recorded: every status code (zero 5xx is the requirement), the prober's latency per page
(p50 / p95 / p99; the requirement: p95 < 100 ms while 20 chats stream), each answer's time
to first token and tokens/s as the person saw them (from the send to the first token event;
queueing included), the load average and the CPU. The prober's p95 under chat over idle
is reported as a ratio, as measured on the same machine in the same run.

    python benchmarks/chat_load.py --out benchmarks/results/chat_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests" / "app"))
sys.path.insert(0, str(HERE))

PAGES = ["/annotate", "/leaderboard", "/chat", "/api/v1/me", "/healthz"]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def prober(url, name, password, token, stop, lat, codes):
    import httpx
    from chat_helpers import login

    with httpx.Client(base_url=url, timeout=30) as c:
        login(c, name, password)
        i = 0
        while not stop.is_set():
            page = PAGES[i % len(PAGES)]
            headers = {"Authorization": f"Bearer {token}"} if page.startswith("/api/") else {}
            t = time.perf_counter()
            r = c.get(page, headers=headers)
            lat.setdefault(page, []).append((time.perf_counter() - t) * 1000)
            codes.append(r.status_code)
            i += 1
            time.sleep(0.02)


def chatter(url, name, password, stop, codes, answers):
    import httpx
    from _sse import read_answer
    from chat_helpers import login

    try:
        with httpx.Client(base_url=url, timeout=120) as c:
            csrf = login(c, name, password)
            head = {"X-CSRF-Token": csrf}
            cid = parent = None
            turn = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                r = c.post("/chat/api/send", json={"conversation_id": cid, "parent_id": parent,
                                                    "text": f"Human question {turn} from {name}"}, headers=head)
                codes.append(r.status_code)
                if r.status_code != 200:
                    time.sleep(0.5)
                    continue
                d = r.json()
                cid, mid = d["conversation_id"], d["answers"][0]["id"]
                with c.stream("GET", f"/chat/api/stream/{mid}") as s:
                    codes.append(s.status_code)
                    first, done = read_answer(s)
                if done is None:
                    done = {"stats": {}, "status": "no done event"}
                end = time.perf_counter()
                tokens = done["stats"].get("tokens", 0)
                answers.append({"ttft_ms": (first - t0) * 1000 if first else None,
                                "tokens": tokens,
                                "tokens_per_s": (tokens - 1) / (end - first) if first and tokens > 1 and end > first else None,
                                "status": done["status"]})
                r = c.post(f"/chat/api/messages/{mid}/thumb", json={"up": turn % 2 == 0}, headers=head)
                codes.append(r.status_code)
                parent = mid if done["status"] in ("done", "stopped") else None
                if parent is None:
                    cid = None
                turn += 1
    except Exception as e:  # noqa: BLE001 - a client failing is a result to report
        codes.append(f"client error: {e!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chats", type=int, default=20)
    ap.add_argument("--phase-s", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-active", type=int, default=20, help="Answers decoded side by side.")
    ap.add_argument("--out", default=str(HERE / "results" / "chat_load.json"))
    args = ap.parse_args()

    from _fair import machine_meta
    from chat_helpers import ChatServer

    from alignkit.feedback.store import FeedbackStore
    from alignkit.models import make_tiny_lm_dir

    work = Path(tempfile.mkdtemp(prefix="chat_load_"))
    model_dir = make_tiny_lm_dir(work / "tiny", n_layer=2, n_embd=64, seed=0)
    db = work / "load.db"
    store = FeedbackStore(db)
    store.ensure_project("load", gold_every=0)
    store.add_items("load", [{"prompt": f"q{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(20)])
    people = {f"c{i:02d}": store.add_user(f"c{i:02d}", projects=["load"]).password for i in range(args.chats)}
    probe = store.add_user("probe", projects=["load"])
    phases = []
    server = ChatServer(db, "load", [f"{model_dir}:tiny"], work / "server.log",
                        ["--max-new-tokens", str(args.max_new_tokens), "--set", f"max_active={args.max_active}",
                         "--set", "generations_per_minute=1000"])
    try:
        for rep in range(args.repeats):
            phases += run_phases(server, rep, args, people, probe)
    finally:
        server.stop()
    idle = [p["pages_all_ms"]["p95"] for p in phases if p["phase"] == "idle"]
    busy = [p["pages_all_ms"]["p95"] for p in phases if p["phase"] == "chat"]
    summary = {
        "status_5xx_total": sum(p["status_5xx"] for p in phases),
        "pages_p95_ms_chat": busy,
        "pages_p95_ms_idle": idle,
        "worst_page_p95_ms_chat": [max(v["p95"] for v in p["pages_ms"].values()) for p in phases
                                   if p["phase"] == "chat"],
        "p95_ratio_chat_over_idle": [b / i for b, i in zip(busy, idle, strict=True)],
        "requirement_p95_under_100ms": all(b < 100 for b in busy),
    }
    out = {
        "meta": {**machine_meta(), "chats": args.chats, "phase_s": args.phase_s, "repeats": args.repeats,
                 "max_new_tokens": args.max_new_tokens, "max_active": args.max_active,
                 "model": "tiny GPT-2 (2 layers × 64, random weights)", "database": "SQLite"},
        "phases": phases,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["summary"], indent=2))


def run_phases(server, rep, args, people, probe) -> list[dict]:
    """An idle phase, then a chat phase, against one running server."""
    phases = []
    for phase in ("idle", "chat"):
        stop = threading.Event()
        lat: dict[str, list[float]] = {}
        codes: list = []
        answers: list = []
        threads = [threading.Thread(target=prober, args=(server.url, "probe", probe.password, probe.token,
                                                         stop, lat, codes), daemon=True)]
        if phase == "chat":
            threads += [threading.Thread(target=chatter, args=(server.url, n, p, stop, codes, answers),
                                         daemon=True) for n, p in people.items()]
        load0 = os.getloadavg()
        for t in threads:
            t.start()
        time.sleep(args.phase_s)
        stop.set()
        for t in threads:
            t.join(timeout=180)
        every = [x for v in lat.values() for x in v]
        row = {
            "repeat": rep,
            "phase": phase,
            "load_avg_start": load0,
            "load_avg_end": os.getloadavg(),
            "requests": len(codes),
            "status_5xx": sum(isinstance(c, int) and c >= 500 for c in codes),
            "status_other_errors": sorted({str(c) for c in codes if not (isinstance(c, int) and c < 400)}),
            "pages_ms": {p: {"n": len(v), "p50": pct(v, 50), "p95": pct(v, 95), "p99": pct(v, 99)}
                         for p, v in lat.items()},
            "pages_all_ms": {"n": len(every), "p50": pct(every, 50), "p95": pct(every, 95),
                             "p99": pct(every, 99)},
        }
        if phase == "chat":
            ttft = [a["ttft_ms"] for a in answers if a["ttft_ms"] is not None]
            tps = [a["tokens_per_s"] for a in answers if a["tokens_per_s"]]
            row["answers"] = len(answers)
            row["answer_status"] = {s: sum(a["status"] == s for a in answers)
                                    for s in {a["status"] for a in answers}}
            row["ttft_ms"] = {"p50": pct(ttft, 50), "p95": pct(ttft, 95)}
            row["tokens_per_s_per_chat"] = {"p50": pct(tps, 50), "p5": pct(tps, 5)}
            row["tokens_per_s_total"] = sum(a["tokens"] for a in answers) / args.phase_s
        phases.append(row)
        print(json.dumps(row), flush=True)
    return phases


if __name__ == "__main__":
    main()
