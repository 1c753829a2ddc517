"""Issue 27 items 2–7: the loop with people in it, against an in-process stand-in for the
annotation server (the Chromium test in tests/app/test_loop_browser.py runs the real one).

Never stuck (a round of only "both bad" asks for more pairs; a resumed round replays its
batches and carries on), never silent (what was posted, reused, labelled and by whom), no
secret in the run's files, no identical pair sent, the server checked before anything slow,
a one-line error when it is away, the RM accuracy with its count, and a report.html.
"""

import json

import httpx
import pytest

from alignkit.cli import main
from alignkit.config import apply_overrides
from alignkit.data import Comparison
from alignkit.errors import AlignkitError, ConfigError
from alignkit.feedback.client import AnnotationClient, ServerUnreachable
from alignkit.recipes.loop import LoopConfig, run_loop

TOKEN = "akt_secret-admin-token-0123456789"
PROMPTS = ["Say hi.", "Name a fruit.", "Count to three.", "What is red?"]


class FakeServer:
    """The annotation server as the loop sees it, in memory: items keyed by content (so a
    pair posted again is "already there"), labelled by ``answer(prompt, a, b, batch)``
    (None: not labelled yet) at the first look after posting."""

    def __init__(self, answer):
        self.items: dict[tuple, int] = {}
        self.labels: dict[int, Comparison] = {}
        self.posted: list[list[tuple]] = []
        self.closed: set[int] = set()
        self.answer = answer

    def client(self, url, token, **kw):
        server = self

        class Client:
            base_url = url
            retry_s = kw.get("retry_s", 0)

            def me(self):
                assert token == TOKEN
                return {"name": "boss", "role": "admin", "group": None, "project": "loop"}

            def close(self):
                pass

            def post_pairs(self, pairs, project):
                server.posted.append(list(pairs))
                ids, added = [], 0
                for p in pairs:
                    if p not in server.items:
                        server.items[p] = len(server.items) + 1
                        added += 1
                    ids.append(server.items[p])
                return {"item_ids": ids, "added": added, "skipped": len(pairs) - added}

            def fetch_labels(self, ids, project):
                out = {}
                batch = len(server.posted)
                for p, i in server.items.items():
                    if i in ids:
                        if i not in server.labels:
                            mu = server.answer(*p, batch)
                            if mu is None:
                                continue
                            server.labels[i] = Comparison(*p, mu=0.5 if mu == "inc" else mu,
                                                          incomparable=mu == "inc",
                                                          meta={"item_id": i, "annotators": ["ann"]})
                        out[i] = server.labels[i]
                return out

            def close_items(self, ids, project):
                server.closed |= set(ids)
                return len(ids)

        return Client()


def cfg_for(tmp_path, tiny_lm_dir, **kw):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    base = dict(out=str(tmp_path / "run"), policy=str(tiny_lm_dir), prompts=str(prompts), rounds=1,
                pairs_per_round=4, heldout_pairs=4, eval_samples_per_prompt=1, max_new_tokens=6, method="dpo",
                seed=1)
    base.update(kw)
    cfg = LoopConfig(**base)
    return apply_overrides(cfg, {"annotator.kind": "human", "annotator.poll_s": "0", "reward.epochs": "1",
                                 "reward.max_length": "32", "dpo.epochs": "1", "dpo.max_length": "32",
                                 "dpo.batch_size": "2"})


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("ALIGNKIT_TOKEN", TOKEN)


