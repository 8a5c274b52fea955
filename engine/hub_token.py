"""The Hub access token: checked, saved readable by this user only, loaded (or HF_TOKEN), cleared; never shown."""

from __future__ import annotations

import os
import re
from pathlib import Path

from engine.hub_errors import HubError
from engine.text import printable


def token_path() -> Path:
    from engine.library import data_dir

    return data_dir() / "hf_token"


TOKEN_RE = re.compile(r"[\x21-\x7e]{1,1000}")  # visible ASCII: it goes into an HTTP header


def check_token(token: str, where: str) -> str:
    """A token is one word of visible ASCII (Hub tokens look like hf_...); anything else is refused before it can
    reach an HTTP header or a file. The message never repeats the token."""
    token = token.strip()
    if not TOKEN_RE.fullmatch(token):
        raise HubError(
            f"{where} does not hold a Hub access token (one word of letters and digits, like hf_...); "
            "copy the token from the Hub's settings page again."
        )
    return token


def write_private(path: Path, text: str) -> Path:
    """Write `text` readable by this user only (created 0600, written whole, synced, then renamed into place):
    the Hub token, the API server's key, remote servers' keys and their list."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_token(token: str) -> Path:
    """Store the access token readable by this user only (0600, written whole then renamed); never logged or shown."""
    return write_private(token_path(), check_token(token, "The token given"))


def load_token() -> str | None:
    """The saved token, else HF_TOKEN from the environment, else None."""
    path = token_path()
    if path.exists():
        try:
            text = path.read_text("ascii").strip()
        except (OSError, ValueError) as err:
            raise HubError(
                f"Cannot read the saved Hub token {path}: {printable(err)}. Save it again."
            ) from None
        if text:
            return check_token(text, f"The saved token file {path}")
    env = os.environ.get("HF_TOKEN", "").strip()
    return check_token(env, "HF_TOKEN") if env else None


def clear_token() -> None:
    token_path().unlink(missing_ok=True)


def given_or_saved(token: str | None) -> str | None:
    """`token` checked when one is given, else the saved one (see load_token)."""
    return check_token(token, "The token given") if token is not None else load_token()
