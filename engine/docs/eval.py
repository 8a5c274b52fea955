"""Retrieval quality on a question set: recall@k and MRR for bm25, vector and hybrid search.

A question line: {"question": "...", "file": "name.md"} (a hit is any chunk of a file whose name or path ends
with it) and/or "passage": "..." (a hit is a chunk containing that text, compared without case and spacing).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from engine.docs.search import METHODS, search
from engine.errors import DocsError, SettingsError


def load_questions(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise SettingsError("questions", f"cannot read {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise SettingsError("questions", f"{path} is not UTF-8 text") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise SettingsError("questions", f"{path} line {n}: not JSON ({err.msg})") from None
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("question"), str)
            or not item["question"].strip()
        ):
            raise SettingsError("questions", f'{path} line {n}: needs a "question" string')
        if not isinstance(item.get("file"), str) and not isinstance(item.get("passage"), str):
            raise SettingsError("questions", f'{path} line {n}: needs "file" or "passage" (what answers it)')
        out.append(item)
    if not out:
        raise SettingsError("questions", f"{path} has no questions")
    return out


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def relevant(item: dict, path: str, text: str) -> bool:
    if isinstance(item.get("file"), str) and not (path == item["file"] or path.endswith("/" + item["file"])):
        return False
    if isinstance(item.get("passage"), str) and _norm(item["passage"]) not in _norm(text):
        return False
    return True


def evaluate(collection: str, questions: list[dict], k: int, engine=None) -> dict:
    """{"k", "questions", "methods": {method: {"recall", "mrr"} or None}, "per_question": [...]}."""
    from engine.docs.embed_model import stored_model_path
    from engine.docs.index import open_store
    from engine.library import Library

    if k < 1:
        raise SettingsError("k", f"{k}: give 1 or more")
    store = open_store()
    store.collection_id(collection)
    embed_query = None
    if engine is not None:
        path = stored_model_path(Library(), store, collection)
        if path is not None:
            cache: dict[str, list[float]] = {}

            def embed_query(q: str) -> list[float]:
                if q not in cache:
                    cache[q] = list(engine.embed([q], str(path)).vectors[0])
                return cache[q]

    methods: dict[str, dict | None] = {}
    per_question = [{"question": q["question"], "ranks": {}} for q in questions]
    for method in METHODS:
        if method != "bm25" and embed_query is None:
            methods[method] = None
            continue
        found = 0
        reciprocal = 0.0
        for q, row in zip(questions, per_question, strict=True):
            hits = search(store, collection, q["question"], k, method, embed_query)
            rank = next((i for i, h in enumerate(hits, 1) if relevant(q, h.path, h.text)), None)
            row["ranks"][method] = rank
            if rank is not None:
                found += 1
                reciprocal += 1.0 / rank
        methods[method] = {"recall": found / len(questions), "mrr": reciprocal / len(questions)}
    if not store.files(collection):
        raise DocsError(f"the collection '{collection}' has no files")
    return {"collection": collection, "k": k, "questions": len(questions), "methods": methods,
            "per_question": per_question}  # fmt: skip
