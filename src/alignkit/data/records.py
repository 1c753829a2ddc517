"""Feedback records: the one vocabulary every part of alignkit speaks.

* :class:`Comparison` — a pairwise judgement with a soft label ``mu`` = P(a ≻ b):
  1 means a ≻ b, 0 means b ≻ a, ½ a tie. An *incomparable* judgement ("can't compare")
  is kept as a record with ``incomparable=True`` so nothing is lost, but loaders for
  training drop it and count it.
* :class:`Ranking` — a K-way ranking, ``order`` lists response indices best first;
  ``ties`` lists groups of indices judged equal.
* :class:`Rating` — a Likert-style score on a ``scale`` (low, high).
* :class:`Correction` — a response and the annotator's edited version of it.
* :class:`TrajectoryPair` — two control-trajectory segments with a soft label.

Every record carries optional ``annotator`` and ``group`` ids and free ``meta``.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field
from typing import Any

from alignkit.errors import DataError

__all__ = [
    "Comparison",
    "Correction",
    "Ranking",
    "Rating",
    "Record",
    "TrajectoryPair",
    "record_from_dict",
    "record_to_dict",
]


def _check_text(value: Any, name: str) -> None:
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", field=name)


def _check_common(record: Any) -> None:
    """annotator / group are strings or None; meta is a dict."""
    for name in ("annotator", "group"):
        value = getattr(record, name)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(record, name, str(value))  # numeric ids (e.g. from a database)
        elif value is not None and not isinstance(value, str):
            raise DataError(f"expected a string or null, got {value!r}", field=name)
    if not isinstance(record.meta, dict):
        raise DataError(f"expected an object, got {type(record.meta).__name__}", field="meta")


def _check_mu(mu: Any) -> float:
    if isinstance(mu, bool) or not isinstance(mu, (int, float)):
        raise DataError(f"expected a number in [0, 1], got {mu!r}", field="mu")
    if not (0.0 <= float(mu) <= 1.0):  # also rejects NaN
        raise DataError(f"expected a number in [0, 1], got {mu!r}", field="mu")
    return float(mu)


@dataclass
class Comparison:
    """Pairwise preference between responses ``a`` and ``b`` to ``prompt``.

    ``mu`` is the soft label P(a ≻ b) ∈ [0, 1]. ``strength`` optionally records how much
    better ("slightly"/"much"); it does not change ``mu``.
    """

    prompt: str
    a: str
    b: str
    mu: float = 1.0
    incomparable: bool = False
    strength: str | None = None
    annotator: str | None = None
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "comparison"

    def __post_init__(self) -> None:
        for name in ("prompt", "a", "b"):
            _check_text(getattr(self, name), name)
        self.mu = _check_mu(self.mu)
        if not isinstance(self.incomparable, bool):
            raise DataError(
                f"expected true or false, got {self.incomparable!r}", field="incomparable"
            )
        if self.strength is not None and not isinstance(self.strength, str):
            raise DataError(f"expected a string or null, got {self.strength!r}", field="strength")
        _check_common(self)

    @property
    def is_tie(self) -> bool:
        return not self.incomparable and self.mu == 0.5

    @property
    def chosen(self) -> str:
        """The preferred response (``a`` when mu ≥ ½)."""
        return self.a if self.mu >= 0.5 else self.b

    @property
    def rejected(self) -> str:
        return self.b if self.mu >= 0.5 else self.a


@dataclass
class Ranking:
    """K-way ranking of ``responses``: ``order`` holds indices best first.

    ``ties`` lists groups of response indices judged equal (each group must be
    contiguous in ``order``). A strict order has ``ties == []``.
    """

    prompt: str
    responses: list[str]
    order: list[int]
    ties: list[list[int]] = field(default_factory=list)
    annotator: str | None = None
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "ranking"

    def __post_init__(self) -> None:
        _check_text(self.prompt, "prompt")
        if not isinstance(self.responses, list) or len(self.responses) < 2:
            raise DataError("expected a list of at least 2 strings", field="responses")
        for r in self.responses:
            _check_text(r, "responses")
        k = len(self.responses)
        if not isinstance(self.order, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in self.order
        ):
            raise DataError(
                f"expected a list of response indices, got {self.order!r}", field="order"
            )
        if sorted(self.order) != list(range(k)):
            raise DataError(
                f"expected a permutation of 0..{k - 1}, got {self.order!r}", field="order"
            )
        pos = {idx: i for i, idx in enumerate(self.order)}
        if not isinstance(self.ties, list) or not all(isinstance(g, list) for g in self.ties):
            raise DataError(f"expected a list of index lists, got {self.ties!r}", field="ties")
        seen: set = set()
        for group in self.ties:
            if len(group) < 2 or any(g not in pos or g in seen for g in group):
                raise DataError(
                    f"expected groups of ≥2 valid response indices, got {group!r}", field="ties"
                )
            seen.update(group)
            spots = sorted(pos[g] for g in group)
            if spots != list(range(spots[0], spots[0] + len(spots))):
                raise DataError(f"tied group {group!r} is not contiguous in order", field="ties")
        _check_common(self)

    def tier(self) -> list[int]:
        """Rank tier of each response (0 = best; tied responses share a tier)."""
        tied = {}
        for gi, group in enumerate(self.ties):
            for g in group:
                tied[g] = gi
        tiers = [0] * len(self.responses)
        t, prev_group = -1, None
        for idx in self.order:
            group = tied.get(idx)
            if group is None or group != prev_group:
                t += 1
            tiers[idx] = t
            prev_group = group
        return tiers


@dataclass
class Rating:
    """A score for one response on an ordinal ``scale`` = (low, high), e.g. Likert 1–7."""

    prompt: str
    response: str
    score: float
    scale: tuple[float, float] = (1.0, 7.0)
    annotator: str | None = None
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "rating"

    def __post_init__(self) -> None:
        _check_text(self.prompt, "prompt")
        _check_text(self.response, "response")
        scale = self.scale
        if (
            not isinstance(scale, (list, tuple))
            or len(scale) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in scale)
            or not float(scale[0]) < float(scale[1])
        ):
            raise DataError(f"expected [low, high] with low < high, got {scale!r}", field="scale")
        lo, hi = float(scale[0]), float(scale[1])
        self.scale = (lo, hi)
        if isinstance(self.score, bool) or not isinstance(self.score, (int, float)):
            raise DataError(f"expected a number, got {self.score!r}", field="score")
        if not lo <= self.score <= hi:
            raise DataError(
                f"expected a number in [{lo:g}, {hi:g}], got {self.score!r}", field="score"
            )
        self.score = float(self.score)
        _check_common(self)


@dataclass
class Correction:
    """An annotator's edit of ``response`` into ``edited`` (the original is kept)."""

    prompt: str
    response: str
    edited: str
    annotator: str | None = None
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "correction"

    def __post_init__(self) -> None:
        for name in ("prompt", "response", "edited"):
            _check_text(getattr(self, name), name)
        _check_common(self)


