"""Language feedback: comments → revision requests → revision ≻ original, marked machine-revised."""

import json

import pytest

from alignkit.data import load_records
from alignkit.data.records import Comparison, Correction, Ranking, Rating
from alignkit.feedback.revision import (
    requests_from_records,
    revise,
    revision_messages,
    revision_records,
    revision_trl_rows,
)

CONV = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Fix my tyre?"}]


def records():
    return [
        Rating("p", "burn it", 0.0, scale=(0.0, 1.0), annotator="ann",
               meta={"comment": "dangerous", "prompt_messages": CONV, "signal_id": 4, "source": "chat"}),
        Rating("p", "perfect", 1.0, scale=(0.0, 1.0), meta={"comment": "great answer"}),  # praise
        Rating("q", "meh", 3.0, meta={"comment": "vague"}),  # Likert 3 of 7
        Comparison("r", "good", "rude", mu=1.0, meta={"comment": "B is rude", "vote_id": 9}),
        Comparison("r", "long", "short", mu=0.0, meta={"comment": "A rambles"}),
        Comparison("r", "x", "y", incomparable=True, meta={"comment": "cannot tell"}),
        Ranking("s", ["r0", "r1", "r2"], [2, 0, 1], meta={"comment": "r1 is wrong"}),
        Correction("t", "old", "new", meta={"comment": "fixed it myself"}),
        Comparison("u", "a", "b", mu=1.0),  # no comment
    ]


def test_every_comment_points_at_the_answer_it_is_about():
    reqs = requests_from_records(records())
    got = [(r.answer, r.comment) for r in reqs]
    assert got == [("burn it", "dangerous"), ("meh", "vague"), ("rude", "B is rude"),
                   ("long", "A rambles"), ("r1", "r1 is wrong")]
    assert reqs[0].prompt_messages == CONV  # the whole conversation, from the chat's record
    assert reqs[0].meta == {"signal_id": 4, "source": "chat", "annotator": "ann"}
    assert reqs[1].prompt_messages == [{"role": "user", "content": "q"}]
    chat = revision_messages(reqs[0])
    assert chat[:3] == CONV and chat[3] == {"role": "assistant", "content": "burn it"}
    assert chat[4]["role"] == "user" and chat[4]["content"].startswith("Feedback on your answer: dangerous\n")


def test_revision_beats_original_as_a_comparison_and_an_sft_target(tmp_path):
    reqs = requests_from_records(records())
    seen = []

    def reviser(chats):
        seen.extend(chats)
        # one revision unchanged, one empty: both dropped
        return ["  patch the tube  ", "meh", "", "short and clear", "r1 fixed"]

    revisions = revise(reqs, reviser)
    assert len(seen) == 5 and revisions[0] == "patch the tube" and seen[0][-2]["content"] == "burn it"
    comps, sft = revision_records(reqs, revisions, "smollm2")
    assert [(c.a, c.b, c.mu) for c in comps] == [
        ("patch the tube", "burn it", 1.0), ("short and clear", "long", 1.0), ("r1 fixed", "r1", 1.0)]
    assert all(c.meta["machine_revised"] is True and c.meta["reviser"] == "smollm2" for c in comps)
    assert comps[0].meta["comment"] == "dangerous" and comps[0].meta["revised_from"]["signal_id"] == 4
    assert sft[0]["messages"] == CONV + [{"role": "assistant", "content": "patch the tube"}]
    assert sft[0]["meta"]["machine_revised"] is True
    # TRL conversational rows: the data layer reads them; the mark survives as metadata
    path = tmp_path / "rev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in revision_trl_rows(comps)))
    loaded = load_records(path).records
    assert [c.chosen for c in loaded] == ["patch the tube", "short and clear", "r1 fixed"]
    assert all(c.meta["machine_revised"] is True for c in loaded)
    assert loaded[0].meta["prompt_messages"] == CONV
    human_only = [c for c in loaded if not c.meta.get("machine_revised")]
    assert human_only == []  # filtering them out is one line
    with pytest.raises(ValueError, match="returned 1 texts for 5"):
        revise(reqs, lambda chats: ["x"])
