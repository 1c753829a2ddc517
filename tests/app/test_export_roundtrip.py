"""Issue 27 item 1 and 8: every export format reads back and trains.

A project with every item type (pairwise, ranking and rating, each with a plain and a
multi-turn prompt, and a clip pair) labelled with every kind of answer (A/B, tie, both bad,
can't compare, ranks with a tie, ratings, tags, comments, edits) by two annotators. Each
training format is exported, read back by ``load_records`` and ``alignkit data inspect``,
and trained on by ``alignkit reward train`` and ``alignkit dpo`` (one tiny step each).
"""

import json

import pytest

from alignkit.cli import main
from alignkit.data import load_records
from alignkit.feedback.exports import EXPORT_FORMATS
from alignkit.feedback.media import import_video_pairs
from alignkit.feedback.store import FeedbackStore

TURNS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "A joke?"},
]
ITEMS = [
    {"prompt": "Explain TCP.", "responses": ["a reliable stream", "a fish"]},
    {"prompt": "Name a prime.", "responses": ["7", "8"]},
    {"prompt": "Say hi.", "responses": ["hi", "hello"]},
    {"prompt": "Colour of grass?", "responses": ["green", "loud"]},
    {"prompt": TURNS, "responses": ["a pun", "no"]},
    {"prompt": TURNS + [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "Another?"}],
     "responses": ["a knock-knock joke", "..."]},
    {"type": "ranking", "prompt": "Rank the answers to 2+2.", "responses": ["4", "four", "5"]},
    {"type": "ranking", "prompt": TURNS, "responses": ["pun", "riddle", "nothing"]},
    {"type": "rating", "prompt": "Rate the summary.", "responses": ["short and right", "long and wrong"]},
    {"type": "rating", "prompt": TURNS, "responses": ["ha", "meh"]},
]
# each training format and the format the data layer reads it as (the project mixes plain
# and multi-turn prompts, so its TRL export is conversational throughout)
FORMAT_TRAINS = {
    "trl": "trl_conversational",
    "trl_conversational": "trl_conversational",
    "comparisons": "alignkit",
    "rankings": "alignkit",
    "ratings": "alignkit",
    "corrections": "alignkit",
}


