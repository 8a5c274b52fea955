"""Named remote servers (OpenAI-compatible endpoints) and their API keys, kept in the Ingle home.

`remotes.json` holds name -> {url, model}; each key is a file of its own under `remote_keys/` (0600, written
whole then renamed), like the Hub token: never shown, never logged, and sent only to its own server's origin
(engine.remote follows redirects itself to make sure of that).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from engine.errors import LibraryError, SettingsError
from engine.hub_token import write_private
from engine.text import check_name, printable

KEY_CHARS = range(0x21, 0x7F)  # visible ASCII: a key goes into an HTTP header


@dataclass(frozen=True)
class Remote:
    name: str
    url: str  # the base URL, up to and including /v1 when the server has it
    model: str = ""  # the server's model to use; "" = the only (or first) one it lists

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


def remotes_path() -> Path:
    from engine.library import data_dir

    return data_dir() / "remotes.json"


def key_path(name: str) -> Path:
    from engine.library import data_dir

    return data_dir() / "remote_keys" / check_name(name, "remote name")


def check_url(url: str) -> str:
    """An http(s) base URL without credentials, query or fragment; '/v1' is added when the path is empty."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError("url", f"{printable(url)!r} is not an http:// or https:// address of a server")
    if parts.username or parts.password:
        raise SettingsError("url", "must not hold a user name or password; give the key with --api-key-file")
    if parts.query or parts.fragment:
        raise SettingsError("url", "must be the server's base address, without ?query or #fragment")
    try:
        parts.port  # noqa: B018 (raises for a port that is not a number)
    except ValueError:
        raise SettingsError("url", f"{printable(url)!r} has a port that is not a number") from None
    path = parts.path.rstrip("/")
    if not path:
        path = "/v1"
    return f"{parts.scheme}://{parts.netloc}{path}"


def check_key(key: str, where: str) -> str:
    key = key.strip()
    if not key or len(key) > 4096 or any(ord(c) not in KEY_CHARS for c in key):
        raise SettingsError(
            "api key", f"{where} does not hold an API key (one word of visible ASCII characters)"
        )
    return key


def read_key_file(path: str | Path) -> str:
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError("api key file", f"cannot read {printable(path)}: {printable(err)}") from None
    return check_key(text, f"the file {printable(path)}")


def _read_all() -> dict[str, dict]:
    path = remotes_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise LibraryError(
            f"Cannot read the list of remote servers {path}: {printable(err)}. Fix or delete the file."
        ) from None
    return data if isinstance(data, dict) else {}


def list_remotes() -> list[Remote]:
    """The saved remotes; an entry that is not a well-formed remote (edited by hand, or forged) is left out."""
    remotes = []
    for name, entry in sorted(_read_all().items()):
        try:
            check_name(name, "remote name")
            url = check_url(str(entry.get("url", "")))
            model = str(entry.get("model") or "")
        except (SettingsError, LibraryError, AttributeError):
            continue
        remotes.append(Remote(name, url, model))
    return remotes


def get_remote(name: str) -> Remote:
    for remote in list_remotes():
        if remote.name == name:
            return remote
    known = ", ".join(r.name for r in list_remotes()) or "none yet"
    raise LibraryError(
        f"No remote server named {printable(name)!r} (saved: {known}). Add it with "
        "`ingle models remote add NAME URL`."
    )


def add_remote(name: str, url: str, key: str | None = None, model: str = "") -> Remote:
    check_name(name, "remote name")
    remote = Remote(name, check_url(url), model.strip())
    data = _read_all()
    data[name] = {"url": remote.url, "model": remote.model}
    if key is not None:
        write_private(key_path(name), check_key(key, "the key given"))
    else:
        key_path(name).unlink(missing_ok=True)  # a re-added remote does not inherit an old key
    write_private(remotes_path(), json.dumps(data, indent=2, sort_keys=True))
    return remote


def remove_remote(name: str) -> None:
    data = _read_all()
    if name not in data:
        get_remote(name)  # raises with the list of names
    del data[name]
    write_private(remotes_path(), json.dumps(data, indent=2, sort_keys=True))
    key_path(name).unlink(missing_ok=True)


def load_key(name: str) -> str | None:
    path = key_path(name)
    return read_key_file(path) if path.exists() else None
