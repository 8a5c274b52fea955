"""The Models window offers an embedding model for document search: shown from the (fake) Hub with its file
selected, downloaded, listed as an embedding model (and left out of the chat model picker), then used by
`ingle docs add --embed-model`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from fake_hub import FakeRepo
from PySide6.QtCore import Qt
from tiny_bert import write_tiny_bert

from app.downloads_window import DownloadManagerWindow
from app.model_panel import ModelPanel
from engine.docs import embed_model
from engine.docs.index import open_store
from engine.downloads import State
from engine.library import Library

pytest_plugins = ("fake_hub",)

SHOTS = Path(os.environ.get("INGLE_SCREENSHOTS") or Path(tempfile.gettempdir()) / "ingle-screenshots")


@pytest.fixture(scope="session")
def bert_bytes(tmp_path_factory) -> bytes:
    return write_tiny_bert(tmp_path_factory.mktemp("hubbert") / "b.gguf", seed=3).read_bytes()


@pytest.fixture
def window(qtbot, fake_hub, fresh_home, bert_bytes, gguf_bytes):
    fake_hub.add(FakeRepo(embed_model.RECOMMENDED_REPO, {
        embed_model.RECOMMENDED_FILE: bert_bytes,
        "all-MiniLM-L6-v2-Q4_K_M.gguf": bert_bytes[:-1] + b"\0",
        "all-MiniLM-L6-v2-ggml-model-f16.gguf": bert_bytes,
    }, downloads=100))  # fmt: skip
    win = DownloadManagerWindow()
    qtbot.addWidget(win)
    win.show()
    yield win
    win.manager.shutdown()


def test_the_models_window_offers_an_embedding_model_and_docs_add_uses_it(
    qtbot, window, tiny_model, tmp_path, capsys
):
    assert "no embedding model in the library" in window.embed_note.text()
    assert embed_model.RECOMMENDED_FILE in window.embed_note.text()
    qtbot.mouseClick(window.embed_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.options.rowCount() == 3, timeout=120_000)
    assert window.results.item(0, 0).text() == embed_model.RECOMMENDED_REPO
    chosen = window.selected_option()
    assert chosen is not None and chosen.label == embed_model.RECOMMENDED_FILE
    marks = {window.options.item(r, 0).text(): window.options.item(r, 4).text() for r in range(3)}
    assert marks[embed_model.RECOMMENDED_FILE] == "★ for document search"
    assert [m for m in marks.values() if m] == ["★ for document search"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    window.grab().save(str(SHOTS / "embedding-offer.png"))

    qtbot.mouseClick(window.download_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(
        lambda: window.manager.jobs() and window.manager.jobs()[-1].state is State.DONE, timeout=120_000
    )
    qtbot.waitUntil(lambda: window.lib_table.rowCount() == 1)
    name = window.lib_table.item(0, 0).text()
    assert name == "all-MiniLM-L6-v2-Q8_0" and window.lib_table.item(0, 1).text() == "embedding"
    assert f"in the library: {name}" in window.embed_note.text()
    window.tabs.setCurrentIndex(1)
    window.select_entry(name)
    details = window.lib_details.toPlainText()
    assert "Embedding model for document search" in details and f"--embed-model {name}" in details
    assert "pooling mean" in details and "32 dimensions" in details
    window.grab().save(str(SHOTS / "embedding-library.png"))

    library = Library()
    library.import_file(tiny_model, name="chatty")
    panel = ModelPanel(library)
    qtbot.addWidget(panel)
    panel.refresh()
    offered = [panel.model_box.itemData(i) for i in range(panel.model_box.count())]
    assert "chatty" in offered and name not in offered  # not a chat model

    from app.cli import main
    from engine.docs.cli import retrieve
    from engine.runtime import Runtime
    from engine.settings import LoadSettings

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "pets.md").write_text("# Pets\n\nThe cat sleeps on the mat.\n\nThe dog naps in the town.\n")
    (folder / "tax.md").write_text("# Tax\n\nQuarterly tax returns are due in April.\n")
    argv = ["docs", "add", "pets", str(folder), "--model", "chatty", "--embed-model", name, "--in-process"]
    assert main(argv) == 0
    assert f"({name}, " in capsys.readouterr()[0]
    store = open_store(library)
    info = next(c for c in store.collections() if c.name == "pets")
    store.close()
    assert info.embed_model == name and info.embedded == info.chunks > 0
    rt = Runtime()
    try:
        list(rt.load(tiny_model, LoadSettings(n_ctx=512)))
        hits = retrieve(rt, "pets", "the cat sleeps", 300)
    finally:
        rt.close()
    assert hits and any(h.method in ("vector", "hybrid") for h in hits)


def test_a_repo_tagged_for_sentence_similarity_is_marked_and_fits_without_a_kv_cache(
    qtbot, window, fake_hub, bert_bytes
):
    """Any Hub repo tagged as a sentence-embedding model (tag or pipeline tag) is marked in the search results,
    and its files' fit counts weights and runtime only: the context length does not change it."""
    fake_hub.add(FakeRepo("someone/bge-small-GGUF", {"bge-small-Q8_0.gguf": bert_bytes}, downloads=50,
                          pipeline_tag="feature-extraction"))  # fmt: skip
    fake_hub.add(FakeRepo("someone/e5-GGUF", {"e5-Q8_0.gguf": bert_bytes}, downloads=40,
                          tags=("sentence-similarity",)))  # fmt: skip
    fake_hub.add(FakeRepo("someone/chat-GGUF", {"chat-Q8_0.gguf": bert_bytes}, downloads=30))
    window.query.setText("someone")
    qtbot.mouseClick(window.search_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.results.rowCount() == 3, timeout=60_000)
    names = [window.results.item(r, 0).text() for r in range(3)]
    assert names == [
        "someone/bge-small-GGUF  (embedding)",
        "someone/e5-GGUF  (embedding)",
        "someone/chat-GGUF",
    ]
    totals, notes = {}, {}
    for row in (1, 2):
        window.results.selectRow(row)
        repo = names[row].split()[0]
        qtbot.waitUntil(
            lambda r=repo: window._repo_files is not None and window._repo_files.summary.repo_id == r,
            timeout=60_000,
        )
        notes[row] = window.fit_note.text()
        if row == 1:
            SHOTS.mkdir(parents=True, exist_ok=True)
            window.grab().save(str(SHOTS / "embedding-fit.png"))
        for ctx in (2048, 32768):
            window.ctx.setValue(ctx)  # the fit column is worked out again
            totals[row, ctx] = window.options.item(0, 3).text()
    assert totals[1, 2048] == totals[1, 32768]  # no KV cache: the context does not count
    assert totals[2, 2048] != totals[2, 32768]  # a chat model's KV cache grows with it
    assert "embedding model" in notes[1] and "no KV cache" in notes[1]
    assert "KV cache at" in notes[2]


def test_fit_of_an_embedding_model_counts_no_kv_cache():
    from engine import fit

    chat = fit.estimate(30 << 20, "Q8_0", 32768, available=8 << 30)
    embedding = fit.estimate(30 << 20, "Q8_0", 32768, available=8 << 30, embedding=True)
    assert chat.kv_cache > 0 and embedding.kv_cache == 0
    assert embedding.total == (30 << 20) + fit.OVERHEAD_BYTES
    assert "keeps no KV cache" in embedding.describe()
