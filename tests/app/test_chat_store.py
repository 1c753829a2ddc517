"""The conversation store: turns as a tree, every signal committed once, records and exports."""

import json

import pytest

from alignkit.data import load_records
from alignkit.feedback.conversations import ChatStore, TooLong
from alignkit.feedback.errors import Conflict, InvalidAnswer, InvalidRequest, NotFound


@pytest.fixture
def chat(store):
    store.ensure_project("p", tags=["verbose"])
    ann = store.add_user("ann", group="uk", projects=["p"]).user
    bob = store.add_user("bob", projects=["p"]).user
    return ChatStore(store, max_message_chars=1000, max_conversation_chars=2500), ann, bob


def answer(chat, cid, user, parent, text, model="m1"):
    (m,) = chat.add_answers(cid, user, parent, [(model, None)], project="p")
    chat.finish(m.id, text, "done", {"tokens": 3})
    return m.id


def test_a_chat_with_every_signal_becomes_records(chat, tmp_path):
    chat, ann, bob = chat
    cid = chat.start("p", ann)
    u1 = chat.add_user_turn(cid, ann, "Hi\r\nthere", parent_id=None, project="p")
    assert u1.content == "Hi\nthere"
    a1 = answer(chat, cid, ann, u1.id, "Hello!")
    assert chat.thumb(a1, ann, True, project="p").duplicate is False
    assert chat.thumb(a1, ann, True, project="p").duplicate is True  # a retry: no new row
    with pytest.raises(Conflict):
        chat.thumb(a1, ann, False, project="p")
    # second turn; regenerate; "better"
    u2 = chat.add_user_turn(cid, ann, "A joke?", parent_id=a1, project="p")
    a2 = answer(chat, cid, ann, u2.id, "No.")
    r = chat.regenerate(a2, ann, "m2", project="p")
    assert chat.conversation(cid, ann).leaf_id == r.id
    chat.finish(r.id, "Why did the chicken…", "done")
    chat.compare(r.id, a2, ann, "better", project="p")
    chat.thumb(a2, ann, False, tags=["unhelpful", "verbose"], comment="not a joke", project="p")
    # a pair to pick from: neither is the leaf until the pick
    u3 = chat.add_user_turn(cid, ann, "Another?", parent_id=r.id, project="p")
    p1, p2 = chat.add_answers(cid, ann, u3.id, [("m1", None), ("m2", None)], project="p")
    assert chat.conversation(cid, ann).leaf_id == u3.id
    for m, text in ((p1, "Knock knock."), (p2, "A horse walks into a bar.")):
        chat.finish(m.id, text, "done")
    chat.pick(p2.id, p1.id, ann, project="p")
    assert chat.conversation(cid, ann).leaf_id == p2.id
    # an edit continues the conversation from the corrected text
    edited, res = chat.edit(p2.id, ann, "A horse walks into a bar. Barman: why the long face?", project="p")
    assert edited.origin == "edit" and chat.conversation(cid, ann).leaf_id == edited.id
    again, res2 = chat.edit(p2.id, ann, edited.content, project="p")
    assert res2.duplicate and again.id == edited.id
    path = [m.content for m in chat.conversation(cid, ann).path()]
    assert path == ["Hi\nthere", "Hello!", "A joke?", "Why did the chicken…", "Another?", edited.content]

    comps = chat.export_records("p", "comparisons")
    assert [(c.meta["signal"], c.mu) for c in comps] == [("compare", 1.0), ("pick", 1.0)]
    compare = comps[0]
    assert compare.a == "Why did the chicken…" and compare.b == "No."
    assert compare.meta["prompt_messages"] == [
        {"role": "user", "content": "Hi\nthere"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "A joke?"},
    ]
    assert compare.prompt == "user: Hi\nthere\nassistant: Hello!\nuser: A joke?"
    assert compare.annotator == "ann" and compare.group == "uk"
    ratings = chat.export_records("p", "ratings")
    assert [(r.score, r.scale) for r in ratings] == [(1.0, (0.0, 1.0)), (0.0, (0.0, 1.0))]
    assert ratings[1].meta["comment"] == "not a joke" and ratings[1].meta["tags"] == ["unhelpful", "verbose"]
    (corr,) = chat.export_records("p", "corrections")
    assert (corr.response, corr.edited) == ("A horse walks into a bar.", edited.content)
    assert len(corr.meta["prompt_messages"]) == 5

    # TRL conversational rows: read back by the data layer without edits
    rows = chat.export_rows("p", "trl")
    assert [r["signal"] for r in rows] == ["compare", "pick", "edit"]
    assert rows[0]["prompt"][-1] == {"role": "user", "content": "A joke?"}
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "Why did the chicken…"}]
    path_ = tmp_path / "chat.jsonl"
    path_.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_records(path_)
    assert [c.mu for c in loaded.records] == [1.0, 1.0, 1.0]
    assert loaded.records[0].meta["prompt_messages"][-1]["content"] == "A joke?"
    sft = chat.export_rows("p", "sft")
    assert [r["messages"][-1]["content"] for r in sft] == ["A horse walks into a bar.", edited.content]
    raw = chat.export_rows("p", "raw")
    assert [r["kind"] for r in raw] == ["thumb", "compare", "thumb", "pick", "edit"]

    # another person sees none of it
    with pytest.raises(NotFound):
        chat.conversation(cid, bob)
    with pytest.raises(NotFound):
        chat.thumb(a1, bob, True, project="p")
    with pytest.raises(NotFound):
        chat.add_user_turn(cid, bob, "hi", parent_id=edited.id)
    st = chat.stats("p")
    assert st["signals"] == {"thumb": 2, "compare": 1, "pick": 1, "edit": 1}
    assert st["thumbs_per_model"] == {"m1": {"up": 1, "down": 1}}


