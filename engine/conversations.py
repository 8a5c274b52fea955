"""Conversation store: conversations, their message tree (branches), per-conversation settings and presets in SQLite."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from engine.conversation_import import MAX_IMPORT_BYTES, check_export, is_number, read_export
from engine.conversation_schema import (
    EXPORT_FORMAT,
    ROLES,
    SCHEMA,
    STATUSES,
    TOOL_CHOICES,
    Conversation,
    ConversationError,
    StoredMessage,
)
from engine.errors import SettingsError
from engine.library import data_dir
from engine.reply_meta import call_line, read_meta, source_label
from engine.settings import PRESETS, SamplingSettings
from engine.store_recovery import DAMAGE_CODES, MAX_KEPT_WAL, Recovery, StoreDamaged, recover_store

# Names the app and the tests import from here, whichever module holds them now.
__all__ = [
    "EXPORT_FORMAT",
    "MAX_IMPORT_BYTES",
    "ROLES",
    "STATUSES",
    "Conversation",
    "ConversationError",
    "ConversationStore",
    "Recovery",
    "StoreDamaged",
    "StoredMessage",
    "default_path",
    "open_store",
    "recover_store",
]


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _as_number(value: Any) -> float:
    return float(value) if is_number(value) else 0.0


def default_path() -> Path:
    return data_dir() / "conversations.sqlite3"


def open_store(path: Path | str | None = None) -> tuple[ConversationStore, Recovery | None]:
    """The conversation store; a damaged file is moved aside (never overwritten), what SQLite can still read is
    copied into a fresh file, and the Recovery says so. OSError when the folder cannot be written."""
    db = Path(path) if path else default_path()
    wal = Path(f"{db}-wal")
    # Opening a damaged file can make SQLite drop its write-ahead log; keep its bytes until the file proved sound.
    # A clean exit leaves no log, so this costs nothing on an ordinary start.
    try:
        saved_wal = wal.read_bytes() if wal.is_file() and 0 < wal.stat().st_size <= MAX_KEPT_WAL else None
    except OSError:
        saved_wal = None
    try:
        return ConversationStore(db), None
    except StoreDamaged as err:
        recovery = recover_store(db, str(err), saved_wal)
        return ConversationStore(db), recovery


class ConversationStore:
    """All reads and writes of chats. Every write commits at once, so a killed app loses nothing committed."""

    def __init__(self, path: Path | str | None = None):
        """StoreDamaged when the file is damaged (see `open_store`); ConversationError when it cannot be opened
        for another reason (locked, unreadable)."""
        self.db_path = Path(path) if path else default_path()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.db_path, isolation_level=None)
        try:
            self._open()
        except sqlite3.DatabaseError as err:
            self._db.close()
            if isinstance(err, StoreDamaged) or getattr(err, "sqlite_errorname", "") in DAMAGE_CODES:
                raise StoreDamaged(str(err)) from None
            # locked by another program, unreadable, a full disk...: the file may be fine, so it is left alone
            raise ConversationError(
                f"Cannot open the conversations file {self.db_path}: {err}. If another Ingle is running, close it "
                "and try again."
            ) from None

    def _open(self) -> None:
        check = self._db.execute("PRAGMA quick_check").fetchall()
        if [tuple(r) for r in check] != [("ok",)]:
            raise StoreDamaged(f"integrity check: {'; '.join(str(r[0]) for r in check[:3])}")
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against app crashes
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        if "tool_choice" not in {r["name"] for r in self._db.execute("PRAGMA table_info(conversations)")}:
            # stores made before the tool choice was kept per conversation
            self._db.execute("ALTER TABLE conversations ADD COLUMN tool_choice TEXT NOT NULL DEFAULT 'auto'")
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(messages)")}
        if "deleted" not in columns:  # stores made before message deletion could be undone
            self._db.execute("ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0")
        if "meta" not in columns:  # stores made before replies kept their sources and tool calls
            self._db.execute("ALTER TABLE messages ADD COLUMN meta TEXT")
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
        # SQLite keeps whatever type was written: a hand-edited or recovered file can hold a number or bytes where
        # text belongs, and the list of conversations must still show
        return Conversation(row["id"], _as_text(row["title"]) or "Untitled", _as_number(row["created"]),
                            _as_number(row["updated"]), bool(row["pinned"]), _as_text(row["system_prompt"]),
                            _as_text(row["model"]))  # fmt: skip

    def conversations(self, search: str = "") -> list[Conversation]:
        """Pinned first, then the most recently updated; `search` matches titles and message text."""
        sql = "SELECT id FROM conversations WHERE deleted=0"
        args: tuple = ()
        if search:
            like = f"%{search}%"
            sql += " AND (title LIKE ? OR id IN (SELECT conversation FROM messages WHERE deleted=0 AND content LIKE ?))"
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
        """Remove deleted conversations and messages for good; returns how many conversations went."""
        self._db.execute("DELETE FROM messages WHERE deleted<>0")
        self._db.execute("DELETE FROM message_undo")
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
        # A stored row is read defensively: a damaged or hand-edited stats field must not stop the window from
        # showing the conversation, so it reads as "no stats".
        try:
            stats = json.loads(row["stats"])
        except (TypeError, ValueError, RecursionError):
            stats = {}
        if not isinstance(stats, dict):
            stats = {}
        status = row["status"] if row["status"] in STATUSES else "done"
        meta = read_meta(row["meta"])
        return StoredMessage(row["id"], row["conversation"], row["parent"], _as_text(row["role"]),
                             _as_text(row["content"]), status, stats, _as_number(row["created"]),
                             tuple(meta.get("sources", ())), tuple(meta.get("tool_calls", ())))  # fmt: skip

    def message(self, mid: int) -> StoredMessage:
        row = self._db.execute("SELECT * FROM messages WHERE id=? AND deleted=0", (mid,)).fetchone()
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

    def set_reply_meta(
        self, mid: int, sources: list[dict] | None = None, tool_calls: list[dict] | None = None
    ) -> None:
        """Store what reply `mid` used: its document passages and its tool calls (engine/reply_meta.py records);
        a None leaves that part as it was."""
        msg = self.message(mid)
        meta = {
            "sources": list(msg.sources) if sources is None else list(sources),
            "tool_calls": list(msg.tool_calls) if tool_calls is None else list(tool_calls),
        }
        meta = {k: v for k, v in meta.items() if v}
        self._db.execute("UPDATE messages SET meta=? WHERE id=?", (json.dumps(meta) if meta else None, mid))

    # ------------------------------------------------------------ MCP servers a conversation may use
    def tool_servers(self, cid: int) -> list[str]:
        rows = self._db.execute(
            "SELECT server FROM conversation_tools WHERE conversation=? ORDER BY server", (cid,)
        ).fetchall()
        return [_as_text(r["server"]) for r in rows]

    def set_tool_servers(self, cid: int, servers: list[str]) -> None:
        self.get(cid)
        self._db.execute("BEGIN")
        try:
            self._db.execute("DELETE FROM conversation_tools WHERE conversation=?", (cid,))
            self._db.executemany(
                "INSERT INTO conversation_tools (conversation, server) VALUES (?,?)",
                [(cid, s) for s in servers],
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def tool_choice(self, cid: int) -> str:
        """How the conversation lets the model use its tools: auto, required or none (a damaged value: auto)."""
        row = self._db.execute("SELECT tool_choice FROM conversations WHERE id=?", (cid,)).fetchone()
        if row is None:
            raise ConversationError(f"Conversation {cid} does not exist.")
        choice = _as_text(row["tool_choice"])
        return choice if choice in TOOL_CHOICES else "auto"

    def set_tool_choice(self, cid: int, choice: str) -> None:
        if choice not in TOOL_CHOICES:
            raise ConversationError(f"Tool choice '{choice}' is not one of {', '.join(TOOL_CHOICES)}.")
        self.get(cid)
        self._db.execute("UPDATE conversations SET tool_choice=? WHERE id=?", (choice, cid))

    def forget_tool_server(self, server: str) -> None:
        """A server removed from the config is enabled nowhere (one added again later under its name is new)."""
        self._db.execute("DELETE FROM conversation_tools WHERE server=?", (server,))

    def children(self, cid: int, parent: int | None) -> list[StoredMessage]:
        rows = self._db.execute(
            "SELECT * FROM messages WHERE conversation=? AND parent IS ? AND deleted=0 ORDER BY id",
            (cid, parent),
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
        seen: set[int] = set()
        while mid is not None and mid not in seen:  # a damaged store could hold a parent cycle
            seen.add(mid)
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

    def delete_message(self, mid: int) -> int:
        """Delete a message and everything below it; the current branch moves to a sibling or the parent.

        Returns an undo ticket for `undelete_message` (the rows stay hidden until `purge`)."""
        msg = self.message(mid)
        on_path = any(m.id == mid for m in self.path(msg.conversation))
        ticket = (self._db.execute("SELECT MAX(deleted) FROM messages").fetchone()[0] or 0) + 1
        self._db.execute("BEGIN")
        try:
            self._db.execute(
                """WITH RECURSIVE below(id) AS (SELECT ? UNION ALL
                       SELECT m.id FROM messages m JOIN below ON m.parent = below.id)
                   UPDATE messages SET deleted=? WHERE id IN below AND deleted=0""",
                (mid, ticket),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO message_undo (ticket, conversation, leaf) VALUES (?,?,?)",
                (ticket, msg.conversation, self.leaf(msg.conversation)),
            )
            self._after_delete(msg, on_path)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return ticket

    def undelete_message(self, ticket: int) -> int | None:
        """Bring back what `delete_message` hid, and the branch that was shown; returns its conversation."""
        row = self._db.execute("SELECT * FROM message_undo WHERE ticket=?", (ticket,)).fetchone()
        if row is None:
            raise ConversationError("That deletion can no longer be undone.")
        self._db.execute("BEGIN")
        self._db.execute("UPDATE messages SET deleted=0 WHERE deleted=?", (ticket,))
        self._db.execute("UPDATE conversations SET leaf=? WHERE id=?", (row["leaf"], row["conversation"]))
        self._db.execute("DELETE FROM message_undo WHERE ticket=?", (ticket,))
        self._db.execute("COMMIT")
        self._touch(row["conversation"])
        return row["conversation"]

    def _after_delete(self, msg: StoredMessage, on_path: bool) -> None:
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
        rows = self._db.execute(
            "SELECT * FROM messages WHERE conversation=? AND deleted=0 ORDER BY id", (cid,)
        ).fetchall()
        return {
            "format": EXPORT_FORMAT,
            "title": conv.title,
            "created": conv.created,
            "system_prompt": conv.system_prompt,
            "model": conv.model,
            "settings": self.settings(cid).to_dict(),
            "leaf": self.leaf(cid),
            "messages": [self._export_message(r) for r in rows],
        }

    def _export_message(self, r: sqlite3.Row) -> dict[str, Any]:
        msg = self._message(r)
        out = {"id": r["id"], "parent": r["parent"], "role": r["role"], "content": r["content"],
               "status": r["status"], "stats": msg.stats, "created": r["created"]}  # fmt: skip
        if msg.sources:
            out["sources"] = list(msg.sources)
        if msg.tool_calls:
            out["tool_calls"] = list(msg.tool_calls)
        return out

    def import_file(self, path: Path) -> Conversation:
        """Import an exported conversation file: checked whole first, then stored in one transaction."""
        path = Path(path)
        data = read_export(path)
        try:
            return self.import_json(data)
        except ConversationError as err:
            raise ConversationError(f"Cannot import {path.name}: {err}") from None

    def import_json(self, data: Any) -> Conversation:
        """Store an exported conversation as a new one. Everything is checked before anything is written, and
        it is written in one transaction: a damaged file imports nothing."""
        spec = check_export(data)
        self._db.execute("BEGIN")
        try:
            conv = self.create(spec["title"], spec["system_prompt"], spec["settings"], spec["model"])
            new_ids: dict[int, int] = {}
            for m in spec["messages"]:
                parent = None if m["parent"] is None else new_ids[m["parent"]]
                cur = self._db.execute(
                    "INSERT INTO messages (conversation, parent, role, content, status, stats, created, meta) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    (
                        conv.id,
                        parent,
                        m["role"],
                        m["content"],
                        m["status"],
                        json.dumps(m["stats"]),
                        m["created"],
                        json.dumps(m["meta"]) if m["meta"] else None,
                    ),
                )
                new_ids[m["id"]] = cur.lastrowid
            leaf = new_ids.get(spec["leaf"]) if spec["leaf"] is not None else None
            self._db.execute("UPDATE conversations SET leaf=? WHERE id=?", (leaf, conv.id))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
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
            parts += [f"> {call_line(call)}\n" for call in msg.tool_calls]
            if msg.sources:
                parts.append("Sources: " + "; ".join(source_label(s) for s in msg.sources) + "\n")
        return "\n".join(parts)
