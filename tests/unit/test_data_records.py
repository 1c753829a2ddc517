"""Record validation: every bad field is a DataError naming the field."""

import pytest

from alignkit.data import (
    Comparison,
    Correction,
    Ranking,
    Rating,
    TrajectoryPair,
    record_from_dict,
    record_to_dict,
)
from alignkit.errors import DataError

SEG = {"obs": [[0.0]], "actions": [0]}


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Comparison("p", "a", "b", mu=float("nan")), "mu"),
        (lambda: Comparison("p", "a", "b", mu=True), "mu"),
        (lambda: Comparison("p", "a", None), "b"),
        (lambda: Comparison("p", "a", "b", incomparable="no"), "incomparable"),
        (lambda: Comparison("p", "a", "b", annotator=["x"]), "annotator"),
        (lambda: Comparison("p", "a", "b", meta=[1]), "meta"),
        (lambda: Ranking("p", ["a"], order=[0]), "responses"),
        (lambda: Ranking("p", ["a", "b"], order=[0, 0]), "order"),
        (lambda: Ranking("p", ["a", "b"], order=["0", "1"]), "order"),
        (lambda: Ranking("p", ["a", "b", "c"], order=[0, 1, 2], ties=[[0, 2]]), "ties"),
        (lambda: Ranking("p", ["a", "b", "c"], order=[0, 1, 2], ties=[[0, 1], [1, 2]]), "ties"),
        (lambda: Ranking("p", ["a", "b"], order=[0, 1], ties=[0, 1]), "ties"),
        (lambda: Rating("p", "r", 8.0, scale=(1, 7)), "score"),
        (lambda: Rating("p", "r", 3.0, scale=(7, 1)), "scale"),
        (lambda: Rating("p", "r", 3.0, scale=(1,)), "scale"),
        (lambda: Rating("p", "r", "3"), "score"),
        (lambda: Correction("p", "r", 5), "edited"),
        (lambda: TrajectoryPair(SEG, {"obs": []}), "segment_b"),
        (lambda: TrajectoryPair(SEG, SEG, mu="x"), "mu"),
        (lambda: TrajectoryPair(SEG, SEG, mu=1.5), "mu"),
    ],
)
def test_bad_field_is_named(make, field):
    with pytest.raises(DataError) as e:
        make()
    assert e.value.field == field


def test_numeric_annotator_ids_become_strings():
    assert Comparison("p", "a", "b", annotator=17).annotator == "17"


def test_ranking_tiers():
    r = Ranking("p", ["a", "b", "c", "d"], order=[3, 0, 1, 2], ties=[[0, 1]])
    assert r.tier() == [1, 1, 2, 0]


def test_record_dict_round_trip_and_kind_tag():
    r = Rating("p", "r", 4, scale=(1, 5), annotator="u", meta={"x": 1})
    d = record_to_dict(r)
    assert d["kind"] == "rating" and d["scale"] == [1.0, 5.0]
    assert record_from_dict(d) == r


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"kind": "poll", "prompt": "p"}, "field 'kind': expected one of"),
        (
            {"kind": "ranking", "prompt": "p", "responses": ["a", "b"]},
            "field 'order': missing (required for a ranking)",
        ),
        ("not a dict", "expected an object, got str"),
        ({"kind": ["comparison"]}, "field 'kind'"),
    ],
)
def test_record_from_dict_errors(d, message):
    with pytest.raises(DataError) as e:
        record_from_dict(d)
    assert message in str(e.value)


def test_comparison_chosen_follows_mu():
    assert (
        Comparison("p", "a", "b", mu=0.3).chosen,
        Comparison("p", "a", "b", mu=0.3).rejected,
    ) == ("b", "a")
    assert Comparison("p", "a", "b", mu=0.5).is_tie
    assert not Comparison("p", "a", "b", mu=0.5, incomparable=True).is_tie
