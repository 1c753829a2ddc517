"""Summary statistics of a feedback file (what ``alignkit data inspect`` prints)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from alignkit.data.io import LoadResult
from alignkit.data.records import Comparison, Correction, Ranking, Rating

__all__ = ["byte_length", "inspect_records", "length_stats", "tokenizer_length"]


def byte_length(texts: Sequence[str]) -> list[int]:
    """Token count of a byte-level tokenizer with no merges: the UTF-8 length."""
    return [len(t.encode("utf-8")) for t in texts]


def tokenizer_length(tokenizer) -> Callable[[Sequence[str]], list[int]]:
    """Token counts from a Hugging Face tokenizer (no special tokens added)."""

    def count(texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    return count


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    """min / mean / median / p95 / max of a list of lengths (empty → zeros)."""
    if not lengths:
        return {"n": 0, "min": 0, "mean": 0.0, "median": 0.0, "p95": 0, "max": 0}
    s = sorted(lengths)
    p95 = s[min(len(s) - 1, int(0.95 * (len(s) - 1) + 0.5))]
    return {
        "n": len(s),
        "min": s[0],
        "mean": round(statistics.fmean(s), 2),
        "median": statistics.median(s),
        "p95": p95,
        "max": s[-1],
    }


def _texts(records) -> tuple[list[str], list[str]]:
    prompts, responses = [], []
    for r in records:
        if isinstance(r, Comparison):
            prompts.append(r.prompt)
            responses += [r.a, r.b]
        elif isinstance(r, Ranking):
            prompts.append(r.prompt)
            responses += r.responses
        elif isinstance(r, Rating):
            prompts.append(r.prompt)
            responses.append(r.response)
        elif isinstance(r, Correction):
            prompts.append(r.prompt)
            responses += [r.response, r.edited]
    return prompts, responses


def inspect_records(
    result: LoadResult,
    *,
    count_tokens: Callable[[Sequence[str]], list[int]] = byte_length,
    token_counter: str = "utf-8 bytes",
) -> dict[str, Any]:
    """A JSON-ready summary: format, counts per kind, ties / incomparable, lengths.

    ``result`` should be loaded with ``keep_incomparable=True`` so incomparable
    comparisons are counted; lengths cover every text record.
    """
    records = result.records
    comparisons = [r for r in records if isinstance(r, Comparison)]
    prompts, responses = _texts(records)
    return {
        "path": result.path,
        "format": result.format,
        "container": result.container,
        "rows": result.n_rows,
        "kinds": dict(result.kinds),
        "comparisons": {
            "total": len(comparisons),
            "usable": sum(not c.incomparable for c in comparisons),
            "ties": sum(c.is_tie for c in comparisons),
            "soft": sum(not c.incomparable and c.mu not in (0.0, 0.5, 1.0) for c in comparisons),
            "incomparable": result.n_incomparable,
            "identical_responses": sum(c.a == c.b for c in comparisons),
        },
        "distinct_prompts": len(set(prompts)),
        "annotators": len({r.annotator for r in records if r.annotator is not None}),
        "token_counter": token_counter,
        "lengths": {
            "prompt_chars": length_stats([len(t) for t in prompts]),
            "response_chars": length_stats([len(t) for t in responses]),
            "prompt_tokens": length_stats(count_tokens(prompts)),
            "response_tokens": length_stats(count_tokens(responses)),
        },
    }
