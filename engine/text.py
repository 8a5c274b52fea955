"""Untrusted text made safe to show: names from the Hub, model files and the library printed on a terminal,
and names validated before they become files in the library."""

from __future__ import annotations

import re
import unicodedata

from engine.errors import LibraryError

MAX_NAME_LENGTH = 120
# Letters, digits and a few separators; never a path separator, never leading dots (hidden files, '..').
_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-]*")


def printable(text: object) -> str:
    """`text` with every control character (newlines, ESC of terminal escape codes, bidi overrides) shown as
    a visible escape, so a hostile name prints as one inert line."""
    out = []
    for ch in str(text):
        if ch == " " or not unicodedata.category(ch).startswith(("C", "Z")):
            out.append(ch)
        else:
            out.append(
                ch.encode("unicode_escape").decode("ascii") if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}"
            )
    return "".join(out)


def check_name(name: str, what: str = "name") -> str:
    """A library name is a name, never a path: ASCII letters, digits, '.', '_', '+', '-'; no leading dot or
    separator; at most MAX_NAME_LENGTH characters. Returns it unchanged or raises LibraryError saying why."""
    if not isinstance(name, str) or not name:
        raise LibraryError(f"The {what} is empty; give a name such as 'my-model'.")
    if len(name) > MAX_NAME_LENGTH:
        raise LibraryError(f"The {what} is {len(name)} characters long; use at most {MAX_NAME_LENGTH}.")
    if not _NAME_OK.fullmatch(name) or name.endswith("."):
        raise LibraryError(
            f"The {what} '{printable(name)}' is not allowed: use letters, digits, '.', '_', '+' and '-' "
            "(no '/', '\\', spaces or leading dots), for example 'my-model-q4'."
        )
    return name


def name_from(text: str) -> str:
    """Turn any text (a Hub file name, a file stem) into a valid library name by replacing what is not allowed."""
    cleaned = re.sub(r"[^A-Za-z0-9._+\-]+", "-", text).strip(".-_+")[:MAX_NAME_LENGTH].rstrip(".")
    return cleaned or "model"
