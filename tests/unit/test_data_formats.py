"""Row formats: HH splitting, TRL rows, conversational messages, format detection."""

import pytest

from alignkit.data import Comparison, Rating, detect_row_format, split_hh
from alignkit.data.formats import record_to_row, render_messages, row_to_record
from alignkit.errors import DataError

H, A = "\n\nHuman:", "\n\nAssistant:"


# ----------------------------------------------------------------------- split_hh


def test_split_hh_single_turn():
    chosen = f"{H} Hi there{A} Hello!"
    rejected = f"{H} Hi there{A} Go away."
    assert split_hh(chosen, rejected) == (f"{H} Hi there{A}", " Hello!", " Go away.")


def test_split_hh_multi_turn_keeps_whole_shared_history():
    history = f"{H} a{A} b{H} c{A}"
    prompt, c, r = split_hh(history + " yes", history + " no")
    assert prompt == history
    assert (c, r) == (" yes", " no")


def test_split_hh_replies_that_start_alike_stay_whole():
    # The common prefix runs into the replies ("I "); the prompt still ends at the marker.
    prompt, c, r = split_hh(f"{H} q{A} I agree", f"{H} q{A} I refuse")
    assert prompt == f"{H} q{A}"
    assert (c, r) == (" I agree", " I refuse")


def test_split_hh_divergence_inside_a_reply_with_later_turns():
    # As in the real HH data: the chosen reply itself contains a later Human/Assistant
    # exchange; the split is at the last marker both transcripts share.
    chosen = f"{H} q{A} No.{H} why?{A} because"
    rejected = f"{H} q{A} Sure, here it is."
    prompt, c, r = split_hh(chosen, rejected)
    assert prompt == f"{H} q{A}"
    assert c == f" No.{H} why?{A} because"
    assert r == " Sure, here it is."


def test_split_hh_identical_transcripts_split_at_last_marker():
    t = f"{H} a{A} b{H} c{A} d"
    assert split_hh(t, t) == (f"{H} a{A} b{H} c{A}", " d", " d")


def test_split_hh_prefix_transcript():
    # One reply is a prefix of the other: the shared marker is still found.
    prompt, c, r = split_hh(f"{H} q{A} Hi", f"{H} q{A} Hi there")
    assert (prompt, c, r) == (f"{H} q{A}", " Hi", " Hi there")


def test_split_hh_reconstructs_transcripts():
    chosen, rejected = f"{H} x{A} y{H} z{A} one", f"{H} x{A} y{H} z{A} two"
    prompt, c, r = split_hh(chosen, rejected)
    assert prompt + c == chosen and prompt + r == rejected


def test_split_hh_without_assistant_marker_is_an_error():
    with pytest.raises(DataError, match="field 'chosen'.*Assistant"):
        split_hh(f"{H} only a question", f"{H} only a question?")


def test_split_hh_marker_missing_in_rejected_names_rejected():
    with pytest.raises(DataError, match="field 'rejected'"):
        split_hh(f"{H} q{A} a", f"{H} q")


def test_split_hh_diverging_before_first_marker_is_an_error():
    with pytest.raises(DataError, match="share"):
        split_hh(f"{H} cats{A} meow", f"{H} dogs{A} woof")


def test_split_hh_rejects_non_strings():
    with pytest.raises(DataError, match="field 'rejected': missing"):
        split_hh(f"{H} q{A} a", None)


# ---------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"kind": "rating", "prompt": "p", "response": "r", "score": 3}, "alignkit"),
        ({"prompt": "p", "a": "x", "b": "y"}, "alignkit"),
        ({"prompt": "p", "chosen": "x", "rejected": "y"}, "trl"),
        ({"prompt": "p", "chosen": "x"}, "trl"),  # missing field reported later, per row
        ({"chosen": [{"role": "user", "content": "x"}], "rejected": []}, "trl_conversational"),
        ({"chosen": "The sky is blue", "rejected": "The sky is green"}, "trl_implicit"),
        ({"chosen": f"{H} q{A} a", "rejected": f"{H} q{A} b"}, "hh"),
    ],
)
def test_detect_row_format(row, fmt):
    assert detect_row_format(row) == fmt


def test_detect_row_format_unknown_names_the_keys():
    with pytest.raises(DataError, match="got keys: question, answer"):
        detect_row_format({"question": "q", "answer": "a"})


# -------------------------------------------------------------------- TRL rows