def answer(task, who):
    """A fixed answer per item, in display terms (the first response is the imported a)."""
    shown_a = task.display_order[0] == 0  # is the imported response a shown first?
    k = len(task.responses)
    tags = [["harmful"] if task.display_order[i] == 1 else [] for i in range(k)]
    out = {"tags": tags, "comment": f"{who} was here"}
    if task.type == "pairwise":
        choice = {
            "Explain TCP.": "a",
            "Name a prime.": "tie" if who == "ann" else "a",
            "Say hi.": "both_bad",
            "Colour of grass?": "incomparable" if who == "ann" else "b",
        }.get(task.prompt, "a" if who == "ann" else "b")
        if choice in ("a", "b"):
            choice = "A" if (choice == "a") == shown_a else "B"
        out["choice"] = choice
        if choice in ("A", "B"):
            out["strength"] = "much"
        edits = [None] * k
        edits[0] = task.responses[0] + " (fixed)"  # the response shown first
        out["edits"] = edits
    elif task.type == "video_pair":
        out = {"choice": "A" if who == "ann" else "tie", "comment": out["comment"]}
    elif task.type == "ranking":
        ranks = [1 + task.display_order[i] for i in range(k)]
        ranks[ranks.index(3)] = 2 if who == "bob" else 3  # bob ties the last two
        out["ranks"] = ranks
    else:
        out["ratings"] = [6 - 3 * task.display_order[i] for i in range(k)]
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every export format of the labelled project: {format: path}."""
    tmp = tmp_path_factory.mktemp("export")
    store = FeedbackStore(tmp / "f.db")
    store.ensure_project("p", overlap=2, gold_every=0)
    store.add_items("p", ITEMS)
    webm = bytes.fromhex("1a45dfa3") + b"\0" * 60
    import_video_pairs(store, "p", [{"video_a": webm, "video_b": webm[:-1] + b"\1", "meta": {"segments": [1, 2]}}])
    for who in ("ann", "bob"):
        user = store.add_user(who, password=False, projects=["p"], group=who.upper()).user
        while (task := store.next_task("p", user)) is not None:
            store.record_vote(task.assignment_id, user, answer(task, who))
    assert store.count_votes("p") == 2 * (len(ITEMS) + 1)
    paths = {}
    for fmt in EXPORT_FORMATS:
        paths[fmt] = tmp / f"{fmt}.jsonl"
        store.export("p", fmt, paths[fmt])
    store.close()
    return paths


def test_every_format_reads_back_with_tags_and_comments(exported):
    assert set(FORMAT_TRAINS) | {"raw"} == set(EXPORT_FORMATS)
    for fmt, reader in FORMAT_TRAINS.items():
        loaded = load_records(exported[fmt], keep_incomparable=True)
        assert loaded.format == reader, fmt
        assert all(r.meta.get("comment") in ("ann was here", "bob was here") for r in loaded.records), fmt
    # TRL: plain and multi-turn prompts in one file — one form for every row
    trl = load_records(exported["trl"]).records
    assert len(trl) == 2 * 6 - 1  # ann's "can't compare" left out
    assert {r.meta["prompt_messages"][0]["content"] for r in trl} >= {"Explain TCP.", "Hi"}
    tcp = next(r for r in trl if r.meta["prompt_messages"] == [{"role": "user", "content": "Explain TCP."}])
    assert tcp.chosen == "a reliable stream" and tcp.meta["rejected_tags"] == ["harmful"]
    assert "chosen_tags" not in tcp.meta and tcp.annotator in ("ann", "bob") and tcp.group in ("ANN", "BOB")
    # records: tags per response in the imported order, whatever side they were shown on
    comps = load_records(exported["comparisons"], keep_incomparable=True).records
    assert all(c.meta["tags"] == [[], ["harmful"]] for c in comps if "item_meta" not in c.meta)
    ranks = load_records(exported["rankings"]).records
    assert all(r.meta["tags"] == [[], ["harmful"], []] for r in ranks)
    ratings = load_records(exported["ratings"]).records
    assert sorted(tuple(r.meta.get("tags", [])) for r in ratings) == [()] * 4 + [("harmful",)] * 4
    corrections = load_records(exported["corrections"]).records
    assert len(corrections) == 12 and all(c.edited.endswith(" (fixed)") for c in corrections)
    assert all(c.meta.get("tags", []) == (["harmful"] if c.meta["response_index"] == 1 else []) for c in corrections)
    raw = [json.loads(line) for line in exported["raw"].read_text().splitlines()]
    assert len(raw) == 22


def test_trl_of_plain_prompts_only_stays_standard(tmp_path):
    store = FeedbackStore(tmp_path / "f.db")
    store.ensure_project("p", gold_every=0)
    store.add_items("p", ITEMS[:2])
    user = store.add_user("ann", password=False, projects=["p"]).user
    while (task := store.next_task("p", user)) is not None:
        store.record_vote(task.assignment_id, user, {"choice": "A", "tags": [["untrue"], []]})
    store.export("p", "trl", tmp_path / "t.jsonl")
    loaded = load_records(tmp_path / "t.jsonl")
    assert loaded.format == "trl" and {r.prompt for r in loaded.records} == {"Explain TCP.", "Name a prime."}
    assert all(r.meta["chosen_tags"] == ["untrue"] for r in loaded.records)
    store.close()


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    assert e.value.code == 0, f"{args}: {out.err[-2000:]}"
    assert "Traceback" not in out.err
    return out.out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt", list(FORMAT_TRAINS))
def test_every_format_inspects_and_trains(exported, fmt, tiny_lm_dir, tmp_path, capsys):
    """export → data inspect → reward train → dpo, as a user would chain them."""
    path = str(exported[fmt])
    printed = run(["data", "inspect", path], capsys)
    assert f"format {FORMAT_TRAINS[fmt]}" in printed and " rows" in printed
    ratings = ["--set", "ratings_to_pairs=true"] if fmt == "ratings" else []
    run(["reward", "train", "--model", str(tiny_lm_dir), "--data", path, "--out", str(tmp_path / "rm"),
         "--epochs", "1", "--set", "eval_fraction=0", "--set", "max_length=64", *ratings], capsys)
    assert (tmp_path / "rm" / "eval.json").exists()
    run(["dpo", "--policy", str(tiny_lm_dir), "--data", path, "--out", str(tmp_path / "dpo"),
         "--max-steps", "1", "--batch-size", "2", "--set", "max_length=64", "--set", "tensorboard=false", *ratings],
        capsys)
    assert (tmp_path / "dpo" / "config.json").exists()
