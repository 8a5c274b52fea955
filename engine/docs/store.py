"""The document index: one SQLite file in the library's data folder. Collections hold files (by absolute
path, with the sha256 of their content: an unchanged file is skipped, a changed one re-indexed alone), files
hold chunks (text, token count, page or line range), chunks are searchable by full text (FTS5, BM25) and,
once embedded, by vector (float32 blobs; cosine distance by sqlite-vec where this Python's sqlite3 can load
extensions, else by numpy over the collection's vectors).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.docs.chunk import Chunk, location
from engine.errors import DocsError
from engine.text import printable

SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, created REAL NOT NULL, embed_model TEXT);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY, collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    path TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, indexed REAL NOT NULL,
    UNIQUE (collection_id, path));
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    ord INTEGER NOT NULL, text TEXT NOT NULL, tokens INTEGER NOT NULL,
    page INTEGER, line_start INTEGER, line_end INTEGER, embedding BLOB);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks(file_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(text, tokenize = 'porter unicode61');
"""


@dataclass(frozen=True)
class StoredChunk:
    id: int
    path: str
    text: str
    tokens: int
    page: int | None
    line_start: int | None
    line_end: int | None

    @property
    def where(self) -> str:
        return location(self.page, self.line_start, self.line_end)


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    files: int
    chunks: int
    embedded: int
    embed_model: str | None


def _vec_extension(conn: sqlite3.Connection) -> bool:
    """Load sqlite-vec when this sqlite3 build allows extensions (many Python builds do not)."""
    if not hasattr(conn, "enable_load_extension"):
        return False
    try:
        import sqlite_vec

        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        return True
    except (ImportError, sqlite3.Error, AttributeError):
        return False


class DocStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.executescript(SCHEMA)
        except sqlite3.Error as err:
            raise DocsError(f"{self.path}: the document index cannot be opened ({err}); move it away to start "
                            "a new one.") from None  # fmt: skip
        self.sqlite_vec = _vec_extension(self.conn)

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------ collections
    def collection_id(self, name: str, create: bool = False) -> int:
        row = self.conn.execute("SELECT id FROM collections WHERE name = ?", (name,)).fetchone()
        if row:
            return row[0]
        if not create:
            raise DocsError(f"No document collection named '{printable(name)}'; see `ingle docs list`.")
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO collections(name, created) VALUES (?, ?)", (name, time.time())
            )
        return cur.lastrowid

    def collections(self, name: str | None = None) -> list[CollectionInfo]:
        """Every collection with its counts, or only the one called `name` (an empty list: none is)."""
        rows = self.conn.execute(
            "SELECT c.name, c.embed_model, (SELECT count(*) FROM files f WHERE f.collection_id = c.id),"
            " (SELECT count(*) FROM chunks k JOIN files f ON k.file_id = f.id WHERE f.collection_id = c.id),"
            " (SELECT count(*) FROM chunks k JOIN files f ON k.file_id = f.id WHERE f.collection_id = c.id"
            "  AND k.embedding IS NOT NULL) FROM collections c WHERE ? IS NULL OR c.name = ? ORDER BY c.name",
            (name, name),
        ).fetchall()
        return [CollectionInfo(name, files, chunks, emb, model) for name, model, files, chunks, emb in rows]

    def files(self, collection: str) -> list[tuple[str, int]]:
        cid = self.collection_id(collection)
        return self.conn.execute(
            "SELECT f.path, (SELECT count(*) FROM chunks k WHERE k.file_id = f.id) FROM files f"
            " WHERE f.collection_id = ? ORDER BY f.path",
            (cid,),
        ).fetchall()

    def remove(self, collection: str, path: str | None = None) -> int:
        """Drop a file (or every file under a folder) from a collection, or the whole collection; returns
        how many files went."""
        cid = self.collection_id(collection)
        with self.conn:
            if path is None:
                ids = [
                    r[0] for r in self.conn.execute("SELECT id FROM files WHERE collection_id = ?", (cid,))
                ]
            else:
                prefix = path.rstrip("/") + "/"
                ids = [r[0] for r in self.conn.execute(
                    "SELECT id FROM files WHERE collection_id = ? AND (path = ? OR substr(path, 1, ?) = ?)",
                    (cid, path, len(prefix), prefix))]  # fmt: skip
                if not ids:
                    raise DocsError(
                        f"'{printable(path)}' is not in the collection '{printable(collection)}'."
                    )
            for fid in ids:
                self._drop_file(fid)
            if path is None:
                self.conn.execute("DELETE FROM collections WHERE id = ?", (cid,))
        return len(ids)

    def set_embed_model(self, collection: str, model: str) -> None:
        with self.conn:
            self.conn.execute("UPDATE collections SET embed_model = ? WHERE name = ?", (model, collection))

    def has_vectors(self, collection: str) -> bool:
        return bool(self.conn.execute(
            "SELECT 1 FROM chunks k JOIN files f ON k.file_id = f.id JOIN collections c ON f.collection_id = c.id"
            " WHERE c.name = ? AND k.embedding IS NOT NULL LIMIT 1", (collection,)).fetchone())  # fmt: skip

    def embed_model(self, collection: str) -> str | None:
        row = self.conn.execute(
            "SELECT embed_model FROM collections WHERE name = ?", (collection,)
        ).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------ files
    def file_hash(self, collection: str, path: str) -> str | None:
        cid = self.collection_id(collection, create=True)
        row = self.conn.execute(
            "SELECT sha256 FROM files WHERE collection_id = ? AND path = ?", (cid, path)
        ).fetchone()
        return row[0] if row else None

    def put_file(
        self, collection: str, path: str, sha256: str, size: int, chunks: Sequence[Chunk]
    ) -> list[int]:
        """Replace a file's chunks in one transaction; returns the new chunk ids."""
        cid = self.collection_id(collection, create=True)
        with self.conn:
            row = self.conn.execute(
                "SELECT id FROM files WHERE collection_id = ? AND path = ?", (cid, path)
            ).fetchone()
            if row:
                self._drop_file(row[0])
            fid = self.conn.execute(
                "INSERT INTO files(collection_id, path, sha256, size, indexed) VALUES (?, ?, ?, ?, ?)",
                (cid, path, sha256, size, time.time()),
            ).lastrowid
            ids = []
            for i, c in enumerate(chunks):
                kid = self.conn.execute(
                    "INSERT INTO chunks(file_id, ord, text, tokens, page, line_start, line_end)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (fid, i, c.text, c.tokens, c.page, c.line_start, c.line_end),
                ).lastrowid
                self.conn.execute("INSERT INTO chunks_fts(rowid, text) VALUES (?, ?)", (kid, c.text))
                ids.append(kid)
        return ids

    def _drop_file(self, fid: int) -> None:
        self.conn.execute(
            "DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE file_id = ?)", (fid,)
        )
        self.conn.execute("DELETE FROM chunks WHERE file_id = ?", (fid,))
        self.conn.execute("DELETE FROM files WHERE id = ?", (fid,))

    # ------------------------------------------------------------ vectors
    def unembedded(self, collection: str) -> list[tuple[int, str]]:
        cid = self.collection_id(collection)
        return self.conn.execute(
            "SELECT k.id, k.text FROM chunks k JOIN files f ON k.file_id = f.id"
            " WHERE f.collection_id = ? AND k.embedding IS NULL ORDER BY k.id",
            (cid,),
        ).fetchall()

    def put_vectors(self, pairs: Iterable[tuple[int, Sequence[float]]]) -> None:
        with self.conn:
            self.conn.executemany(
                "UPDATE chunks SET embedding = ? WHERE id = ?",
                [(np.asarray(v, dtype="<f4").tobytes(), kid) for kid, v in pairs],
            )

    # ------------------------------------------------------------ search
    def chunk(self, kid: int) -> StoredChunk:
        row = self.conn.execute(
            "SELECT k.id, f.path, k.text, k.tokens, k.page, k.line_start, k.line_end FROM chunks k"
            " JOIN files f ON k.file_id = f.id WHERE k.id = ?",
            (kid,),
        ).fetchone()
        if row is None:
            raise DocsError(f"chunk {kid} is no longer in the index")
        return StoredChunk(*row)

    def bm25(self, collection: str, query: str, k: int) -> list[tuple[int, float]]:
        """(chunk id, score) best first; score is -bm25 (higher is better)."""
        cid = self.collection_id(collection)
        match = fts_query(query)
        if not match:
            return []
        rows = self.conn.execute(
            "SELECT chunks_fts.rowid, bm25(chunks_fts) FROM chunks_fts JOIN chunks k ON k.id = chunks_fts.rowid"
            " JOIN files f ON k.file_id = f.id WHERE chunks_fts MATCH ? AND f.collection_id = ?"
            " ORDER BY bm25(chunks_fts) LIMIT ?",
            (match, cid, k),
        ).fetchall()
        return [(kid, -score) for kid, score in rows]

    def nearest(self, collection: str, vector: Sequence[float], k: int) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity) best first, over the collection's embedded chunks."""
        cid = self.collection_id(collection)
        q = np.asarray(vector, dtype="<f4")
        sql = ("SELECT k.id, {expr} FROM chunks k JOIN files f ON k.file_id = f.id"
               " WHERE f.collection_id = ? AND k.embedding IS NOT NULL")  # fmt: skip
        if self.sqlite_vec:
            rows = self.conn.execute(
                sql.format(expr="vec_distance_cosine(k.embedding, ?) AS d") + " ORDER BY d LIMIT ?",
                (q.tobytes(), cid, k),
            ).fetchall()
            return [(kid, 1.0 - d) for kid, d in rows]
        rows = self.conn.execute(sql.format(expr="k.embedding"), (cid,)).fetchall()
        if not rows:
            return []
        ids = np.array([r[0] for r in rows])
        mat = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
        if mat.shape[1] != q.shape[0]:
            raise DocsError(f"the collection's vectors have {mat.shape[1]} dimensions, the query {q.shape[0]}; "
                            "re-add the collection with one embedding model")  # fmt: skip
        sims = mat @ q / (np.linalg.norm(mat, axis=1) * (np.linalg.norm(q) or 1.0) + 1e-12)
        order = np.argsort(-sims)[:k]
        return [(int(ids[i]), float(sims[i])) for i in order]


def fts_query(text: str) -> str:
    """An FTS5 query that ORs the text's words (quoted: user text is never FTS syntax)."""
    import re

    words = [w for w in re.findall(r"\w+", text.lower()) if len(w) > 1 and w not in STOPWORDS]
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words))


STOPWORDS = frozenset(
    "the a an and or of to in on at for is are was were be been by with what which who whom how when where why "
    "does do did it its this that these those from as into than then there their they i you he she we my your "
    "can could should would will shall may might much many any some about after before".split()
)
