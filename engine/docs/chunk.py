"""Chunks for retrieval: blocks packed up to a token budget (tokens of the model's own tokenizer), never
across a heading (a heading starts a new chunk and is carried into it, so a chunk says what it is about),
split inside a block only when that block alone is over the budget (at line, then sentence, then word ends).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from engine.docs.extract import Block

DEFAULT_CHUNK_TOKENS = 200


@dataclass(frozen=True)
class Chunk:
    text: str
    tokens: int
    page: int | None = None
    line_start: int | None = None
    line_end: int | None = None

    @property
    def where(self) -> str:
        return location(self.page, self.line_start, self.line_end)


def location(page: int | None, line_start: int | None, line_end: int | None) -> str:
    """Where a passage is in its file: 'p. 3', 'lines 10-24' or ''."""
    if page is not None:
        return f"p. {page}"
    if line_start is not None:
        return f"lines {line_start}-{line_end}"
    return ""


def chunk_blocks(
    blocks: list[Block], count: Callable[[str], int], budget: int = DEFAULT_CHUNK_TOKENS
) -> list[Chunk]:
    """Chunks of at most `budget` tokens (a heading longer than half the budget is not repeated)."""
    if budget < 16:
        raise ValueError(f"a chunk budget of {budget} tokens is too small (16 at least)")
    chunks: list[Chunk] = []
    parts: list[Block] = []
    used = 0
    heading: Block | None = None

    def flush() -> None:
        nonlocal parts, used
        if any(not p.heading for p in parts):  # a heading alone is no chunk: it goes with what follows
            chunks.append(_make(parts, count))
        parts, used = [], 0
        if heading is not None and count(heading.text) <= budget // 2:
            parts, used = [heading], count(heading.text)

    for block in blocks:
        n = count(block.text)
        if block.heading:
            if any(not p.heading for p in parts):
                chunks.append(_make(parts, count))
            heading = block
            parts, used = ([block], n) if n <= budget // 2 else ([], 0)
            continue
        if n > budget:
            flush()
            for piece in _split(block.text, count, budget):
                chunks.append(_make([Block(piece, page=block.page, line_start=block.line_start,
                                           line_end=block.line_end)], count))  # fmt: skip
            continue
        if used + n > budget:
            flush()
            if used + n > budget:  # the carried heading and this block do not fit together
                parts, used = [], 0
        parts.append(block)
        used += n
    if any(not p.heading for p in parts):
        chunks.append(_make(parts, count))
    if not chunks and blocks:  # headings only
        chunks.append(_make(blocks, count))
    return chunks


def _make(parts: list[Block], count: Callable[[str], int]) -> Chunk:
    text = "\n\n".join(p.text for p in parts)
    pages = [p.page for p in parts if p.page is not None]
    starts = [p.line_start for p in parts if p.line_start is not None]
    ends = [p.line_end for p in parts if p.line_end is not None]
    return Chunk(text, count(text), pages[0] if pages else None,
                 min(starts) if starts else None, max(ends) if ends else None)  # fmt: skip


def _split(text: str, count: Callable[[str], int], budget: int) -> list[str]:
    """Pieces of an oversized block, each within the budget, cut at the largest unit that fits."""
    for pattern in (r"(?<=\n)", r"(?<=[.!?])\s+", r"\s+"):
        units = [u for u in re.split(pattern, text) if u.strip()]
        if len(units) > 1 and all(count(u) <= budget for u in units):
            break
    else:
        units = [text[i : i + budget] for i in range(0, len(text), budget)]  # one enormous "word"
    pieces: list[str] = []
    cur = ""
    for unit in units:
        candidate = f"{cur} {unit}".strip() if cur else unit.strip()
        if cur and count(candidate) > budget:
            pieces.append(cur)
            cur = unit.strip()
        else:
            cur = candidate
    if cur:
        pieces.append(cur)
    return pieces