def test_turn_rules_and_size_limits(chat):
    chat, ann, _ = chat
    cid = chat.start("p", ann)
    with pytest.raises(InvalidAnswer, match="empty"):
        chat.add_user_turn(cid, ann, "  \n", parent_id=None)
    with pytest.raises(TooLong, match="1,001 characters; the limit is 1,000"):
        chat.add_user_turn(cid, ann, "x" * 1001, parent_id=None)
    with pytest.raises(InvalidAnswer, match="NUL"):
        chat.add_user_turn(cid, ann, "a\x00b", parent_id=None)
    u = chat.add_user_turn(cid, ann, "y" * 1000, parent_id=None)
    with pytest.raises(Conflict, match="moved on"):
        chat.add_user_turn(cid, ann, "again", parent_id=None)
    (m,) = chat.add_answers(cid, ann, u.id, [("m1", None)])
    with pytest.raises(Conflict, match="wait for the answer"):
        chat.add_user_turn(cid, ann, "too soon", parent_id=m.id)
    with pytest.raises(Conflict, match="finished answer"):
        chat.thumb(m.id, ann, True)
    chat.finish(m.id, "z" * 900 + "\x00", "stopped", {"tokens": 900})
    got = chat.conversation(cid, ann).messages[m.id]
    assert got.status == "stopped" and got.content.endswith("\ufffd") and got.meta["tokens"] == 900
    # the conversation limit counts every message on the path: 1000 + 901 + 600 > 2500
    with pytest.raises(TooLong, match="the conversation is 2,501 characters"):
        chat.add_user_turn(cid, ann, "w" * 600, parent_id=m.id)
    chat.add_user_turn(cid, ann, "w" * 599, parent_id=m.id)


