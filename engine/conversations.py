"""Conversation store: conversations, their message tree (branches), per-conversation settings and presets in SQLite."""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import tempfile
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
    created REAL NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_by_parent ON messages(conversation, parent);
CREATE TABLE IF NOT EXISTS message_undo (
    ticket INTEGER PRIMARY KEY,
    conversation INTEGER NOT NULL,
    leaf INTEGER
);
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


MAX_IMPORT_BYTES = 256 * 2**20  # a conversation file larger than this is refused before it is read
MAX_MESSAGES = 100_000
MAX_TEXT = 16 * 2**20  # characters in one message, title or system prompt
MAX_DEPTH = 16
MAX_KEPT_WAL = (
    64 * 2**20
)  # a write-ahead log up to this size is kept byte for byte when the store is damaged  # nesting of JSON values inside a message's stats


def _json_depth_ok(value: Any, depth: int = 0) -> bool:
    """True when `value` is plain JSON nested no deeper than MAX_DEPTH."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_depth_ok(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_depth_ok(v, depth + 1) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text(data: dict, key: str, default: str, where: str) -> str:
    value = data.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, str):
        raise ConversationError(f"{where}: '{key}' must be text, not {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise ConversationError(f"{where}: '{key}' is longer than {MAX_TEXT:,} characters")
    return value


def _check_export(data: Any) -> dict[str, Any]:
    """The validated content of an export (see `export_json`), or ConversationError naming the first fault."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise ConversationError(f"this is not an Ingle conversation export (expected format {EXPORT_FORMAT})")
    title = _text(data, "title", "", "the conversation").strip() or "Imported chat"
    settings_data = data.get("settings", {})
    if not isinstance(settings_data, dict) or not _json_depth_ok(settings_data):
        raise ConversationError("'settings' must be an object of sampling settings")
    try:
        settings = SamplingSettings.from_dict(settings_data)
    except (IngleError, TypeError, ValueError, OverflowError, AttributeError) as err:
        raise ConversationError(f"the sampling settings are not valid ({err})") from None
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise ConversationError("'messages' must be a list")
    if len(messages) > MAX_MESSAGES:
        raise ConversationError(
            f"it has {len(messages):,} messages; at most {MAX_MESSAGES:,} can be imported"
        )
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for n, m in enumerate(messages, 1):
        where = f"message {n}"
        if not isinstance(m, dict):
            raise ConversationError(f"{where} is not an object")
        mid, parent = m.get("id"), m.get("parent")
        if not isinstance(mid, int) or isinstance(mid, bool) or mid in seen:
            raise ConversationError(f"{where}: 'id' must be a whole number not used by another message")
        if parent is not None and (isinstance(parent, bool) or parent not in seen):
            raise ConversationError(f"{where}: 'parent' must be the id of an earlier message or null")
        role = m.get("role")
        if role not in ROLES:
            raise ConversationError(f"{where}: 'role' must be one of {', '.join(ROLES)}")
        status = m.get("status", "done")
        if status not in STATUSES:
            raise ConversationError(f"{where}: 'status' must be one of {', '.join(STATUSES)}")
        stats = m.get("stats") or {}
        if not isinstance(stats, dict) or not _json_depth_ok(stats):
            raise ConversationError(f"{where}: 'stats' must be an object of plain values")
        created = m.get("created", 0.0)
        if not _number(created):
            raise ConversationError(f"{where}: 'created' must be a number")
        if "content" not in m:
            raise ConversationError(f"{where} has no 'content'")
        content = _text(m, "content", "", where)
        seen.add(mid)
        status = "interrupted" if status == "streaming" else status  # nothing is streaming in a file
        out.append({"id": mid, "parent": parent, "role": role, "content": content, "status": status,
                    "stats": stats, "created": float(created)})  # fmt: skip
    leaf = data.get("leaf")
    if leaf is not None and (isinstance(leaf, bool) or leaf not in seen):
        raise ConversationError("'leaf' must be the id of one of its messages or null")
    return {"title": title[:500], "system_prompt": _text(data, "system_prompt", "", "the conversation"),
            "model": _text(data, "model", "", "the conversation")[:1000], "settings": settings,
            "messages": out, "leaf": leaf}  # fmt: skip


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _as_number(value: Any) -> float:
    return float(value) if _number(value) else 0.0


