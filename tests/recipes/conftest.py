"""Fixtures shared by the recipe tests."""

import json
import random

import pytest

WORDS = "the cat sat on a mat dog ran far away quickly slowly red blue".split()


@pytest.fixture(scope="module")
def eleven_pairs(tmp_path_factory):
    """A JSONL file of 11 random word-salad comparisons (seed 0): in global batches of 5 they
    give per-rank slices 3/2, 3/2 and 1/0 on 2 processes (uneven slices, and a rank that
    runs only a padding example)."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    with path.open("w") as f:
        for _ in range(11):
            f.write(json.dumps({"prompt": "Human: " + " ".join(rng.choices(WORDS, k=4)) + "? Assistant:",
                                "chosen": " " + " ".join(rng.choices(WORDS, k=rng.randint(1, 6))),
                                "rejected": " " + " ".join(rng.choices(WORDS, k=rng.randint(1, 6)))}) + "\n")
    return path
