"""Text the store accepts: valid Unicode without NUL, in JSON nested to a sane depth.

PostgreSQL cannot store NUL in text at all, a lone surrogate (``"\\ud800"`` in JSON) is
not Unicode and cannot be written as UTF-8 — both are refused where text enters the
store, with the field named, instead of failing later in an export.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_DEPTH", "json_problem", "text_problem"]

MAX_DEPTH = 32  # nesting of JSON values (item meta, request bodies)


def text_problem(s: str) -> str | None:
    """Why ``s`` cannot be stored, or None when it can."""
    if "\x00" in s:
        return "contains a NUL character"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    return None


def json_problem(value: Any, max_depth: int = MAX_DEPTH) -> tuple[str, str] | None:
    """The first (path, problem) in a JSON value: bad text in a key or string, or nesting
    deeper than ``max_depth``; None when it is clean. Iterative, so any depth is safe."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        v, path, depth = stack.pop()
        if depth > max_depth:
            return path or "(top)", f"nested deeper than {max_depth} levels"
        if isinstance(v, str):
            problem = text_problem(v)
            if problem:
                return path or "(top)", problem
        elif isinstance(v, dict):
            for k, x in v.items():
                where = f"{path}.{k}" if path else str(k)
                if isinstance(k, str) and (problem := text_problem(k)):
                    return path or "(top)", f"a key {problem}"
                stack.append((x, where, depth + 1))
        elif isinstance(v, list | tuple):
            stack.extend((x, f"{path}[{i}]", depth + 1) for i, x in enumerate(v))
    return None
