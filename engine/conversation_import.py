"""Reading and checking an exported conversation file (format EXPORT_FORMAT) before the store writes anything."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from engine import units
from engine.conversation_schema import EXPORT_FORMAT, ROLES, STATUSES, ConversationError
from engine.errors import IngleError
from engine.reply_meta import check_meta
from engine.settings import SamplingSettings

MAX_IMPORT_BYTES = 256 * 2**20  # a conversation file larger than this is refused before it is read
MAX_MESSAGES = 100_000
MAX_TEXT = 16 * 2**20  # characters in one message, title or system prompt
MAX_DEPTH = 16  # nesting of JSON values inside a message's stats


def read_export(path: Path) -> Any:
    """The JSON of a conversation file, refused before reading when it is larger than MAX_IMPORT_BYTES."""
    try:
        size = path.stat().st_size
        if size > MAX_IMPORT_BYTES:
            raise ConversationError(
                f"Cannot import {path.name}: it is {units.mib(size)}; a conversation file may be at "
                f"most {units.mib(MAX_IMPORT_BYTES)}."
            )
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = "it is nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise ConversationError(f"Cannot read {path.name} as a conversation: {reason}.") from None


def _json_depth_ok(value: Any, depth: int = 0) -> bool:
    """True when `value` is plain JSON nested no deeper than MAX_DEPTH."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_depth_ok(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_depth_ok(v, depth + 1) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def is_number(value: Any) -> bool:
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


def check_export(data: Any) -> dict[str, Any]:
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
        if not is_number(created):
            raise ConversationError(f"{where}: 'created' must be a number")
        if "content" not in m:
            raise ConversationError(f"{where} has no 'content'")
        content = _text(m, "content", "", where)
        seen.add(mid)
        status = "interrupted" if status == "streaming" else status  # nothing is streaming in a file
        meta = check_meta(m, where)  # what the reply used: checked, cut to size, unknown keys dropped
        out.append({"id": mid, "parent": parent, "role": role, "content": content, "status": status,
                    "stats": stats, "created": float(created), "meta": meta})  # fmt: skip
    leaf = data.get("leaf")
    if leaf is not None and (isinstance(leaf, bool) or leaf not in seen):
        raise ConversationError("'leaf' must be the id of one of its messages or null")
    return {"title": title[:500], "system_prompt": _text(data, "system_prompt", "", "the conversation"),
            "model": _text(data, "model", "", "the conversation")[:1000], "settings": settings,
            "messages": out, "leaf": leaf}  # fmt: skip
