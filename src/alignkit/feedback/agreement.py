"""Inter-annotator agreement: Cohen's κ, Fleiss' κ, Krippendorff's α (nominal).

Pure Python on plain lists, no database and no web framework, so the numbers the admin
page and ``alignkit annotate stats`` show can be checked by hand. The layout used
throughout is *units × annotators*: a unit is one thing judged (a pairwise item, one
response of a rating item), and each annotator gives it at most one nominal value.

* :func:`cohen_kappa` — two annotators, the units both labelled (Cohen 1960).
* :func:`fleiss_kappa` — a fixed number of annotators per unit, from a units × categories
  count table (Fleiss 1971).
* :func:`krippendorff_alpha_nominal` — any number of annotators, missing values allowed
  (Krippendorff 2004, ch. 11; "Computing Krippendorff's Alpha-Reliability", 2011).
* :func:`agreement_summary` — all three from ``(unit, annotator, value)`` triples.
* :func:`group_rates` — how often each group of annotators picks each outcome.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from itertools import combinations

__all__ = [
    "agreement_summary",
    "cohen_kappa",
    "fleiss_kappa",
    "group_rates",
    "krippendorff_alpha_nominal",
]


def cohen_kappa(labels_a: Sequence[Hashable], labels_b: Sequence[Hashable]) -> float:
    """Cohen's κ between two annotators who labelled the same units.

    κ = (p_o − p_e) / (1 − p_e), where p_o is the share of units on which they agree and
    p_e = Σ_c p_a(c) p_b(c) the agreement expected from each annotator's own label
    frequencies. Returns NaN when p_e = 1 (both always give the same single label:
    agreement beyond chance is undefined).
    """
    if len(labels_a) != len(labels_b):
        raise ValueError(f"label lists differ in length: {len(labels_a)} vs {len(labels_b)}")
    n = len(labels_a)
    if n == 0:
        return math.nan
    p_o = sum(a == b for a, b in zip(labels_a, labels_b, strict=True)) / n
    freq_a, freq_b = Counter(labels_a), Counter(labels_b)
    p_e = sum(freq_a[c] * freq_b[c] for c in freq_a) / (n * n)
    if p_e == 1.0:
        return math.nan
    return (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' κ from a table ``counts[i][j]`` = raters who put unit i in category j.

    Every row must sum to the same number of raters n ≥ 2. With N units:
    P_i = (Σ_j n_ij² − n) / (n(n − 1)),  P̄ = mean_i P_i,
    p_j = Σ_i n_ij / (N n),               P̄_e = Σ_j p_j²,
    κ = (P̄ − P̄_e) / (1 − P̄_e). NaN when P̄_e = 1.
    """
    if not counts:
        return math.nan
    n = sum(counts[0])
    if n < 2 or any(sum(row) != n for row in counts):
        raise ValueError("every unit needs the same number (≥ 2) of ratings for Fleiss' κ")
    n_units, n_cat = len(counts), len(counts[0])
    p_bar = sum((sum(x * x for x in row) - n) / (n * (n - 1)) for row in counts) / n_units
    p_j = [sum(row[j] for row in counts) / (n_units * n) for j in range(n_cat)]
    p_e = sum(p * p for p in p_j)
    if p_e == 1.0:
        return math.nan
    return (p_bar - p_e) / (1.0 - p_e)


def krippendorff_alpha_nominal(units: Iterable[Sequence[Hashable | None]]) -> float:
    """Krippendorff's α for nominal data; ``units`` holds each unit's values (None = missing).

    Only units with m_u ≥ 2 values are pairable. The coincidence matrix counts, within
    each unit, every ordered pair of values from different annotators, weighted 1/(m_u − 1):
    o_ck = Σ_u (number of c–k pairs in u) / (m_u − 1),  n_c = Σ_k o_ck,  n = Σ_c n_c.
    α = 1 − D_o / D_e = 1 − (n − 1) Σ_{c≠k} o_ck / Σ_{c≠k} n_c n_k.
    NaN when there is no variation at all (D_e = 0).
    """
    o: Counter[tuple[Hashable, Hashable]] = Counter()
    for unit in units:
        values = [v for v in unit if v is not None]
        m = len(values)
        if m < 2:
            continue
        for i, j in ((i, j) for i in range(m) for j in range(m) if i != j):
            o[values[i], values[j]] += 1.0 / (m - 1)
    n_c: Counter[Hashable] = Counter()
    for (c, _k), w in o.items():
        n_c[c] += w
    n = sum(n_c.values())
    disagree = sum(w for (c, k), w in o.items() if c != k)
    expected = n * n - sum(x * x for x in n_c.values())  # Σ_{c≠k} n_c n_k
    if n == 0 or expected == 0:
        return math.nan
    return 1.0 - (n - 1) * disagree / expected


def agreement_summary(
    triples: Iterable[tuple[Hashable, Hashable, Hashable]], *, min_overlap: int = 2
) -> dict:
    """Agreement from ``(unit, annotator, value)`` triples (one value per annotator and unit).

    Returns ``{"n_units", "n_annotators", "krippendorff_alpha", "fleiss_kappa",
    "fleiss_raters", "fleiss_units", "cohen_kappa": [{"a", "b", "n", "kappa"}, ...]}``.
    Fleiss' κ needs a constant number of raters, so it uses the units that have the most
    common count m ≥ 2 of ratings (``fleiss_raters`` = m, ``fleiss_units`` = how many).
    Cohen's κ is listed for each pair of annotators sharing ≥ ``min_overlap`` units.
    """
    by_unit: dict[Hashable, dict[Hashable, Hashable]] = defaultdict(dict)
    for unit, annotator, value in triples:
        by_unit[unit][annotator] = value
    annotators = sorted({a for labels in by_unit.values() for a in labels}, key=str)
    alpha = krippendorff_alpha_nominal(list(labels.values()) for labels in by_unit.values())

    sizes = Counter(len(labels) for labels in by_unit.values() if len(labels) >= 2)
    fleiss, m, used = math.nan, 0, 0
    if sizes:
        m = max(sizes, key=lambda s: (sizes[s], s))
        rows = [list(labels.values()) for labels in by_unit.values() if len(labels) == m]
        categories = sorted({v for row in rows for v in row}, key=str)
        table = [[row.count(c) for c in categories] for row in rows]
        fleiss, used = fleiss_kappa(table), len(rows)

    pairs = []
    for a, b in combinations(annotators, 2):
        shared = [u for u, labels in by_unit.items() if a in labels and b in labels]
        if len(shared) >= min_overlap:
            kappa = cohen_kappa([by_unit[u][a] for u in shared], [by_unit[u][b] for u in shared])
            pairs.append({"a": a, "b": b, "n": len(shared), "kappa": kappa})
    return {
        "n_units": len(by_unit),
        "n_annotators": len(annotators),
        "krippendorff_alpha": alpha,
        "fleiss_kappa": fleiss,
        "fleiss_raters": m,
        "fleiss_units": used,
        "cohen_kappa": pairs,
    }


def group_rates(pairs: Iterable[tuple[Hashable, Hashable]]) -> dict:
    """Share of each outcome per group from ``(group, outcome)`` pairs.

    Returns ``{group: {"n": count, "rates": {outcome: share}}}``; shares sum to 1.
    """
    counts: dict[Hashable, Counter] = defaultdict(Counter)
    for group, outcome in pairs:
        counts[group][outcome] += 1
    out = {}
    for group, c in counts.items():
        total = sum(c.values())
        out[group] = {"n": total, "rates": {k: v / total for k, v in sorted(c.items(), key=str)}}
    return out
