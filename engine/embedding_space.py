"""The model's input embedding space: nearest tokens by cosine and a 2-D PCA of the context's tokens, from the
GGUF's token embedding tensor dequantized by gguf-py (no llama.cpp here, so the GUI can unpickle the results)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import dequantize

from engine.errors import EngineError, ModelFileError
from engine.gguf_reader import read_gguf

TOKEN_EMBD = "token_embd.weight"
# Matrices up to this many bytes as float32 stay float32 (exact); bigger ones (the starter's 262k x 640 is
# 671 MB) are kept as float16, which moves a cosine by less than 1e-3 and halves the memory.
FLOAT32_LIMIT = 256 << 20
ROWS_PER_CHUNK = 16384  # dequantized at a time: bounds the float32 working set to ~40 MB at 640 dims
MAX_NEIGHBOURS = 200
MAX_PROJECTED = 512  # distinct tokens drawn in the PCA plane


@dataclass(frozen=True)
class Neighbour:
    token: int
    piece: str
    score: float  # cosine similarity to the query token


@dataclass(frozen=True)
class Neighbours:
    """The tokens nearest to `token` in the input embedding matrix, best first (the token itself left out)."""

    token: int
    piece: str
    neighbours: tuple[Neighbour, ...]
    seconds: float  # this call, the matrix's dequantization included when it was not cached yet
    cached: bool  # the matrix was already in memory


@dataclass(frozen=True)
class Projection:
    """The context's distinct tokens projected on the first two principal components of their embeddings."""

    tokens: tuple[int, ...]
    pieces: tuple[str, ...]
    points: tuple[tuple[float, float], ...]
    explained: tuple[float, float]  # fraction of the variance each axis carries
    total_tokens: int  # tokens in the context, repeats included


@dataclass(frozen=True)
class EmbeddingMatrix:
    """Row-normalized token embeddings (n_vocab x n_embd) and how they were obtained."""

    unit: np.ndarray  # float32 or float16, each row of length 1 (zero rows stay zero)
    source_type: str  # the tensor's type in the file (Q8_0, F16, ...)
    load_seconds: float

    @property
    def n_vocab(self) -> int:
        return self.unit.shape[0]

    @property
    def nbytes(self) -> int:
        return self.unit.nbytes


def dequantized_rows(path: str | Path) -> tuple[Callable[[int, int], np.ndarray], int, int, str]:
    """A reader of the token embedding tensor's rows as float32: (read(start, stop), n_vocab, n_embd, type)."""
    path = Path(path)
    _version, _md, tensors, _size = read_gguf(path)
    info = next((t for t in tensors if t.name == TOKEN_EMBD), None)
    if info is None or len(info.shape) != 2:
        raise ModelFileError(
            f"{path}: has no 2-D '{TOKEN_EMBD}' tensor, so its embedding space cannot be shown."
        )
    n_embd, n_vocab = info.shape  # GGUF lists the fastest-varying dimension first
    qtype = gguf.GGMLQuantizationType[info.type_name]
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    row_bytes = n_embd // block * type_size
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=info.file_offset, shape=(n_vocab, row_bytes))

    def read(start: int, stop: int) -> np.ndarray:
        rows = dequantize(np.ascontiguousarray(raw[start:stop]), qtype)
        return np.asarray(rows, dtype=np.float32).reshape(stop - start, n_embd)

    return read, n_vocab, n_embd, info.type_name


def load_matrix(path: str | Path, float32_limit: int = FLOAT32_LIMIT) -> EmbeddingMatrix:
    """Dequantize and row-normalize the token embedding matrix, chunk by chunk (float16 past the limit)."""
    started = time.perf_counter()
    read, n_vocab, n_embd, type_name = dequantized_rows(path)
    dtype = np.float32 if n_vocab * n_embd * 4 <= float32_limit else np.float16
    unit = np.empty((n_vocab, n_embd), dtype)
    for start in range(0, n_vocab, ROWS_PER_CHUNK):
        stop = min(n_vocab, start + ROWS_PER_CHUNK)
        rows = read(start, stop)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        unit[start:stop] = rows / np.where(norms > 0, norms, 1.0)
    return EmbeddingMatrix(unit, type_name, time.perf_counter() - started)