def default_path() -> Path:
    return data_dir() / "conversations.sqlite3"


# SQLite's own verdicts that the file's content is damaged (as opposed to locked, unreadable or a full disk)
DAMAGE_CODES = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_CORRUPT_INDEX", "SQLITE_CORRUPT_SEQUENCE",
                          "SQLITE_CORRUPT_VTAB"})  # fmt: skip


class StoreDamaged(sqlite3.DatabaseError):
    """The conversations file is damaged: `open_store` keeps it aside and recovers what it can."""


@dataclass(frozen=True)
class Recovery:
    """What happened when a damaged store was replaced at start-up."""

    damaged: Path  # where the damaged file now lies, untouched
    conversations: int  # how many were read back into the new store
    messages: int
    reason: str

    def describe(self) -> str:
        def n(k: int, noun: str) -> str:
            return f"{k:,} {noun}{'' if k == 1 else 's'}"

        return (
            f"Your conversations file was damaged ({self.reason}). It was kept, unchanged, as {self.damaged}; "
            f"{n(self.conversations, 'conversation')} and {n(self.messages, 'message')} could be read back into "
            "a new file, and Ingle starts with those."
        )


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


def _aside_name(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        suffix = f"-{n}" if n else ""
        candidate = path.with_name(f"{path.name}.damaged-{stamp}{suffix}")
        if not any(Path(f"{candidate}{x}").exists() for x in ("", "-wal", "-shm")):
            return candidate
    raise ConversationError(f"Cannot find a free name beside {path} to keep the damaged file.")


def recover_store(path: Path, reason: str, saved_wal: bytes | None = None) -> Recovery:
    """Move `path` (and its -wal/-shm) aside and write a new store at `path` from the rows SQLite can read.
    `saved_wal`: the log's bytes from before SQLite first opened the file, kept beside it if SQLite dropped it."""
    aside = _aside_name(path)
    for x in ("", "-wal", "-shm"):  # same base name: SQLite still finds the WAL beside the kept copy
        src = Path(f"{path}{x}")
        if src.exists():
            try:
                os.link(src, f"{aside}{x}")  # fails rather than overwrite; then the original name goes
                src.unlink()
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links; the name was checked free just now
                os.rename(src, f"{aside}{x}")
    kept_wal = Path(f"{aside}-wal")
    if saved_wal is not None and not kept_wal.exists():
        with open(kept_wal, "xb") as fh:  # x: never over an existing file
            fh.write(saved_wal)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".recover-") as tmp:
        work = Path(tmp) / "damaged.sqlite3"  # read a copy: opening the kept file could rewrite its WAL
        for x in ("", "-wal", "-shm"):
            if Path(f"{aside}{x}").exists():
                shutil.copyfile(f"{aside}{x}", f"{work}{x}")
        fresh = Path(tmp) / "new.sqlite3"
        counts = _copy_readable(work, fresh)
        os.replace(fresh, path)
    return Recovery(aside, counts.get("conversations", 0), counts.get("messages", 0), reason)


def _readable_rows(src: sqlite3.Connection, table: str):
    """Rows of `table` in rowid order, stepping over pages SQLite cannot read."""
    last, skip, failures = -(2**63), 1, 0
    while failures < 64:
        try:
            for row in src.execute(
                f"SELECT rowid AS _rowid_, * FROM {table} WHERE rowid > ? ORDER BY rowid", (last,)
            ):
                last, skip = row["_rowid_"], 1
                yield row
            return
        except sqlite3.DatabaseError:
            failures += 1
            last, skip = last + skip, skip * 4  # jump past the damage, further each time
        except (OverflowError, ValueError):
            return


