"""Adding files and folders to a collection: walk, hash, extract, chunk (in the loaded model's tokens), store,
embed. An unchanged file (same sha256) is skipped; a changed one is re-indexed alone. Files that cannot be
read are returned with their reason; the others are indexed regardless.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from engine.docs.chunk import DEFAULT_CHUNK_TOKENS, chunk_blocks
from engine.docs.extract import SUPPORTED, Unreadable, extract
from engine.docs.store import DocStore
from engine.errors import DocsError, SettingsError
from engine.text import printable

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
    embed_model: str | None = None  # the library name of the model that embedded them
    embed_threads: int = 0  # the CPU threads the embedding ran on (0: nothing was embedded)
    vectors_note: str = ""  # why there are no vectors (no embedding model), said once


def store_path(library_root: Path) -> Path:
    return Path(library_root) / "docs" / "index.sqlite"


def open_store(library=None) -> DocStore:
    if library is None:
        from engine.library import Library

        library = Library()
    return DocStore(store_path(library.root))


def embedding_model(library, create: bool = True) -> Path | None:
    """The bundled embedding model, all-MiniLM-L6-v2, written as a GGUF into the library on first use; None when
    its package is not installed (engine.docs.embed_model then looks for another)."""
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
                  progress: Callable[[int, int], None] | None = None, name: str | None = None,
                  report: AddReport | None = None) -> int:  # fmt: skip
    """Embed the collection's chunks that have no vector yet with `model` (library name `name`, recorded with the
    collection); returns how many were embedded. Vectors of another model are never mixed in."""
    name = name or model.name
    current = store.embed_model(collection)
    if current and current not in (name, model.name) and store.has_vectors(collection):
        raise DocsError(f"'{printable(collection)}' holds vectors of '{printable(current)}'; those of "
                        f"'{printable(name)}' cannot be compared with them. Remove the collection and add it again "
                        "to change its embedding model.")  # fmt: skip
    store.set_embed_model(collection, name)
    pending = store.unembedded(collection)
    done = 0
    for start in range(0, len(pending), EMBED_BATCH):
        batch = pending[start : start + EMBED_BATCH]
        result = _embed_texts(engine, [text[:EMBED_CHARS] for _, text in batch], str(model))
        store.put_vectors(zip([kid for kid, _ in batch], result.vectors, strict=True))
        done += len(batch)
        if report is not None:
            report.embed_threads = result.threads
        if progress:
            progress(done, len(pending))
    if report is not None:
        report.embedded, report.embed_model = done, name
    return done


def _embed_texts(engine, texts: list[str], model: str):
    """The batch's vectors; a passage longer than the embedding model reads (some take only 512 tokens, or fewer)
    is embedded by its start, halved until it fits: a chunk's start says what it is about."""
    try:
        return engine.embed(texts, model)
    except SettingsError:
        pass
    results = []
    for text in texts:
        while True:
            try:
                results.append(engine.embed([text], model))
                break
            except SettingsError:
                if len(text) < 64:
                    raise
                text = text[: len(text) // 2]
    first = results[0]
    vectors = tuple(r.vectors[0] for r in results)
    return replace(first, vectors=vectors, token_counts=tuple(r.token_counts[0] for r in results))


def index_job(collection: str, paths: list[str], model: str | None, progress: Callable[[float | None, str], None],
              open_engine: Callable[[], object] | None = None, embed_model: str | None = None) -> AddReport:  # fmt: skip
    """Everything `ingle docs add` does, for a background job: an engine child loads `model` (None: the starter)
    for its tokenizer and embeds with `embed_model` (None: the collection's, else the default; see
    engine.docs.embed_model); `progress(fraction, text)` as it goes."""
    from engine.docs.embed_model import choose
    from engine.library import Library
    from engine.settings import LoadSettings

    library = Library()
    path = library.resolve(model)
    store = open_store(library)
    try:  # a refused embedding model stops the job before any work
        choice = choose(library, store, collection, embed_model)
    except BaseException:
        store.close()
        raise
    if open_engine is None:
        from engine.host import EngineHost

        open_engine = EngineHost
    engine = open_engine()
    try:
        progress(None, "loading the tokenizer")
        for _ in engine.load(str(path), LoadSettings(n_ctx=2048)):
            pass
        report = add_paths(store, collection, paths, token_counter(engine),
                           progress=lambda d, t, p: progress(0.5 * d / t, f"reading {Path(p).name}"))  # fmt: skip
        if choice.usable:
            embed_pending(store, collection, engine, choice.path,
                          lambda d, t: progress(0.5 + 0.5 * d / t, f"embedding {d}/{t}"), choice.name, report)  # fmt: skip
        else:
            report.vectors_note = choice.why
        return report
    finally:
        store.close()
        engine.close()