@dataclass
class TrajectoryPair:
    """Preference between two trajectory segments σ_a, σ_b (Christiano et al. 2017).

    Each segment is a mapping with at least ``obs`` and ``actions`` (arrays or nested lists
    of equal length k), and optionally ``rewards``, ``next_obs``, ``frames`` (``(k, H, W, 3)``
    uint8) and ``meta``. ``mu`` = P(σ_a ≻ σ_b); ``incomparable`` marks "can't tell" (kept,
    dropped by training loaders). Arrays stay arrays in memory; on disk they go to an
    ``.npz`` side file next to the JSONL (:mod:`alignkit.data.trajectories`).
    """

    segment_a: dict[str, Any]
    segment_b: dict[str, Any]
    mu: float = 1.0
    incomparable: bool = False
    annotator: str | None = None
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "trajectory_pair"

    def __post_init__(self) -> None:
        for name in ("segment_a", "segment_b"):
            seg = getattr(self, name)
            if not isinstance(seg, dict) or "obs" not in seg or "actions" not in seg:
                raise DataError("expected a mapping with 'obs' and 'actions'", field=name)
            try:
                k = len(seg["obs"])
                lengths = {key: len(seg[key]) for key in ("actions", "rewards", "next_obs", "frames")
                           if seg.get(key) is not None}
            except TypeError:
                raise DataError("expected 'obs' and 'actions' to be sequences", field=name) from None
            bad = [key for key, n in lengths.items() if n != k]
            if bad:
                raise DataError(f"'{bad[0]}' has {lengths[bad[0]]} steps but 'obs' has {k}", field=name)
        self.mu = _check_mu(self.mu)
        if not isinstance(self.incomparable, bool):
            raise DataError(f"expected true or false, got {self.incomparable!r}", field="incomparable")
        _check_common(self)


Record = Comparison | Ranking | Rating | Correction | TrajectoryPair
_KINDS: dict[str, type] = {
    c.kind: c for c in (Comparison, Ranking, Rating, Correction, TrajectoryPair)
}


def record_to_dict(record: Record) -> dict[str, Any]:
    """Plain-JSON form of a record, tagged with its ``kind``."""
    d = asdict(record)
    d["kind"] = record.kind
    if isinstance(record, Rating):
        d["scale"] = list(record.scale)
    return d


def record_from_dict(d: dict[str, Any]) -> Record:
    """Inverse of :func:`record_to_dict` (raises :class:`DataError` on bad fields)."""
    if not isinstance(d, dict):
        raise DataError(f"expected an object, got {type(d).__name__}")
    kind = d.get("kind", "comparison")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise DataError(f"expected one of {sorted(_KINDS)}, got {kind!r}", field="kind")
    names = set(cls.__dataclass_fields__)
    args = {k: v for k, v in d.items() if k in names}
    missing = [
        f.name
        for f in cls.__dataclass_fields__.values()
        if f.name not in args and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise DataError(f"missing (required for a {kind})", field=missing[0])
    try:
        return cls(**args)
    except TypeError as e:
        raise DataError(f"bad record: {e}") from None
