"""Documents: extraction of each format, chunking in model tokens, the SQLite index (changed-file re-index,
FTS5, vectors from the real all-MiniLM-L6-v2 GGUF, RRF), the docs and eval-retrieval commands, and a --docs
run on the starter that cites its source."""

from __future__ import annotations

import json
from pathlib import Path

import docx
import pytest

from engine.docs import minilm
from engine.docs.chunk import chunk_blocks
from engine.docs.extract import Block, Unreadable, extract
from engine.docs.index import add_paths, embed_pending, token_counter
from engine.docs.search import rrf, search, sources_prompt, within_budget
from engine.docs.store import DocsError, DocStore

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO / "assets" / "docs_eval"


def write_pdf(path: Path, pages: list[str]) -> Path:
    """A minimal valid PDF with one line of Helvetica text per page (offsets computed, as readers expect)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        page_no = len(objects) + 1
        kids.append(f"{page_no} 0 R")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {page_no + 1} 0 R "
                       "/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>")  # fmt: skip
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>"
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))
    return path


def words(text: str) -> int:
    return len(text.split())


# ------------------------------------------------------------------ extraction
def test_markdown_headings_and_line_ranges(tmp_path):
    f = tmp_path / "a.md"
    f.write_text("# Title\n\nfirst para\nstill first\n\n## Part\n\n```\ncode\n\nmore code\n```\nlast\n")
    blocks = extract(f)
    assert [(b.text, b.heading, b.line_start, b.line_end) for b in blocks] == [
        ("# Title", True, 1, 1),
        ("first para\nstill first", False, 3, 4),
        ("## Part", True, 6, 6),
        ("```\ncode\n\nmore code\n```", False, 8, 12),  # a fenced block with a blank line stays whole
        ("last", False, 13, 13),
    ]


def test_source_code_and_text_keep_line_numbers(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n\n\ndef f():\n    return 1\n")
    assert [(b.line_start, b.line_end) for b in extract(f)] == [(1, 1), (4, 5)]
    t = tmp_path / "n.txt"
    t.write_bytes("caf\xe9 au lait\n".encode("latin-1"))  # not UTF-8: read as 8-bit text, not refused
    assert extract(t)[0].text == "café au lait"


def test_html_text_without_scripts_or_styles(tmp_path):
    f = tmp_path / "p.html"
    f.write_text("<html><head><style>p{}</style><script>var x = 'secret';</script></head><body>"
                 "<h1>Head &amp; tail</h1><p>One <b>bold</b> word.</p><ul><li>item</li></ul></body></html>")  # fmt: skip
    blocks = extract(f)
    assert [(b.text, b.heading) for b in blocks] == [("Head & tail", True), ("One bold word.", False),
                                                      ("item", False)]  # fmt: skip


def test_pdf_pages_are_numbered(tmp_path):
    f = write_pdf(tmp_path / "d.pdf", ["Alpha page text", "Beta page text"])
    assert [(b.text, b.page) for b in extract(f)] == [("Alpha page text", 1), ("Beta page text", 2)]


def test_docx_headings_paragraphs_and_tables(tmp_path):
    d = docx.Document()
    d.add_heading("Budget", level=1)
    d.add_paragraph("The budget is 40 thousand.")
    table = d.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "rent", "12"
    d.save(tmp_path / "b.docx")
    blocks = extract(tmp_path / "b.docx")
    assert [(b.text, b.heading) for b in blocks] == [("Budget", True), ("The budget is 40 thousand.", False),
                                                      ("rent | 12", False)]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("bin.txt", b"\x00\x01\x02binary", "binary data"),
        ("broken.pdf", b"%PDF-1.4 this is not a pdf", "not a readable PDF"),
        ("broken.docx", b"PK\x03\x04 not a zip", "not a readable DOCX"),
        ("empty.md", b"\n\n   \n", "no text"),
        ("image.png", b"\x89PNG\r\n", "not supported"),
    ],
)
def test_unreadable_files_say_why(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(Unreadable, match=reason):
        extract(tmp_path / name)


# ------------------------------------------------------------------ chunks
def test_chunks_respect_headings_and_budget_in_model_tokens(tiny_runtime):
    count = token_counter(tiny_runtime)
    para = "The river floods in spring and the farmers move their herds to the hills. " * 3
    blocks = [Block("# Floods", heading=True, line_start=1, line_end=1)]
    blocks += [Block(para, line_start=n, line_end=n) for n in range(3, 9)]
    blocks += [Block("# Harvest", heading=True, line_start=10, line_end=10), Block("Grain is cut in August.",
               line_start=12, line_end=12)]  # fmt: skip
    budget = 3 * count(para)
    chunks = chunk_blocks(blocks, count, budget)
    assert all(c.tokens <= budget for c in chunks)
    assert all(count(c.text) == c.tokens for c in chunks)  # sizes are the model's own token counts
    assert chunks[-1].text == "# Harvest\n\nGrain is cut in August." and chunks[-1].where == "lines 10-12"
    assert all(c.text.startswith("# Floods") for c in chunks[:-1])  # the heading is carried into each chunk
    assert sum(c.text.count("river floods") for c in chunks) == 6 * 3  # nothing lost, nothing doubled


def test_an_oversized_paragraph_is_split_at_sentences():
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    chunks = chunk_blocks([Block(text, line_start=1, line_end=1)], words, 30)
    assert len(chunks) > 1 and all(c.tokens <= 30 for c in chunks)
    assert all(c.text.endswith(".") for c in chunks)
    assert " ".join(c.text for c in chunks) == text


def test_a_budget_too_small_is_refused():
    with pytest.raises(ValueError, match="too small"):
        chunk_blocks([Block("x")], words, 4)


# ------------------------------------------------------------------ index and search
@pytest.fixture
def store(tmp_path):
    s = DocStore(tmp_path / "index.sqlite")
    yield s
    s.close()


def test_changed_file_is_reindexed_alone_and_bad_files_are_listed(store, tmp_path, tiny_runtime):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("# A\n\nApples grow on trees in orchards.\n")
    (folder / "b.txt").write_text("Bananas ripen after picking.\n")
    (folder / "bad.pdf").write_bytes(b"%PDF-1.4 garbage")
    count = token_counter(tiny_runtime)
    first = add_paths(store, "fruit", [folder, tmp_path / "missing.txt"], count)
    assert sorted(Path(p).name for p, _ in first.indexed) == ["a.md", "b.txt"]
    assert sorted((Path(p).name, r.split(" (")[0]) for p, r in first.unreadable) == [
        ("bad.pdf", "not a readable PDF"), ("missing.txt", "no such file or folder")]  # fmt: skip
    b_ids = {h.chunk_id for h in search(store, "fruit", "bananas", 5, "bm25")}
    (folder / "a.md").write_text("# A\n\nApricots dry well in the sun.\n")
    second = add_paths(store, "fruit", [folder], count)
    assert [Path(p).name for p, _ in second.indexed] == ["a.md"]
    assert sorted(Path(p).name for p in second.unchanged) == ["b.txt"]
    assert {h.chunk_id for h in search(store, "fruit", "bananas", 5, "bm25")} == b_ids  # b untouched
    assert search(store, "fruit", "apples", 5, "bm25") == []  # the old text is gone
    assert Path(search(store, "fruit", "apricots", 5, "bm25")[0].path).name == "a.md"


def test_fts_ranks_the_matching_file_first_and_query_syntax_is_inert(store, tmp_path):
    for name, text in [("x.txt", "The volcano erupted lava for days."), ("y.txt", "Tea steeps for minutes."),
                       ("z.txt", "Lava, lava and more lava flowed from the volcano.")]:  # fmt: skip
        (tmp_path / name).write_text(text)
    add_paths(store, "c", [tmp_path / n for n in ("x.txt", "y.txt", "z.txt")], words)
    hits = search(store, "c", "lava volcano", 3, "bm25")
    assert [Path(h.path).name for h in hits] == ["z.txt", "x.txt"] and hits[0].score > hits[1].score
    assert search(store, "c", 'NEAR( "unbalanced * OR', 3, "bm25") == []  # no FTS5 syntax error
    with pytest.raises(DocsError, match="No document collection named 'nope'"):
        search(store, "nope", "lava", 3, "bm25")


def test_rrf_rewards_agreement():
    fused = rrf([[1, 2, 3], [3, 1, 4]])
    assert [i for i, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)


def test_budget_and_prompt_number_the_sources(store, tmp_path):
    (tmp_path / "a.txt").write_text("Otters hold hands while sleeping.")
    add_paths(store, "o", [tmp_path / "a.txt"], words)
    hits = search(store, "o", "otters sleeping", 3, "bm25")
    assert within_budget(hits, 4) == [] and within_budget(hits, 5) == hits
    prompt = sources_prompt("Why?", hits)
    assert "[1] a.txt, lines 1-1:\nOtters hold hands while sleeping." in prompt and prompt.endswith(
        "Question: Why?"
    )


# ------------------------------------------------------------------ vectors with the real MiniLM
@pytest.fixture(scope="session")
def minilm_gguf(tmp_path_factory) -> Path:
    return minilm.convert(tmp_path_factory.mktemp("minilm") / "minilm.gguf")


def test_minilm_gguf_ranks_related_sentences_higher(minilm_gguf, tiny_runtime):
    import numpy as np

    vecs = np.array(tiny_runtime.embed(["A cat sleeps on the mat.", "A kitten naps on a rug.",
                                        "Quarterly tax returns are due in April."], str(minilm_gguf)).vectors)  # fmt: skip
    assert vecs.shape == (3, 384)
    related, unrelated = vecs[0] @ vecs[1], vecs[0] @ vecs[2]
    assert related > 0.4 and unrelated < 0.15, (related, unrelated)


def test_vector_search_finds_paraphrases_that_bm25_misses(store, tmp_path, minilm_gguf, tiny_runtime):
    (tmp_path / "cat.txt").write_text("The kitten naps on a rug by the fire.")
    (tmp_path / "tax.txt").write_text("Quarterly tax returns are due in April.")
    add_paths(store, "v", [tmp_path / "cat.txt", tmp_path / "tax.txt"], words)
    assert embed_pending(store, "v", tiny_runtime, minilm_gguf) == 2
    assert embed_pending(store, "v", tiny_runtime, minilm_gguf) == 0  # already embedded

    def embed_query(q):
        return list(tiny_runtime.embed([q], str(minilm_gguf)).vectors[0])

    query = "where does the young feline sleep"
    assert search(store, "v", query, 2, "bm25") == []
    hits = search(store, "v", query, 2, "vector", embed_query)
    assert (
        Path(hits[0].path).name == "cat.txt" and hits[0].score > hits[1].score and hits[0].method == "vector"
    )
    hybrid = search(store, "v", query, 2, "hybrid", embed_query)
    assert Path(hybrid[0].path).name == "cat.txt" and hybrid[0].method == "hybrid"


# ------------------------------------------------------------------ commands
def ingle(*argv: str) -> int:
    from app.cli import main

    return main(list(argv))


def test_docs_commands_and_eval_retrieval(capsys, starter_model, tmp_path):
    """Four of the shipped documents and their questions (the whole set is embedded in minutes on a busy CPU)."""
    name, subset = "evalset", ["lighthouse_keeping.md", "sourdough.txt", "tea_guide.md", "bike_repair.md"]
    folder = tmp_path / "docs"
    folder.mkdir()
    for f in subset:
        (folder / f).write_bytes((EVAL / "docs" / f).read_bytes())
    lines = [
        q for q in (EVAL / "questions.jsonl").read_text().splitlines() if json.loads(q)["file"] in subset
    ]
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(lines) + "\n")
    assert ingle("docs", "add", name, str(folder), str(tmp_path / "nothing.md"), "--in-process") == 0
    out, err = capsys.readouterr()
    assert "4 files indexed" in out and "0 unchanged, 1 unreadable" in out
    assert "nothing.md: no such file or folder" in err
    assert ingle("docs", "add", name, str(folder), "--in-process") == 0
    assert "0 files indexed (0 chunks), 4 unchanged" in capsys.readouterr()[0]
    assert ingle("docs", "list") == 0
    assert f"{name}: 4 files" in capsys.readouterr()[0]
    assert ingle("eval-retrieval", name, str(questions), "--json", "--in-process") == 0
    result = json.loads(capsys.readouterr()[0])
    assert result["questions"] == len(lines) == 13 and set(result["methods"]) == {"bm25", "vector", "hybrid"}
    for figures in result["methods"].values():
        assert 0.8 <= figures["recall"] <= 1.0 and 0.5 <= figures["mrr"] <= figures["recall"]
    assert ingle("eval-retrieval", name, str(questions), "--k", "3", "--no-vectors") == 0
    table = capsys.readouterr()[0]
    rows = {line.split()[0]: line for line in table.splitlines()[2:]}
    assert table.startswith("13 questions, k=3") and float(rows["bm25"].split()[1]) >= 0.8
    assert "not measured" in rows["vector"] and "not measured" in rows["hybrid"]
    assert ingle("docs", "rm", name, str(folder / "tea_guide.md")) == 0
    capsys.readouterr()
    assert ingle("docs", "list", "--json") == 0
    assert next(c for c in json.loads(capsys.readouterr()[0]) if c["name"] == name)["files"] == 3


def test_the_shipped_question_set_is_well_formed():
    from engine.docs.eval import load_questions

    questions = load_questions(EVAL / "questions.jsonl")
    files = {p.name for p in (EVAL / "docs").iterdir()}
    assert len(questions) >= 40 and len(files) == 12
    for q in questions:  # every answer is really in its document
        assert q["file"] in files and q["passage"].lower() in (EVAL / "docs" / q["file"]).read_text().lower()


def test_bad_questions_file_is_one_line(tmp_path, capsys):
    q = tmp_path / "q.jsonl"
    q.write_text('{"question": "where?"}\n')
    assert ingle("eval-retrieval", "anything", str(q), "--no-vectors") == 2
    assert capsys.readouterr()[1].strip() == (
        f'ingle: error: questions: {q} line 1: needs "file" or "passage" (what answers it)'
    )


def test_unknown_collection_is_one_line(capsys):
    assert ingle("docs", "rm", "no-such-collection") == 2
    err = capsys.readouterr()[1]
    assert (
        err.startswith("ingle: error: No document collection named 'no-such-collection'")
        and "Traceback" not in err
    )


def test_run_with_docs_cites_the_source(capsys, starter_model, tmp_path):
    (tmp_path / "ferry.md").write_text("# Ferry\n\nThe ferry to Orvel island leaves at 7:15 every morning.\n")
    assert ingle("docs", "add", "ferry", str(tmp_path / "ferry.md"), "--in-process") == 0
    capsys.readouterr()
    assert ingle("run", "When does the ferry to Orvel leave?", "--docs", "ferry", "--json", "--in-process",
                 "--temperature", "0", "--max-tokens", "48") == 0  # fmt: skip
    out, err = capsys.readouterr()
    record = json.loads(out)
    [source] = record["sources"]
    assert Path(source["path"]).name == "ferry.md" and source["where"] == "lines 1-3" and source["n"] == 1
    assert source["method"] == "hybrid" and source["score"] > 0
    assert "[1] " in err and "ferry.md" in err
    assert "7:15" in record["reply"] or "[1]" in record["reply"], record["reply"]


def test_chat_with_docs_lists_the_sources_of_each_question(capsys, monkeypatch, starter_model, tmp_path):
    import io

    (tmp_path / "owls.txt").write_text("Barn owls hunt mice at dusk over open fields.\n")
    assert ingle("docs", "add", "owls", str(tmp_path / "owls.txt"), "--no-vectors", "--in-process") == 0
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("What do barn owls hunt?\n/exit\n"))
    assert ingle("chat", "--docs", "owls", "--in-process", "--max-tokens", "8", "--temperature", "0") == 0
    err = capsys.readouterr()[1]
    assert f"[1] {tmp_path / 'owls.txt'} (lines 1-1) bm25" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n/exit\n"))
    assert ingle("chat", "--docs", "no-such-docs", "--in-process", "--max-tokens", "4") == 0
    assert "ingle: No document collection named 'no-such-docs'" in capsys.readouterr()[1]  # the chat goes on