def test_arena_battle_reveals_models_after_the_vote_and_counts_both_bad(chat):
    chat, ann, bob = chat
    with pytest.raises(InvalidRequest):
        chat.start("p", ann, "arena", ["m1", "m1"])
    battles = []
    for user, choice in ((ann, "A"), (bob, "both_bad"), (ann, "tie"), (bob, "b")):
        cid = chat.start("p", user, "arena", ["base", "dpo"])
        u = chat.add_user_turn(cid, user, "Q?", parent_id=None)
        a, b = chat.add_answers(cid, user, u.id, [("base", "A"), ("dpo", "B")])
        with pytest.raises(Conflict):
            chat.arena_vote(cid, user, choice)  # not finished yet
        chat.finish(a.id, "answer A", "done")
        chat.finish(b.id, "answer B", "done")
        result, models = chat.arena_vote(cid, user, choice)
        assert models == ["base", "dpo"] and not result.duplicate
        assert chat.arena_vote(cid, user, choice)[0].duplicate
        with pytest.raises(Conflict, match="one turn"):
            chat.add_user_turn(cid, user, "more", parent_id=a.id)
        battles.append(cid)
    with pytest.raises(InvalidAnswer):
        chat.arena_vote(battles[0], ann, "C")
    got = chat.battles("p")
    assert [(b.a, b.b, b.mu, b.both_bad) for b in got] == [
        ("base", "dpo", 1.0, False), ("base", "dpo", 0.5, True),
        ("base", "dpo", 0.5, False), ("base", "dpo", 0.0, False),
    ]
    rows = chat.export_rows("p", "trl")
    assert [r.get("mu") for r in rows] == [None, 0.5, 0.5, None]
    assert rows[1]["both_bad"] is True and rows[3]["chosen"][0]["content"] == "answer B"
    st = chat.stats("p")
    assert st["both_bad"] == 1 and st["arena"] == {"a": 1, "both_bad": 1, "tie": 1, "b": 1}
    assert chat.arena_models_seen("p") == ["base", "dpo"]


def test_review_queue_gives_agreement_between_the_chatter_and_reviewers(chat):
    chat, ann, bob = chat
    store = chat.store
    carl = store.add_user("carl", projects=["p"]).user
    for choice in ("a", "b", "a"):
        cid = chat.start("p", ann, "arena", ["x", "y"])
        u = chat.add_user_turn(cid, ann, f"Q {choice}?", parent_id=None)
        a, b = chat.add_answers(cid, ann, u.id, [("x", "A"), ("y", "B")])
        chat.finish(a.id, f"A to {choice}", "done")
        chat.finish(b.id, f"B to {choice}", "done")
        chat.arena_vote(cid, ann, choice)
    result = chat.queue_for_review("p")
    assert result.added == 3 and chat.queue_for_review("p").added == 0
    store.ensure_project("p", overlap=2, gold_every=0)
    for reviewer in (bob, carl):  # bob sides with ann every time, carl always says A
        while (task := store.next_task("p", reviewer)) is not None:
            pick = "B" if reviewer is bob and "A to b" in task.responses else "A"
            store.record_vote(task.assignment_id, reviewer, {"choice": pick})
    st = chat.stats("p")
    assert st["reviewed_pairs"] == 3
    ag = st["agreement"]
    assert ag["n_units"] == 3 and ag["n_annotators"] == 3
    kappas = {(k["a"], k["b"]): k["kappa"] for k in ag["cohen_kappa"]}
    assert kappas[("bob", "chat:ann")] == pytest.approx(1.0)
    # carl a, a, a vs ann a, b, a: p_o = 2/3 = p_e, so κ = 0
    assert kappas[("carl", "chat:ann")] == pytest.approx(0.0)


def test_interrupted_answers_are_marked_at_startup(chat):
    chat, ann, _ = chat
    cid = chat.start("p", ann)
    u = chat.add_user_turn(cid, ann, "hi", parent_id=None)
    (m,) = chat.add_answers(cid, ann, u.id, [("m1", None)])
    assert chat.mark_interrupted() == 1
    conv = chat.conversation(cid, ann)
    assert conv.messages[m.id].status == "interrupted"
    chat.finish(m.id, "late", "done")  # a worker finishing after the restart changes nothing
    assert chat.conversation(cid, ann).messages[m.id].content == ""
    chat.add_user_turn(cid, ann, "are you there?", parent_id=m.id)  # one can carry on