def _copy_readable(damaged: Path, fresh: Path) -> dict[str, int]:
    out = sqlite3.connect(fresh, isolation_level=None)
    out.executescript(SCHEMA)
    counts: dict[str, int] = {}
    try:
        src = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
        src.row_factory = sqlite3.Row
        tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError:
        out.close()
        return counts  # not even the schema can be read: start empty
    out.execute("BEGIN")
    for table in ("conversations", "messages", "presets", "message_undo"):
        if table not in tables:
            continue
        columns = [r[1] for r in out.execute(f"PRAGMA table_info({table})")]
        n = 0
        for row in _readable_rows(src, table):
            keep = [c for c in columns if c in row.keys()]
            try:
                out.execute(
                    f"INSERT OR IGNORE INTO {table} ({', '.join(keep)}) VALUES ({', '.join('?' * len(keep))})",
                    [row[c] for c in keep],
                )
                n += 1
            except sqlite3.Error:
                continue  # a row that breaks the schema's rules is lost; the others are kept
        counts[table] = n
    # messages whose conversation was lost go; replies whose parent was lost start their own branch
    out.execute("DELETE FROM messages WHERE conversation NOT IN (SELECT id FROM conversations)")
    out.execute(
        "UPDATE messages SET parent=NULL WHERE parent IS NOT NULL AND parent NOT IN (SELECT id FROM messages)"
    )
    out.execute(
        "UPDATE conversations SET leaf=(SELECT MAX(id) FROM messages m WHERE m.conversation=conversations.id) "
        "WHERE leaf IS NULL OR leaf NOT IN (SELECT id FROM messages)"
    )
    counts["messages"] = out.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    counts["conversations"] = out.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]
    out.execute("COMMIT")
    src.close()
    out.close()
    return counts


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
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(messages)")}
        if "deleted" not in columns:  # stores made before message deletion could be undone
            self._db.execute("ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0")
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
        return StoredMessage(row["id"], row["conversation"], row["parent"], _as_text(row["role"]),
                             _as_text(row["content"]), status, stats, _as_number(row["created"]))  # fmt: skip

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
            "messages": [
                {
                    "id": r["id"],
                    "parent": r["parent"],
                    "role": r["role"],
                    "content": r["content"],
                    "status": r["status"],
                    "stats": self._message(r).stats,
                    "created": r["created"],
                }  # fmt: skip
                for r in rows
            ],
        }

    def import_file(self, path: Path) -> Conversation:
        """Import an exported conversation file: checked whole first, then stored in one transaction."""
        path = Path(path)
        try:
            size = path.stat().st_size
            if size > MAX_IMPORT_BYTES:
                raise ConversationError(
                    f"Cannot import {path.name}: it is {size / 2**20:.0f} MiB; a conversation file may be at "
                    f"most {MAX_IMPORT_BYTES // 2**20} MiB."
                )
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
            reason = "it is nested too deeply" if isinstance(err, RecursionError) else str(err)
            raise ConversationError(f"Cannot read {path.name} as a conversation: {reason}.") from None
        try:
            return self.import_json(data)
        except ConversationError as err:
            raise ConversationError(f"Cannot import {path.name}: {err}") from None

    def import_json(self, data: Any) -> Conversation:
        """Store an exported conversation as a new one. Everything is checked before anything is written, and
        it is written in one transaction: a damaged file imports nothing."""
        spec = _check_export(data)
        self._db.execute("BEGIN")
        try:
            conv = self.create(spec["title"], spec["system_prompt"], spec["settings"], spec["model"])
            new_ids: dict[int, int] = {}
            for m in spec["messages"]:
                parent = None if m["parent"] is None else new_ids[m["parent"]]
                cur = self._db.execute(
                    "INSERT INTO messages (conversation, parent, role, content, status, stats, created) "
                    "VALUES (?,?,?,?,?,?,?)",
                    (
                        conv.id,
                        parent,
                        m["role"],
                        m["content"],
                        m["status"],
                        json.dumps(m["stats"]),
                        m["created"],
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
        return "\n".join(parts)