class EmbeddingCache:
    """One model's matrix at a time, keyed by path, size and modification time (a changed file is re-read)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._matrix: EmbeddingMatrix | None = None
        self._lock = threading.Lock()

    def get(self, path: str | Path) -> tuple[EmbeddingMatrix, bool]:
        """(matrix, was_cached)."""
        stat = Path(path).stat()
        key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if self._key == key and self._matrix is not None:
                return self._matrix, True
            self._key, self._matrix = None, None  # free the old model's matrix before reading the new one
            self._matrix = load_matrix(path)
            self._key = key
            return self._matrix, False


CACHE = EmbeddingCache()


def nearest(matrix: EmbeddingMatrix, token: int, k: int) -> list[tuple[int, float]]:
    """The k tokens of highest cosine similarity to `token` (itself excluded), best first."""
    query = matrix.unit[token].astype(np.float32)
    scores = np.empty(matrix.n_vocab, np.float32)
    for start in range(0, matrix.n_vocab, ROWS_PER_CHUNK * 4):
        block = matrix.unit[start : start + ROWS_PER_CHUNK * 4]
        scores[start : start + len(block)] = block.astype(np.float32) @ query
    scores[token] = -np.inf
    k = min(k, matrix.n_vocab - 1)
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(int(t), float(scores[t])) for t in top]


def project(matrix: EmbeddingMatrix, tokens: Sequence[int]) -> tuple[np.ndarray, tuple[float, float]]:
    """PCA of the given tokens' unit embeddings: (n x 2 coordinates, explained variance ratio of each axis)."""
    rows = matrix.unit[np.asarray(tokens, dtype=np.int64)].astype(np.float64)
    centred = rows - rows.mean(axis=0)
    if len(tokens) < 2 or not np.any(centred):
        return np.zeros((len(tokens), 2)), (0.0, 0.0)
    _u, s, vt = np.linalg.svd(centred, full_matrices=False)
    points = centred @ vt[:2].T
    if points.shape[1] < 2:
        points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
    variance = s**2
    ratio = variance / variance.sum()
    explained = (float(ratio[0]), float(ratio[1]) if len(ratio) > 1 else 0.0)
    # a principal axis has no sign of its own: make the largest coordinate positive, so views stay stable
    for axis in range(2):
        if points[np.argmax(np.abs(points[:, axis])), axis] < 0:
            points[:, axis] *= -1
    return points, explained


# ---------------------------------------------------------------------------- the Runtime's engine methods
def _check_token(token: int, n_vocab: int) -> None:
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < n_vocab:
        raise EngineError(f"Token id {token!r} is not in this model's vocabulary (0 to {n_vocab - 1}).")


def resolve_token(rt, token: int | str) -> int:
    """A token id, or text that is exactly one token of the model's vocabulary."""
    if isinstance(token, str):
        ids = rt.tokenize(token, add_special=False, parse_special=True)
        if len(ids) != 1 and token.strip():  # SPM vocabularies add their own leading space: try without one
            ids = rt.tokenize(token.strip(), add_special=False, parse_special=True)
        if len(ids) != 1:
            shown = " | ".join(repr(rt.piece(t)) for t in ids[:8])
            raise EngineError(
                f"{token!r} is {len(ids)} tokens for this model ({shown}); type one token, e.g. the first piece."
                if ids
                else "Type a token (the text is empty)."
            )
        return ids[0]
    _check_token(token, rt.n_vocab)
    return token


def token_neighbours(rt, token: int | str, k: int = 20) -> Neighbours:
    """Engine method: the k nearest tokens (cosine) to `token` in the loaded model's input embeddings."""
    rt.require_model()
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_NEIGHBOURS:
        raise EngineError(f"k must be a whole number from 1 to {MAX_NEIGHBOURS}, got {k!r}.")
    started = time.perf_counter()
    token = resolve_token(rt, token)
    matrix, cached = CACHE.get(rt.info.path)
    if matrix.n_vocab != rt.n_vocab:
        raise ModelFileError(
            f"{rt.info.path}: '{TOKEN_EMBD}' has {matrix.n_vocab} rows but the vocabulary {rt.n_vocab} tokens."
        )
    found = tuple(Neighbour(t, rt.piece(t), s) for t, s in nearest(matrix, token, k))
    return Neighbours(token, rt.piece(token), found, time.perf_counter() - started, cached)


def embedding_projection(rt, tokens: Sequence[int] | None = None) -> Projection:
    """Engine method: the distinct tokens of `tokens` (default: the context in the KV cache now, first
    MAX_PROJECTED distinct ones) in the PCA plane of their input embeddings."""
    rt.require_model()
    tokens = list(rt.cached_tokens if tokens is None else tokens)
    for t in tokens:
        _check_token(t, rt.n_vocab)
    distinct = list(dict.fromkeys(tokens))[:MAX_PROJECTED]
    if not distinct:
        raise EngineError("The context is empty: send a message or type a draft, then project its tokens.")
    matrix, _cached = CACHE.get(rt.info.path)
    points, explained = project(matrix, distinct)
    return Projection(
        tuple(distinct), tuple(rt.piece(t) for t in distinct),
        tuple((float(x), float(y)) for x, y in points), explained, len(tokens),
    )  # fmt: skip
