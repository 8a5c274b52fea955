"""Conversation store: conversations, their message tree (branches), per-conversation settings and presets in SQLite."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import IngleError, SettingsError
from engine.library import data_dir
from engine.settings import PRESETS, SamplingSettings

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
    leaf INTEGER
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    parent INTEGER REFERENCES messages(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'done',
    stats TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_parent ON messages(conversation, parent);
CREATE TABLE IF NOT EXISTS presets (
    name TEXT PRIMARY KEY,
    settings TEXT NOT NULL
);
"""

ROLES = ("system", "user", "assistant")
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


def default_path() -> Path:
    return data_dir() / "conversations.sqlite3"


class ConversationStore:
    """All reads and writes of chats. Every write commits at once, so a killed app loses nothing committed."""

    def __init__(self, path: Path | str | None = None):
        self.db_path = Path(path) if path else default_path()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.db_path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against app crashes
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        # replies that were streaming when the app last died are interrupted, not streaming
        self._db.execute("UPDATE messages SET status='interrupted' WHERE status='streaming'")

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------ conversations
    def create(self, title: str = "New chat", system_prompt: str = "", settings: SamplingSettings | None = None,
               model: str = "") -> Conversation:  # fmt: skip
        now = time.time()
        data = json.dumps((settings or SamplingSettings()).to_dict())
        cur = self._db.execute(
            "INSERT INTO conversations (title, created, updated, system_prompt, settings, model) VALUES (?,?,?,?,?,?)",
            (title, now, now, system_prompt, data, model),
        )
        return self.get(cur.lastrowid)

    def get(self, cid: int) -> Conversation:
        row = self._db.execute("SELECT * FROM conversations WHERE id=?", (cid,)).fetchone()
        if row is None:
            raise ConversationError(f"Conversation {cid} does not exist.")
        return Conversation(row["id"], row["title"], row["created"], row["updated"], bool(row["pinned"]),
                            row["system_prompt"], row["model"])  # fmt: skip

    def conversations(self, search: str = "") -> list[Conversation]:
        """Pinned first, then the most recently updated; `search` matches titles and message text."""
        sql = "SELECT id FROM conversations WHERE deleted=0"
        args: tuple = ()
        if search:
            like = f"%{search}%"
            sql += " AND (title LIKE ? OR id IN (SELECT conversation FROM messages WHERE content LIKE ?))"
            args = (like, like)
        rows = self._db.execute(sql + " ORDER BY pinned DESC, updated DESC, id DESC", args).fetchall()
        return [self.get(r["id"]) for r in rows]

    def _touch(self, cid: int) -> None:
        self._db.execute("UPDATE conversations SET updated=? WHERE id=?", (time.time(), cid))

    def _set(self, cid: int, column: str, value: Any) -> None:
        self.get(cid)
        self._db.execute(f"UPDATE conversations SET {column}=? WHERE id=?", (value, cid))

    def rename(self, cid: int, title: str) -> None:
        title = title.strip()
        if not title:
            raise ConversationError("A conversation title cannot be empty.")
        self._set(cid, "title", title)

    def set_pinned(self, cid: int, pinned: bool) -> None:
        self._set(cid, "pinned", int(pinned))

    def set_system_prompt(self, cid: int, text: str) -> None:
        self._set(cid, "system_prompt", text)

    def set_model(self, cid: int, model: str) -> None:
        self._set(cid, "model", model)

    def delete(self, cid: int) -> None:
        """Hide the conversation; `undelete` brings it back, `purge` removes deleted ones for good."""
        self._set(cid, "deleted", 1)

    def undelete(self, cid: int) -> None:
        self._set(cid, "deleted", 0)

    def purge(self) -> int:
        return self._db.execute("DELETE FROM conversations WHERE deleted=1").rowcount

    # ------------------------------------------------------------ settings and presets
    def settings(self, cid: int) -> SamplingSettings:
        row = self._db.execute("SELECT settings FROM conversations WHERE id=?", (cid,)).fetchone()
        if row is None:
            raise ConversationError(f"Conversation {cid} does not exist.")
        return SamplingSettings.from_dict(json.loads(row["settings"]))

    def set_settings(self, cid: int, settings: SamplingSettings) -> None:
        self._set(cid, "settings", json.dumps(settings.to_dict()))

    def presets(self) -> dict[str, SamplingSettings]:
        """Built-in presets first, then the user's."""
        out = dict(PRESETS)
        for row in self._db.execute("SELECT name, settings FROM presets ORDER BY name"):
            out[row["name"]] = SamplingSettings.from_dict(json.loads(row["settings"]))
        return out

    def _check_user_preset_name(self, name: str) -> str:
        name = name.strip()
        if not name:
            raise SettingsError("preset", "a preset needs a name")
        if name in PRESETS:
            raise SettingsError("preset", f"'{name}' is a built-in preset; choose another name")
        return name

    def save_preset(self, name: str, settings: SamplingSettings) -> None:
        name = self._check_user_preset_name(name)
        self._db.execute(
            "INSERT OR REPLACE INTO presets VALUES (?,?)", (name, json.dumps(settings.to_dict()))
        )

    def rename_preset(self, old: str, new: str) -> None:
        old = self._check_user_preset_name(old)
        new = self._check_user_preset_name(new)
        if self._db.execute("UPDATE presets SET name=? WHERE name=?", (new, old)).rowcount == 0:
            raise SettingsError("preset", f"there is no user preset named '{old}'")

    def delete_preset(self, name: str) -> None:
        name = self._check_user_preset_name(name)
        if self._db.execute("DELETE FROM presets WHERE name=?", (name,)).rowcount == 0:
            raise SettingsError("preset", f"there is no user preset named '{name}'")

    # ------------------------------------------------------------ messages
    def _message(self, row: sqlite3.Row) -> StoredMessage:
        return StoredMessage(row["id"], row["conversation"], row["parent"], row["role"], row["content"],
                             row["status"], json.loads(row["stats"]), row["created"])  # fmt: skip

    def message(self, mid: int) -> StoredMessage:
        row = self._db.execute("SELECT * FROM messages WHERE id=?", (mid,)).fetchone()
        if row is None:
            raise ConversationError(f"Message {mid} does not exist.")
        return self._message(row)

    def add_message(self, cid: int, parent: int | None, role: str, content: str, status: str = "done",
                    stats: dict | None = None) -> StoredMessage:  # fmt: skip
        """Append a message under `parent` (None: a first message) and make it the conversation's current leaf."""
        if role not in ROLES:
            raise ConversationError(f"Unknown role {role!r}; use one of {', '.join(ROLES)}.")
        if status not in STATUSES:
            raise ConversationError(f"Unknown status {status!r}; use one of {', '.join(STATUSES)}.")
        self.get(cid)
        if parent is not None and self.message(parent).conversation != cid:
            raise ConversationError(f"Message {parent} belongs to another conversation.")
        cur = self._db.execute(
            "INSERT INTO messages (conversation, parent, role, content, status, stats, created) VALUES (?,?,?,?,?,?,?)",
            (cid, parent, role, content, status, json.dumps(stats or {}), time.time()),
        )
        self._db.execute(
            "UPDATE conversations SET leaf=?, updated=? WHERE id=?", (cur.lastrowid, time.time(), cid)
        )
        return self.message(cur.lastrowid)

    def update_message(
        self, mid: int, content: str, status: str | None = None, stats: dict | None = None
    ) -> None:
        """Rewrite a message's text (a streamed reply as it grows, or an edit in place) and optionally its status."""
        msg = self.message(mid)
        if status is not None and status not in STATUSES:
            raise ConversationError(f"Unknown status {status!r}; use one of {', '.join(STATUSES)}.")
        self._db.execute(
            "UPDATE messages SET content=?, status=?, stats=? WHERE id=?",
            (content, status or msg.status, json.dumps(stats if stats is not None else msg.stats), mid),
        )
        self._touch(msg.conversation)

    def children(self, cid: int, parent: int | None) -> list[StoredMessage]:
        rows = self._db.execute(
            "SELECT * FROM messages WHERE conversation=? AND parent IS ? ORDER BY id", (cid, parent)
        ).fetchall()
        return [self._message(r) for r in rows]

    def siblings(self, mid: int) -> list[StoredMessage]:
        """The message and its alternatives (same parent), oldest first: what "2/3" navigates."""
        msg = self.message(mid)
        return self.children(msg.conversation, msg.parent)

    def leaf(self, cid: int) -> int | None:
        row = self._db.execute("SELECT leaf FROM conversations WHERE id=?", (cid,)).fetchone()
        if row is None:
            raise ConversationError(f"Conversation {cid} does not exist.")
        return row["leaf"]

    def path(self, cid: int) -> list[StoredMessage]:
        """The current branch, first message to current leaf."""
        out: list[StoredMessage] = []
        mid = self.leaf(cid)
        while mid is not None:
            msg = self.message(mid)
            out.append(msg)
            mid = msg.parent
        return out[::-1]

    def select(self, mid: int) -> None:
        """Switch to the branch through `mid`, following the newest child down to a leaf."""
        msg = self.message(mid)
        leaf = msg.id
        while kids := self.children(msg.conversation, leaf):
            leaf = kids[-1].id
        self._db.execute("UPDATE conversations SET leaf=? WHERE id=?", (leaf, msg.conversation))

    def delete_message(self, mid: int) -> None:
        """Delete a message and everything below it; the current branch moves to a sibling or the parent."""
        msg = self.message(mid)
        on_path = any(m.id == mid for m in self.path(msg.conversation))
        self._db.execute("DELETE FROM messages WHERE id=?", (mid,))
        if on_path:
            others = self.children(msg.conversation, msg.parent)
            if others:
                self.select(others[-1].id)
            else:
                self._db.execute("UPDATE conversations SET leaf=? WHERE id=?", (msg.parent, msg.conversation))
        self._touch(msg.conversation)

    # ------------------------------------------------------------ export / import
    def export_json(self, cid: int) -> dict[str, Any]:
        """The whole conversation (every branch), readable back by `import_json`."""
        conv = self.get(cid)
        rows = self._db.execute("SELECT * FROM messages WHERE conversation=? ORDER BY id", (cid,)).fetchall()
        return {
            "format": EXPORT_FORMAT,
            "title": conv.title,
            "created": conv.created,
            "system_prompt": conv.system_prompt,
            "model": conv.model,
            "settings": self.settings(cid).to_dict(),
            "leaf": self.leaf(cid),
            "messages": [
                {
                    "id": r["id"],
                    "parent": r["parent"],
                    "role": r["role"],
                    "content": r["content"],
                    "status": r["status"],
                    "stats": json.loads(r["stats"]),
                    "created": r["created"],
                }  # fmt: skip
                for r in rows
            ],
        }

    def import_json(self, data: dict[str, Any]) -> Conversation:
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise ConversationError(
                f"This file is not an Ingle conversation export (expected format {EXPORT_FORMAT})."
            )
        try:
            settings = SamplingSettings.from_dict(data.get("settings", {}))
            conv = self.create(str(data.get("title") or "Imported chat"), str(data.get("system_prompt", "")),
                               settings, str(data.get("model", "")))  # fmt: skip
            new_ids: dict[int, int] = {}
            for m in data["messages"]:
                parent = None if m.get("parent") is None else new_ids[m["parent"]]
                status = "interrupted" if m.get("status") == "streaming" else m.get("status", "done")
                new_ids[m["id"]] = self.add_message(
                    conv.id, parent, m["role"], m["content"], status, m.get("stats")
                ).id
        except (KeyError, TypeError) as err:
            raise ConversationError(f"The conversation file is incomplete or damaged (at {err}).") from None
        leaf = data.get("leaf")
        self._db.execute("UPDATE conversations SET leaf=? WHERE id=?", (new_ids.get(leaf), conv.id))
        return self.get(conv.id)

    def export_markdown(self, cid: int) -> str:
        """The current branch as Markdown."""
        conv = self.get(cid)
        parts = [f"# {conv.title}\n"]
        if conv.system_prompt:
            parts.append(f"**System:** {conv.system_prompt}\n")
        for msg in self.path(cid):
            note = " *(interrupted)*" if msg.status == "interrupted" else ""
            parts.append(f"## {msg.role.capitalize()}{note}\n\n{msg.content}\n")
        return "\n".join(parts)