@pytest.mark.timeout(300)
def test_a_round_of_only_both_bad_asks_for_more_and_resume_carries_on(tmp_path, tiny_lm_dir, token, monkeypatch):
    """Round 1's first batch is all "both bad" / "can't compare" (before: DPO failed with
    "no comparisons to train on", and --resume failed the same way every time). The loop asks
    for more pairs; here the run is stopped while they wait, then resumed: the first batch
    comes back from the server (already labelled), the second is answered, round 1 trains."""
    lines = []

    def first_run_answer(p, a, b, batch):
        if batch == 1:  # the held-out batch: a preference, so round 1 is the one that is stuck
            return 1.0 if len(a) <= len(b) else 0.0
        if batch == 2:
            return 0.5 if p != PROMPTS[0] else "inc"  # round 1: both bad / can't compare only
        raise AlignkitError("people went home")  # the run stops while the extra pairs wait

    stop = FakeServer(first_run_answer)
    monkeypatch.setattr("alignkit.feedback.client.AnnotationClient", stop.client)
    cfg = cfg_for(tmp_path, tiny_lm_dir)
    with pytest.raises(AlignkitError, match="people went home"):
        run_loop(cfg, say=lines.append)
    said = "\n".join(lines)
    assert "none of the 4 labels so far prefers one response" in said and "asking for 2 more pairs" in said
    first_batches = [list(b) for b in stop.posted]
    assert len(first_batches) == 3  # held-out, round 1, round 1's extra batch

    # resumed: the same server (labels kept), people now prefer the shorter response
    stop.answer = lambda p, a, b, batch: 1.0 if len(a) <= len(b) else 0.0
    lines.clear()
    res = run_loop(apply_overrides(cfg, {"resume": "true"}), say=lines.append)
    said = "\n".join(lines)
    assert stop.posted[3:6] == first_batches  # the same batches replayed...
    assert "4 already there from an earlier run (their labels are reused)" in said  # ...and said so
    row = res["rounds"][0]
    assert row["batches"] == 2 and row["new_labels"] == 6 and row["labels"] == 6
    assert row["rm_accuracy_n"] == len(stop.posted[0])  # every held-out label prefers a response
    labels = [json.loads(x) for x in (tmp_path / "run" / "round_1" / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 6 and sum(x["mu"] != 0.5 for x in labels) == 2
    assert stop.closed >= {stop.items[p] for b in first_batches for p in b}  # labels taken: final
    assert (tmp_path / "run" / "round_1" / "policy" / "config.json").exists()
    assert "Rounds" in (tmp_path / "run" / "report.html").read_text()


@pytest.mark.timeout(300)
def test_what_people_are_told_and_what_is_written(tmp_path, tiny_lm_dir, token, monkeypatch, capsys):
    """`alignkit loop` with people: progress on stderr (posted, reused, labelled by whom, still
    needed), a warning when round 1 asks for many labels, no pair of identical responses, the
    token nowhere in the run's files, the RM accuracy with its count, a report.html."""
    server = FakeServer(lambda p, a, b, batch: 1.0 if len(a) >= len(b) else 0.0)
    monkeypatch.setattr("alignkit.feedback.client.AnnotationClient", server.client)
    from alignkit.recipes import loop

    real = loop.collect_pairs
    repeats = []

    def sometimes_identical(model, tok, prompts, n, max_new_tokens, seed):
        """The policy's pairs, but every third one the same response twice (as a weak policy does;
        not when re-sampling a few)."""
        pairs = real(model, tok, prompts, n, max_new_tokens, seed)
        out = [(p, a, a) if i % 3 == 0 and n > 3 else (p, a, b) for i, (p, a, b) in enumerate(pairs)]
        repeats.append(sum(a == b for _, a, b in out))
        return out

    monkeypatch.setattr(loop, "collect_pairs", sometimes_identical)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    config = tmp_path / "loop.yaml"
    out = tmp_path / "run"
    config.write_text(
        f"out: {out}\npolicy: {tiny_lm_dir}\nprompts: {prompts}\nrounds: 1\npairs_per_round: 8\nheldout_pairs: 8\n"
        "eval_samples_per_prompt: 1\nmax_new_tokens: 2\nmethod: bon\nbon_n: 2\nseed: 0\n"
        "annotator:\n  kind: human\n  poll_s: 0\n  warn_labels: 10\nreward:\n  epochs: 1\n  max_length: 32\n"
    )
    with pytest.raises(SystemExit) as e:
        main(["loop", "--config", str(config)])
    printed = capsys.readouterr()
    assert e.value.code == 0, printed.err
    err = printed.err
    assert "people will be asked for 8 held-out + 8 labels before round 1" in err
    assert "warning: round 1 needs 16 labels from people (over annotator.warn_labels = 10)" in err
    assert "held-out: posted 8 pairs to" in err and "round 1/1: posted 8 pairs" in err
    assert "8/8 pairs labelled, 0 still needed (labels by: ann 8)" in err
    # a third of the pairs sampled had two identical responses: none of them went out
    sent = [p for batch in server.posted for p in batch]
    assert sum(repeats) > 0 and all(a != b for _, a, b in sent)
    assert "re-sampled 3 pairs whose two responses were identical" in err  # ...and the loop said so
    # the secret is in no file of the run; the config says where it came from
    for f in out.rglob("*"):
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes(), f
    written = json.loads((out / "alignkit_config.json").read_text())
    assert written["annotator"]["token_env"] == "ALIGNKIT_TOKEN" and "server_token" not in written["annotator"]
    row = json.loads((out / "rounds.jsonl").read_text())
    assert row["rm_accuracy_n"] == len(server.posted[0]) == 8 and "(8)" in printed.out
    assert (out / "report.html").exists() and json.loads(printed.out.splitlines()[-1])["report"].endswith("report.html")


def test_the_server_and_token_are_checked_before_anything_slow(tmp_path, monkeypatch, capsys):
    """The embedded task (whose base policy takes minutes to build) with people: a missing
    token, an unreachable server, a token in the config — each one line, exit 2, before the
    base policy is built (before: a missing token surfaced after it, an unreachable server
    was a 100-line httpx traceback)."""
    out = tmp_path / "run"
    args = ["loop", "--out", str(out), "--set", "annotator.kind=human", "--set", "annotator.retry_s=1"]
    monkeypatch.delenv("ALIGNKIT_TOKEN", raising=False)
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "needs an admin token: set the environment variable ALIGNKIT_TOKEN" in err
    monkeypatch.setenv("ALIGNKIT_TOKEN", TOKEN)
    with pytest.raises(SystemExit) as e:
        main(args + ["--set", "annotator.server_url=http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: annotator.server_url: annotation server "
                                                   "http://127.0.0.1:9 not answering")
    assert "retrying in" in err  # it did retry first
    with pytest.raises(SystemExit) as e:
        main(args + ["--set", f"annotator.server_token={TOKEN}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "server_token" in err
    token_file = tmp_path / "token"
    token_file.write_text("")
    with pytest.raises(SystemExit) as e:
        main(args + ["--set", f"annotator.token_file={token_file}"])
    assert e.value.code == 2 and "is empty" in capsys.readouterr().err
    assert not (out / "base").exists() and not (out / "alignkit_config.json").exists()


def test_the_client_waits_out_a_restart_then_gives_up_in_one_line():
    """Connection refused twice, then a 503 from a proxy, then the answer; the waits grow
    (0.5, 1, 2 s). Past the budget: ServerUnreachable, one line."""
    replies = [httpx.ConnectError("[Errno 111] Connection refused")] * 2 + [503, 200]

    def handler(request):
        r = replies.pop(0)
        if isinstance(r, Exception):
            raise r
        return httpx.Response(r, json={"name": "boss", "role": "admin", "group": None, "project": "loop"})

    waits, told = [], []
    client = AnnotationClient("http://x", "t", retry_s=10, on_retry=told.append, sleep=waits.append)
    client._http = httpx.Client(base_url="http://x", transport=httpx.MockTransport(handler))
    assert client.me()["role"] == "admin"
    assert waits == [0.5, 1.0, 2.0] and "connection refused" in told[0] and "HTTP 503" in told[2]
    replies[:] = [httpx.ConnectError("[Errno 111] Connection refused")] * 20
    waits.clear()
    with pytest.raises(ServerUnreachable, match=r"^annotation server http://x not answering for 3.5 s \(connection refused\)"):
        client.retry_s = 4
        client.me()
    assert waits == [0.5, 1.0, 2.0]


def test_a_server_token_in_the_config_is_refused(tmp_path):
    from alignkit.config import load_config

    bad = tmp_path / "loop.yaml"
    bad.write_text("annotator:\n  kind: human\n  server_token: abc\n")
    with pytest.raises(ConfigError, match="server_token"):
        load_config(LoopConfig, bad)
