"""The documents panel under pytest-qt: attach a folder, index it in the background (real engine, real index),
list sources, open one with its passage highlighted."""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from app.docs_panel import DocsPanel, SourceDialog
from engine.docs.index import open_store
from engine.docs.search import search

SHOTS = Path("/tmp/g-docs-shots")


def test_attach_index_and_open_a_source(qtbot, tmp_path, tiny_model):
    from engine.runtime import Runtime

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "garden.md").write_text("# Garden\n\nTomatoes need staking in June.\n\n## Pests\n\nSlugs eat lettuce "
                                      "at night; beer traps catch them.\n")  # fmt: skip
    (folder / "scan.pdf").write_bytes(b"%PDF-1.4 not really")
    panel = DocsPanel("panel-test", str(tiny_model), engine_factory=Runtime)
    qtbot.addWidget(panel)
    panel.resize(420, 420)
    with qtbot.waitSignal(panel.indexed, timeout=240_000) as got:
        panel.attach([str(folder)])
        assert not panel.files_button.isEnabled()
    report = got.args[0]
    assert [Path(p).name for p, _ in report.indexed] == ["garden.md"]
    assert (
        "1 files indexed" in panel.status.text()
        and "Skipped scan.pdf: not a readable PDF" in panel.status.text()
    )
    assert panel.files_button.isEnabled() and not panel.progress.isVisible()

    hits = search(open_store(), "panel-test", "slugs lettuce", 3, "bm25")
    panel.set_sources(hits)
    assert panel.sources.count() == len(hits) == 1
    assert panel.sources.item(0).text().startswith("[1] garden.md, lines 5-7")
    assert panel.retrieved_tokens() == hits[0].tokens > 0
    SHOTS.mkdir(exist_ok=True)
    panel.grab().save(str(SHOTS / "panel.png"))

    dialog = SourceDialog(hits[0])
    qtbot.addWidget(dialog)
    assert dialog.found
    selections = dialog.view.extraSelections()
    selected = selections[0].cursor.selectedText()
    assert "Slugs eat lettuce" in selected and "Tomatoes" not in selected
    dialog.grab().save(str(SHOTS / "source.png"))


def test_a_drop_of_local_files_starts_indexing(qtbot, tmp_path):
    panel = DocsPanel("drop-test")
    qtbot.addWidget(panel)
    started = []
    panel.attach = lambda paths: started.append(paths)  # the drop's job ends at handing over the paths
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(tmp_path / "a.txt"))])
    event = QDropEvent(QPointF(5, 5), Qt.CopyAction, data, Qt.LeftButton, Qt.NoModifier)
    panel.dropEvent(event)
    assert started == [[str(tmp_path / "a.txt")]]


def test_the_panel_does_not_load_llama_cpp():
    import subprocess

    code = "import app.docs_panel, sys; print('llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1], env={"QT_QPA_PLATFORM": "offscreen",
                         "PYTHONPATH": str(Path(__file__).resolve().parents[1])})  # fmt: skip
    assert out.stdout.strip() == "False"


def test_context_bar_shows_retrieved_passages_as_their_own_segment(qtbot):
    from app.visualizers.context import SOURCES_COLOR, ContextBar
    from engine.visual import ContextBudget

    budget = ContextBudget(n_ctx=1024, system_tokens=20, history_tokens=300, draft_tokens=0, reserve_tokens=200,
                           spans=((0, 1, 20), (1, 20, 300), (2, 300, 320)))  # fmt: skip
    bar = ContextBar()
    qtbot.addWidget(bar)
    bar.resize(560, 120)
    bar.set_budget(budget, ["system", "user", "assistant"], False, retrieved={1: 240})
    labels = [(s.label, s.tokens, s.color) for s in bar.segments]
    assert ("retrieved passages in message 2", 240, SOURCES_COLOR) in labels
    assert ("message 2 (user)", 40, labels[3][2]) == labels[3]  # the question is what is left of the message
    assert sum(s.tokens for s in bar.segments) == 1 + 19 + 240 + 40 + 20 + 200  # nothing counted twice
    assert "retrieved passages 240" in bar.note
    SHOTS.mkdir(exist_ok=True)
    bar.grab().save(str(SHOTS / "context.png"))


def test_chat_window_answers_with_the_conversations_documents(qtbot, tmp_path, tiny_model):
    from test_chat_window import TINY_EOG, new_chat, open_window, send_and_wait

    from engine.runtime import Runtime

    window = open_window(qtbot, tmp_path / "chats.sqlite3", tiny_model)
    try:
        new_chat(window, max_tokens=8, logit_bias=TINY_EOG)
        (tmp_path / "garden.md").write_text(
            "# Garden\n\nSlugs eat lettuce at night; beer traps catch them.\n"
        )
        panel = window.docs_panel
        panel.model, panel.engine_factory = str(tiny_model), Runtime
        assert panel.retrieval() is None  # no documents yet: replies go as before
        with qtbot.waitSignal(panel.indexed, timeout=240_000):
            panel.attach([str(tmp_path / "garden.md")])
        assert panel.retrieval() == (f"chat-{window.conversation}", panel.budget.value())
        reply = send_and_wait(qtbot, window, "What eats lettuce?")
        assert reply.status == "done"
        assert panel.sources.count() == 1 and "garden.md" in panel.sources.item(0).text()
        stored = [m.content for m in window.store.path(window.conversation) if m.role == "user"]
        assert stored == [
            "What eats lettuce?"
        ]  # the conversation keeps the user's words; sources went to the model
        window.side.setCurrentWidget(panel)
        window.resize(1200, 700)
        SHOTS.mkdir(exist_ok=True)
        window.grab().save(str(SHOTS / "window.png"))
    finally:
        window.close()
