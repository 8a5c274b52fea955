"""The API key the GUI's server requires: generated, saved readable by this user only, loaded, cleared; never
logged or shown in a log (stored as engine/hub_token.py stores the Hub token)."""

from __future__ import annotations

import secrets
from pathlib import Path

from engine.errors import SettingsError

KEY_PREFIX = "ingle-"


def key_path() -> Path:
    from engine.library import data_dir

    return data_dir() / "api_key"


def check_key(key: str) -> str:
    """The rules of `ingle serve --api-key` (engine/server_cli.api_key); the message never repeats the key."""
    key = key.strip()
    if len(key) < 8 or len(key) > 1000 or any(c.isspace() or not c.isprintable() for c in key):
        raise SettingsError("api-key", "use 8 to 1000 printable characters without spaces")
    return key


def generate_key() -> str:
    """A new random key: 32 bytes from the OS's secure generator, URL-safe so it pastes into headers and shells."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def save_key(key: str) -> Path:
    """Store the key readable by this user only (0600, written whole then renamed)."""
    from engine.hub_token import write_private

    return write_private(key_path(), check_key(key))


def load_key() -> str | None:
    """The saved key, or None when there is none (or the file no longer holds a usable key)."""
    try:
        text = key_path().read_text("utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise SettingsError(
            "api-key", f"cannot read the saved key {key_path()}: {getattr(err, 'strerror', None) or err}"
        ) from None
    try:
        return check_key(text) if text else None
    except SettingsError:
        return None  # a hand-edited file: the panel asks for a new key


def clear_key() -> None:
    key_path().unlink(missing_ok=True)
