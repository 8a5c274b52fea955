"""The conversation store's SQLite schema, its records and its error, shared by the store (engine/conversations.py),
the import check (engine/conversation_import.py) and the recovery of a damaged file (engine/store_recovery.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import IngleError

EXPORT_FORMAT = "ingle.conversation.v1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    system_prompt TEXT NOT NULL DEFAULT '',
    settings TEXT NOT NULL DEFAULT '{}',
    model TEXT NOT NULL DEFAULT '',
    leaf INTEGER,
    tool_choice TEXT NOT NULL DEFAULT 'auto'
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    parent INTEGER REFERENCES messages(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'done',
    stats TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    meta TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_parent ON messages(conversation, parent);
CREATE TABLE IF NOT EXISTS message_undo (
    ticket INTEGER PRIMARY KEY,
    conversation INTEGER NOT NULL,
    leaf INTEGER
);
CREATE TABLE IF NOT EXISTS conversation_tools (
    conversation INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    server TEXT NOT NULL,
    PRIMARY KEY (conversation, server)
);
CREATE TABLE IF NOT EXISTS presets (
    name TEXT PRIMARY KEY,
    settings TEXT NOT NULL
);
"""

ROLES = ("system", "user", "assistant")
# how a conversation lets the model use its tools (engine/tools.py): the model decides, must call one, or none
TOOL_CHOICES = ("auto", "required", "none")
# done: complete; streaming: being written (after a crash it reads as interrupted); interrupted: the engine died
# or the app was killed; stopped: the user pressed stop.
STATUSES = ("done", "streaming", "interrupted", "stopped")


class ConversationError(IngleError):
    """A conversation or message that does not exist, or an import file that is not a conversation."""


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    created: float
    updated: float
    pinned: bool
    system_prompt: str
    model: str


@dataclass(frozen=True)
class StoredMessage:
    id: int
    conversation: int
    parent: int | None
    role: str
    content: str
    status: str
    stats: dict[str, Any]
    created: float
    # what the reply used (engine/reply_meta.py): document passages and tool calls, each a dict
    sources: tuple[dict[str, Any], ...] = field(default=())
    tool_calls: tuple[dict[str, Any], ...] = field(default=())
