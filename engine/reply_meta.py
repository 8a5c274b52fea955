"""What a reply used, stored with it: the document passages it was given (`sources`) and the tool calls it made
(`tool_calls`). Built from the window's hits and tool events, written as JSON in the message row, read back
defensively (a damaged row reads as "nothing used") and checked as untrusted input on import."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from engine.conversation_schema import ConversationError
from engine.docs.chunk import location
from engine.text import printable

MAX_SOURCES = 64  # passages kept per reply (retrieval gives a few within its token budget)
MAX_CALLS = 64  # calls kept per reply (the tool loop stops a reply at 8)
MAX_PASSAGE = 16_000  # characters of one passage
MAX_RESULT = 4_000  # characters of a tool's result kept (the model read up to the client's cap)
MAX_ARGUMENTS = 4_000  # characters of a call's arguments (JSON text)
MAX_NAME = 4_096  # characters of a file path, collection, server or tool name
CALL_STATUSES = ("done", "error", "denied")

# key -> (type check, cap on a string's length or None); anything else in an entry is dropped
_INT_OR_NONE = (int, type(None))
SOURCE_FIELDS: dict[str, tuple[tuple[type, ...], int | None]] = {
    "number": ((int,), None),
    "collection": ((str,), MAX_NAME),
    "file": ((str,), MAX_NAME),
    "page": (_INT_OR_NONE, None),
    "line_start": (_INT_OR_NONE, None),
    "line_end": (_INT_OR_NONE, None),
    "score": ((int, float), None),
    "method": ((str,), 40),
    "tokens": ((int,), None),
    "text": ((str,), MAX_PASSAGE),
}
CALL_FIELDS: dict[str, tuple[tuple[type, ...], int | None]] = {
    "id": ((str,), 200),
    "server": ((str,), MAX_NAME),
    "tool": ((str,), MAX_NAME),
    "arguments": ((str,), MAX_ARGUMENTS),
    "result": ((str,), MAX_RESULT),
    "status": ((str,), 20),
}
_REQUIRED = {"sources": ("file", "text"), "tool_calls": ("tool", "status")}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " …(cut)"


def source_records(hits: Iterable[Any], collection: str) -> list[dict]:
    """engine.docs.search.Hit list -> stored sources, numbered as the reply cites them."""
    return [
        {
            "number": i,
            "collection": collection,
            "file": h.path,
            "page": h.page,
            "line_start": h.line_start,
            "line_end": h.line_end,
            "score": float(h.score),
            "method": h.method,
            "tokens": int(h.tokens),
            "text": _cut(h.text, MAX_PASSAGE),
        }  # fmt: skip
        for i, h in enumerate(hits, 1)
    ][:MAX_SOURCES]


def hits_from_records(records: Iterable[dict]) -> list:
    """Stored sources -> Hit objects for the Documents tab (chunk ids are not kept: 0)."""
    from engine.docs.search import Hit

    return [
        Hit(
            0,
            r.get("file", ""),
            r.get("text", ""),
            int(r.get("tokens") or 0),
            r.get("page"),
            r.get("line_start"),
            r.get("line_end"),
            float(r.get("score") or 0.0),
            r.get("method") or "",
        )  # fmt: skip
        for r in records
    ]


def call_record(event: Any) -> dict:
    """An engine.tool_loop.ToolCallFinished -> a stored call (result cut at MAX_RESULT characters)."""
    status = "denied" if not event.approved else "error" if event.result.is_error else "done"
    return {"id": event.call.id, "server": event.server, "tool": event.call.name,
            "arguments": _cut(event.call.arguments or "{}", MAX_ARGUMENTS),
            "result": _cut(event.result.text, MAX_RESULT), "status": status}  # fmt: skip


def call_line(record: dict, width: int = 80) -> str:
    """One line for the transcript: `Called server.tool(args) -> first line of the result`."""
    args = printable(" ".join(record.get("arguments", "").split()))
    if len(args) > width:
        args = args[: width - 1] + "…"
    # only a newline ends the first line (splitlines() would also cut at control characters a tool returned);
    # the rest of its control characters are shown as escapes
    first = printable(record.get("result", "").strip().split("\n")[0].rstrip("\r"))
    if len(first) > width:
        first = first[: width - 1] + "…"
    status = record.get("status", "done")
    outcome = {"denied": "not run", "error": "error"}.get(status, "")
    server = f"{record['server']}." if record.get("server") else ""
    tail = f"{outcome}: {first}" if outcome else first
    return f"Called {server}{record.get('tool', '')}({args}) → {tail}"


def source_label(record: dict) -> str:
    """`[1] garden.md, lines 3-4` (the file's name only: a path says more about the machine than the source)."""
    name = str(record.get("file", "")).replace("\\", "/").rsplit("/", 1)[-1]
    where = location(record.get("page"), record.get("line_start"), record.get("line_end"))
    return printable(f"[{record.get('number', '?')}] {name}{', ' + where if where else ''}")


def _entry(value: Any, fields: dict, kind: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConversationError(f"{where}: each of '{kind}' must be an object")
    out: dict[str, Any] = {}
    for key, (types, cap) in fields.items():
        if key not in value or value[key] is None and type(None) not in types:
            continue
        v = value[key]
        if isinstance(v, bool) or not isinstance(v, types) or isinstance(v, float) and not math.isfinite(v):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ConversationError(f"{where}: '{kind}' field '{key}' must be {names}")
        out[key] = _cut(v, cap) if isinstance(v, str) and cap else v
    missing = [k for k in _REQUIRED[kind] if k not in out]
    if missing:
        raise ConversationError(f"{where}: an entry of '{kind}' has no '{missing[0]}'")
    if kind == "tool_calls" and out["status"] not in CALL_STATUSES:
        raise ConversationError(f"{where}: a tool call's 'status' must be one of {', '.join(CALL_STATUSES)}")
    return out


def check_meta(data: dict, where: str) -> dict:
    """The `sources` and `tool_calls` of an imported message, checked: wrong types are a ConversationError,
    long texts are cut, unknown keys dropped, lists kept to MAX_SOURCES / MAX_CALLS entries."""
    out: dict[str, list] = {}
    for kind, fields, limit in (
        ("sources", SOURCE_FIELDS, MAX_SOURCES),
        ("tool_calls", CALL_FIELDS, MAX_CALLS),
    ):
        value = data.get(kind)
        if value is None:
            continue
        if not isinstance(value, list):
            raise ConversationError(f"{where}: '{kind}' must be a list")
        entries = [_entry(v, fields, kind, where) for v in value[:limit]]
        if entries:
            out[kind] = entries
    return out


def read_meta(text: Any) -> dict:
    """A stored meta column -> {"sources": [...], "tool_calls": [...]}; anything damaged reads as empty."""
    if not isinstance(text, str) or not text:
        return {}
    try:
        return check_meta(json.loads(text), "stored")
    except (ValueError, TypeError, AttributeError, RecursionError, ConversationError):
        return {}
