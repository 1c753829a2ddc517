"""Agreement statistics against hand computations and the textbook worked examples."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.feedback.agreement import (
    agreement_summary,
    cohen_kappa,
    fleiss_kappa,
    group_rates,
    krippendorff_alpha_nominal,
)


def test_cohen_kappa_wikipedia_yes_no_table():
    """50 units: yes/yes 20, yes/no 5, no/yes 10, no/no 15.

    p_o = (20 + 15)/50 = 0.7; A says yes 25/50, B says yes 30/50;
    p_e = 0.5·0.6 + 0.5·0.4 = 0.5; κ = (0.7 − 0.5)/(1 − 0.5) = 0.4.
    """
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_kappa_three_units_by_hand():
    """(a,a), (a,b), (b,b): p_o = 2/3, p_e = (2·1 + 1·2)/9 = 4/9, κ = (2/9)/(5/9) = 0.4."""
    assert cohen_kappa(["a", "a", "b"], ["a", "b", "b"]) == pytest.approx(0.4)


def test_cohen_kappa_undefined_without_variation():
    assert math.isnan(cohen_kappa(["a", "a"], ["a", "a"]))
    with pytest.raises(ValueError):
        cohen_kappa(["a"], ["a", "b"])


def test_fleiss_kappa_worked_example():
    """Fleiss (1971) as worked on Wikipedia: 10 units, 14 raters, 5 categories.

    P̄ = 0.378, p_j = (0.143, 0.200, 0.279, 0.150, 0.229), P̄_e = 0.213, κ = 0.210.
    """
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert fleiss_kappa(table) == pytest.approx(0.2099307, abs=1e-6)
    assert round(fleiss_kappa(table), 3) == 0.210


def test_fleiss_kappa_rejects_unequal_rater_counts():
    with pytest.raises(ValueError):
        fleiss_kappa([[1, 1], [3, 0]])


def test_krippendorff_alpha_worked_example():
    """Krippendorff (2011), 4 coders × 12 units with missing values: nominal α = 0.743."""
    N = None
    a = [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N]
    b = [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3]
    c = [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N]
    d = [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N]
    alpha = krippendorff_alpha_nominal(list(zip(a, b, c, d, strict=True)))
    assert round(alpha, 3) == 0.743


def test_krippendorff_alpha_three_units_by_hand():
    """Units (a,a), (a,b), (b,b): o_aa = 2, o_ab = o_ba = 1, o_bb = 2; n_a = n_b = 3, n = 6.

    α = 1 − (n − 1)·Σ_{c≠k} o_ck / Σ_{c≠k} n_c n_k = 1 − 5·2/18 = 4/9.
    """
    assert krippendorff_alpha_nominal([("a", "a"), ("a", "b"), ("b", "b")]) == pytest.approx(4 / 9)


def test_krippendorff_alpha_perfect_and_undefined():
    assert krippendorff_alpha_nominal([(1, 1, 1), (2, 2), (3, 3, None)]) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha_nominal([(1, 1), (1, 1)]))
    assert math.isnan(krippendorff_alpha_nominal([(1,), (2, None)]))  # nothing pairable


labels = st.lists(
    st.tuples(st.sampled_from("abc"), st.sampled_from("abc")), min_size=2, max_size=30
)


@settings(max_examples=60, deadline=None)
@given(labels)
def test_kappa_and_alpha_ignore_category_names(pairs):
    """Renaming categories consistently changes no statistic."""
    rename = {"a": "x", "b": "y", "c": "z"}
    a, b = zip(*pairs, strict=True)
    k1, k2 = cohen_kappa(a, b), cohen_kappa([rename[x] for x in a], [rename[x] for x in b])
    assert (math.isnan(k1) and math.isnan(k2)) or k1 == pytest.approx(k2)
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa(b, a), nan_ok=True)
    al1 = krippendorff_alpha_nominal(pairs)
    al2 = krippendorff_alpha_nominal([(rename[x], rename[y]) for x, y in pairs])
    assert al1 == pytest.approx(al2, nan_ok=True)


@settings(max_examples=60, deadline=None)
@given(labels)
def test_two_rater_fleiss_matches_alpha_small_sample_correction(pairs):
    """With 2 raters and no missing values, α = κ_Fleiss + (1 − κ_Fleiss)/(2N) (Krippendorff).

    Both share D_o; they differ only in the expected-disagreement denominator n − 1 vs n.
    """
    cats = sorted({v for p in pairs for v in p})
    table = [[p.count(c) for c in cats] for p in pairs]
    kf, alpha = fleiss_kappa(table), krippendorff_alpha_nominal(pairs)
    if math.isnan(kf) or math.isnan(alpha):
        return
    n = 2 * len(pairs)
    assert alpha == pytest.approx(1 - (n - 1) / n * (1 - kf))


def test_agreement_summary_and_group_rates():
    triples = [
        (1, "ann", "a"),
        (1, "bob", "a"),
        (1, "cy", "b"),
        (2, "ann", "b"),
        (2, "bob", "b"),
        (2, "cy", "b"),
        (3, "ann", "a"),
        (3, "bob", "b"),
    ]
    s = agreement_summary(triples)
    assert s["n_units"] == 3 and s["n_annotators"] == 3
    assert s["fleiss_raters"] == 3 and s["fleiss_units"] == 2  # unit 3 has only 2 ratings
    ann_bob = next(p for p in s["cohen_kappa"] if {p["a"], p["b"]} == {"ann", "bob"})
    assert ann_bob["n"] == 3
    assert ann_bob["kappa"] == pytest.approx(cohen_kappa("aba", "abb"))
    assert s["krippendorff_alpha"] == pytest.approx(
        krippendorff_alpha_nominal([("a", "a", "b"), ("b", "b", "b"), ("a", "b")])
    )
    rates = group_rates([("fr", "a"), ("fr", "b"), ("fr", "a"), ("us", "tie")])
    assert rates["fr"]["n"] == 3 and rates["fr"]["rates"]["a"] == pytest.approx(2 / 3)
    assert rates["us"]["rates"] == {"tie": 1.0}
