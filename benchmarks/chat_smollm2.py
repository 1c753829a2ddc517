"""SmolLM2-135M-Instruct on this CPU: time to first token and tokens/s of a streamed answer.

Two measurements:

1. **As a person sees it** — `alignkit chat serve --model smollm2` in its own process, one
   logged-in client: from sending the message to the first ``token`` event (queue, prefill,
   HTTP included), and tokens/s from the first token to ``done``.
2. **The decode loop side by side with the peer** — in one process, greedy, same prompts,
   same tokens: the chat's :func:`~alignkit.app.generation.stream_tokens` (with its
   :class:`~alignkit.app.generation.TextStream` decoding) against transformers'
   ``model.generate(streamer=…)`` (a streamer that timestamps every ``put``, i.e. every token
   as generate hands it out). Interleaved, paired repeats; ratios per repeat.

Threads: torch's default (the machine's cores) on both sides, and both decode in a thread of
their own (the server's worker is one): on this shared machine torch ops issued from the main
thread were measured 10–30× slower than the same ops from a fresh thread (a forward pass of
SmolLM2 on 40 tokens: 14 s vs 0.5–1 s at load ≈ 20), which would swamp any comparison. The
load average is recorded.

    python benchmarks/chat_smollm2.py --out benchmarks/results/chat_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests" / "app"))
sys.path.insert(0, str(HERE))

CONVERSATIONS = [
    [{"role": "user", "content": "How do I fix a flat bike tyre?"}],
    [{"role": "user", "content": "Give me three tips for sleeping better."}],
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."},
     {"role": "user", "content": "And what is it famous for? Answer in a few sentences."}],
]


def ours(cm, turns, max_new):
    import torch

    from alignkit.app.generation import TextStream, stream_tokens

    t0 = time.perf_counter()
    ids, max_new, _ = cm.prompt_ids(turns, max_new)
    text = TextStream(cm.tokenizer)
    times, tokens = [], []

    def run():  # in a thread of its own, as the server's worker (and as generate below)
        with torch.inference_mode():
            for tok in stream_tokens(cm.model, ids, max_new, eos_ids=cm.eos_ids):
                text.push(tok)
                times.append(time.perf_counter())
                tokens.append(tok)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return t0, times, tokens


def peer(cm, turns, max_new):
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self):
            self.times, self.tokens, self.prompt_seen = [], [], False

        def put(self, value):
            if not self.prompt_seen:  # generate first hands over the prompt
                self.prompt_seen = True
                return
            self.times.append(time.perf_counter())
            self.tokens += value.reshape(-1).tolist()

        def end(self):
            pass

    t0 = time.perf_counter()
    ids, max_new, _ = cm.prompt_ids(turns, max_new)
    s = Stamps()
    inp = torch.tensor([ids])
    t = threading.Thread(target=lambda: cm.model.generate(
        inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new, do_sample=False, streamer=s,
        pad_token_id=cm.tokenizer.pad_token_id))
    t.start()
    t.join()
    return t0, s.times, s.tokens


def rates(t0, times, tokens):
    ttft = (times[0] - t0) * 1000
    tps = (len(tokens) - 1) / (times[-1] - times[0]) if len(tokens) > 1 else float("nan")
    return ttft, tps


def served(n_turns: int, max_new: int) -> list[dict]:
    import httpx
    from _sse import read_answer
    from chat_helpers import ChatServer, login

    from alignkit.feedback.store import FeedbackStore

    work = Path(tempfile.mkdtemp(prefix="chat_smollm2_"))
    store = FeedbackStore(work / "s.db")
    store.ensure_project("s")
    who = store.add_user("ann", projects=["s"])
    server = ChatServer(work / "s.db", "s", ["smollm2:smollm2"], work / "server.log",
                        ["--max-new-tokens", str(max_new), "--temperature", "0"])
    out = []
    try:
        with httpx.Client(base_url=server.url, timeout=300) as c:
            csrf = login(c, "ann", who.password)
            for i in range(n_turns):
                turns = CONVERSATIONS[i % 2]  # single-turn prompts, a new chat each time
                t0 = time.perf_counter()
                d = c.post("/chat/api/send", json={"text": turns[0]["content"]}, headers={"X-CSRF-Token": csrf}).json()
                with c.stream("GET", f"/chat/api/stream/{d['answers'][0]['id']}") as s:
                    first, done = read_answer(s)
                end = time.perf_counter()
                n = done["stats"]["tokens"]
                out.append({"prompt": turns[0]["content"], "tokens": n, "ttft_ms": (first - t0) * 1000,
                            "tokens_per_s": (n - 1) / (end - first),
                            "server_ttft_ms": done["stats"].get("ttft_ms"),
                            "server_tokens_per_s": done["stats"].get("tokens_per_s")})
                print(json.dumps(out[-1]), flush=True)
    finally:
        server.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--served-turns", type=int, default=4)
    ap.add_argument("--out", default=str(HERE / "results" / "chat_smollm2.json"))
    args = ap.parse_args()

    import torch
    from _fair import machine_meta

    from alignkit.app.generation import load_chat_model

    cm = load_chat_model("smollm2", "smollm2")
    load0 = os.getloadavg()
    pairs = []
    for rep in range(args.repeats):
        for i, turns in enumerate(CONVERSATIONS):
            order = [("ours", ours), ("transformers", peer)]
            if (rep + i) % 2:
                order.reverse()  # interleaved: neither side always runs first
            row = {"repeat": rep, "conversation": i}
            toks = {}
            for name, fn in order:
                t0, times, tokens = fn(cm, turns, args.max_new_tokens)
                ttft, tps = rates(t0, times, tokens)
                row[name] = {"ttft_ms": ttft, "tokens_per_s": tps, "tokens": len(tokens)}
                toks[name] = tokens
            row["same_tokens"] = toks["ours"] == toks["transformers"]
            row["ratio_tokens_per_s"] = row["ours"]["tokens_per_s"] / row["transformers"]["tokens_per_s"]
            row["ratio_ttft"] = row["ours"]["ttft_ms"] / row["transformers"]["ttft_ms"]
            pairs.append(row)
            print(json.dumps(row), flush=True)
    serve_rows = served(args.served_turns, args.max_new_tokens)
    med = statistics.median
    out = {
        "meta": {**machine_meta(), "model": "SmolLM2-135M-Instruct (float32, from the GGUF wheel)",
                 "torch_threads": torch.get_num_threads(), "max_new_tokens": args.max_new_tokens,
                 "decoding": "greedy", "load_avg_start": load0, "load_avg_end": os.getloadavg()},
        "decode_loop_vs_transformers": pairs,
        "served": serve_rows,
        "summary": {
            "served_ttft_ms_median": med([r["ttft_ms"] for r in serve_rows]),
            "served_tokens_per_s_median": med([r["tokens_per_s"] for r in serve_rows]),
            "ours_ttft_ms_median": med([p["ours"]["ttft_ms"] for p in pairs]),
            "ours_tokens_per_s_median": med([p["ours"]["tokens_per_s"] for p in pairs]),
            "transformers_ttft_ms_median": med([p["transformers"]["ttft_ms"] for p in pairs]),
            "transformers_tokens_per_s_median": med([p["transformers"]["tokens_per_s"] for p in pairs]),
            "ratio_tokens_per_s_median": med([p["ratio_tokens_per_s"] for p in pairs]),
            "ratio_ttft_median": med([p["ratio_ttft"] for p in pairs]),
            "all_same_tokens": all(p["same_tokens"] for p in pairs),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["summary"], indent=2))


if __name__ == "__main__":
    main()
