"""Clips for ``video_pair`` items: stored in the database, imported in pairs.

People compare two rendered clips (e.g. two trajectory segments) played side by side. The
clips' bytes live in the ``ak_media`` table (SQLite and PostgreSQL alike), keyed by their
SHA-256 within a project; an item refers to them as ``"media:<sha256>"``. The web app
serves a clip only to the annotator the assignment belongs to, with its content type.

Accepted: WebM (VP8/VP9; plays in Chromium and Firefox), MP4 (H.264 plays where the
browser has the codec — Debian's chromium may not) and GIF (shown as an image, so the
play/pause control does not drive it). WebM is the safe choice::

    imageio.mimwrite("a.webm", frames, fps=30, codec="libvpx-vp9")

and then::

    from alignkit.feedback.media import import_video_pairs
    result = import_video_pairs(store, "control", [
        {"video_a": "a.webm", "video_b": "b.webm", "meta": {"segments": [17, 42]}},
    ])
    labels = store.item_labels("control", result.item_ids)   # {item id: Comparison}
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from alignkit.errors import DataError
from alignkit.feedback.schema import media
from alignkit.feedback.values import ImportResult

__all__ = [
    "DEFAULT_QUESTION",
    "MAX_CLIP_BYTES",
    "add_clip",
    "clip_types",
    "import_video_pairs",
    "missing_clips",
    "read_clip",
    "sniff_content_type",
]

MAX_CLIP_BYTES = 64 * 2**20
DEFAULT_QUESTION = "Which clip shows the better behaviour?"
SUFFIXES = {".webm": "video/webm", ".mp4": "video/mp4", ".gif": "image/gif"}


def sniff_content_type(data: bytes) -> str | None:
    """The content type of a WebM, MP4 or GIF file from its first bytes; None otherwise."""
    if data[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska / WebM
        return "video/webm"
    if data[4:8] == b"ftyp":  # ISO base media: MP4
        return "video/mp4"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def add_clip(store, project: str, data: bytes, filename: str = "clip") -> str:
    """Store one clip in ``project`` (once per content); returns its ``"media:<sha256>"``."""
    kind = sniff_content_type(data)
    if kind is None:
        raise DataError("expected a WebM, MP4 or GIF clip", path=filename)
    if len(data) > MAX_CLIP_BYTES:
        raise DataError(f"clip over {MAX_CLIP_BYTES // 2**20} MiB", path=filename)
    proj = store.project(project)
    sha = hashlib.sha256(data).hexdigest()
    with store.db.read() as conn:
        known = conn.execute(
            select(media.c.id).where(media.c.project_id == proj.id, media.c.sha256 == sha)
        ).first()
    if known is None:
        try:
            with store.db.write() as conn:
                conn.execute(
                    insert(media).values(
                        project_id=proj.id,
                        sha256=sha,
                        content_type=kind,
                        size=len(data),
                        filename=Path(filename).name[:255],
                        data=data,
                        created_at=time.time(),
                    )
                )
        except IntegrityError:  # stored concurrently: the same bytes, nothing to do
            pass
    return f"media:{sha}"


def _sha(ref: str) -> str:
    return ref.removeprefix("media:")


def missing_clips(conn: Connection, project_id: int, refs: Iterable[str]) -> set[str]:
    """The ``media:<sha256>`` references among ``refs`` not stored in the project."""
    wanted = {_sha(r) for r in refs}
    if not wanted:
        return set()
    stored = conn.execute(
        select(media.c.sha256).where(media.c.project_id == project_id, media.c.sha256.in_(wanted))
    ).scalars()
    return wanted - set(stored)


def clip_types(conn: Connection, project_id: int, refs: list[str]) -> list[str]:
    """The content type of each referenced clip ("" for a missing one)."""
    rows = conn.execute(
        select(media.c.sha256, media.c.content_type).where(
            media.c.project_id == project_id, media.c.sha256.in_([_sha(r) for r in refs])
        )
    ).all()
    by_sha = dict(rows)
    return [by_sha.get(_sha(r), "") for r in refs]


def read_clip(conn: Connection, project_id: int, ref: str) -> tuple[str, bytes] | None:
    """(content type, bytes) of a stored clip, or None."""
    row = conn.execute(
        select(media.c.content_type, media.c.data).where(
            media.c.project_id == project_id, media.c.sha256 == _sha(ref)
        )
    ).first()
    return (row.content_type, bytes(row.data)) if row is not None else None


def _confined(value: str | os.PathLike, base: Path, n: int, field: str) -> Path:
    """The clip file ``value`` names inside ``base``: a relative path without ``..`` and
    without a symbolic link anywhere along it (a dataset file must not make the server read,
    and show annotators, a file outside its own folder)."""
    raw = os.fspath(value)
    rel = Path(raw)
    if rel.is_absolute() or raw.startswith(("/", "\\")):
        raise DataError(
            f"{raw!r} is an absolute path; give clip paths relative to the dataset folder",
            line=n,
            field=field,
        )
    if ".." in rel.parts:
        raise DataError(
            f"{raw!r} leaves the dataset folder ('..'); clips must lie inside it",
            line=n,
            field=field,
        )
    path = base
    for part in rel.parts:
        path = path / part
        if path.is_symlink():
            raise DataError(
                f"{raw!r} goes through a symbolic link; clips must be plain files inside the dataset folder",
                line=n,
                field=field,
            )
    return path


def _clip_bytes(value: Any, base: Path, n: int, field: str) -> tuple[bytes, str]:
    if isinstance(value, bytes | bytearray):
        return bytes(value), f"pair {n} {field}"
    if not isinstance(value, str | os.PathLike):
        raise DataError("expected a file path (or bytes)", line=n, field=field)
    if Path(value).suffix.lower() not in SUFFIXES:
        raise DataError(
            f"expected a {', '.join(SUFFIXES)} file, got {Path(value).name!r}", line=n, field=field
        )
    path = _confined(value, base, n, field)
    try:
        if not path.is_file():
            raise DataError(f"no such file {str(path)!r}", line=n, field=field)
        if path.stat().st_size > MAX_CLIP_BYTES:
            raise DataError(f"{path.name}: over {MAX_CLIP_BYTES // 2**20} MiB", line=n, field=field)
        fd = os.open(
            path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        )  # a link swapped in meanwhile
        with os.fdopen(fd, "rb") as f:
            return f.read(MAX_CLIP_BYTES + 1), str(path)
    except OSError as e:
        raise DataError(f"cannot read {str(path)!r}: {e.strerror}", line=n, field=field) from None


def import_video_pairs(
    store,
    project: str,
    pairs: Iterable[dict[str, Any]],
    *,
    gold: bool = False,
    base_dir: str | os.PathLike | None = None,
) -> ImportResult:
    """Add ``video_pair`` items to ``project``, storing their clips in the database.

    Each pair: ``{"video_a": path or bytes, "video_b": path or bytes, "prompt"?: the
    question (default :data:`DEFAULT_QUESTION`), "id"?: a stable key, "meta"?: {...}
    (e.g. segment ids; it comes back in each label's ``meta["item_meta"]``), "gold"?:
    {"choice": "a" | "b" | "tie" | "incomparable"}}``. Paths are relative to ``base_dir``
    (the dataset folder; default: the working directory) and must stay inside it: absolute
    paths, ``..`` and symbolic links are refused. Idempotent like :meth:`~alignkit.feedback.store.FeedbackStore.add_items`:
    the same pair again keeps its item id. ``result.item_ids`` has one id per pair, in order.
    """
    base = Path(base_dir if base_dir is not None else os.getcwd()).resolve()
    entries = []
    for n, pair in enumerate(pairs, start=1):
        if not isinstance(pair, dict):
            raise DataError("expected an object with video_a and video_b", line=n)
        unknown = set(pair) - {"type", "video_a", "video_b", "prompt", "id", "meta", "gold"}
        if unknown:
            raise DataError(f"unknown field(s) {', '.join(sorted(unknown))}", line=n)
        refs = []
        for field in ("video_a", "video_b"):
            if field not in pair:
                raise DataError("missing (expected a clip file)", line=n, field=field)
            data, name = _clip_bytes(pair[field], base, n, field)
            try:
                refs.append(add_clip(store, project, data, name))
            except DataError as e:  # name the clip in the reason: line n is the pair's
                raise DataError(f"{name}: {e.reason}", line=n, field=field) from None
        entry = {
            "type": "video_pair",
            "prompt": pair.get("prompt", DEFAULT_QUESTION),
            "responses": refs,
            "meta": pair.get("meta") or {},
        }
        for key in ("id", "gold"):
            if pair.get(key) is not None:
                entry[key] = pair[key]
        entries.append(entry)
    return store.add_items(project, entries, gold=gold)
