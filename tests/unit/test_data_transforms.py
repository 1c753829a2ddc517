"""to_comparisons (rankings, ratings, corrections → pairs) and the by-prompt split."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.data import (
    Comparison,
    Correction,
    Ranking,
    Rating,
    TrajectoryPair,
    correction_comparison,
    correction_sft_examples,
    ranking_orders,
    to_comparisons,
    train_eval_split,
)
from alignkit.errors import ConfigError, DataError


def triples(pairs):
    return [(c.a, c.b, c.mu) for c in pairs]


def test_ranking_gives_k_choose_2_pairs_best_first():
    r = Ranking("q", ["r0", "r1", "r2"], order=[2, 0, 1])
    assert triples(to_comparisons([r])) == [
        ("r2", "r0", 1.0),
        ("r2", "r1", 1.0),
        ("r0", "r1", 1.0),
    ]


def test_ranking_ties_give_half():
    # order 3 > {0, 1} > 2 : the tied pair (0, 1) gets mu = ½, all others 1.
    r = Ranking("q", ["a", "b", "c", "d"], order=[3, 0, 1, 2], ties=[[0, 1]], annotator="u")
    pairs = to_comparisons([r])
    assert len(pairs) == 6
    assert triples(pairs) == [
        ("d", "a", 1.0),
        ("d", "b", 1.0),
        ("d", "c", 1.0),
        ("a", "b", 0.5),
        ("a", "c", 1.0),
        ("b", "c", 1.0),
    ]
    assert {c.annotator for c in pairs} == {"u"}
    assert pairs[3].meta["source"] == "ranking"


def test_rankings_can_be_left_out():
    assert to_comparisons([Ranking("q", ["a", "b"], order=[0, 1])], rankings_to_pairs=False) == []


def test_ratings_pair_within_prompt_only_when_asked():
    ratings = [
        Rating("q", "x", 6.0, annotator="u"),
        Rating("q", "y", 2.0, annotator="u"),
        Rating("q", "z", 6.0, annotator="v"),
        Rating("other", "w", 1.0),
    ]
    assert to_comparisons(ratings) == []
    pairs = to_comparisons(ratings, ratings_to_pairs=True)
    assert [(c.prompt, c.a, c.b, c.mu) for c in pairs] == [
        ("q", "x", "y", 1.0),
        ("q", "x", "z", 0.5),  # equal scores: a tie
        ("q", "z", "y", 1.0),  # higher score first
    ]
    assert [c.annotator for c in pairs] == ["u", None, None]


def test_ratings_on_different_scales_compare_after_normalising():
    # 4 on 1–5 is 0.75 of the scale; 5 on 1–10 is 0.44: the first is better.
    pairs = to_comparisons(
        [Rating("q", "lo", 5.0, scale=(1, 10)), Rating("q", "hi", 4.0, scale=(1, 5))],
        ratings_to_pairs=True,
    )
    assert triples(pairs) == [("hi", "lo", 1.0)]


def test_correction_is_edited_over_original():
    pairs = to_comparisons([Correction("q", "bad", "good"), Correction("q", "same", "same")])
    assert triples(pairs) == [("good", "bad", 1.0)]


def test_incomparable_dropped_and_others_kept_in_order():
    c1, c2 = Comparison("q", "a", "b", mu=0.3), Comparison("q", "a", "b", incomparable=True)
    c3 = Comparison("r", "a", "b")
    assert to_comparisons([c1, c2, c3]) == [c1, c3]


def test_trajectory_pairs_are_refused():
    seg = {"obs": [[0.0]], "actions": [0]}
    with pytest.raises(DataError, match="trajectory"):
        to_comparisons([TrajectoryPair(seg, seg)])


# -------------------------------------------------------------------------- split


def _records(n_prompts, per_prompt=3):
    return [Comparison(f"p{i}", f"a{j}", "b") for i in range(n_prompts) for j in range(per_prompt)]


def test_split_counts_and_order():
    recs = _records(10)
    train, eval_ = train_eval_split(recs, 0.2, seed=1)
    assert len({r.prompt for r in eval_}) == 2 and len(train) + len(eval_) == 30
    assert train == [r for r in recs if r in train]  # input order kept


def test_split_is_deterministic_and_seed_dependent():
    recs = _records(50, 1)
    a = train_eval_split(recs, 0.3, seed=7)
    assert a == train_eval_split(recs, 0.3, seed=7)
    # The partition of prompts does not depend on the input order.
    b = train_eval_split(list(reversed(recs)), 0.3, seed=7)
    assert {r.prompt for r in a[1]} == {r.prompt for r in b[1]}
    seeds = {tuple(r.prompt for r in train_eval_split(recs, 0.3, seed=s)[1]) for s in range(5)}
    assert len(seeds) > 1


@settings(max_examples=40, deadline=None)
@given(
    prompts=st.lists(st.sampled_from("abcdefgh"), min_size=2, max_size=40),
    frac=st.floats(0.01, 0.99),
    seed=st.integers(0, 10),
)
def test_split_never_shares_a_prompt(prompts, frac, seed):
    recs = [Comparison(p, "x", "y") for p in prompts]
    if len(set(prompts)) < 2:
        with pytest.raises(DataError):
            train_eval_split(recs, frac, seed)
        return
    train, eval_ = train_eval_split(recs, frac, seed)
    assert not {r.prompt for r in train} & {r.prompt for r in eval_}
    assert train and eval_ and len(train) + len(eval_) == len(recs)


def test_split_zero_fraction_and_bad_fraction():
    recs = _records(3)
    assert train_eval_split(recs, 0.0, seed=0) == (recs, [])
    with pytest.raises(ConfigError, match="eval_fraction"):
        train_eval_split(recs, 1.0, seed=0)


def test_correction_comparison_and_sft_targets_keep_comment():
    c = Correction("q", "bad", "good", annotator="ann", meta={"comment": "too curt", "vote_id": 7})
    pair = correction_comparison(c)
    assert (pair.a, pair.b, pair.mu, pair.annotator) == ("good", "bad", 1.0, "ann")
    assert pair.meta == {"comment": "too curt", "vote_id": 7, "source": "correction"}
    assert correction_comparison(Correction("q", "same", "same")) is None
    rows = correction_sft_examples([c, Comparison("q", "a", "b"), Correction("r", "x", "y")])
    assert [(r["prompt"], r["completion"]) for r in rows] == [("q", "good"), ("r", "y")]
    assert rows[0]["meta"]["comment"] == "too curt" and rows[0]["meta"]["annotator"] == "ann"


def test_ranking_orders_expand_tied_groups():
    """order 2 > {0, 1} tied > 3: the tied pair in both internal orders, 2 and 3 fixed."""
    assert ranking_orders(Ranking("q", ["a", "b", "c"], [1, 2, 0])) == [[1, 2, 0]]
    r = Ranking("q", ["a", "b", "c", "d"], [2, 0, 1, 3], ties=[[0, 1]])
    assert ranking_orders(r) == [[2, 0, 1, 3], [2, 1, 0, 3]]
    two = Ranking("q", list("abcde"), [0, 1, 2, 3, 4], ties=[[0, 1], [2, 3, 4]])
    orders = ranking_orders(two)
    assert len(orders) == 2 * 6 and len({tuple(o) for o in orders}) == 12
    assert all(set(o[:2]) == {0, 1} and set(o[2:]) == {2, 3, 4} for o in orders)
    with pytest.raises(DataError, match="orders"):
        ranking_orders(Ranking("q", list("abcdefg"), list(range(7)), ties=[list(range(7))]))
