"""Adding files and folders to a collection: walk, hash, extract, chunk (in the loaded model's tokens), store,
embed. An unchanged file (same sha256) is skipped; a changed one is re-indexed alone. Files that cannot be
read are returned with their reason; the others are indexed regardless.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from engine.docs.chunk import DEFAULT_CHUNK_TOKENS, chunk_blocks
from engine.docs.extract import SUPPORTED, Unreadable, extract
from engine.docs.store import DocStore
from engine.errors import DocsError

EMBED_BATCH = 32
EMBED_CHARS = 1600  # MiniLM reads 512 word pieces at most; a chunk's start says what it is about
EMBED_MODEL_NAME = "all-minilm-l6-v2"
SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv", ".tox", ".mypy_cache"}


@dataclass
class AddReport:
    indexed: list[tuple[str, int]] = field(default_factory=list)  # (path, chunks)
    unchanged: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    embedded: int = 0


def store_path(library_root: Path) -> Path:
    return Path(library_root) / "docs" / "index.sqlite"


def open_store(library=None) -> DocStore:
    if library is None:
        from engine.library import Library

        library = Library()
    return DocStore(store_path(library.root))


def embedding_model(library, create: bool = True) -> Path | None:
    """The library's embedding model: the bundled all-MiniLM-L6-v2, written as a GGUF into the library on first
    use; None when its package is not installed (search is then full-text only)."""
    from engine.errors import LibraryError, ModelFileError

    try:
        entry = library.get(EMBED_MODEL_NAME)
        if entry.present:
            return entry.file
        library.remove(EMBED_MODEL_NAME)
    except LibraryError:
        pass
    if not create:
        return None
    from engine.docs import minilm

    try:
        zip_path = minilm.package_zip()
    except ModelFileError:
        return None
    library.models_dir.mkdir(parents=True, exist_ok=True)
    tmp = library.models_dir / f".{EMBED_MODEL_NAME}.{os.getpid()}.gguf"
    try:
        minilm.convert(tmp, zip_path)
        entry = library.import_file(tmp, name=EMBED_MODEL_NAME, move=True, source="embedded",
                                    description="all-MiniLM-L6-v2 sentence embeddings (document search)")  # fmt: skip
    except LibraryError:  # another process added it meanwhile
        entry = library.get(EMBED_MODEL_NAME)
    finally:
        tmp.unlink(missing_ok=True)
    return entry.file


def walk(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files under `paths` (folders recursively, hidden and tool folders skipped) and the paths that are
    not there. A file given by name is taken whatever its type (extract then says why it is unreadable); a
    folder contributes only supported types."""
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    for raw in paths:
        p = Path(raw).expanduser().absolute()
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
                for name in sorted(names):
                    f = Path(root) / name
                    if not name.startswith(".") and f.suffix.lower() in SUPPORTED:
                        files.append(f)
        else:
            missing.append((str(p), "no such file or folder"))
    return list(dict.fromkeys(files)), missing


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def token_counter(engine) -> Callable[[str], int]:
    """Token counts from the loaded model's own tokenizer (cached: the chunker asks about a text again)."""

    @lru_cache(maxsize=4096)
    def count(text: str) -> int:
        return len(engine.tokenize(text, add_special=False, parse_special=False))

    return count


def add_paths(
    store: DocStore,
    collection: str,
    paths: Iterable[str | os.PathLike],
    count: Callable[[str], int],
    *,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    progress: Callable[[int, int, str], None] | None = None,
) -> AddReport:
    """Index `paths` into `collection` (created when new). `progress(done, total, path)` after each file."""
    from engine.text import check_name

    check_name(collection, "collection name")
    report = AddReport()
    files, report.unreadable = walk(paths)
    if not files and not report.unreadable:
        raise DocsError("no files to add: the folders hold no supported documents")
    for i, path in enumerate(files):
        key = str(path)
        try:
            digest = sha256_of(path)
            if store.file_hash(collection, key) == digest:
                report.unchanged.append(key)
            else:
                chunks = chunk_blocks(extract(path), count, chunk_tokens)
                store.put_file(collection, key, digest, path.stat().st_size, chunks)
                report.indexed.append((key, len(chunks)))
        except Unreadable as err:
            report.unreadable.append((key, str(err)))
        except OSError as err:
            report.unreadable.append((key, err.strerror or str(err)))
        if progress:
            progress(i + 1, len(files), key)
    if not store.collections() or collection not in {c.name for c in store.collections()}:
        store.collection_id(collection, create=True)
    return report


def embed_pending(store: DocStore, collection: str, engine, model: Path,
                  progress: Callable[[int, int], None] | None = None) -> int:  # fmt: skip
    """Embed the collection's chunks that have no vector yet; returns how many were embedded."""
    current = store.embed_model(collection)
    if current and current != model.name:  # another model's vectors cannot be compared with this one's
        store.conn.execute("UPDATE chunks SET embedding = NULL WHERE file_id IN "
                           "(SELECT f.id FROM files f JOIN collections c ON f.collection_id = c.id "
                           "WHERE c.name = ?)", (collection,))  # fmt: skip
        store.conn.commit()
    store.set_embed_model(collection, model.name)
    pending = store.unembedded(collection)
    done = 0
    for start in range(0, len(pending), EMBED_BATCH):
        batch = pending[start : start + EMBED_BATCH]
        result = engine.embed([text[:EMBED_CHARS] for _, text in batch], str(model))
        store.put_vectors(zip([kid for kid, _ in batch], result.vectors, strict=True))
        done += len(batch)
        if progress:
            progress(done, len(pending))
    return done


def index_job(collection: str, paths: list[str], model: str | None, progress: Callable[[float | None, str], None],
              open_engine: Callable[[], object] | None = None) -> AddReport:  # fmt: skip
    """Everything `ingle docs add` does, for a background job: an engine child loads `model` (None: the starter)
    for its tokenizer and embeds with the library's embedding model; `progress(fraction, text)` as it goes."""
    from engine.library import Library
    from engine.settings import LoadSettings

    library = Library()
    path = library.resolve(model)
    if open_engine is None:
        from engine.host import EngineHost

        open_engine = EngineHost
    engine = open_engine()
    try:
        progress(None, "loading the tokenizer")
        for _ in engine.load(str(path), LoadSettings(n_ctx=2048)):
            pass
        store = open_store(library)
        report = add_paths(store, collection, paths, token_counter(engine),
                           progress=lambda d, t, p: progress(0.5 * d / t, f"reading {Path(p).name}"))  # fmt: skip
        vectors = embedding_model(library)
        if vectors is not None:
            report.embedded = embed_pending(store, collection, engine, vectors,
                                            lambda d, t: progress(0.5 + 0.5 * d / t, f"embedding {d}/{t}"))  # fmt: skip
        store.close()
        return report
    finally:
        engine.close()
