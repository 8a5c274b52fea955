"""What a reply used, kept with it: its document sources and tool calls in the conversation store (real SQLite
file, export/import with hostile input), and the chat window's whole path on the tiny model with a real MCP
server: documents and tools in one turn, the context bar's retrieved segment, everything shown again by a
second window on the same home."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import tempfile
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer

from engine.conversations import ConversationError, ConversationStore
from engine.reply_meta import MAX_PASSAGE, MAX_RESULT, MAX_SOURCES, call_line

SERVER = Path(__file__).parent / "mcp_test_server.py"
SHOTS = Path(os.environ.get("INGLE_SCREENSHOTS") or Path(tempfile.gettempdir()) / "ingle-screenshots")
SOURCE = {"number": 1, "collection": "chat-1", "file": "/docs/garden.md", "page": None, "line_start": 3,
          "line_end": 4, "score": 0.03, "method": "hybrid", "tokens": 12, "text": "Slugs eat lettuce."}  # fmt: skip
CALL = {"id": "c1", "server": "t", "tool": "echo", "arguments": '{"text": "hi"}', "result": "echo: hi\nmore",
        "status": "done"}  # fmt: skip


def _reply(store: ConversationStore) -> tuple[int, int]:
    conv = store.create()
    user = store.add_message(conv.id, None, "user", "What eats lettuce?")
    return conv.id, store.add_message(conv.id, user.id, "assistant", "Slugs [1].").id


def test_store_keeps_sources_and_calls_through_reopen_export_and_import(tmp_path):
    db = tmp_path / "c.sqlite3"
    store = ConversationStore(db)
    cid, mid = _reply(store)
    store.set_reply_meta(mid, [SOURCE], [CALL])
    store.set_reply_meta(mid, None, [dict(CALL, status="denied", result="no")])  # None keeps the sources
    store.close()
    store = ConversationStore(db)
    msg = store.message(mid)
    assert msg.sources == (SOURCE,) and msg.tool_calls[0]["status"] == "denied"
    assert store.path(cid)[0].sources == ()  # the question has none
    data = json.loads(json.dumps(store.export_json(cid)))
    assert data["messages"][1]["sources"] == [SOURCE] and "sources" not in data["messages"][0]
    copy = store.path(store.import_json(data).id)[-1]
    assert copy.sources == (SOURCE,) and copy.tool_calls == msg.tool_calls
    md = store.export_markdown(cid)
    assert "> Called t.echo(" in md and "→ not run: no" in md and "Sources: [1] garden.md, lines 3-4" in md
    # a store made before replies kept them: the column is added, old rows read as "nothing used"
    store.close()
    with sqlite3.connect(db) as raw:
        raw.execute("ALTER TABLE messages DROP COLUMN meta")
    store = ConversationStore(db)
    assert store.message(mid).sources == () and store.message(mid).content == "Slugs [1]."
    store.set_reply_meta(mid, [SOURCE])
    assert store.message(mid).sources == (SOURCE,)
    # a damaged column reads as nothing, the message still shows
    store._db.execute('UPDATE messages SET meta=\'{"sources": [{"file": 7}]}\' WHERE id=?', (mid,))
    assert store.message(mid).sources == () and store.message(mid).content == "Slugs [1]."
    store.close()


def test_import_checks_what_a_reply_used(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3")
    cid, _ = _reply(store)
    good = store.export_json(cid)

    def with_meta(**meta):
        data = json.loads(json.dumps(good))
        data["messages"][1].update(meta)
        return data

    huge = dict(SOURCE, text="x" * 1_000_000, file="/" + "d" * 100_000, evil="<script>", extra={"a": 1})
    imported = store.path(
        store.import_json(with_meta(sources=[huge] * 10_000, tool_calls=[dict(CALL, result="r" * 10**6)])).id
    )[-1]
    assert len(imported.sources) == MAX_SOURCES
    assert len(imported.sources[0]["text"]) < MAX_PASSAGE + 20 and "evil" not in imported.sources[0]
    assert "extra" not in imported.sources[0] and len(imported.tool_calls[0]["result"]) < MAX_RESULT + 20
    before = len(store.conversations())
    for bad, says in (
        ({"sources": "all of them"}, "'sources' must be a list"),
        ({"sources": [dict(SOURCE, score="high")]}, "'sources' field 'score' must be int or float"),
        ({"sources": [dict(SOURCE, tokens=True)]}, "'sources' field 'tokens' must be int"),
        ({"sources": [dict(SOURCE, page=float("inf"))]}, "'sources' field 'page' must be int or null"),
        ({"sources": [{"text": "no file"}]}, "an entry of 'sources' has no 'file'"),
        (
            {"tool_calls": [dict(CALL, status="pwned")]},
            "a tool call's 'status' must be one of done, error, denied",
        ),
        ({"tool_calls": [["echo"]]}, "each of 'tool_calls' must be an object"),
    ):
        with pytest.raises(ConversationError, match=re.escape(f"message 2: {says}")):
            store.import_json(with_meta(**bad))
    assert len(store.conversations()) == before  # a refused file imports nothing
    assert call_line(CALL) == 'Called t.echo({"text": "hi"}) → echo: hi'
    assert (
        call_line(dict(CALL, result="echo: \x1d\x1b[2J four"))
        == 'Called t.echo({"text": "hi"}) → echo: \\x1d\\x1b[2J four'
    )
    assert call_line(dict(CALL, status="denied", result="The user did not allow this call.")).endswith(
        "→ not run: The user did not allow this call."
    )
    store.close()


def _answer_dialogs(seen: list) -> None:
    from PySide6.QtWidgets import QApplication

    from app.tool_approval import ToolApprovalDialog

    dialog = QApplication.activeModalWidget()
    if isinstance(dialog, ToolApprovalDialog):
        seen.append(dialog.arguments.toPlainText())
        dialog.once.click()
    else:
        QTimer.singleShot(50, lambda: _answer_dialogs(seen))


def test_documents_and_tools_in_one_turn_stored_and_shown_again(qtbot, tmp_path, fresh_home, tiny_model):
    """Retrieval, then the tool loop on the messages with their sources (the approval dialog, a real MCP
    server); the reply keeps both; the Context dock shows the passages as their own segment; a second window
    on the same home shows the sources, the call and the enabled server again."""
    from test_chat_window import TINY_EOG, new_chat, open_window

    from app.docs_panel import indexed_files
    from app.main import MainWindow
    from app.visualizers.context import SOURCES_COLOR, TOOLS_COLOR
    from engine.mcp_client import ServerSpec, add_server
    from engine.runtime import Runtime

    add_server(ServerSpec("t", sys.executable, (str(SERVER),), {"INGLE_TEST_TOOLS": "echo"}))
    (tmp_path / "garden.md").write_text("# Garden\n\nSlugs eat lettuce at night; beer traps catch them.\n")
    db = tmp_path / "chats.sqlite3"
    window = open_window(qtbot, db, tiny_model)
    window.resize(1280, 800)
    cid = new_chat(window, max_tokens=200, seed=1, logit_bias=TINY_EOG)
    panel = window.docs_panel
    panel.model, panel.engine_factory = str(tiny_model), Runtime
    with qtbot.waitSignal(panel.indexed, timeout=240_000):
        panel.attach([str(tmp_path / "garden.md")])
    window.tools_panel.server_item("t").setCheckState(0, Qt.Checked)
    window.tools_panel.choice.setCurrentText("required")
    window.inspector.show("context")
    sent, bars, answers = [], [], []
    host = window.bridge.host
    real_chat_tools = host.chat_tools

    def chat_tools(messages, *args):  # records what the tool loop sends; the real engine answers
        sent.append(list(messages))
        return real_chat_tools(messages, *args)

    host.chat_tools = chat_tools
    inspected = []  # the bar after each inspection that followed the reply
    window.inspector.updated.connect(
        lambda what: what == "sources" and bars.append(list(window.inspector.context_bar.segments))
    )
    window.reply_finished.connect(
        lambda _mid: window.inspector.updated.connect(
            lambda what: what == "inspect" and inspected.append(list(window.inspector.context_bar.segments))
        )
    )
    live = []  # the transcript while the reply is written, just after its call finished

    def look_live():
        if window.streaming is not None:
            window._redraw_stream()
            live.append(window.view.toPlainText())

    # bridge.event comes after the window's own handler of the event: the call is in the turn's record now
    window.bridge.event.connect(lambda ev: type(ev).__name__ == "ToolCallFinished" and look_live())
    QTimer.singleShot(50, lambda: _answer_dialogs(answers))
    with qtbot.waitSignal(window.reply_finished, timeout=300_000) as done:
        assert window.send("What eats lettuce?")
    mid = done.args[0]
    assert len(answers) == 1 and sent, "the tool loop ran and asked before the call"
    question = sent[0][-1]
    assert (
        question.role == "user"
        and "[1] garden.md" in question.content
        and "Slugs eat lettuce" in question.content
    )
    assert question.content.endswith("Question: What eats lettuce?")
    assert any(
        m.role == "tool" and m.content.startswith("echo: ") for m in sent[-1]
    )  # the call's result went back
    reply = window.store.message(mid)
    assert [s["file"] for s in reply.sources] == [str(tmp_path / "garden.md")] and reply.sources[0][
        "tokens"
    ] > 0
    (call,) = reply.tool_calls
    assert call["server"] == "t" and call["tool"] == "echo" and call["status"] == "done"
    assert call["result"].startswith("echo: ")
    # the Context dock: the passages' own segment while the reply was written, and after it
    assert bars and any(s.color == SOURCES_COLOR and s.tokens > 0 for s in bars[0])
    qtbot.waitUntil(lambda: bool(inspected), timeout=120_000)
    labels = [s.label for s in inspected[0]]
    retrieved = next(s for s in inspected[0] if s.color == SOURCES_COLOR)
    assert retrieved.tokens == reply.sources[0]["tokens"] > 0
    assert labels.index("retrieved passages in message 1") == labels.index("message 1 (user)") - 1
    assert "message 2 (assistant)" in labels  # the reply is in the bar too: the context after the reply
    # the enabled server's tool definitions, as the next tool turn renders them (the cache is that turn's prefix)
    assert any(s.color == TOOLS_COLOR and s.tokens > 0 for s in inspected[0])
    assert "Called t.echo(" in window.view.toPlainText()
    assert live and "Called t.echo(" in live[0]  # shown under the reply while it was still being written
    SHOTS.mkdir(exist_ok=True)
    window.inspector.context_bar.grab().save(str(SHOTS / "context-dock.png"))
    window.grab().save(str(SHOTS / "window-after-reply.png"))
    window.close()

    # a second window on the same home and store: the conversation as it was left
    again = MainWindow(store=ConversationStore(db), start_engine=False)
    qtbot.addWidget(again)
    again.resize(1280, 800)
    again.show()
    assert again.open_conversation(cid)
    sources = again.docs_panel.sources
    assert sources.count() == 1 and "garden.md" in sources.item(0).text()
    assert [c.call.name for c in again.tools_panel.cards] == ["echo"]
    assert "done" in again.tools_panel.cards[0].header.text()
    assert again.tools_panel.enabled() == ["t"]  # the server is still enabled for this conversation
    assert again.tools_panel.choice.currentText() == "required"  # and so is its tool choice
    text = again.view.toPlainText()
    assert "Called t.echo(" in text and "1 source" in text
    assert str(tmp_path / "garden.md") in indexed_files()
    dialog = again.docs_panel._open_source(sources.item(0))
    qtbot.addWidget(dialog)
    assert dialog.found and "Slugs eat lettuce" in dialog.view.extraSelections()[0].cursor.selectedText()
    # the calls line expands in place; the "sources" link of the reply brings its tab forward
    calls = next(
        t for t in again.view.actions.tokens() if again.view.actions.resolve("ingle", t).verb == "calls"
    )
    from PySide6.QtCore import QUrl

    again.view._clicked(QUrl(f"ingle:{calls}"))
    assert mid in again.view.expanded_calls and call["arguments"] in again.view.toPlainText()
    again.side.setCurrentIndex(0)
    link = next(
        t for t in again.view.actions.tokens() if again.view.actions.resolve("ingle", t).verb == "sources"
    )
    again.view._clicked(QUrl(f"ingle:{link}"))
    assert again.side.currentWidget() is again.docs_panel
    assert again.docs_panel.sources_title.text().startswith("Sources of the reply “")
    again.grab().save(str(SHOTS / "window-reopened.png"))
    link = next(
        t for t in again.view.actions.tokens() if again.view.actions.resolve("ingle", t).verb == "tools"
    )
    again.view._clicked(QUrl(f"ingle:{link}"))
    assert again.side.currentWidget() is again.tools_panel and len(again.tools_panel.cards) == 1
    again.grab().save(str(SHOTS / "window-reopened-tools.png"))
    dialog.grab().save(str(SHOTS / "source-dialog.png"))
    # a server removed from the config drops out
    again.tools_panel.tree.setCurrentItem(again.tools_panel.server_item("t"))
    again.tools_panel._remove()
    assert again.tools_panel.enabled() == [] and again.store.tool_servers(cid) == []
    again.close()


def test_a_reply_with_documents_links_its_sources_at_once(qtbot, tmp_path, fresh_home, tiny_model):
    """A reply that used documents (no tools) shows its "sources" link as soon as it ends, not only when the
    conversation is opened again."""
    from test_chat_window import TINY_EOG, new_chat, open_window

    from engine.runtime import Runtime

    (tmp_path / "garden.md").write_text("# Garden\n\nSlugs eat lettuce at night; beer traps catch them.\n")
    window = open_window(qtbot, tmp_path / "chats.sqlite3", tiny_model)
    new_chat(window, max_tokens=8, seed=1, logit_bias=TINY_EOG)
    panel = window.docs_panel
    panel.model, panel.engine_factory = str(tiny_model), Runtime
    with qtbot.waitSignal(panel.indexed, timeout=240_000):
        panel.attach([str(tmp_path / "garden.md")])
    assert "source" not in window.view.toPlainText()
    with qtbot.waitSignal(window.reply_finished, timeout=300_000) as done:
        assert window.send("What eats lettuce?")
    assert len(window.store.message(done.args[0]).sources) == 1
    assert "1 source" in window.view.toPlainText()
    window.close()


def test_an_imported_source_opens_only_its_stored_passage(qtbot, tmp_path, fresh_home):
    """A conversation file names any path its author likes: a source whose file is not in the document index
    shows the stored passage, and the file is not read."""
    from app.docs_panel import DocsPanel
    from engine.reply_meta import hits_from_records

    secret = tmp_path / "secret.txt"
    secret.write_text("the key is 1234\n")
    panel = DocsPanel("none")
    qtbot.addWidget(panel)
    panel.set_sources(hits_from_records([dict(SOURCE, file=str(secret), text="Slugs eat lettuce.")]))
    assert "secret.txt, lines 3-4 · 12 tokens" in panel.sources.item(0).text()
    dialog = panel._open_source(panel.sources.item(0))
    qtbot.addWidget(dialog)
    shown = dialog.view.toPlainText()
    assert "Slugs eat lettuce." in shown and "1234" not in shown and "not in your document index" in shown


def test_a_tool_call_cut_off_by_max_tokens_is_explained(qtbot, tmp_path, fresh_home, tiny_model):
    """A forced call that runs out of tokens: no tool runs, no dialog asks, the half call stays in the reply, and
    the Tools tab and status bar say why and what to change."""
    from test_chat_window import new_chat, open_window

    from engine.mcp_client import ServerSpec, add_server

    add_server(ServerSpec("t", sys.executable, (str(SERVER),), {"INGLE_TEST_TOOLS": "echo"}))
    window = open_window(qtbot, tmp_path / "chats.sqlite3", tiny_model)
    new_chat(window, max_tokens=4, seed=1)
    window.tools_panel.server_item("t").setCheckState(0, Qt.Checked)
    window.tools_panel.choice.setCurrentText("required")
    with qtbot.waitSignal(window.reply_finished, timeout=300_000) as done:
        assert window.send("say something")
    reply = window.store.message(done.args[0])
    assert reply.content and reply.tool_calls == ()
    for shown in (window.tools_panel.status.text(), window.statusBar().currentMessage()):
        assert "tool call was cut off by the reply's token limit" in shown and "Raise Max tokens" in shown
    window.close()


def test_tool_choice_is_kept_per_conversation(qtbot, tmp_path):
    """Each conversation keeps its tool choice through a switch and a restart; an old store gains the column; a
    damaged value reads as auto and a bad one is refused with the choices."""
    from app.tools_panel import ToolsPanel

    db = tmp_path / "old.sqlite3"
    old = sqlite3.connect(db)  # a store from before the column: conversations without tool_choice
    old.executescript(
        "CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL, "
        "updated REAL NOT NULL, pinned INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0, "
        "system_prompt TEXT NOT NULL DEFAULT '', settings TEXT NOT NULL DEFAULT '{}', "
        "model TEXT NOT NULL DEFAULT '', leaf INTEGER);"
        "INSERT INTO conversations (id, title, created, updated) VALUES (1, 'old', 0, 0);"
    )
    old.commit()
    old.close()
    store = ConversationStore(db)
    assert store.tool_choice(1) == "auto"
    second = store.create("second").id
    panel = ToolsPanel(lister=lambda spec: ([], ""), store=store)
    qtbot.addWidget(panel)
    panel.set_conversation("1")
    panel.choice.setCurrentText("none")
    panel.set_conversation(str(second))
    assert panel.choice.currentText() == "auto"  # a new conversation starts at auto
    panel.choice.setCurrentText("required")
    panel.set_conversation("1")
    assert panel.choice.currentText() == "none"
    # picked while no conversation is open: it goes with the conversation made for the first message
    panel.set_conversation("None")
    panel.choice.setCurrentText("required")
    third = store.create("third").id
    panel.adopt_unsaved(third)
    panel.set_conversation(str(third))
    assert panel.choice.currentText() == "required" and store.tool_choice(third) == "required"
    fourth = store.create("fourth").id
    panel.adopt_unsaved(fourth)  # with a conversation open, a new one starts at auto
    assert store.tool_choice(fourth) == "auto"
    store.close()

    store = ConversationStore(db)  # after a restart
    assert (store.tool_choice(1), store.tool_choice(second)) == ("none", "required")
    with pytest.raises(ConversationError, match="auto, required, none"):
        store.set_tool_choice(1, "always")
    store._db.execute("UPDATE conversations SET tool_choice='rm -rf' WHERE id=1")
    assert store.tool_choice(1) == "auto"
    with pytest.raises(ConversationError, match="does not exist"):
        store.tool_choice(999)
    store.close()
