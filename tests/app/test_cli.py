"""`alignkit annotate` commands end to end on a SQLite file (in-process CLI)."""

import json
import subprocess
import sys

import pytest

from alignkit.cli import main
from alignkit.data.records import Comparison, record_to_dict
from alignkit.feedback.store import FeedbackStore


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_import_add_user_label_stats_export(tmp_path, capsys):
    db = str(tmp_path / "f.db")
    items = tmp_path / "items.jsonl"
    items.write_text(
        json.dumps({"prompt": "p1", "responses": ["a", "b"]})
        + "\n"
        + json.dumps({"type": "ranking", "prompt": "p2", "responses": ["x", "y", "z"]})
        + "\n"
    )
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"prompt": "g", "chosen": "good", "rejected": "bad"}) + "\n")
    assert run(["annotate", "import", "--db", db, "--project", "cli", str(items)], capsys)[0] == 0
    code, out, _ = run(["annotate", "import", "--db", db, "--project", "cli", str(items)], capsys)
    assert code == 0 and "imported 0 items" in out and "2 already present" in out
    code, out, _ = run(
        ["annotate", "import", "--db", db, "--project", "cli", "--gold", str(gold)], capsys
    )
    assert "imported 1 items" in out
    guide = tmp_path / "guide.txt"
    guide.write_text("Be fair.")
    code, out, _ = run(
        [
            "annotate",
            "project",
            "--db",
            db,
            "--project",
            "cli",
            "--overlap",
            "2",
            "--tags",
            "verbose,offtopic",
            "--guidelines",
            str(guide),
        ],
        capsys,
    )
    assert code == 0 and "overlap 2" in out and "verbose" in out
    code, out, _ = run(
        ["annotate", "add-user", "--db", db, "ann", "--group", "fr", "--project", "cli"], capsys
    )
    assert code == 0 and "shown only once" in out
    password = out.split("password: ")[1].split()[0]
    token = out.split("token:    ")[1].split()[0]

    store = FeedbackStore(db)
    assert store.project("cli").guidelines == "Be fair."
    user = store.check_password("ann", password)
    assert user is not None and store.user_by_token(token) == user
    while (task := store.next_task("cli", user)) is not None:
        answer = {"ranks": [1, 2, 2]} if task.type == "ranking" else {"choice": "tie"}
        store.record_vote(task.assignment_id, user, answer)
    store.close()

    code, out, _ = run(["annotate", "stats", "--db", db, "--project", "cli"], capsys)
    assert code == 0 and "3 items (1 gold), 3 labels" in out and "gold accuracy 0.000 on 1" in out
    code, out, _ = run(["annotate", "stats", "--db", db, "--project", "cli", "--json"], capsys)
    assert json.loads(out)["agreement"]["pairwise"]["krippendorff_alpha"] is None
    for fmt, n in [("trl", 2), ("rankings", 1), ("raw", 3), ("comparisons", 2)]:
        out_file = tmp_path / f"{fmt}.jsonl"
        code, out, _ = run(
            [
                "annotate",
                "export",
                "--db",
                db,
                "--project",
                "cli",
                "--format",
                fmt,
                "--out",
                str(out_file),
            ],
            capsys,
        )
        assert code == 0 and len(out_file.read_text().splitlines()) == n


def test_import_records_and_user_errors(tmp_path, capsys):
    db = str(tmp_path / "f.db")
    recs = tmp_path / "recs.jsonl"
    recs.write_text(json.dumps(record_to_dict(Comparison("p", "a", "b", incomparable=True))) + "\n")
    code, out, _ = run(["annotate", "import", "--db", db, str(recs)], capsys)
    assert code == 0 and "imported 1 items into project 'default'" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "p", "responses": ["a", "b"]})
        + "\n"
        + json.dumps({"prompt": "p", "responses": "ab"})
        + "\n"
    )
    code, _, err = run(["annotate", "import", "--db", db, str(bad)], capsys)
    assert code == 2 and err.startswith("error: ") and "bad.jsonl:2" in err and "responses" in err
    code, _, err = run(["annotate", "export", "--db", db, "--format", "xml", "--out", "x"], capsys)
    assert code == 2 and "--format" in err
    code, _, err = run(["annotate", "stats", "--db", db, "--project", "nope"], capsys)
    assert code == 2 and "no project named 'nope'" in err and "alignkit annotate import" in err
    code, _, err = run(["annotate", "add-user", "--db", db, "bad name"], capsys)
    assert code == 2 and "user name" in err
    code, _, err = run(["annotate", "import", "--db", "mysql://x", str(recs)], capsys)
    assert code == 2 and "postgresql://" in err and err.startswith("error: --db:")


def test_core_library_does_not_import_the_web_stack():
    code = (
        "import sys, alignkit.data, alignkit.losses, alignkit.models, alignkit.feedback.agreement\n"
        "bad = [m for m in ('fastapi', 'sqlalchemy', 'starlette', 'jinja2') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_trl_conversational_shows_turns(tmp_path, capsys):
    db = str(tmp_path / "f.db")
    f = tmp_path / "conv.jsonl"
    row = {
        "prompt": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Joke?"},
        ],
        "chosen": [{"role": "assistant", "content": "A pun."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }
    f.write_text(json.dumps(row) + "\n")
    assert run(["annotate", "import", "--db", db, str(f)], capsys)[0] == 0
    store = FeedbackStore(db)
    user = store.add_user("ann", password=False, projects=["default"]).user
    task = store.next_task("default", user)
    assert task.turns == row["prompt"] and sorted(task.responses) == ["A pun.", "No."]
    store.close()
