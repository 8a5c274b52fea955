"""Recovery of a damaged conversations file: it is kept aside untouched, and what SQLite can still read is copied
into a fresh store (engine/conversations.py's open_store calls this)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from engine.conversation_schema import SCHEMA, ConversationError

# a write-ahead log up to this size is kept byte for byte when the store is damaged
MAX_KEPT_WAL = 64 * 2**20


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
    for table in ("conversations", "messages", "presets", "message_undo", "conversation_tools"):
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
    out.execute("DELETE FROM conversation_tools WHERE conversation NOT IN (SELECT id FROM conversations)")
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
