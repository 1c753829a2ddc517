"""Trajectory pairs on disk: JSON Lines for the records, one ``.npz`` side file for the arrays.

``save_trajectory_pairs(pairs, "prefs.jsonl")`` writes ``prefs.jsonl`` (one record a line,
each segment's arrays replaced by ``{"$npz": key}`` references) and ``prefs.npz``
(every array under its key, compressed). Observations, actions and frames therefore
never become giant JSON lists; a record without frames costs a few hundred bytes of JSON.
Both files are written to temporaries and moved into place together.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alignkit.data.records import TrajectoryPair, record_from_dict
from alignkit.errors import DataError

__all__ = ["load_trajectory_pairs", "save_trajectory_pairs"]

_ARRAY_KEYS = ("obs", "actions", "rewards", "next_obs", "frames")


def _side(path: Path) -> Path:
    return path.with_suffix(".npz")


def save_trajectory_pairs(pairs: Sequence[TrajectoryPair], path: str | os.PathLike,
                          *, frames: bool = True) -> Path:
    """Write ``path`` (JSONL) and its ``.npz`` side file; ``frames=False`` leaves frames out."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    lines = []
    for i, p in enumerate(pairs):
        d: dict[str, Any] = {"kind": p.kind, "mu": p.mu, "incomparable": p.incomparable,
                             "annotator": p.annotator, "group": p.group, "meta": p.meta}
        for side in ("segment_a", "segment_b"):
            seg = dict(getattr(p, side))
            for k in _ARRAY_KEYS:
                if seg.get(k) is None or (k == "frames" and not frames):
                    seg.pop(k, None)
                    continue
                key = f"{i}/{side}/{k}"
                arrays[key] = np.asarray(seg[k])
                seg[k] = {"$npz": key}
            d[side] = seg
        lines.append(json.dumps(d, allow_nan=False))
    tmp_j, tmp_n = path.with_name(path.name + ".tmp"), path.with_name(path.stem + ".tmp.npz")
    tmp_j.write_text("".join(line + "\n" for line in lines))
    np.savez_compressed(tmp_n, **arrays)
    os.replace(tmp_n, _side(path))
    os.replace(tmp_j, path)
    return path


def load_trajectory_pairs(path: str | os.PathLike) -> list[TrajectoryPair]:
    """Inverse of :func:`save_trajectory_pairs` (errors name the file, line and field)."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=str(path))
    side = _side(path)
    arrays = np.load(side) if side.exists() else {}
    out = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e.msg})", path=str(path), line=line_no) from None
            for side_name in ("segment_a", "segment_b"):
                seg = d.get(side_name)
                if not isinstance(seg, dict):
                    raise DataError("expected a mapping with 'obs' and 'actions'", path=str(path), line=line_no,
                                    field=side_name)
                for k, v in list(seg.items()):
                    if isinstance(v, dict) and "$npz" in v:
                        if v["$npz"] not in arrays:
                            raise DataError(f"array {v['$npz']!r} missing from {side.name}", path=str(path),
                                            line=line_no, field=side_name)
                        seg[k] = arrays[v["$npz"]]
            try:
                rec = record_from_dict(d)
            except DataError as e:
                raise DataError(e.reason, path=str(path), line=line_no, field=e.field) from None
            if not isinstance(rec, TrajectoryPair):
                raise DataError(f"expected kind 'trajectory_pair', got {d.get('kind')!r}", path=str(path),
                                line=line_no, field="kind")
            out.append(rec)
    return out
