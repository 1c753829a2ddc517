"""The feedback store, without the web app: SQLite always, PostgreSQL when configured."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.data import correction_sft_examples, load_records, to_comparisons
from alignkit.data.records import Comparison, Ranking, Rating
from alignkit.errors import AlignkitError, DataError
from alignkit.feedback.agreement import cohen_kappa
from alignkit.feedback.answers import canonical_answer
from alignkit.feedback.errors import Conflict, InvalidAnswer, NotFound
from alignkit.feedback.store import FeedbackStore

PAIR = {"prompt": "2+2?", "responses": ["4", "5"]}


def bot(store, name, group=None):
    return store.add_user(name, group=group, password=False, projects=["p"]).user


# ------------------------------------------------------------------ canonical answers (pure)


def test_pairwise_choice_maps_display_to_original():
    """Shown as (B-original, A-original): choosing the left one ("A") means original b."""
    ans = canonical_answer("pairwise", ["x", "y"], [1, 0], {"choice": "A", "strength": "much"})
    assert ans["choice"] == "b" and ans["strength"] == "much"
    assert canonical_answer("pairwise", ["x", "y"], [0, 1], {"choice": "A"})["choice"] == "a"
    assert canonical_answer(
        "pairwise", ["x", "y"], [1, 0], {"choice": "tie", "strength": "much"}
    ) == {"choice": "tie", "strength": None, "tags": [[], []], "comment": "", "edits": [None, None]}


def test_ranking_ranks_with_ties_map_to_order():
    """Display order [2, 0, 1] with ranks (1, 3, 1): original 2 and 1 tie for best, 0 last."""
    ans = canonical_answer("ranking", ["r0", "r1", "r2"], [2, 0, 1], {"ranks": [1, 3, 1]})
    assert ans["order"] == [1, 2, 0] and ans["ties"] == [[1, 2]]
    Ranking("p", ["r0", "r1", "r2"], ans["order"], ans["ties"])  # a valid record


def test_rating_tags_edits_map_to_original():
    ans = canonical_answer(
        "rating",
        ["r0", "r1"],
        [1, 0],
        {
            "ratings": [7, 2],
            "tags": [["harmful"], []],
            "edits": [None, "fixed r0"],
            "comment": "ok",
        },
    )
    assert ans["scores"] == [2, 7]
    assert ans["tags"] == [[], ["harmful"]]
    assert ans["edits"] == ["fixed r0", None]
    assert ans["comment"] == "ok"
    same = canonical_answer("rating", ["r0"], [0], {"ratings": [3], "edits": ["r0"]})
    assert same["edits"] == [None]  # unchanged text is not a correction


@pytest.mark.parametrize(
    "kind, answer",
    [
        ("pairwise", {"choice": "C"}),
        ("pairwise", {}),
        ("pairwise", {"choice": "A", "strength": "huge"}),
        ("ranking", {"ranks": [1, 2]}),
        ("ranking", {"ranks": [1, 2, 9]}),
        ("rating", {"ratings": [0, 3, 3]}),
        ("rating", {"ratings": [True, 3, 3]}),
        ("rating", {"ratings": [3, 3, 3], "tags": [["rude"], [], []]}),
        ("rating", {"ratings": [3, 3, 3], "surprise": 1}),
        ("rating", {"ratings": [3, 3, 3], "edits": [1, None, None]}),
    ],
)
def test_invalid_answers_are_refused(kind, answer):
    n = 2 if kind == "pairwise" else 3
    with pytest.raises(InvalidAnswer):
        canonical_answer(kind, ["x"] * n, list(range(n)), answer)


# ------------------------------------------------------------------ store (SQLite + PostgreSQL)


def test_vote_is_stored_in_original_terms_with_display_order(db_url):
    store = FeedbackStore(db_url, shuffle=True)
    store.ensure_project("p")
    store.add_items("p", [PAIR] * 1 + [{"prompt": "q", "responses": ["r1", "r2"]}])
    u = bot(store, "ann", group="fr")
    for _ in range(2):
        task = store.next_task("p", u)
        assert sorted(task.display_order) == [0, 1]
        original = store.task(task.assignment_id, u)
        assert task.responses == original.responses
        store.record_vote(task.assignment_id, u, {"choice": "A"})
        raw = store.raw_votes("p")[-1]
        left = task.display_order[0]
        assert raw["answer"]["choice"] == ("a" if left == 0 else "b")
        assert raw["responses"][left] == task.responses[0]
        assert raw["display_order"] == task.display_order
        assert raw["annotator"] == "ann" and raw["group_name"] == "fr"
        assert raw["time_spent_ms"] >= 0 and raw["created_at"] >= raw["served_at"]
    store.close()


def test_duplicate_submit_is_idempotent_and_conflicts_are_refused(store):
    store.ensure_project("p")
    store.add_items("p", [PAIR])
    u = bot(store, "ann")
    task = store.next_task("p", u)
    first = store.record_vote(task.assignment_id, u, {"choice": "A"})
    again = store.record_vote(task.assignment_id, u, {"choice": "A"})
    assert not first.duplicate and again.duplicate and again.vote_id == first.vote_id
    with pytest.raises(Conflict):
        store.record_vote(task.assignment_id, u, {"choice": "B"})
    assert store.count_votes("p") == 1
    other = bot(store, "eve")
    with pytest.raises(NotFound):
        store.record_vote(task.assignment_id, other, {"choice": "B"})
    with pytest.raises(NotFound):
        store.task(task.assignment_id, other)
    assert store.count_votes("p") == 1


def test_overlap_gives_each_item_to_k_different_annotators(store):
    store.ensure_project("p", overlap=2, gold_every=0)
    store.add_items("p", [{"prompt": f"q{i}", "responses": ["x", "y"]} for i in range(3)])
    people = [bot(store, n) for n in ("ann", "bob", "cy")]
    for _ in range(3):  # round-robin until nobody gets anything
        for u in people:
            task = store.next_task("p", u)
            if task is not None:
                assert store.next_task("p", u).assignment_id == task.assignment_id  # resumes
                store.record_vote(task.assignment_id, u, {"choice": "tie"})
    assert all(store.next_task("p", u) is None for u in people)
    raw = store.raw_votes("p")
    assert len(raw) == 6
    per_item = {}
    for v in raw:
        per_item.setdefault(v["item_id"], []).append(v["annotator"])
    assert all(len(a) == 2 and len(set(a)) == 2 for a in per_item.values())


def test_skip_frees_the_slot_and_is_not_offered_again(store):
    store.ensure_project("p", overlap=1)
    store.add_items("p", [PAIR])
    ann, bob = bot(store, "ann"), bot(store, "bob")
    task = store.next_task("p", ann)
    assert store.next_task("p", bob) is None  # the only slot is held by ann
    store.skip(task.assignment_id, ann)
    assert store.next_task("p", ann) is None
    assert store.next_task("p", bob).item_id == task.item_id
    assert store.progress("p", ann) == {"done": 0, "skipped": 1, "items": 1}


def test_gold_items_are_interleaved_and_score_accuracy(store):
    store.ensure_project("p", overlap=1, gold_every=2)
    store.add_items("p", [{"prompt": f"q{i}", "responses": ["good", "bad"]} for i in range(3)])
    added = store.add_items(
        "p",
        [Comparison("g1", "good", "bad", mu=1.0), Comparison("g2", "bad", "good", mu=0.0)],
        gold=True,
    )
    assert added.added == 2
    u = bot(store, "ann")
    seen_gold = []
    while (task := store.next_task("p", u)) is not None:
        seen_gold.append(task.prompt.startswith("g"))
        good = task.responses.index("good")
        wrong = task.prompt == "g2"  # ann gets g2 wrong
        store.record_vote(task.assignment_id, u, {"choice": "AB"[1 - good if wrong else good]})
    assert sum(seen_gold) == 2  # both gold items served (at random positions: see
    # test_hardening.py::test_12_gold_items_are_placed_at_random_at_the_same_rate)
    (row,) = store.stats("p")["annotators"]
    assert row["gold_n"] == 2 and row["gold_accuracy"] == pytest.approx(0.5)


def test_ranking_rating_tags_edits_comment_and_exports(store, tmp_path):
    store.ensure_project("p", tags=["offtopic"])
    store.add_items(
        "p",
        [
            {"type": "ranking", "prompt": "rank", "responses": ["r0", "r1", "r2"]},
            {"type": "rating", "prompt": "rate", "responses": ["s0", "s1"]},
            {"prompt": "t", "responses": ["x", "y"]},
            {"prompt": "i", "responses": ["x", "z"]},
            {"prompt": "bb", "responses": ["w", "v"]},
        ],
    )
    u = bot(store, "ann", group="de")
    answers = {
        "rank": {"ranks": [1, 1, 2], "comment": "close call"},
        "rate": {
            "ratings": [6, 2],
            "tags": [["offtopic"], ["untrue"]],
            "edits": ["better", None],
            "comment": "fixed the first",
        },
        "t": {"choice": "tie"},
        "i": {"choice": "incomparable"},
        "bb": {"choice": "both_bad"},
    }
    while (task := store.next_task("p", u)) is not None:
        store.record_vote(task.assignment_id, u, answers[task.prompt])

    trl = store.export_rows("p", "trl")
    assert sorted(r["prompt"] for r in trl) == ["bb", "t"]  # incomparable left out
    assert all(r["mu"] == 0.5 for r in trl)
    comps = {c.prompt: c for c in store.export_records("p", "comparisons")}
    assert comps["i"].incomparable and comps["bb"].meta["both_bad"] and comps["t"].is_tie
    (rk,) = store.export_records("p", "rankings")
    assert rk.ties and len(rk.ties[0]) == 2 and rk.annotator == "ann" and rk.group == "de"
    ratings = store.export_records("p", "ratings")
    assert len(ratings) == 2
    shown = {r.response: r.score for r in ratings}
    (corr,) = store.export_records("p", "corrections")
    assert corr.edited == "better" and corr.response in ("s0", "s1")
    assert shown[corr.response] == 6.0  # the edit and the score refer to the same response
    # comments travel as metadata: on the records, and on what corrections train
    assert rk.meta["comment"] == "close call" and corr.meta["comment"] == "fixed the first"
    assert to_comparisons([corr])[0].meta["comment"] == "fixed the first"
    assert correction_sft_examples([corr])[0]["meta"]["comment"] == "fixed the first"
    assert "comment" not in comps["t"].meta  # no comment written, none exported
    raw = store.export_rows("p", "raw")
    assert len(raw) == 5 and {r["type"] for r in raw} == {"pairwise", "ranking", "rating"}
    rate_raw = next(r for r in raw if r["type"] == "rating")
    assert sorted(map(tuple, rate_raw["answer"]["tags"])) == [("offtopic",), ("untrue",)]

    path = tmp_path / "prefs.jsonl"
    assert store.export("p", "trl", path) == 2
    loaded = load_records(path)  # the data layer reads the export back
    assert loaded.format == "trl" and all(c.mu == 0.5 for c in loaded.records)
    path2 = tmp_path / "comps.jsonl"
    store.export("p", "comparisons", path2)
    assert load_records(path2).n_incomparable == 1
    with pytest.raises(AlignkitError):
        store.export_rows("p", "csv")


def test_transcripts_keep_turns_and_export_conversational(store, tmp_path):
    store.ensure_project("p")
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "joke?"},
    ]
    store.add_items("p", [{"prompt": turns, "responses": ["pun", "none"]}])
    u = bot(store, "ann")
    task = store.next_task("p", u)
    assert task.turns == turns and "joke?" in task.prompt
    store.record_vote(task.assignment_id, u, {"choice": "A" if task.responses[0] == "pun" else "B"})
    (row,) = store.export_rows("p", "trl")
    assert row["prompt"] == turns and row["chosen"] == [{"role": "assistant", "content": "pun"}]
    store.export("p", "trl", tmp_path / "c.jsonl")
    loaded = load_records(tmp_path / "c.jsonl")
    assert loaded.format == "trl_conversational" and loaded.records[0].chosen == "pun"


def test_import_records_gold_idempotent_and_errors(store):
    store.ensure_project("p")
    recs = [
        Comparison("c", "a", "b", mu=0.5),
        Ranking("r", ["x", "y", "z"], [2, 0, 1], [[2, 0]]),
        Rating("s", "resp", 5.0),
    ]
    first = store.add_items("p", recs, gold=True)
    again = store.add_items("p", recs, gold=True)
    assert (first.added, again.added, again.skipped) == (3, 0, 3)
    assert again.item_ids == first.item_ids
    assert store.count_items("p") == {"items": 3, "gold": 3}
    with pytest.raises(DataError, match="line 2.*responses"):
        store.add_items("p", [PAIR, {"prompt": "x", "responses": ["only one"]}])
    with pytest.raises(DataError, match="type"):
        store.add_items("p", [{"type": "essay", "prompt": "x", "responses": ["a", "b"]}])
    with pytest.raises(DataError, match="gold"):
        store.add_items("p", [{"prompt": "x", "responses": ["a", "b"], "gold": {"choice": "q"}}])
    with pytest.raises(NotFound):
        store.add_items("nope", [PAIR])
    assert store.count_items("p")["items"] == 3


def test_accounts_passwords_tokens_sessions(store):
    new = store.add_user("alice", role="admin")
    assert new.password and new.token and new.user.is_admin
    assert store.check_password("alice", new.password) == new.user
    assert store.check_password("alice", new.password + "x") is None
    assert store.check_password("nobody", new.password) is None
    assert store.user_by_token(new.token) == new.user
    assert store.user_by_token("akt_forged") is None
    sid, csrf = store.create_session(new.user)
    assert store.session(sid) == (new.user, csrf)
    store.end_session(sid)
    assert store.session(sid) is None
    with pytest.raises(AlignkitError, match="already exists"):
        store.add_user("alice")
    with pytest.raises(AlignkitError):
        store.add_user("bad name!")
    # only hashes are stored
    with store.engine.connect() as c:
        rows = c.exec_driver_sql("SELECT password_hash, token_hash FROM ak_users").all()
    dump = json.dumps([list(r) for r in rows])
    assert new.password not in dump and new.token not in dump


def test_stats_agreement_matches_direct_computation(store):
    store.ensure_project("p", overlap=2, gold_every=0)
    store.add_items("p", [{"prompt": f"q{i}", "responses": ["x", "y"]} for i in range(4)])
    ann, bob = bot(store, "ann", "fr"), bot(store, "bob", "us")
    plan = {"ann": ["a", "a", "b", "tie"], "bob": ["a", "b", "b", "tie"]}
    for u in (ann, bob):
        while (task := store.next_task("p", u)) is not None:
            want = plan[u.name][int(task.prompt[1:])]
            shown = "A" if task.display_order[0] == (0 if want == "a" else 1) else "B"
            store.record_vote(task.assignment_id, u, {"choice": shown if want in "ab" else want})
    s = store.stats("p")
    pair = s["agreement"]["pairwise"]["cohen_kappa"][0]
    assert pair["n"] == 4 and pair["kappa"] == pytest.approx(cohen_kappa(plan["ann"], plan["bob"]))
    assert s["groups"]["fr"]["rates"]["a"] == pytest.approx(0.5)
    assert s["groups"]["us"]["rates"]["b"] == pytest.approx(0.5)
    labels = store.item_labels("p", [1, 2])
    assert labels[1].mu == 1.0 and labels[2].mu == pytest.approx(0.5)


def test_sqlite_is_durable_wal(tmp_path):
    store = FeedbackStore(tmp_path / "f.db")
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    store.close()


def test_abandoned_assignment_frees_its_slot_after_the_ttl(store):
    store.ensure_project("p", overlap=1)
    store.add_items("p", [PAIR])
    ann, bob = bot(store, "ann"), bot(store, "bob")
    held = store.next_task("p", ann)
    assert store.next_task("p", bob) is None
    store.assignment_ttl = 0.0  # ann's open assignment no longer holds the slot
    given = store.next_task("p", bob)
    assert given is not None and given.item_id == held.item_id
    store.record_vote(held.assignment_id, ann, {"choice": "A"})  # ann may still answer
    assert store.count_votes("p") == 1


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 9)
    | st.text(max_size=5)
    | st.sampled_from(["A", "B", "tie", "much", "harmful"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)
answer_dicts = st.dictionaries(
    st.sampled_from(["choice", "strength", "ranks", "ratings", "tags", "comment", "edits", "x"]),
    json_values,
    max_size=5,
)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["pairwise", "ranking", "rating"]), answer_dicts | json_values)
def test_any_json_answer_is_accepted_or_refused_cleanly(kind, submitted):
    """Arbitrary JSON never crashes validation: a valid canonical answer or InvalidAnswer."""
    k = 2 if kind != "ranking" else 3
    try:
        ans = canonical_answer(kind, ["x"] * k, list(range(k))[::-1], submitted)
    except InvalidAnswer:
        return
    assert len(ans["tags"]) == k and len(ans["edits"]) == k
    if kind == "ranking":
        Ranking("p", ["x"] * k, ans["order"], ans["ties"])
    elif kind == "pairwise":
        assert ans["choice"] in ("a", "b", "tie", "both_bad", "incomparable")


def test_store_errors_are_kinds_not_http_codes_or_cli_flags(store):
    """The store says what went wrong; the app and the CLI decide how to say it."""
    from alignkit.feedback.errors import ProjectNotFound, StoreError, UnknownFormat

    with pytest.raises(ProjectNotFound) as e:
        store.project("nope")
    assert e.value.project == "nope" and "--" not in str(e.value)
    store.ensure_project("p")
    with pytest.raises(UnknownFormat) as e:
        store.export_rows("p", "xml")
    assert "trl" in e.value.choices and "--" not in str(e.value)
    assert not any(
        hasattr(cls, "status") for cls in (StoreError, NotFound, Conflict, InvalidAnswer)
    )
