"""A download job (its state, progress, and what each file must be) and where its files go: the .part beside the
library, the library name of each part. The queue that runs jobs is engine/downloads.py."""

from __future__ import annotations

import enum
import hashlib
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from engine.hub import (
    SPLIT_RE,
    HubError,
    HubFile,
    HubRefused,
)
from engine.library import Entry
from engine.text import MAX_NAME_LENGTH, check_name, name_from, printable


class State(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "downloading"
    PAUSED = "paused"
    VERIFYING = "verifying"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (State.DONE, State.FAILED, State.CANCELLED)


class Stopped(Exception):
    """Raised inside a worker when the user paused or cancelled."""


class DownloadRejected(HubRefused):
    """The bytes the server sent are not the file the Hub announced (size or hash): deleted, never imported."""


class NeedsConsent(HubError):
    """The Hub gives no hash for the file: it is downloaded only when the user allows an unverified download."""


@dataclass(frozen=True)
class Expected:
    """What a downloaded file must be: its size and the hashes the Hub gave (empty when it gave none)."""

    size: int | None
    sha256: str = ""
    git_sha1: str = ""

    @property
    def check(self) -> str:
        return "sha256" if self.sha256 else "git-sha1" if self.git_sha1 else "size"


@dataclass
class Job:
    id: int
    repo_id: str
    revision: str
    files: tuple[HubFile, ...]
    name: str
    state: State = State.QUEUED
    done_bytes: int = 0
    resumed_from: int = 0
    speed: float = 0.0  # bytes/s, smoothed
    error: str = ""
    entry: Entry | None = None
    allow_unverified: bool = (
        False  # the user accepts a file the Hub gives no hash for (its size is still checked)
    )
    needs_consent: bool = False  # failed only because no hash exists: resume(allow_unverified=True) takes it
    check: str = ""  # once done: "sha256", "git-sha1" or "size" (not verified by any hash)
    part_names: tuple[str, ...] = ()  # the files' names in the library (a split model's parts side by side)
    _expected: dict[str, Expected] = field(default_factory=dict, repr=False)
    _sha256: str = field(default="", repr=False)  # the first file's sha256 as computed, for the library entry
    _stop: str = field(default="", repr=False)  # "pause" or "cancel"
    _response: object = field(default=None, repr=False)
    _finished: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def eta(self) -> float | None:
        left = self.total_bytes - self.done_bytes
        return left / self.speed if self.speed > 0 else None

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 0.0

    @property
    def verified(self) -> bool:
        """Done and checked against a hash from the Hub (not only its size)."""
        return self.state is State.DONE and self.check in ("sha256", "git-sha1")

    @property
    def status(self) -> str:
        """The state as the download window shows it."""
        if self.state is State.DONE and not self.verified:
            return "done (not verified)"
        if self.needs_consent:
            return "not verifiable"
        return self.state.value


def free_disk_bytes(path: Path) -> int:
    """Free bytes where `path` lives (its nearest existing parent)."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def part_path(folder: Path, repo_id: str, file: str) -> Path:
    """Where a file's partial download lives. Names from the Hub are made safe (and kept apart by a hash of the
    original when that changed them): a file name never escapes the folder or hides in control characters."""
    raw = f"{repo_id}--{file}".replace("/", "--")
    safe = name_from(raw)
    if safe != raw:
        safe = f"{safe[:100]}-{hashlib.sha1(raw.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"
    return folder / f"{safe}.part"


def library_names(files: tuple[HubFile, ...], name: str | None = None) -> tuple[str, tuple[str, ...]]:
    """The library name and the file name of each part. A split model is named after its first part and its
    parts keep llama.cpp's `<prefix>-0000i-of-0000n.gguf` pattern (llama.cpp finds the others by it)."""
    if len(files) == 1:
        lib_name = (
            check_name(name, "library name")
            if name
            else name_from(Path(files[0].path).name.removesuffix(".gguf"))
        )
        return lib_name, (f"{lib_name}.gguf",)
    numbers = []
    for f in files:
        m = SPLIT_RE.search(f.path)
        numbers.append((int(m.group(1)), int(m.group(2))) if m else (0, 0))
    n = len(files)
    if numbers != [(i, n) for i in range(1, n + 1)]:
        raise HubError(
            f"{printable(files[0].path)}: the parts of this split model are incomplete or out of order "
            f"({', '.join(printable(Path(f.path).name) for f in files)}); pick another file."
        )
    prefix = name_from(Path(SPLIT_RE.sub("", files[0].path)).name)[: MAX_NAME_LENGTH - 15].rstrip(".-_+")
    names = tuple(f"{prefix or 'model'}-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1))
    return check_name(names[0].removesuffix(".gguf")), names


def part_number(f: HubFile) -> int:
    m = SPLIT_RE.search(f.path)
    return int(m.group(1)) if m else 0
