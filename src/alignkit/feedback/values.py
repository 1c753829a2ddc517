"""The plain values the feedback store hands out (projects, users, tasks, results)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alignkit.feedback.answers import DEFAULT_TAGS

__all__ = ["ImportResult", "NewUser", "Project", "Task", "User", "VoteResult"]


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    guidelines: str
    tags: tuple[str, ...]
    overlap: int
    gold_every: int

    @property
    def all_tags(self) -> tuple[str, ...]:
        return DEFAULT_TAGS + tuple(t for t in self.tags if t not in DEFAULT_TAGS)


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    group: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class NewUser:
    """A created account and its one-time secrets (only their hashes are stored)."""

    user: User
    password: str | None
    token: str | None


@dataclass
class Task:
    """One assignment as the annotator sees it: responses already in display order."""

    assignment_id: int
    item_id: int
    type: str
    prompt: str
    turns: list[dict[str, str]] | None
    responses: list[str]
    display_order: list[int]
    status: str
    media_types: list[str] | None = None  # video_pair: each shown clip's content type

    def to_json(self) -> dict[str, Any]:
        return {
            "assignment_id": self.assignment_id,
            "item_id": self.item_id,
            "type": self.type,
            "prompt": self.prompt,
            "turns": self.turns,
            "responses": self.responses,
            "display_order": self.display_order,
            **({"media_types": self.media_types} if self.media_types is not None else {}),
        }


@dataclass(frozen=True)
class VoteResult:
    vote_id: int
    duplicate: bool


@dataclass
class ImportResult:
    added: int = 0
    skipped: int = 0  # already present (same key): imports are idempotent
    item_ids: list[int] = field(default_factory=list)  # one per entry, new or existing
