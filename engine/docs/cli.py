"""`ingle docs add|list|rm`, `ingle eval-retrieval`, and the --docs retrieval that run and chat use."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.docs.search import METHODS, Hit, search, sources_prompt, within_budget
from engine.errors import SettingsError
from engine.text import printable

DEFAULT_DOCS_TOKENS = 1024
DEFAULT_K = 8


def add_docs_flags(p: argparse.ArgumentParser) -> None:
    """--docs and --docs-tokens for run and chat."""
    p.add_argument(
        "--docs", metavar="COLLECTION", help="answer from this document collection (ingle docs add)"
    )
    p.add_argument("--docs-tokens", type=int, default=DEFAULT_DOCS_TOKENS, metavar="N",
                   help=f"tokens the retrieved passages may use in the prompt (default {DEFAULT_DOCS_TOKENS})")  # fmt: skip


def _engine_for_docs(args):
    """An engine with the default (or --model) model loaded: its tokenizer sizes the chunks."""
    from engine.cli import load_model, open_engine
    from engine.library import Library
    from engine.settings import LoadSettings

    library = Library()
    path = library.resolve(getattr(args, "model", None))
    engine = open_engine(in_process=getattr(args, "in_process", False))
    try:
        load_model(engine, path, LoadSettings(n_ctx=2048))
    except BaseException:
        engine.close()
        raise
    return engine, library


def _stderr_progress(label: str):
    def show(done: int, total: int, *_rest) -> None:
        end = "\n" if done == total or not sys.stderr.isatty() else ""
        if sys.stderr.isatty() or done == total:
            print(f"\r{label} {done}/{total}", end=end, file=sys.stderr, flush=True)

    return show


def cmd_docs(args) -> int:
    from engine.docs.index import add_paths, embed_pending, open_store

    if args.action == "list":
        store = open_store()
        infos = store.collections()
        if args.json:
            print(json.dumps([info.__dict__ for info in infos], indent=2))
        elif not infos:
            print("no document collections yet; add one with: ingle docs add COLLECTION PATH...")
        for info in infos if not args.json else ():
            vectors = (
                f", {info.embedded} with vectors ({info.embed_model})"
                if info.embedded
                else ", full-text only"
            )
            print(f"{printable(info.name)}: {info.files} files, {info.chunks} chunks{vectors}")
            if args.files:
                for path, n in store.files(info.name):
                    print(f"  {printable(path)} ({n} chunks)")
        return 0
    if args.action == "rm":
        store = open_store()
        n = store.remove(args.collection, str(Path(args.path).expanduser().absolute()) if args.path else None)
        what = f"{n} file(s) from" if args.path else f"the collection ({n} files)"
        print(f"removed {what} {printable(args.collection)}", file=sys.stderr)
        return 0
    # add
    if not 16 <= args.chunk_tokens <= 4096:
        raise SettingsError("chunk-tokens", f"{args.chunk_tokens} is out of range; give 16 to 4096")
    from engine.text import check_name

    check_name(args.collection, "collection name")
    from engine.docs.embed_model import choose
    from engine.docs.index import token_counter
    from engine.library import Library

    library = Library()
    store = open_store(library)
    try:  # the embedding model is settled (or refused) before any work
        choice = None if args.no_vectors else choose(library, store, args.collection, args.embed_model)
        if choice is not None and not choice.usable:
            print(f"ingle: {choice.why}", file=sys.stderr)  # said once
        engine, _ = _engine_for_docs(args)
        try:
            report = add_paths(store, args.collection, args.paths, token_counter(engine),
                               chunk_tokens=args.chunk_tokens, progress=_stderr_progress("indexed"))  # fmt: skip
            if choice is not None and choice.usable:
                embed_pending(store, args.collection, engine, choice.path, _stderr_progress("embedded"),
                              name=choice.name, report=report)  # fmt: skip
        finally:
            engine.close()
    finally:
        store.close()
    for path, reason in report.unreadable:
        print(f"ingle: skipped {printable(path)}: {printable(reason)}", file=sys.stderr)
    chunks = sum(n for _, n in report.indexed)
    if choice is None or not choice.usable:
        vectors = " (full-text search only)"
    else:
        threads = f", {report.embed_threads} threads" if report.embed_threads else ""
        vectors = f" ({printable(choice.name)}{threads})"
    print(f"{printable(args.collection)}: {len(report.indexed)} files indexed ({chunks} chunks), "
          f"{len(report.unchanged)} unchanged, {len(report.unreadable)} unreadable, "
          f"{report.embedded} chunks embedded" + vectors)  # fmt: skip
    return 0


def retrieve(engine, collection: str, question: str, budget: int, k: int = DEFAULT_K) -> list[Hit]:
    """Hybrid retrieval for a question, packed into `budget` tokens (of the chat model's tokenizer)."""
    from engine.docs.index import open_store

    if budget < 1:
        raise SettingsError("docs-tokens", f"{budget} leaves no room for passages; give 1 or more")
    store = open_store()
    try:
        store.collection_id(collection)
        from engine.docs.embed_model import stored_model_path
        from engine.library import Library

        embed_query = None
        path = stored_model_path(Library(), store, collection)
        if path is not None:
            embed_query = lambda q: list(engine.embed([q], str(path)).vectors[0])  # noqa: E731
        return within_budget(search(store, collection, question, k, "hybrid", embed_query), budget)
    finally:
        store.close()


def docs_prompt(engine, args, question: str) -> tuple[str, list[Hit]]:
    """The prompt with the retrieved sources (printed to stderr, numbered as the reply cites them)."""
    hits = retrieve(engine, args.docs, question, args.docs_tokens)
    if not hits:
        print(
            f"ingle: nothing in '{printable(args.docs)}' matches; answering without sources", file=sys.stderr
        )
    for i, h in enumerate(hits, 1):
        where = f" ({h.where})" if h.where else ""
        print(
            f"[{i}] {printable(h.path)}{where} {h.method} {h.score:.3f}, {h.tokens} tokens", file=sys.stderr
        )
    return sources_prompt(question, hits), hits


def cmd_eval_retrieval(args) -> int:
    from engine.docs.eval import evaluate, load_questions

    questions = load_questions(Path(args.questions))
    engine = None
    if not args.no_vectors:  # the queries are embedded; no chat model is needed for that
        from engine.cli import open_engine

        engine = open_engine(in_process=args.in_process)
    try:
        result = evaluate(args.collection, questions, args.k, engine)
    finally:
        if engine is not None:
            engine.close()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{len(questions)} questions, k={args.k}")
    print(f"{'method':8} {'recall@k':>9} {'MRR':>6}")
    for method, figures in result["methods"].items():
        if figures is None:
            print(
                f"{method:8} {'-':>9} {'-':>6}  (not measured: --no-vectors, or no vectors in this collection)"
            )
        else:
            print(f"{method:8} {figures['recall']:9.3f} {figures['mrr']:6.3f}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("docs", help="document collections for --docs: add, list, rm")
    dsub = p.add_subparsers(dest="action", metavar="ACTION")
    ap = dsub.add_parser(
        "add", help="index files and folders into COLLECTION (re-adding skips unchanged files)"
    )
    ap.add_argument("collection")
    ap.add_argument("paths", nargs="+", metavar="PATH")
    ap.add_argument("--model", help="the model whose tokenizer sizes the chunks (default: the starter)")
    ap.add_argument("--chunk-tokens", type=int, default=200, help="tokens per chunk (default 200)")
    vectors = ap.add_mutually_exclusive_group()
    vectors.add_argument("--embed-model", metavar="NAME",
                         help="the library's embedding model for the vectors (default: the collection's, else the "
                              "bundled all-MiniLM-L6-v2, else the first in the library)")  # fmt: skip
    vectors.add_argument(
        "--no-vectors", action="store_true", help="full-text search only (no embedding model)"
    )
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    lp = dsub.add_parser("list", help="the collections (--files: and their files)")
    lp.add_argument("--files", action="store_true")
    lp.add_argument("--json", action="store_true")
    rp = dsub.add_parser("rm", help="remove a collection, or a file or folder from it")
    rp.add_argument("collection")
    rp.add_argument("path", nargs="?")
    p.set_defaults(func=cmd_docs, action="list", json=False, files=False)

    p = sub.add_parser(
        "eval-retrieval", help="recall@k and MRR of bm25, vector and hybrid search on a question set"
    )
    p.add_argument("collection")
    p.add_argument("questions", metavar="QUESTIONS.jsonl",
                   help='one JSON object a line: {"question": ..., "file": ...} and/or "passage": ...')  # fmt: skip
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-vectors", action="store_true", help="bm25 only (no engine is started)")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_eval_retrieval)


__all__ = ["METHODS", "add_docs_flags", "docs_prompt", "register", "retrieve"]


def print_json_reply(events, hits: list[Hit]) -> None:
    """`run --json`: the reply, its stats and the retrieved passages (file, page or lines, score, method)."""
    from engine.events import ReplyDone, Token

    text, done = [], None
    for event in events:
        if isinstance(event, Token):
            text.append(event.text)
        elif isinstance(event, ReplyDone):
            done = event
    record = {
        "reply": done.text if done is not None else "".join(text),
        "stop_reason": done.stats.stop_reason.value if done is not None else None,
        "sources": [{"n": i, **h.to_dict()} for i, h in enumerate(hits, 1)],
    }
    print(json.dumps(record, ensure_ascii=False, indent=2))
