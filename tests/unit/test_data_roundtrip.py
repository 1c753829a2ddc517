"""Property tests: whatever records we write, we read back the same (JSONL, gz, Parquet)."""

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignkit.data import (
    Comparison,
    Correction,
    Ranking,
    Rating,
    TrajectoryPair,
    load_records,
    save_records,
    split_hh,
)
from alignkit.data.formats import HH_ASSISTANT, HH_HUMAN

text = st.text(max_size=30)  # any Unicode (newlines, quotes, NUL, emoji…)
ids = st.none() | st.text(min_size=1, max_size=8)
unit = st.floats(0.0, 1.0, allow_nan=False)
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_value = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3),
    max_leaves=6,
)
meta = st.dictionaries(st.text(max_size=8), json_value, max_size=3)

comparisons = st.builds(
    Comparison,
    text,
    text,
    text,
    mu=unit,
    incomparable=st.booleans(),
    strength=ids,
    annotator=ids,
    group=ids,
    meta=meta,
)


@st.composite
def rankings(draw):
    k = draw(st.integers(2, 5))
    order = draw(st.permutations(list(range(k))))
    ties = []
    if k >= 3 and draw(st.booleans()):
        start = draw(st.integers(0, k - 2))
        ties = [list(order[start : start + 2])]
    return Ranking(
        draw(text),
        draw(st.lists(text, min_size=k, max_size=k)),
        order=list(order),
        ties=ties,
        annotator=draw(ids),
        meta=draw(meta),
    )


@st.composite
def ratings(draw):
    lo = draw(st.integers(-5, 5))
    hi = lo + draw(st.integers(1, 10))
    score = draw(st.floats(lo, hi, allow_nan=False))
    return Rating(draw(text), draw(text), score, scale=(lo, hi), group=draw(ids), meta=draw(meta))


corrections = st.builds(Correction, text, text, text, annotator=ids, meta=meta)
segment = st.integers(0, 3).flatmap(lambda k: st.fixed_dictionaries(
    {  # obs and actions of one segment have the same number of steps k
        "obs": st.lists(st.lists(st.floats(-1, 1), max_size=2), min_size=k, max_size=k),
        "actions": st.lists(st.integers(0, 3), min_size=k, max_size=k),
    }
))
trajectory_pairs = st.builds(TrajectoryPair, segment, segment, mu=unit, meta=meta)
any_record = st.one_of(comparisons, rankings(), ratings(), corrections, trajectory_pairs)

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load_all(path):
    return load_records(path, keep_incomparable=True).records


@SETTINGS
@given(records=st.lists(any_record, min_size=1, max_size=6))
@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz"])
def test_alignkit_jsonl_round_trip(records, name):
    with tempfile.TemporaryDirectory() as d:
        save_records(records, Path(d) / name)
        assert _load_all(Path(d) / name) == records


@SETTINGS
@given(records=st.lists(any_record, min_size=1, max_size=6))
def test_alignkit_parquet_round_trip(records):
    with tempfile.TemporaryDirectory() as d:
        save_records(records, Path(d) / "d.parquet")
        assert _load_all(Path(d) / "d.parquet") == records


@SETTINGS
@given(records=st.lists(comparisons, min_size=1, max_size=6))
@pytest.mark.parametrize("name", ["d.jsonl", "d.parquet"])
def test_trl_round_trip_keeps_preference(records, name):
    """TRL rows put the preferred response in ``chosen``: (prompt, chosen, rejected,
    max(mu, 1 − mu)) survives; meta other than messages does not (TRL has no place)."""
    with tempfile.TemporaryDirectory() as d:
        save_records(records, Path(d) / name, format="trl")
        back = _load_all(Path(d) / name)
    assert len(back) == len(records)
    for r, b in zip(records, back, strict=True):
        assert (b.prompt, b.chosen, b.rejected) == (r.prompt, r.chosen, r.rejected)
        assert b.mu == max(r.mu, 1.0 - r.mu)
        assert (b.incomparable, b.annotator, b.group) == (r.incomparable, r.annotator, r.group)


# Replies without markers: the split must recover exactly what was joined.
reply = st.text(max_size=20).filter(lambda s: HH_ASSISTANT not in s and HH_HUMAN not in s)


@settings(max_examples=60, deadline=None)
@given(turns=st.lists(st.tuples(reply, reply), min_size=1, max_size=3), a=reply, b=reply)
def test_split_hh_recovers_prompt_and_replies(turns, a, b):
    prompt = "".join(f"{HH_HUMAN}{h}{HH_ASSISTANT}{r}" for h, r in turns[:-1])
    prompt += f"{HH_HUMAN}{turns[-1][0]}{HH_ASSISTANT}"
    p, c, r = split_hh(prompt + a, prompt + b)
    assert p + c == prompt + a and p + r == prompt + b
    # The prompt can only grow into the replies by a shared marker, which they lack.
    assert p == prompt