def test_trl_row_to_comparison_with_optional_fields():
    row = {"prompt": "p", "chosen": "c", "rejected": "r", "mu": 0.75, "annotator": 7, "source": "x"}
    rec = row_to_record(row, "trl")
    assert rec == Comparison("p", "c", "r", mu=0.75, annotator="7", meta={"source": "x"})


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "chosen": "c"}, "field 'rejected': missing (expected a string)"),
        (
            {"prompt": "p", "chosen": 3, "rejected": "r"},
            "field 'chosen': expected a string, got int",
        ),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "mu": "high"}, "field 'mu'"),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "mu": 1.5}, "field 'mu'"),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "incomparable": "yes"}, "incomparable"),
    ],
)
def test_trl_row_errors_name_the_field(row, message):
    with pytest.raises(DataError) as e:
        row_to_record(row, "trl")
    assert message in str(e.value)


def test_trl_writer_puts_preferred_response_in_chosen():
    row = record_to_row(Comparison("p", "x", "y", mu=0.25), "trl")
    assert row == {"prompt": "p", "chosen": "y", "rejected": "x", "mu": 0.75}
    assert record_to_row(Comparison("p", "x", "y"), "trl") == {
        "prompt": "p",
        "chosen": "x",
        "rejected": "y",
    }


def test_trl_writer_refuses_non_comparisons():
    with pytest.raises(DataError, match="to_comparisons"):
        record_to_row(Rating("p", "r", 3.0), "trl")


def test_hh_writer_needs_an_assistant_prompt():
    row = record_to_row(Comparison(f"{H} q{A}", " a", " b"), "hh")
    assert row == {"chosen": f"{H} q{A} a", "rejected": f"{H} q{A} b"}
    with pytest.raises(DataError, match="field 'prompt': expected an HH prompt"):
        record_to_row(Comparison("plain prompt", "a", "b"), "hh")


def test_implicit_prompt_is_common_prefix_at_word_boundary():
    rec = row_to_record(
        {"chosen": "The sky is blue", "rejected": "The sky is black"}, "trl_implicit"
    )
    assert (rec.prompt, rec.a, rec.b) == ("The sky is ", "blue", "black")


# ------------------------------------------------------------------ conversational

MSG_P = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
MSG_C = [{"role": "assistant", "content": "hello"}]
MSG_R = [{"role": "assistant", "content": "go away"}]


def test_conversational_row_renders_text_and_keeps_messages():
    rec = row_to_record({"prompt": MSG_P, "chosen": MSG_C, "rejected": MSG_R}, "trl_conversational")
    assert rec.prompt == "system: be nice\nuser: hi"
    assert (rec.a, rec.b) == ("hello", "go away")
    assert rec.meta["prompt_messages"] == MSG_P
    assert rec.meta["chosen_messages"] == MSG_C


def test_conversational_round_trip_restores_messages():
    row = {"prompt": MSG_P, "chosen": MSG_C, "rejected": MSG_R}
    assert record_to_row(row_to_record(row, "trl_conversational"), "trl_conversational") == row


def test_conversational_implicit_prompt_is_shared_messages():
    row = {"chosen": MSG_P + MSG_C, "rejected": MSG_P + MSG_R}
    rec = row_to_record(row, "trl_conversational")
    assert rec.meta["prompt_messages"] == MSG_P
    assert (rec.a, rec.b) == ("hello", "go away")


def test_conversational_with_text_prompt_and_full_conversations():
    # UltraFeedback-binarized layout: prompt text, chosen/rejected hold the user turn too.
    user = [{"role": "user", "content": "hi"}]
    row = {"prompt": "hi", "chosen": user + MSG_C, "rejected": user + MSG_R}
    rec = row_to_record(row, "trl_conversational")
    assert (rec.prompt, rec.a, rec.b) == ("user: hi", "hello", "go away")
    # ... and with only the replies in chosen/rejected, the text is the user turn.
    rec = row_to_record({"prompt": "hi", "chosen": MSG_C, "rejected": MSG_R}, "trl_conversational")
    assert rec.meta["prompt_messages"] == user and rec.a == "hello"


def test_conversational_bad_message_is_named():
    with pytest.raises(DataError, match="field 'chosen'.*message 0"):
        row_to_record(
            {"prompt": MSG_P, "chosen": [{"role": "assistant"}], "rejected": MSG_R},
            "trl_conversational",
        )


def test_conversational_writer_from_plain_comparison():
    row = record_to_row(Comparison("q", "x", "y"), "trl_conversational")
    assert row["prompt"] == [{"role": "user", "content": "q"}]
    assert row["chosen"] == [{"role": "assistant", "content": "x"}]


def test_render_messages():
    assert render_messages(MSG_P) == "system: be nice\nuser: hi"
