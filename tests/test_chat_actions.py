"""The chat window's own actions: only links it made act, deletions can be undone, untrusted text stays text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer, QUrl
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QMessageBox, QTabBar

from app.chat_view import ChatView
from app.main import MainWindow
from engine.conversations import ConversationStore, StoredMessage
from engine.errors import IngleError

HOSTILE_TITLE = '<a href="ingle:delete/1">x</a><b>bold</b>'
ANCHOR_RE = re.compile(r'<a href="([^"]*)"[^>]*>(.*?)</a>', re.S)


def anchors(window: MainWindow) -> list[tuple[str, str]]:
    """(href, text) of every link in the chat view, as Qt holds the document."""
    return [(href, re.sub(r"<[^>]+>", "", text)) for href, text in ANCHOR_RE.findall(window.view.toHtml())]


def href_of(window: MainWindow, text: str, index: int = -1) -> str:
    found = [href for href, t in anchors(window) if t.strip() == text]
    assert found, f"no {text!r} link in the view: {anchors(window)}"
    return found[index]


def click(window: MainWindow, href: str) -> None:
    window.view.anchorClicked.emit(QUrl(href))  # what QTextBrowser emits when a link is clicked


@pytest.fixture
def store(tmp_path) -> ConversationStore:
    return ConversationStore(tmp_path / "chats.sqlite3")


@pytest.fixture
def make_window(qtbot, store, fresh_home):
    """Windows with a home of their own: the docks and theme they change are saved in its gui.ini, not in the
    session's (where later tests' windows would find them)."""
    made = []

    def make() -> MainWindow:
        window = MainWindow(store=store, start_engine=False)
        qtbot.addWidget(window)
        window.resize(1000, 700)
        window.show()
        made.append(window)
        return window

    yield make
    for w in made:
        w.close()


def test_a_reply_with_an_app_link_cannot_delete_anything(qtbot, store, make_window, tmp_path):
    other = store.create("Someone else's chat")
    victim = store.add_message(other.id, None, "user", "keep me")
    conv = store.create("Open chat")
    user = store.add_message(conv.id, None, "user", "hi")
    reply = store.add_message(conv.id, user.id, "assistant", "placeholder")
    hostile = (
        f"See [documentation](ingle:delete/{victim.id}), [this](INGLE:delete/{reply.id}), "
        f"<ingle:delete/{user.id}> and [copy it](ingle:copycode/{reply.id}/0).\n\n```\ncode\n```"
    )
    store.update_message(reply.id, hostile)
    window = make_window()
    window.open_conversation(conv.id)
    model_links = [(h, t) for h, t in anchors(window) if t in ("documentation", "this", "copy it")]
    model_links += [(h, t) for h, t in anchors(window) if t.startswith("ingle:delete")]
    assert len(model_links) == 4
    QGuiApplication.clipboard().setText("")
    for href, _text in model_links:
        assert not href.lower().startswith("ingle:"), href  # neutralized in the document itself
        click(window, href)
    # the raw forms, as if the neutralizing had missed one: not tokens of this render, so nothing happens
    for raw in (f"ingle:delete/{victim.id}", f"ingle:delete/{reply.id}", f"INGLE:delete/{user.id}"):
        click(window, raw)
    assert store.message(victim.id).content == "keep me"
    assert [m.id for m in store.path(conv.id)] == [user.id, reply.id]
    assert not window.undo_banner.isVisibleTo(window)
    # the model's link is treated as an outside link: copied as the model wrote it, never run
    assert QGuiApplication.clipboard().text().startswith("ingle:")
    # the app's own code-block copy link still works (it carries a token, not the message id)
    click(window, href_of(window, "copy", -1))  # the code block's copy link, made by the app
    assert QGuiApplication.clipboard().text() == "code\n"
    window.grab().save(str(tmp_path / "hostile_links.png"))


def test_tokens_from_an_earlier_render_or_another_conversation_do_nothing(qtbot, store, make_window):
    a = store.create("A")
    a_user = store.add_message(a.id, None, "user", "first")
    b = store.create("B")
    b_user = store.add_message(b.id, None, "user", "second")
    b_reply = store.add_message(b.id, b_user.id, "assistant", "answer")
    window = make_window()
    window.open_conversation(a.id)
    a_delete = href_of(window, "delete")
    window.open_conversation(b.id)
    click(window, a_delete)  # a token of conversation A's render, clicked while B is open
    assert [m.id for m in store.path(a.id)] == [a_user.id]
    stale = href_of(window, "delete")  # B's reply, this render
    window.render_conversation()  # any new render retires the old tokens
    click(window, stale)
    assert [m.id for m in store.path(b.id)] == [b_user.id, b_reply.id]
    assert re.fullmatch(r"ingle:[A-Za-z0-9_-]{20,}", stale)  # unguessable, not an id
    click(window, href_of(window, "delete"))  # the current one works
    assert [m.id for m in store.path(b.id)] == [b_user.id]


def test_deleting_a_message_can_be_undone(qtbot, store, make_window, tmp_path):
    conv = store.create("Chat")
    user = store.add_message(conv.id, None, "user", "question")
    first = store.add_message(conv.id, user.id, "assistant", "first answer")
    follow = store.add_message(conv.id, first.id, "user", "follow-up")
    window = make_window()
    window.open_conversation(conv.id)
    click(window, href_of(window, "delete", 1))  # the first answer, and the follow-up under it
    assert [m.id for m in store.path(conv.id)] == [user.id]
    assert "first answer" not in window.view.toPlainText()
    assert window.undo_banner.isVisibleTo(window) and "first answer" in window.undo_banner.label.text()
    window.grab().save(str(tmp_path / "message_deleted.png"))
    window.undo_banner.button.click()
    assert [m.id for m in store.path(conv.id)] == [user.id, first.id, follow.id]
    assert "follow-up" in window.view.toPlainText() and not window.undo_banner.isVisibleTo(window)
    click(window, href_of(window, "delete", 1))
    window.close()  # closing purges what was deleted: gone for good
    reopened = ConversationStore(tmp_path / "chats.sqlite3")
    assert [m.id for m in reopened.path(conv.id)] == [user.id]
    assert reopened._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1


def test_titles_and_errors_in_banners_are_text_not_markup(qtbot, store, make_window, tmp_path):
    conv = store.create(HOSTILE_TITLE)
    window = make_window()
    window.delete_conversation(conv.id)
    label = window.undo_banner.label
    assert HOSTILE_TITLE in label.text().replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
    assert "<a " not in label.text() and "<b>bold" not in label.text()
    window.grab().save(str(tmp_path / "undo_banner_title.png"))
    window._load_failed(IngleError(f"cannot load {HOSTILE_TITLE}"))
    assert "<a " not in window.fault_banner.label.text() and "&lt;a href" in window.fault_banner.label.text()


def test_error_dialogs_show_plain_text(qtbot, store, make_window, tmp_path):
    window = make_window()
    seen = []

    def read_dialog():
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            seen.append((box.textFormat(), box.text()))
            box.accept()
        else:
            QTimer.singleShot(50, read_dialog)

    bad = tmp_path / f"{'<b>'}bad.json"
    bad.write_text('{"format": "ingle.conversation.v1", "messages": [{"id": 1}]}')
    QTimer.singleShot(50, read_dialog)
    window._guard(lambda: window.import_conversation(bad))
    assert seen and seen[0][0] == QMessageBox().textFormat().PlainText
    assert "<b>bad.json" in seen[0][1]


def test_new_chat_clears_the_previous_chats_figures(qtbot, store, make_window):
    conv = store.create("Measured")
    user = store.add_message(conv.id, None, "user", "hi")
    stats = {"n_past": 17, "n_ctx": 2048, "tok_s": 41.5, "ttft": 0.12, "generated": 5, "stop": "eos"}
    store.add_message(conv.id, user.id, "assistant", "hello", stats=stats)
    window = make_window()
    window.open_conversation(conv.id)
    assert "17" in window.context_label.text() and "41.5" in window.speed_label.text()
    window.new_chat()
    assert "17" not in window.context_label.text() and window.speed_label.text() == ""
    window.open_conversation(conv.id)  # and back: the figures of its last reply
    assert "Context 17 / 2,048" == window.context_label.text()


def test_the_current_theme_is_checked_in_the_view_menu(qtbot, make_window):
    window = make_window()
    for name in ("dark", "light", "system"):
        window.theme_actions[name].trigger()
        assert [n for n, a in window.theme_actions.items() if a.isChecked()] == [name]
    assert all(a.isCheckable() for a in window.theme_actions.values())


def test_visualizer_shortcuts_bring_their_dock_to_the_front(qtbot, make_window):
    window = make_window()
    docks = window.inspector.docks
    view_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&View")
    actions = {a.shortcut().toString(): a for a in view_menu.actions()}
    actions["Ctrl+1"].trigger()
    qtbot.waitUntil(lambda: docks["context"].widget().isVisible())

    def front() -> set[str]:
        """The titles of the dock tabs in front."""
        bars = [b for b in window.findChildren(QTabBar) if b.count() > 1 and b.tabText(0) in TITLES]
        return {b.tabText(b.currentIndex()) for b in bars}

    TITLES = {d.windowTitle() for d in docks.values()}
    for shortcut, key in (
        ("Ctrl+2", "tokens"),
        ("Ctrl+3", "kv"),
        ("Ctrl+7", "kv_calculator"),
        ("Ctrl+8", "attention"),
        ("Ctrl+9", "embeddings"),
        ("Ctrl+1", ""),
    ):
        if not key:  # a dock already open is hidden by its shortcut, as before
            actions[shortcut].trigger()
            assert docks["context"].isHidden()
            break
        assert actions[shortcut] is docks[key].toggleViewAction()
        actions[shortcut].trigger()
        qtbot.waitUntil(lambda k=key: front() == {docks[k].windowTitle()}, timeout=5000)


def test_a_bad_conversation_does_not_stop_the_window(qtbot, store, make_window, tmp_path):
    good = store.create("Good")
    store.add_message(good.id, None, "user", "fine")
    odd = store.create("Broken settings")
    store.add_message(odd.id, None, "user", "still readable")
    bad = store.create("Broken branch")
    store.add_message(bad.id, None, "user", "text")
    # what an older version's import let in, or a damaged file: settings the app cannot use, stats that are not
    # an object, a current message that does not exist
    store._db.execute('UPDATE conversations SET settings=\'{"temperature": "hot"}\' WHERE id=?', (odd.id,))
    store._db.execute("UPDATE messages SET stats='\"oops\"' WHERE conversation=?", (good.id,))
    store._db.execute("UPDATE conversations SET leaf=9999 WHERE id=?", (bad.id,))
    window = make_window()  # the broken one is the newest: it is tried first, then the next one opens
    assert window.conversation == odd.id and "still readable" in window.view.toPlainText()
    banner = window.fault_banner.label.text()
    assert "Broken branch" in banner and "could not be opened" in banner
    window.grab().save(str(tmp_path / "bad_conversation.png"))
    assert window.open_conversation(good.id) and "fine" in window.view.toPlainText()
    assert window.open_conversation(odd.id)  # damaged settings: opened with the defaults, and said so
    assert "defaults" in window.fault_banner.label.text()
    assert window.open_conversation(bad.id) is False and window.conversation == odd.id


def test_importing_a_damaged_file_adds_nothing_and_says_why(qtbot, store, make_window, tmp_path):
    window = make_window()
    path = Path(tmp_path / "stats.json")
    path.write_text(
        '{"format": "ingle.conversation.v1", "title": "t", "messages": ['
        '{"id": 1, "parent": null, "role": "user", "content": "hi"},'
        '{"id": 2, "parent": 1, "role": "assistant", "content": "x", "stats": "oops"}]}'
    )
    with pytest.raises(IngleError, match="message 2: 'stats'"):
        window.import_conversation(path)
    assert window.conv_list.count() == 0 and store.conversations() == []


def test_export_is_written_whole_or_refused_with_a_message(qtbot, store, make_window, tmp_path):
    conv = store.create("Export me")
    store.add_message(conv.id, None, "user", "hello")
    window = make_window()
    window.open_conversation(conv.id)
    target = tmp_path / "out.md"
    window.export_conversation(target, "md")
    assert target.read_text(encoding="utf-8").startswith("# Export me")
    blocked = tmp_path / "a-file" / "out.json"  # its folder is a file: cannot be written
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(IngleError, match="Cannot write .*out.json"):
        window.export_conversation(blocked, "json")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_streamed_frames_keep_only_the_latest_frames_links(qtbot):
    view = ChatView()
    qtbot.addWidget(view)
    view.show_messages([(StoredMessage(1, 1, None, "user", "hi", "done", {}, 0.0), (1, 1))], None)
    base = len(view.actions)
    assert base == 3  # copy, edit, delete
    for i in range(50):
        view.update_stream(StoredMessage(2, 1, 1, "assistant", f"<think>step {i}", "streaming", {}, 0.0))
    assert len(view.actions) == base + 1  # the current frame's "Thinking…" link, not fifty
    toggled = []
    view.action.connect(lambda verb, mid, arg: toggled.append((verb, mid)))
    think = [h for h, t in ANCHOR_RE.findall(view.toHtml()) if "Thinking" in t]
    view.anchorClicked.emit(QUrl(think[-1]))
    assert toggled == [("think", 2)]


def test_counts_agree_with_their_nouns(qtbot, fresh_home, tiny_model):
    view = ChatView()
    qtbot.addWidget(view)
    thought = StoredMessage(1, 1, None, "assistant", "<think>hmm</think>ok", "done", {}, 0.0)
    view.show_messages([(thought, (1, 1))], None)
    assert "Reasoning (1 word)" in view.toPlainText()
    from app.downloads_window import DownloadManagerWindow
    from engine.library import Library

    Library().import_file(tiny_model, link=True, name="only-one")
    manager = DownloadManagerWindow()
    qtbot.addWidget(manager)
    try:
        manager.refresh_library()
        assert manager.disk_label.text().startswith("1 item · ")  # was "1 items"
        manager.show_error(f"cannot read {HOSTILE_TITLE}")  # Hub names and server errors: text, not markup
        assert manager.status.textFormat() == Qt.PlainText and manager.fit_note.textFormat() == Qt.PlainText
    finally:
        manager.manager.shutdown()


def test_a_garbled_gui_ini_does_not_stop_the_window(qtbot, fresh_home, store):
    fresh_home.mkdir(parents=True, exist_ok=True)
    (fresh_home / "gui.ini").write_text(
        "[General]\ntheme=a, b\noverflow_policy=x, y\ngeometry=notbytes\nsplitter=1, 2\ndocks=3\n"
        "side_visible=maybe\nlast_model=a, b\n"
    )
    window = MainWindow(store=store, start_engine=False)
    qtbot.addWidget(window)
    window.show()
    assert [n for n, a in window.theme_actions.items() if a.isChecked()] == ["system"]
    window._load_initial_model  # noqa: B018 (exists; with a list as last_model it falls back to the starter)
    window.close()


def test_model_descriptions_and_errors_in_the_model_panel_are_text(
    qtbot, fresh_home, store, tiny_model, tmp_path
):
    from engine.library import Library

    library = Library()
    library.import_file(
        tiny_model, link=True, name="tiny", description=f"adapter trained on {HOSTILE_TITLE}.jsonl"
    )
    window = MainWindow(store=store, library=library, start_engine=False)
    qtbot.addWidget(window)
    window.show()
    panel = window.model_panel
    panel.refresh()
    panel.select("tiny")
    assert HOSTILE_TITLE in panel.description.text()
    for label in (panel.description, panel.estimate, window.model_label):
        assert label.textFormat() == Qt.PlainText  # Qt would otherwise guess rich text from the "<a "
    window.grab().save(str(tmp_path / "model_panel_description.png"))
    window.close()
