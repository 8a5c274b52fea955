"""Saved KV caches of conversations (instant reopen): a conversation's sequence state written beside it, with what
it depends on (the model file, the load settings that shape the cache, the adapters, the tokens) checked before
reuse. A state that does not match, or does not read back whole, is deleted, never trusted.

The file: MAGIC, an 8-byte little-endian header length, a JSON header, then llama.cpp's sequence state. Nothing
here imports llama.cpp at module level: the GUI manages the folder (size, eviction) without loading it.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.events import Message
from engine.library import atomic_write_bytes, data_dir
from engine.text import printable
from engine.textstream import common_prefix

MAGIC = b"INGLEKV\x01"
VERSION = 1
SUFFIX = ".ingle-kv"
DEFAULT_CAP = 2 << 30  # 2 GiB of saved states, least recently used evicted first
_HEADER_MAX = 64 << 20  # a header is JSON with a token list: bounded, so a hostile file cannot exhaust memory
_SAMPLE = 1 << 20  # bytes hashed at each end of a model file for its identity
# LoadSettings fields that do not change what the cache holds (threads, mapping, the fit switches)
_NOT_IN_CACHE = frozenset(
    {"n_threads", "n_threads_batch", "n_batch", "use_mmap", "use_mlock", "fit", "fit_check"}
)


@dataclass(frozen=True)
class StateSaved:
    path: str
    tokens: int  # tokens whose K/V were saved (0: nothing to save, no file)
    bytes: int
    seconds: float


@dataclass(frozen=True)
class StateRestored:
    tokens: int  # tokens now in the cache from the saved state (0: not used)
    reason: str  # why it was not used ("" when it was)
    seconds: float
    deleted: bool = False  # a stale, foreign or corrupt state was deleted


def file_identity(path: str | os.PathLike) -> str:
    """A cheap identity of a model or adapter file: its size, modification time and sha256 of its first and
    last MiB (hashing a multi-GB file at every save would take seconds)."""
    st = os.stat(path)
    digest = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(_SAMPLE))
        fh.seek(max(0, st.st_size - _SAMPLE))
        digest.update(fh.read(_SAMPLE))
    return digest.hexdigest()


def _header_for(rt, tokens: Sequence[int], data_sha256: str) -> dict:
    import llama_cpp

    settings = {k: v for k, v in rt.load_settings.to_dict().items() if k not in _NOT_IN_CACHE}
    return {
        "version": VERSION,
        "llama_cpp": llama_cpp.__version__,
        "model": file_identity(rt.info.path),
        "settings": settings,
        "adapters": [[file_identity(p), scale] for p, scale in rt.adapter_specs],
        "n_ctx": rt.n_ctx,
        "tokens": list(tokens),
        "data_sha256": data_sha256,
    }


def save(rt, path: str | os.PathLike, messages: Sequence[Message] | None = None) -> StateSaved:
    """Write sequence 0's state to `path`. With `messages`, the cache is first cut back to the part that starts
    the conversation as rendered (no generation prompt), so the saved tokens are a prefix of it."""
    import llama_cpp

    rt.require_model()
    started = time.perf_counter()
    path = Path(path)
    if messages is not None:
        want = rt.render_tokens(list(messages), add_generation_prompt=False) if messages else []
        rt.keep_prefix(common_prefix(rt.cached_tokens, want))
    tokens = rt.cached_tokens
    if not tokens:
        path.unlink(missing_ok=True)
        return StateSaved(str(path), 0, 0, time.perf_counter() - started)
    size = llama_cpp.llama_state_seq_get_size(rt.ctx, 0)
    buf = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(rt.ctx, buf, size, 0)
    blob = bytes(memoryview(buf)[:written])
    header = json.dumps(_header_for(rt, tokens, hashlib.sha256(blob).hexdigest())).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, MAGIC + struct.pack("<Q", len(header)) + header + blob)
    return StateSaved(str(path), len(tokens), len(blob), time.perf_counter() - started)


class _Refused(Exception):
    pass


def _read(path: Path) -> tuple[dict, bytes]:
    with open(path, "rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise _Refused("not a saved state of this version")
        raw = fh.read(8)
        if len(raw) != 8 or (n := struct.unpack("<Q", raw)[0]) > _HEADER_MAX:
            raise _Refused("its header is damaged")
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError):
            raise _Refused("its header is damaged") from None
        blob = fh.read()
    if not isinstance(header, dict) or hashlib.sha256(blob).hexdigest() != header.get("data_sha256"):
        raise _Refused("it is damaged (its data does not match its checksum)")
    tokens = header.get("tokens")
    if not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in tokens
    ):
        raise _Refused("its token list is damaged")
    return header, blob


def _check(rt, header: dict, messages: Sequence[Message] | None) -> list[int]:
    expected = _header_for(rt, header["tokens"], header["data_sha256"])
    for key, what in (("version", "another version of Ingle"), ("llama_cpp", "another llama.cpp version"),
                      ("model", "another model file"), ("settings", "other load settings"),
                      ("adapters", "other adapters"), ("n_ctx", "another context length")):  # fmt: skip
        if header.get(key) != expected[key]:
            raise _Refused(f"it was saved with {what}")
    tokens = header["tokens"]
    if not tokens or len(tokens) > rt.n_ctx or any(t < 0 or t >= rt.n_vocab for t in tokens):
        raise _Refused("its tokens do not fit this model")
    if messages is not None:
        now = rt.render_tokens(list(messages), add_generation_prompt=False) if messages else []
        if now[: len(tokens)] != tokens:
            raise _Refused("the conversation changed since it was saved")
    return tokens


def restore(rt, path: str | os.PathLike, messages: Sequence[Message] | None = None) -> StateRestored:
    """Load the state at `path` into sequence 0 if it was saved for this model, these load settings and adapters,
    and (with `messages`) a conversation that starts with its tokens; else delete it and leave the cache empty."""
    import llama_cpp

    rt.require_model()
    started = time.perf_counter()
    path = Path(path)
    if not path.exists():
        return StateRestored(0, "no saved state", 0.0)
    try:
        header, blob = _read(path)
        tokens = _check(rt, header, messages)
        rt.keep_prefix(0)
        buf = (ctypes.c_uint8 * len(blob)).from_buffer_copy(blob)
        if llama_cpp.llama_state_seq_set_data(rt.ctx, buf, len(blob), 0) != len(blob):
            rt.keep_prefix(0)
            raise _Refused("llama.cpp could not read it back")
        mem = llama_cpp.llama_get_memory(rt.ctx)
        if llama_cpp.llama_memory_seq_pos_max(mem, 0) != len(tokens) - 1:
            rt.keep_prefix(0)
            raise _Refused("llama.cpp read back other positions than it lists")
        rt.adopt_cache(tokens)
    except _Refused as why:
        path.unlink(missing_ok=True)
        return StateRestored(0, f"{printable(path.name)} was not used and was deleted: {why}.",
                             time.perf_counter() - started, True)  # fmt: skip
    except OSError as err:
        return StateRestored(0, f"{printable(path.name)} could not be read: {err.strerror}.", 0.0)
    os.utime(path)  # recently used: evicted last
    return StateRestored(len(tokens), "", time.perf_counter() - started)


class StateFolder:
    """The folder of saved states: one file per conversation, a size cap, least recently used evicted first."""

    def __init__(self, root: str | os.PathLike | None = None, cap: int | None = None):
        self.root = Path(root) if root else data_dir() / "kv-states"
        self.cap = self.saved_cap() if cap is None else cap

    def saved_cap(self) -> int:
        """The cap the user chose (Settings), kept in the folder so the app and `ingle chat` share it."""
        try:
            value = json.loads((self.root / "cap.json").read_text())["cap_bytes"]
        except (OSError, ValueError, KeyError, TypeError):
            return DEFAULT_CAP
        return value if isinstance(value, int) and value >= 0 else DEFAULT_CAP

    def set_cap(self, cap: int) -> list[Path]:
        """Keep `cap` (bytes; 0 saves nothing) and evict down to it; returns what was deleted."""
        self.cap = max(0, int(cap))
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / "cap.json", json.dumps({"cap_bytes": self.cap}).encode())
        return self.evict()

    def path_for(self, conversation_id: int) -> Path:
        return self.root / f"conversation-{int(conversation_id)}{SUFFIX}"

    def files(self) -> list[Path]:
        """Saved states, least recently used first."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.glob(f"*{SUFFIX}"):
            try:
                found.append((p.stat().st_mtime_ns, p))
            except OSError:  # removed meanwhile
                continue
        return [p for _, p in sorted(found)]

    def usage(self) -> int:
        total = 0
        for p in self.files():
            try:
                total += p.stat().st_size
            except OSError:
                continue
        return total

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Delete least recently used states until the folder fits the cap (`keep`, the one just saved, last)."""
        removed = []
        files = self.files()
        sizes = {p: p.stat().st_size for p in files if p.exists()}
        total = sum(sizes.values())
        for p in sorted(files, key=lambda p: p == keep):  # stable: LRU order, `keep` moved to the end
            if total <= self.cap:
                break
            p.unlink(missing_ok=True)
            total -= sizes.get(p, 0)
            removed.append(p)
        return removed

    def remove(self, conversation_id: int) -> None:
        self.path_for(conversation_id).unlink(missing_ok=True)
