"""`alignkit chat leaderboard | export | stats | review | revise | serve` from the command line."""

import json

import pytest

from alignkit.cli import main
from alignkit.cli.chat import parse_model_spec
from alignkit.data import load_records
from alignkit.feedback.conversations import ChatStore
from alignkit.feedback.store import FeedbackStore


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "c.db"
    store = FeedbackStore(path)
    store.ensure_project("p", gold_every=0)
    ann = store.add_user("ann", projects=["p"]).user
    chat = ChatStore(store)
    for choice in ("a", "a", "b", "both_bad", "tie", "a"):
        cid = chat.start("p", ann, "arena", ["base", "dpo"] if choice != "tie" else ["dpo", "base"])
        u = chat.add_user_turn(cid, ann, f"q {choice}", parent_id=None)
        x, y = chat.add_answers(cid, ann, u.id, [(m, s) for m, s in zip(chat.conversation(cid, ann).models, "AB", strict=True)])
        chat.finish(x.id, f"answer {choice} x", "done")
        chat.finish(y.id, f"answer {choice} y", "done")
        chat.arena_vote(cid, ann, choice)
    cid = chat.start("p", ann)
    u = chat.add_user_turn(cid, ann, "How do I bake bread?", parent_id=None)
    (m,) = chat.add_answers(cid, ann, u.id, [("base", None)])
    chat.finish(m.id, "buy it", "done")
    chat.thumb(m.id, ann, False, comment="It does not say how to bake.")
    store.close()
    return path


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_parse_model_spec():
    assert parse_model_spec("runs/dpo:dpo") == ("runs/dpo", "dpo")
    assert parse_model_spec("runs/dpo") == ("runs/dpo", "dpo")
    assert parse_model_spec("smollm2") == ("smollm2", "smollm2")
    assert parse_model_spec("/a/b/") == ("/a/b/", "b")


def test_leaderboard_export_stats_review(db, tmp_path, capsys):
    code, out, _ = run(["chat", "leaderboard", "--db", str(db), "--project", "p", "--bootstrap", "50"], capsys)
    assert code == 0 and "6 arena votes" in out
    lines = [x for x in out.splitlines() if x.strip().startswith(("1 ", "2 "))]
    assert [x.split()[1] for x in lines] == ["base", "dpo"]  # base won 3 of the 4 decisive votes
    code, out, _ = run(["chat", "leaderboard", "--db", str(db), "--project", "p", "--json", "--bootstrap", "50"], capsys)
    board = json.loads(out)
    assert board["battles"] == 6 and {r["model"] for r in board["rows"]} == {"base", "dpo"}
    assert all(r["elo_lo"] <= r["elo"] <= r["elo_hi"] for r in board["rows"])
    assert sum(r["both_bad"] for r in board["rows"]) == 2  # one vote, counted for both models

    out_file = tmp_path / "trl.jsonl"
    code, out, _ = run(["chat", "export", "--db", str(db), "--project", "p", "--out", str(out_file)], capsys)
    assert code == 0 and "wrote 6 rows (trl)" in out
    assert len(load_records(out_file).records) == 6
    code, _, err = run(["chat", "export", "--db", str(db), "--project", "p", "--format", "xml", "--out", str(out_file)],
                       capsys)
    assert code == 2 and err.strip() == "error: --format: expected one of trl, comparisons, ratings, corrections, sft, raw, got 'xml'"
    code, _, err = run(["chat", "export", "--db", str(db), "--project", "nope", "--out", str(out_file)], capsys)
    assert code == 2 and err.startswith("error: --project: no project named 'nope'") and "\n" not in err.strip()

    code, out, _ = run(["chat", "stats", "--db", str(db), "--project", "p"], capsys)
    st = json.loads(out)
    assert st["signals"] == {"arena": 6, "thumb": 1} and st["both_bad"] == 1
    code, out, _ = run(["chat", "review", "--db", str(db), "--project", "p"], capsys)
    assert code == 0 and "queued 6 pairs" in out
    code, out, _ = run(["chat", "review", "--db", str(db), "--project", "p"], capsys)
    assert "queued 0 pairs" in out and "6 already queued" in out


def test_revise_turns_comments_into_machine_revised_pairs(db, tmp_path, tiny_lm_dir, capsys):
    out_file, sft_file = tmp_path / "rev.jsonl", tmp_path / "rev-sft.jsonl"
    code, out, err = run(["chat", "revise", "--db", str(db), "--project", "p", "--reviser", str(tiny_lm_dir),
                          "--out", str(out_file), "--sft-out", str(sft_file), "--max-new-tokens", "8"], capsys)
    assert code == 0, err
    assert "revising 1 commented answers" in err
    (row,) = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert row["rejected"] == [{"role": "assistant", "content": "buy it"}]
    assert row["prompt"] == [{"role": "user", "content": "How do I bake bread?"}]
    assert row["machine_revised"] is True and row["comment"] == "It does not say how to bake."
    (c,) = load_records(out_file).records
    assert c.meta["machine_revised"] is True
    (s,) = [json.loads(x) for x in sft_file.read_text().splitlines()]
    assert s["messages"][-1]["content"] == row["chosen"][0]["content"]
    code, _, err = run(["chat", "revise", "--out", str(out_file)], capsys)
    assert code == 2 and err.strip() == "error: give either --db (with --project) or --data"


def test_serve_refuses_a_missing_model_in_one_line(tmp_path, capsys):
    code, _, err = run(["chat", "serve", "--db", str(tmp_path / "x.db"), "--model", str(tmp_path / "nowhere:m")], capsys)
    last = err.strip().splitlines()[-1]  # after the progress line "loading m from …"
    assert code == 2 and last.startswith(f"error: --model {tmp_path / 'nowhere'}:m: ") and "not found" in last
