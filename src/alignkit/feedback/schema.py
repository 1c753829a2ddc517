"""The feedback database's tables (SQLAlchemy Core; the same schema on SQLite and PostgreSQL).

Answers are JSON in *original* terms (``a`` = ``responses[0]``) next to the display order
the annotator saw; see :mod:`alignkit.feedback.answers`.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "assignments",
    "chat_signals",
    "closed",
    "conversations",
    "items",
    "media",
    "members",
    "messages",
    "metadata",
    "projects",
    "sessions",
    "users",
    "votes",
    "withdrawn",
]

metadata = MetaData()

projects = Table(
    "ak_projects",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("guidelines", Text, nullable=False),
    Column("tags", JSON, nullable=False),  # project-defined tags, besides DEFAULT_TAGS
    Column("overlap", Integer, nullable=False),
    Column("gold_every", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

users = Table(
    "ak_users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("group_name", String(64)),
    Column("password_hash", String(200)),
    Column("token_hash", String(64), unique=True),
    Column("active", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
)

sessions = Table(
    "ak_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("ak_users.id"), nullable=False),
    Column("csrf", String(100), nullable=False),
    Column("expires_at", Float, nullable=False),
)

# Which annotators may work on which project (admins may work on every project).
members = Table(
    "ak_members",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("ak_projects.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("ak_users.id"), nullable=False),
    UniqueConstraint("project_id", "user_id", name="uq_member"),
)

items = Table(
    "ak_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("ak_projects.id"), nullable=False),
    Column("key", String(200), nullable=False),
    Column("type", String(16), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("turns", JSON),
    Column("responses", JSON, nullable=False),
    Column("is_gold", Boolean, nullable=False),
    Column("gold", JSON),
    Column("meta", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("project_id", "key", name="uq_item_key"),
)

assignments = Table(
    "ak_assignments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("ak_items.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("ak_users.id"), nullable=False),
    Column("display_order", JSON, nullable=False),
    Column("status", String(12), nullable=False),  # open | done | skipped
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
    UniqueConstraint("item_id", "user_id", name="uq_assignment_item_user"),
    Index("ix_assignment_user", "user_id", "status"),
)

votes = Table(
    "ak_votes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("assignment_id", Integer, ForeignKey("ak_assignments.id"), nullable=False),
    Column("item_id", Integer, ForeignKey("ak_items.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("ak_users.id"), nullable=False),
    Column("display_order", JSON, nullable=False),
    Column("answer", JSON, nullable=False),
    Column("served_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("time_spent_ms", Integer, nullable=False),
    UniqueConstraint("assignment_id", name="uq_vote_assignment"),
    Index("ix_vote_item", "item_id"),
)

# Items whose round took its labels (the loop closes them when it collects their labels):
# they are offered no more, and labels on them can no longer be taken back.
closed = Table(
    "ak_closed",
    metadata,
    Column("item_id", Integer, ForeignKey("ak_items.id"), primary_key=True),
    Column("closed_at", Float, nullable=False),
)

# Labels their annotator took back (undo / change, before the item was closed): kept for
# the record, the assignment is open again.
withdrawn = Table(
    "ak_withdrawn",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("vote_id", Integer, nullable=False),
    Column("assignment_id", Integer, ForeignKey("ak_assignments.id"), nullable=False),
    Column("item_id", Integer, ForeignKey("ak_items.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("ak_users.id"), nullable=False),
    Column("answer", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("withdrawn_at", Float, nullable=False),
)

# Clips of video_pair items, stored in the database itself (BLOB on SQLite, BYTEA on
# PostgreSQL) so a backup of the database is a backup of everything. An item refers to a
# clip as "media:<sha256>"; the same clip imported twice is stored once per project.
media = Table(
    "ak_media",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("ak_projects.id"), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("content_type", String(40), nullable=False),
    Column("size", Integer, nullable=False),
    Column("filename", String(255), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("project_id", "sha256", name="uq_media_sha"),
)


# Conversations with models (the chat page and the arena; feedback/conversations.py). The
# messages form a tree: a regenerated, edited or second answer is a sibling of the first
# (same parent); ``leaf_id`` is the message the conversation continues from. A signal is
# one piece of feedback on messages (thumb, compare, pick, edit, arena), unique per user,
# kind and key (what was judged), so a repeated submit never makes a second row.
conversations = Table(
    "ak_conversations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("ak_projects.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("ak_users.id"), nullable=False),
    Column("mode", String(8), nullable=False),  # chat | arena
    Column("models", JSON, nullable=False),  # arena: [model of side A, model of side B]
    Column("leaf_id", Integer),
    Column("title", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_conversation_user", "project_id", "user_id"),
)

messages = Table(
    "ak_messages",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("conversation_id", Integer, ForeignKey("ak_conversations.id"), nullable=False),
    Column("parent_id", Integer, ForeignKey("ak_messages.id")),
    Column("role", String(12), nullable=False),  # user | assistant
    Column("content", Text, nullable=False),
    Column("model", String(200)),
    Column("side", String(1)),  # arena: A | B
    Column("origin", String(12), nullable=False),  # typed | model | edit
    Column("status", String(12), nullable=False),  # done | generating | stopped | error | interrupted
    Column("meta", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
    Index("ix_message_conversation", "conversation_id"),
)

chat_signals = Table(
    "ak_chat_signals",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("conversation_id", Integer, ForeignKey("ak_conversations.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("ak_users.id"), nullable=False),
    Column("kind", String(12), nullable=False),  # thumb | compare | pick | edit | arena
    Column("key", String(64), nullable=False),
    Column("message_id", Integer, ForeignKey("ak_messages.id"), nullable=False),
    Column("other_id", Integer, ForeignKey("ak_messages.id")),
    Column("answer", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("user_id", "kind", "key", name="uq_chat_signal"),
    Index("ix_chat_signal_conversation", "conversation_id"),
)
