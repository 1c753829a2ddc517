"""People compare clips: segment pairs go to the feedback store as ``video_pair`` items.

:class:`VideoPairClient` is the client :class:`~alignkit.humans.annotators.HumanAnnotator`
polls: ``submit_pairs`` encodes each segment's frames as a WebM clip and imports the pair
with :func:`alignkit.feedback.media.import_video_pairs` (stable ids, so a resumed run finds
the items and labels it already has); ``fetch_labels`` reads the labels back with
``store.item_labels``. :class:`HumanSegmentAnnotator` turns those comparisons into
:class:`~alignkit.data.TrajectoryPair` records (A / B / tie → μ = 1 / 0 / ½; "can't tell"
→ ``incomparable``), so the control loop treats people like any synthetic annotator.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignkit.control.clips import write_clip
from alignkit.data.records import TrajectoryPair

__all__ = ["HumanSegmentAnnotator", "VideoPairClient"]

QUESTION = "Which clip shows the better behaviour for the task?"


class VideoPairClient:
    """Clips of segment pairs into a :class:`~alignkit.feedback.store.FeedbackStore`."""

    def __init__(self, store: Any, clip_dir: str | Path, *, fps: int = 30, question: str = QUESTION):
        self.store, self.clip_dir, self.fps, self.question = store, Path(clip_dir), fps, question

    def submit_pairs(self, pairs: Sequence[tuple[Any, Any, Any]], project: str) -> list[int]:
        from alignkit.feedback.media import import_video_pairs

        entries = []
        for key, a, b in pairs:
            if a.frames is None or b.frames is None:
                raise ValueError("segments need rendered frames to be shown to people")
            write_clip(a.frames, self.clip_dir / f"{key}_a.webm", self.fps)
            write_clip(b.frames, self.clip_dir / f"{key}_b.webm", self.fps)
            entries.append({  # names inside clip_dir: the import reads no file outside it
                "video_a": f"{key}_a.webm",
                "video_b": f"{key}_b.webm",
                "prompt": self.question, "id": str(key),
                "meta": {"segment_a": {k: a.meta[k] for k in ("iteration", "env_index", "t0") if k in a.meta},
                         "segment_b": {k: b.meta[k] for k in ("iteration", "env_index", "t0") if k in b.meta}},
            })
        self.store.ensure_project(project)
        return list(import_video_pairs(self.store, project, entries, base_dir=self.clip_dir).item_ids)

    def fetch_labels(self, ids: Sequence[int], project: str) -> dict[int, Any]:
        return self.store.item_labels(project, ids)


class HumanSegmentAnnotator:
    """The ``Annotator`` protocol over segments, answered by people through the store.

    ``label([(key, σ_a, σ_b), …])`` blocks (polling every ``poll_s`` seconds, up to
    ``timeout_s``) until every pair has a label; ``key`` is the item's stable id.
    """

    def __init__(self, client: Any, *, project: str = "control", poll_s: float = 5.0,
                 timeout_s: float = 24 * 3600.0, name: str = "human", sleep: Any = None):
        from alignkit.humans.annotators import HumanAnnotator

        kw = {"sleep": sleep} if sleep is not None else {}
        self.inner = HumanAnnotator(client, project=project, poll_s=poll_s, timeout_s=timeout_s, name=name, **kw)
        self.name = name
        self.rng = random.Random(0)  # nothing random; kept so checkpoints look alike

    def compare(self, key: Any, a: Any, b: Any) -> TrajectoryPair:
        return self.label([(key, a, b)])[0]

    def label(self, pairs: Sequence[tuple[Any, Any, Any]]) -> list[TrajectoryPair]:
        comps = self.inner.label(list(pairs))
        out = []
        for (_, a, b), c in zip(pairs, comps, strict=True):
            out.append(TrajectoryPair(a.to_dict(), b.to_dict(), mu=c.mu, incomparable=bool(c.incomparable),
                                      annotator=c.annotator, group=c.group, meta=dict(c.meta)))
        return out
