"""Splits by prompt for generalisation tests: no prompt (keyed by its first human turn,
so HH dialogues sharing an opening count as one prompt) lands in two parts."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any


def first_turn_key(prompt: str) -> str:
    """The grouping key of a prompt: its first human turn (lower-cased, stripped)."""
    return prompt.split("\n\nAssistant:")[0].strip().lower()


def split_by_prompt(records: Sequence[Any], fractions: Sequence[float], seed: int) -> list[list[Any]]:
    """Disjoint parts of ``records`` (in their input order) whose prompt keys never cross
    parts; part j gets ``round(Σ_{i≤j} f_i · K) − round(Σ_{i<j} f_i · K)`` of the K keys
    (shuffled by ``seed``), the last part the rest."""
    keys = sorted({first_turn_key(r.prompt) for r in records})
    random.Random(seed).shuffle(keys)
    bounds, acc = [], 0.0
    for f in fractions:
        acc += f
        bounds.append(round(acc * len(keys)))
    part_of = {k: next((j for j, b in enumerate(bounds) if i < b), len(fractions) - 1) for i, k in enumerate(keys)}
    parts: list[list[Any]] = [[] for _ in fractions]
    for r in records:
        parts[part_of[first_turn_key(r.prompt)]].append(r)
    return parts


def kfold_by_prompt(records: Sequence[Any], k: int, seed: int) -> list[int]:
    """Fold index in ``range(k)`` of every record; all records of a prompt key share a fold."""
    keys = sorted({first_turn_key(r.prompt) for r in records})
    random.Random(seed).shuffle(keys)
    fold = {key: i % k for i, key in enumerate(keys)}
    return [fold[first_turn_key(r.prompt)] for r in records]
