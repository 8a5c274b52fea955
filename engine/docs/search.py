"""Retrieval: BM25 (FTS5), vectors (cosine), and both fused by reciprocal rank fusion; the retrieved chunks
packed into a token budget and written into the prompt as numbered sources the reply cites."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.docs.chunk import location
from engine.docs.store import DocStore

RRF_K = 60  # the constant of Cormack et al.; it damps the weight of the very first ranks
METHODS = ("bm25", "vector", "hybrid")


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    path: str
    text: str
    tokens: int
    page: int | None
    line_start: int | None
    line_end: int | None
    score: float
    method: str

    @property
    def where(self) -> str:
        return location(self.page, self.line_start, self.line_end)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["where"] = self.where
        return d


def rrf(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each id scores sum(1 / (k + rank)) over the rankings it appears in."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def search(
    store: DocStore,
    collection: str,
    query: str,
    k: int = 5,
    method: str = "hybrid",
    embed_query: Callable[[str], list[float]] | None = None,
) -> list[Hit]:
    """The top `k` chunks for `query`. Without `embed_query` (no embedding model) hybrid falls back to BM25."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}")
    pool = max(k * 4, 20)
    lexical = store.bm25(collection, query, pool) if method in ("bm25", "hybrid") else []
    vector: list[tuple[int, float]] = []
    if method in ("vector", "hybrid") and embed_query is not None:
        vector = store.nearest(collection, embed_query(query), pool)
    if method == "bm25" or (method == "hybrid" and not vector):
        ranked, used = lexical, "bm25"
    elif method == "vector":
        ranked, used = vector, "vector"
    else:
        ranked, used = rrf([[i for i, _ in lexical], [i for i, _ in vector]]), "hybrid"
    hits = []
    for kid, score in ranked[:k]:
        c = store.chunk(kid)
        hits.append(Hit(kid, c.path, c.text, c.tokens, c.page, c.line_start, c.line_end, float(score), used))
    return hits


def within_budget(hits: list[Hit], budget: int) -> list[Hit]:
    """The best hits whose chunks fit in `budget` tokens together (a chunk that does not fit is skipped)."""
    out, used = [], 0
    for h in hits:
        if used + h.tokens <= budget:
            out.append(h)
            used += h.tokens
    return out


def sources_prompt(question: str, hits: list[Hit]) -> str:
    """The user turn with the sources first, numbered, and an instruction to cite them."""
    if not hits:
        return question
    parts = ["Answer the question using the sources below. Cite the sources you use by number, like [1].", ""]
    for i, h in enumerate(hits, 1):
        where = f", {h.where}" if h.where else ""
        parts.append(f"[{i}] {Path(h.path).name}{where}:\n{h.text}\n")
    parts.append(f"Question: {question}")
    return "\n".join(parts)
