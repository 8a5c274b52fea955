"""Ingle's main window: conversation list, streamed chat, model and sampling side panel, status bar, fault banner."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil
from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QColor, QGuiApplication, QKeySequence, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.bridge import EngineBridge
from app.chat_view import ChatView, TextEditor
from app.inspector import METHODS as INSPECTOR_METHODS
from app.inspector import Inspector
from app.model_panel import ModelPanel
from app.render import DARK, LIGHT, strip_thinking
from app.sampling_panel import SamplingPanel
from engine.conversations import ConversationError, ConversationStore, StoredMessage
from engine.errors import EngineDied, IngleError
from engine.events import LoadProgress, Message, ModelLoaded, ReplyDone, StopReason, Token
from engine.library import STARTER_NAME, Library, data_dir
from engine.settings import LoadSettings, OverflowPolicy, SamplingSettings

SAVE_INTERVAL = 0.5  # seconds between saves of a growing reply (a kill -9 loses at most this much)
REDRAW_INTERVAL_MS = 40  # streamed text is redrawn at most this often
STARTER_NOTE = (
    "<b>Gemma 3 270M</b> is loaded: a small <b>base model</b>. It continues text rather than following "
    "instructions. Teach it with the fine-tuning wizard, or get a chat model from the download manager."
)


class Banner(QFrame):
    """A strip above the chat: a message, an optional action button and a close button."""

    def __init__(self, color: str):
        super().__init__()
        self.setStyleSheet(
            f"Banner {{ background: {color}; border-radius: 4px; }} QLabel {{ color: #1d1d1f; }}"
        )
        row = QHBoxLayout(self)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.RichText)
        self.button = QPushButton()
        close = QPushButton("✕")
        close.setFlat(True)
        close.clicked.connect(self.hide)
        row.addWidget(self.label, 1)
        row.addWidget(self.button)
        row.addWidget(close)
        self.hide()

    def show_message(self, text: str, button: str = "") -> None:
        self.label.setText(text)
        self.button.setText(button)
        self.button.setVisible(bool(button))
        self.show()


class Composer(TextEditor):
    """The message box: Enter sends, Shift+Enter starts a new line, Esc stops a reply."""

    send = Signal()
    stop = Signal()

    def keyPressEvent(self, event) -> None:  # noqa: N802 (Qt override)
        if event.key() in (Qt.Key_Return, Qt.Key_Enter) and not event.modifiers() & Qt.ShiftModifier:
            self.send.emit()
        elif event.key() == Qt.Key_Escape:
            self.stop.emit()
        else:
            super().keyPressEvent(event)


class MainWindow(QMainWindow):
    reply_finished = Signal(int)  # assistant message id, after it is stored (done, stopped or interrupted)
    conversation_opened = Signal(object)  # conversation id or None
    model_ready = Signal(object)  # ModelLoaded
    engine_failed = Signal(str)

    def __init__(self, store: ConversationStore | None = None, library: Library | None = None,
                 model: str | Path | None = None, start_engine: bool = True):  # fmt: skip
        super().__init__()
        self.setWindowTitle("Ingle")
        self.store = store or ConversationStore()
        self.library = library or Library()
        self.gui_settings = QSettings(str(data_dir() / "gui.ini"), QSettings.IniFormat)
        self.bridge = EngineBridge(self)
        self.bridge.event.connect(self._on_event)
        self.bridge.done.connect(self._on_done)
        self.bridge.failed.connect(self._on_failed)
        self.bridge.busy_changed.connect(self._update_buttons)
        self.conversation: int | None = None
        self.loaded: ModelLoaded | None = None
        self.last_load: tuple | None = None
        self.streaming: StoredMessage | None = None
        self.stream_text = ""
        self.stream_prefix = ""  # text of a reply being continued, before the new tokens
        self._last_save = 0.0
        self.editing: int | None = None
        self._finished_pending: int | None = None  # a stored reply whose request has not ended yet
        self.queued_actions: list = []  # user actions that came while a visualizer's request held the engine
        self.model_manager = None  # the download manager window, made on first use
        self.wizard = None  # the fine-tuning wizard, while open
        self._build()
        self._redraw = QTimer(self, singleShot=True, interval=REDRAW_INTERVAL_MS)
        self._redraw.timeout.connect(self._redraw_stream)
        self.apply_theme(self.gui_settings.value("theme", "system"))
        QGuiApplication.styleHints().colorSchemeChanged.connect(self._system_scheme_changed)
        self.refresh_conversations()
        convs = self.store.conversations()
        self.open_conversation(convs[0].id if convs else None)
        self._restore_layout()
        self.initial_model = model
        if start_engine:
            self.bridge.start_engine()

    # ------------------------------------------------------------ layout
    def _build(self) -> None:
        left = QWidget()
        left_layout = QVBoxLayout(left)
        self.search = QLineEdit(placeholderText="Search chats (Ctrl+F)")
        self.search.textChanged.connect(self.refresh_conversations)
        new_button = QPushButton("New chat")
        new_button.clicked.connect(self.new_chat)
        self.conv_list = QListWidget()
        self.conv_list.itemClicked.connect(lambda item: self.open_conversation(item.data(Qt.UserRole)))
        self.conv_list.setContextMenuPolicy(Qt.CustomContextMenu)
        self.conv_list.customContextMenuRequested.connect(self._conversation_menu)
        left_layout.addWidget(new_button)
        left_layout.addWidget(self.search)
        left_layout.addWidget(self.conv_list, 1)

        center = QWidget()
        center_layout = QVBoxLayout(center)
        self.fault_banner = Banner("#f8d7da")
        self.fault_banner.button.clicked.connect(self.restart_engine)
        self.info_banner = Banner("#fff3cd")
        self.undo_banner = Banner("#e2e3e5")
        self.undo_banner.button.clicked.connect(self._undo_delete)
        self.view = ChatView()
        self.view.action.connect(self._on_view_action)
        self.composer = Composer(placeholderText="Message (Enter to send, Shift+Enter for a new line)")
        self.composer.setMaximumHeight(110)
        self.composer.send.connect(self.send_from_composer)
        self.composer.stop.connect(self.stop)
        self.send_button = QPushButton("Send")
        self.send_button.clicked.connect(self.send_from_composer)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        bottom = QHBoxLayout()
        bottom.addWidget(self.composer, 1)
        bottom.addLayout(buttons)
        for w in (self.fault_banner, self.info_banner, self.undo_banner):
            center_layout.addWidget(w)
        center_layout.addWidget(self.view, 1)
        center_layout.addLayout(bottom)

        self.side = QTabWidget()
        self.model_panel = ModelPanel(self.library)
        self.model_panel.load_requested.connect(self.load_model)
        self.model_panel.unload_requested.connect(self.unload_model)
        self.sampling_panel = SamplingPanel(self.store)
        self.sampling_panel.settings_changed.connect(self._settings_changed)
        saved_policy = self.gui_settings.value("overflow_policy", OverflowPolicy.STOP.value)
        self.sampling_panel.set_policy(
            OverflowPolicy(saved_policy) if saved_policy in set(OverflowPolicy) else OverflowPolicy.STOP
        )
        self.sampling_panel.policy_box.currentIndexChanged.connect(
            lambda _i: self.gui_settings.setValue("overflow_policy", self.sampling_panel.policy().value)
        )
        sampling_scroll = QScrollArea()
        sampling_scroll.setWidgetResizable(True)
        sampling_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # the panel wraps to the width
        sampling_scroll.setWidget(self.sampling_panel)
        self.system_prompt = TextEditor(placeholderText="System prompt for this conversation")
        for editor in (self.composer, self.system_prompt):
            editor.refused.connect(lambda why: self.statusBar().showMessage(why, 10_000))
        self.system_prompt.textChanged.connect(self._system_prompt_changed)
        self.side.addTab(self.model_panel, "Model")
        self.side.addTab(sampling_scroll, "Sampling")
        self.side.addTab(self.system_prompt, "System prompt")

        self.splitter = QSplitter()
        self.splitter.addWidget(left)
        self.splitter.addWidget(center)
        self.splitter.addWidget(self.side)
        self.splitter.setSizes([220, 640, 360])
        self.setCentralWidget(self.splitter)

        self.model_label, self.context_label, self.speed_label = QLabel("No model"), QLabel(), QLabel()
        for label in (self.model_label, self.context_label, self.speed_label):
            label.setContentsMargins(10, 0, 10, 0)
            self.statusBar().addPermanentWidget(label)
        self.inspector = Inspector(self)
        self._build_menus()
        self._update_buttons(False)

    def _build_menus(self) -> None:
        def add(menu, text, slot, shortcut=None):
            act = QAction(text, self)
            if shortcut:
                act.setShortcut(QKeySequence(shortcut))
            act.triggered.connect(slot)
            menu.addAction(act)
            return act

        file_menu = self.menuBar().addMenu("&File")
        add(file_menu, "New chat", self.new_chat, "Ctrl+N")
        add(file_menu, "Import conversation (JSON)…", self._import_json)
        add(file_menu, "Export as Markdown…", lambda: self._export("md"))
        add(file_menu, "Export as JSON…", lambda: self._export("json"))
        add(file_menu, "Quit", self.close, "Ctrl+Q")
        models_menu = self.menuBar().addMenu("&Models")
        add(models_menu, "Download models…", lambda: self.open_model_manager(0), "Ctrl+Shift+D")
        add(models_menu, "Library…", lambda: self.open_model_manager(1), "Ctrl+Shift+L")
        training_menu = self.menuBar().addMenu("&Training")
        add(training_menu, "Fine-tune a model…", self.open_wizard, "Ctrl+Shift+T")
        edit_menu = self.menuBar().addMenu("&Edit")
        add(edit_menu, "Search chats", lambda: self.search.setFocus(), "Ctrl+F")
        add(edit_menu, "Stop reply", self.stop, "Esc")
        view_menu = self.menuBar().addMenu("&View")
        for name in ("system", "light", "dark"):
            add(view_menu, f"{name.capitalize()} theme", lambda _=False, n=name: self.apply_theme(n))
        add(view_menu, "Toggle side panel", lambda: self.side.setVisible(not self.side.isVisible()), "Ctrl+B")
        view_menu.addSeparator()
        for key, shortcut in (("context", "Ctrl+1"), ("tokens", "Ctrl+2"), ("kv", "Ctrl+3"),
                              ("probabilities", "Ctrl+4"), ("preview", "Ctrl+5"), ("timing", "Ctrl+6"),
                              ("kv_calculator", "Ctrl+7")):  # fmt: skip
            action = self.inspector.docks[key].toggleViewAction()
            action.setShortcut(QKeySequence(shortcut))
            view_menu.addAction(action)

    def _restore_layout(self) -> None:
        geometry = self.gui_settings.value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1280, 800)
        state = self.gui_settings.value("splitter")
        if state is not None:
            self.splitter.restoreState(state)
        docks = self.gui_settings.value("docks")
        if docks is not None:
            self.restoreState(docks)  # which visualizers were open, and where
        self.side.setVisible(self.gui_settings.value("side_visible", "true") == "true")

    def apply_theme(self, name: str) -> None:
        """Light, dark, or follow the system's colour scheme."""
        self.gui_settings.setValue("theme", name)
        dark = name == "dark"
        if name == "system":
            dark = QGuiApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark
        theme = DARK if dark else LIGHT
        palette = QPalette()
        if dark:
            for role, color in ((QPalette.Window, "#2b2d31"), (QPalette.WindowText, "#e6e6e6"),
                                (QPalette.Base, theme.window), (QPalette.AlternateBase, "#2b2d31"),
                                (QPalette.Text, "#e6e6e6"), (QPalette.Button, "#3a3c42"),
                                (QPalette.ButtonText, "#e6e6e6"), (QPalette.Highlight, "#3d6fb6"),
                                (QPalette.HighlightedText, "#ffffff"), (QPalette.PlaceholderText, "#8a8a92"),
                                (QPalette.Link, theme.link), (QPalette.Mid, "#8a8a92")):  # fmt: skip
                palette.setColor(role, QColor(color))
            for role in (QPalette.ButtonText, QPalette.Text, QPalette.WindowText):
                palette.setColor(QPalette.Disabled, role, QColor("#6a6a70"))
        QApplication.instance().setPalette(palette)
        self.view.set_theme(theme)
        self.render_conversation()

    def _system_scheme_changed(self, _scheme) -> None:
        if self.gui_settings.value("theme", "system") == "system":
            self.apply_theme("system")

    # ------------------------------------------------------------ conversations
    def refresh_conversations(self) -> None:
        self.conv_list.clear()
        for conv in self.store.conversations(self.search.text()):
            item = QListWidgetItem(("📌 " if conv.pinned else "") + conv.title)
            item.setData(Qt.UserRole, conv.id)
            self.conv_list.addItem(item)
            if conv.id == self.conversation:
                item.setSelected(True)

    def new_chat(self) -> None:
        conv = self.store.create(settings=self.sampling_panel.settings())
        self.open_conversation(conv.id)
        self.refresh_conversations()
        self.composer.setFocus()

    def open_conversation(self, cid: int | None) -> None:
        if self.bridge.busy and self.streaming is not None:
            self.statusBar().showMessage("A reply is streaming: stop it (Esc) or let it finish first.", 5000)
            return
        self.conversation = cid
        self.editing = None
        if cid is not None:
            self.sampling_panel.set_settings(self.store.settings(cid))
            self.system_prompt.blockSignals(True)
            self.system_prompt.setPlainText(self.store.get(cid).system_prompt)
            self.system_prompt.blockSignals(False)
        self.refresh_conversations()
        self.render_conversation()
        self.conversation_opened.emit(cid)

    def render_conversation(self) -> None:
        if self.conversation is None:
            self.view.show_messages([], None)
            return
        shown = []
        streaming_id = self.streaming.id if self.streaming else None
        for msg in self.store.path(self.conversation):
            if msg.id == streaming_id:
                continue
            siblings = [m.id for m in self.store.siblings(msg.id)]
            shown.append((msg, (siblings.index(msg.id) + 1, len(siblings))))
        self.view.show_messages(shown, self._stream_message())

    def open_model_manager(self, tab: int = 0):
        """The download manager and library window; one per main window, so partial downloads have one owner."""
        if self.model_manager is None:
            from app.downloads_window import DownloadManagerWindow

            self.model_manager = DownloadManagerWindow(self)
            self.model_manager.library_changed.connect(self.model_panel.refresh)
        tabs = getattr(self.model_manager, "tabs", None)
        if tabs is not None:
            tabs.setCurrentIndex(tab)
        self.model_manager.show()
        self.model_manager.raise_()
        return self.model_manager

    def open_wizard(self):
        """The fine-tuning wizard (one at a time); 'Chat with it' comes back here."""
        from app.wizard import FineTuneWizard

        if self.wizard is None:
            self.wizard = FineTuneWizard(self.library, self)
            self.wizard.chat_requested.connect(self.chat_with_adapter)
            self.wizard.finished.connect(self._wizard_closed)
        self.wizard.show()
        self.wizard.raise_()
        return self.wizard

    def _wizard_closed(self, _result: int) -> None:
        self.wizard.deleteLater()
        self.wizard = None
        self.model_panel.refresh()  # trained adapters and exports are in the library now

    def chat_with_adapter(self, base: str, adapter: str, scale: float) -> None:
        """A new conversation with `base` + `adapter` loaded (from the wizard's last page)."""
        self.model_panel.refresh()
        self.new_chat()
        self.load_model(base, self.model_panel.load_settings(), ((adapter, scale),))

    def _conversation_menu(self, pos) -> None:
        item = self.conv_list.itemAt(pos)
        if item is None:
            return
        cid = item.data(Qt.UserRole)
        conv = self.store.get(cid)
        menu = QMenu(self)
        menu.addAction("Rename…", lambda: self._rename(cid))
        menu.addAction("Unpin" if conv.pinned else "Pin", lambda: self._pin(cid, not conv.pinned))
        menu.addAction("Delete", lambda: self.delete_conversation(cid))
        menu.exec(self.conv_list.mapToGlobal(pos))

    def _rename(self, cid: int) -> None:
        title, ok = QInputDialog.getText(self, "Rename chat", "Title:", text=self.store.get(cid).title)
        if ok:
            self._guard(lambda: self.store.rename(cid, title))
            self.refresh_conversations()

    def _pin(self, cid: int, pinned: bool) -> None:
        self.store.set_pinned(cid, pinned)
        self.refresh_conversations()

    def delete_conversation(self, cid: int) -> None:
        self.store.delete(cid)
        self._deleted = cid
        self.undo_banner.show_message(f"Deleted “{self.store.get(cid).title}”.", "Undo")
        if cid == self.conversation:
            convs = self.store.conversations()
            self.open_conversation(convs[0].id if convs else None)
        self.refresh_conversations()

    def _undo_delete(self) -> None:
        self.store.undelete(self._deleted)
        self.undo_banner.hide()
        self.open_conversation(self._deleted)
        self.refresh_conversations()

    def _settings_changed(self, settings) -> None:
        if self.conversation is not None:
            self.store.set_settings(self.conversation, settings)

    def _system_prompt_changed(self) -> None:
        if self.conversation is not None:
            self.store.set_system_prompt(self.conversation, self.system_prompt.toPlainText())

    def _guard(self, action) -> bool:
        try:
            action()
            return True
        except IngleError as err:
            QMessageBox.warning(self, "Ingle", str(err))
            return False

    # ------------------------------------------------------------ model
    def _after_inspector(self, action) -> bool:
        """True when a visualizer's request holds the engine: `action` then runs as soon as it ends (they take
        milliseconds, so the user's action is delayed, never refused)."""
        if self.bridge.busy and self.bridge.method in INSPECTOR_METHODS:
            self.queued_actions.append(action)
            return True
        return False

    def load_model(self, path: str, settings: LoadSettings | None = None, adapters=()) -> None:
        if self._after_inspector(lambda: self.load_model(path, settings, adapters)):
            return
        if self.bridge.busy:
            self.statusBar().showMessage(
                "Wait for the engine to finish (or press Stop) before loading.", 5000
            )
            return
        self.last_load = (str(path), settings or self.model_panel.load_settings(), tuple(adapters))
        self.model_panel.set_loading(0.0)
        self.model_label.setText(f"Loading {Path(path).name}…")
        self.bridge.submit("load", *self.last_load, None)

    def unload_model(self) -> None:
        if self._after_inspector(self.unload_model):
            return
        if not self.bridge.busy:
            self.loaded = None
            self.model_label.setText("No model")
            self.bridge.submit("unload")

    def restart_engine(self) -> None:
        self.fault_banner.hide()
        self.model_label.setText("Restarting the engine…")
        self.bridge.start_engine()

    # ------------------------------------------------------------ chat actions
    def send_from_composer(self) -> None:
        text = self.composer.toPlainText().strip()
        if text and self.send(text):
            self.composer.clear()

    def send(self, text: str) -> bool:
        """Add a user message (a new branch when editing) and stream the reply. False when it cannot start."""
        if self.loaded is not None and self._after_inspector(lambda: self.send(text)):
            return True
        if self.bridge.busy or self.loaded is None:
            self.statusBar().showMessage(
                "Load a model first." if self.loaded is None else "A reply is running.", 5000
            )
            return False
        if self.conversation is None:
            self.new_chat()
        if self.store.get(self.conversation).title == "New chat":
            self.store.rename(self.conversation, text.splitlines()[0][:48])
            self.refresh_conversations()
        if self.editing is not None:
            parent = self.store.message(self.editing).parent
            self.editing = None
        else:
            parent = self.store.leaf(self.conversation)
        user = self.store.add_message(self.conversation, parent, "user", text)
        self._generate(user.id)
        return True

    def regenerate(self, mid: int) -> None:
        if self._after_inspector(lambda: self.regenerate(mid)):
            return
        msg = self.store.message(mid)
        if msg.role != "assistant" or msg.parent is None:
            return
        if self.bridge.busy or self.loaded is None:
            self.statusBar().showMessage(
                "Load a model first." if self.loaded is None else "A reply is running.", 5000
            )
            return
        self._generate(msg.parent)

    def continue_reply(self, mid: int) -> None:
        """Let the model go on writing a reply that was stopped or cut off, in the same message."""
        if self._after_inspector(lambda: self.continue_reply(mid)):
            return
        msg = self.store.message(mid)
        if msg.role != "assistant":
            return
        if self.bridge.busy or self.loaded is None:
            self.statusBar().showMessage(
                "Load a model first." if self.loaded is None else "A reply is running.", 5000
            )
            return
        self.store.select(mid)
        self.store.update_message(mid, msg.content, "streaming")
        self.streaming = self.store.message(mid)
        self._start_stream(msg.content, continue_last=True)

    def _generate(self, parent: int) -> None:
        self.streaming = self.store.add_message(
            self.conversation, parent, "assistant", "", status="streaming"
        )
        self._start_stream("", continue_last=False)

    def engine_messages(self, skip_last: bool = False) -> list[Message]:
        """The conversation as the engine gets it: system prompt, then the selected branch's messages."""
        if self.conversation is None:
            return []
        conv = self.store.get(self.conversation)
        messages = [Message("system", conv.system_prompt)] if conv.system_prompt else []
        path = self.store.path(self.conversation)
        streaming_id = self.streaming.id if self.streaming else None
        for msg in path[:-1] if skip_last else path:
            # earlier reasoning is not sent back, as reasoning models' chat templates expect
            content = msg.content
            if msg.role == "assistant" and msg.id != streaming_id:
                content = strip_thinking(content)
            messages.append(Message(msg.role, content))
        return messages

    def _start_stream(self, prefix: str, continue_last: bool) -> None:
        cid = self.conversation
        self.stream_prefix = prefix
        self.stream_text = prefix
        self._last_save = time.monotonic()
        self.render_conversation()
        messages = self.engine_messages(skip_last=not continue_last)
        settings = self.inspector.stream_settings(self.store.settings(cid))
        self.bridge.submit("chat", messages, settings, self.sampling_panel.policy(), continue_last)

    def continue_with(self, mid: int, text: str) -> None:
        """A new branch beside reply `mid` that starts with `text` (its tokens up to one, then another choice
        there), which the model then goes on writing."""
        if self._after_inspector(lambda: self.continue_with(mid, text)):
            return
        msg = self.store.message(mid)
        if self.bridge.busy or self.loaded is None or msg.role != "assistant":
            self.statusBar().showMessage(
                "Load a model first." if self.loaded is None else "Wait for the engine to finish first.", 5000
            )
            return
        branch = self.store.add_message(msg.conversation, msg.parent, "assistant", text, status="stopped")
        self.continue_reply(branch.id)

    def stop(self) -> None:
        self.bridge.cancel()

    def _stream_message(self) -> StoredMessage | None:
        if self.streaming is None:
            return None
        s = self.streaming
        return StoredMessage(
            s.id, s.conversation, s.parent, s.role, self.stream_text, s.status, s.stats, s.created
        )

    def _redraw_stream(self) -> None:
        if self.streaming is not None and self.streaming.conversation == self.conversation:
            self.view.update_stream(self._stream_message())

    def _save_stream(self, status: str | None = None, stats: dict | None = None) -> None:
        self.store.update_message(self.streaming.id, self.stream_text, status, stats)
        self._last_save = time.monotonic()

    def _finish_stream(self, status: str, stats: dict | None = None) -> None:
        if self.streaming is None:
            return
        mid = self.streaming.id
        self._save_stream(status, stats)
        self.streaming = None
        self._redraw.stop()
        self.render_conversation()
        self.refresh_conversations()
        if (
            self.bridge.busy
        ):  # the ReplyDone event comes before the request ends: say so when the engine is free
            self._finished_pending = mid
        else:
            self.reply_finished.emit(mid)

    def _emit_pending_finished(self) -> None:
        mid, self._finished_pending = self._finished_pending, None
        if mid is not None:
            self.reply_finished.emit(mid)

    # ------------------------------------------------------------ engine events
    def _on_event(self, ev) -> None:
        if isinstance(ev, Token) and self.streaming is not None:
            self.stream_text += ev.text
            if not self._redraw.isActive():
                self._redraw.start()
            if time.monotonic() - self._last_save >= SAVE_INTERVAL:
                self._save_stream()
        elif isinstance(ev, ReplyDone):
            st = ev.stats
            self.stream_text = self.stream_prefix + ev.text
            self._show_stats(st.n_past, st.n_ctx, st.decode_tok_s, st.ttft_seconds)
            stats = {"ttft": st.ttft_seconds, "tok_s": st.decode_tok_s, "generated": st.generated_tokens,
                     "n_past": st.n_past, "n_ctx": st.n_ctx, "stop": st.stop_reason.value}  # fmt: skip
            self._finish_stream("stopped" if st.stop_reason == StopReason.CANCELLED else "done", stats)
        elif isinstance(ev, LoadProgress):
            self.model_panel.set_loading(ev.fraction)
        elif isinstance(ev, ModelLoaded):
            self._model_loaded(ev)

    def _show_stats(self, n_past: int, n_ctx: int, tok_s: float, ttft: float) -> None:
        self.context_label.setText(f"Context {n_past:,} / {n_ctx:,}")
        self.speed_label.setText(f"{tok_s:.1f} tok/s · TTFT {ttft * 1000:.0f} ms")

    def _model_loaded(self, ev: ModelLoaded) -> None:
        self.loaded = ev
        self.model_panel.set_loading(None)
        name = Path(ev.path).stem
        self.model_label.setText(f"{name} · {ev.info.get('architecture', '')} {ev.info.get('file_type', '')}")
        self.context_label.setText(f"Context 0 / {ev.n_ctx:,}")
        self.gui_settings.setValue("last_model", ev.path)
        if name == STARTER_NAME:
            self.info_banner.show_message(STARTER_NOTE)
        else:
            self.info_banner.hide()

    def _on_done(self, method: str, result) -> None:
        if method == "restart":
            self.model_panel.set_hardware(result)
            self.model_label.setText("No model")
            if self.last_load is not None:  # after a crash, bring the same model back
                self.load_model(*self.last_load)
            else:
                self._load_initial_model()
        elif method == "load" and self.loaded is not None:
            self.model_ready.emit(self.loaded)  # the engine is free now: ready to send
        elif method == "chat" and self.streaming is not None:  # a stream that ended without ReplyDone
            self._finish_stream("stopped")
        self._emit_pending_finished()
        if method in INSPECTOR_METHODS:
            self._run_queued()

    def _run_queued(self) -> None:
        actions, self.queued_actions = self.queued_actions, []
        for action in actions:
            QTimer.singleShot(0, action)  # after the inspector's own handler has run

    def _load_initial_model(self) -> None:
        model = self.initial_model or self.gui_settings.value("last_model")
        if not model or not Path(model).exists():
            try:
                model = self.library.ensure_starter().file
            except IngleError as err:
                self.fault_banner.show_message(str(err))
                return
        self.load_model(str(model))

    def _on_failed(self, method: str, err) -> None:
        died = isinstance(err, EngineDied)
        if method in INSPECTOR_METHODS and not died:
            self._run_queued()
            return  # the inspector shows its own errors
        if method == "chat" and self.streaming is not None:
            self._finish_stream("interrupted")
        if method == "load":
            self.model_panel.set_loading(None)
            self.model_label.setText("No model")
        if died:
            self.loaded = None
            self.model_label.setText("Engine stopped")
            detail = "" if method != "chat" else " Your conversation and the partial reply are kept."
            self.fault_banner.show_message(f"<b>The engine stopped.</b> {err}{detail}", "Restart engine")
        else:
            self.fault_banner.show_message(str(err))
        self._emit_pending_finished()
        self.engine_failed.emit(str(err))

    def _update_buttons(self, busy: bool) -> None:
        self.send_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)

    # ------------------------------------------------------------ message links
    def _on_view_action(self, verb: str, mid: int, arg: str) -> None:
        if verb == "external":
            QGuiApplication.clipboard().setText(arg)
            self.statusBar().showMessage(f"Links are not opened from model output; copied: {arg}", 8000)
            return
        try:
            msg = self.store.message(mid)
        except ConversationError:
            return
        if verb == "copy":
            QGuiApplication.clipboard().setText(msg.content)
        elif verb == "copycode":
            blocks = self.view.code.get(mid, [])
            if arg.isdigit() and int(arg) < len(blocks):
                QGuiApplication.clipboard().setText(blocks[int(arg)])
        elif verb in ("prev", "next"):
            ids = [m.id for m in self.store.siblings(mid)]
            step = -1 if verb == "prev" else 1
            self.store.select(ids[(ids.index(mid) + step) % len(ids)])
            self.render_conversation()
        elif verb == "regenerate":
            self.regenerate(mid)
        elif verb == "continue":
            self.continue_reply(mid)
        elif verb == "edit":
            self.edit(mid)
        elif verb == "delete" and not self.bridge.busy:
            self.store.delete_message(mid)
            self.render_conversation()
        elif verb == "think":
            self.view.expanded_thinking ^= {mid}
            self.render_conversation()

    def edit(self, mid: int) -> None:
        """Put a user message back in the box; sending it makes a new branch beside the old one."""
        self.editing = mid
        self.composer.setPlainText(self.store.message(mid).content)
        self.composer.setFocus()
        self.statusBar().showMessage(
            "Editing: sending makes a new branch; the old one stays reachable.", 8000
        )

    # ------------------------------------------------------------ export / import
    def _export(self, fmt: str) -> None:
        if self.conversation is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export conversation", f"conversation.{fmt}")
        if path:
            self.export_conversation(Path(path), fmt)

    def export_conversation(self, path: Path, fmt: str) -> None:
        if fmt == "json":
            text = json.dumps(self.store.export_json(self.conversation), indent=2, ensure_ascii=False)
        else:
            text = self.store.export_markdown(self.conversation)
        path.write_text(text, encoding="utf-8")

    def _import_json(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import conversation", "", "JSON (*.json)")
        if path:
            self._guard(lambda: self.import_conversation(Path(path)))

    def import_conversation(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConversationError(f"Cannot read {path.name} as a conversation: {err}") from None
        conv = self.store.import_json(data)
        self.refresh_conversations()
        self.open_conversation(conv.id)

    # ------------------------------------------------------------ shutdown
    def closeEvent(self, event) -> None:  # noqa: N802 (Qt override)
        if self.wizard is not None and self.wizard.training_active():
            answer = QMessageBox.question(
                self, "Training is running",
                "A fine-tuning run is still training. Stop it now (a checkpoint is saved; resume it later from "
                "the wizard or with `ingle train --resume`), or keep the app open until it finishes?",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
            )  # fmt: skip
            if answer != QMessageBox.StandardButton.Yes:  # No: keep training
                event.ignore()
                return
            self.wizard.train_page.stop_for_exit()
        if self.wizard is not None:
            self.wizard.done(0)
        self.gui_settings.setValue("geometry", self.saveGeometry())
        self.gui_settings.setValue("splitter", self.splitter.saveState())
        self.gui_settings.setValue("docks", self.saveState())
        self.gui_settings.setValue("side_visible", "true" if self.side.isVisible() else "false")
        if self.streaming is not None:
            self._save_stream("stopped")
            self.streaming = None
        self.bridge.shutdown()
        self.store.purge()
        super().closeEvent(event)


def run(smoke_prompt: str | None = None) -> int:
    app = QApplication.instance() or QApplication(sys.argv)
    app.setApplicationName("Ingle")
    try:
        Library().ensure_starter()  # first start: assemble the bundled model before the window opens
    except IngleError as err:
        print(f"ingle: error: {err}", file=sys.stderr)
        return 2
    window = MainWindow()
    window.show()
    if smoke_prompt is None:
        return app.exec()
    return _smoke(app, window, smoke_prompt)


def _smoke(app: QApplication, window: MainWindow, prompt: str) -> int:
    """Packaging check: load the starter, send one prompt, print the reply; exit 0 only if it all worked."""
    outcome: dict = {}
    window.initial_model = Library().ensure_starter().file
    window.last_load = None

    started = psutil.Process().create_time()
    marks = {"window shown": time.time() - started}

    def ready(_ev) -> None:
        marks["model loaded"] = time.time() - started
        window.new_chat()
        window.store.set_settings(window.conversation, SamplingSettings(temperature=0, max_tokens=48))
        if not window.send(prompt):
            outcome["error"] = "could not send the prompt"
            app.quit()

    def finished(mid: int) -> None:
        marks["reply finished"] = time.time() - started
        msg = window.store.message(mid)
        if msg.status == "done" and msg.content.strip():
            outcome["reply"] = msg.content
        else:
            outcome["error"] = f"the reply ended {msg.status} with {len(msg.content)} characters"
        app.quit()

    def failed(text: str) -> None:
        outcome["error"] = text.splitlines()[0] if text else "engine failure"
        app.quit()

    window.model_ready.connect(ready)
    window.reply_finished.connect(finished)
    window.engine_failed.connect(failed)
    QTimer.singleShot(300_000, lambda: (outcome.setdefault("error", "timed out after 300 s"), app.quit()))
    app.exec()
    window.close()
    print(
        "timing since process start: " + ", ".join(f"{k} {v:.1f} s" for k, v in marks.items()),
        file=sys.stderr,
    )
    if "reply" in outcome:
        print(outcome["reply"])
        return 0
    print(f"ingle: smoke test failed: {outcome.get('error', 'no reply')}", file=sys.stderr)
    return 1


def bench_stream(model_path: str, prompt: str, max_tokens: int, threads: int) -> dict:
    """For `ingle bench`: stream one greedy reply into a real main window.

    Returns the tokens shown and the perf_counter times the reply was sent, showed its first token and was
    stored. Runs on the caller's QApplication; the bench measures the event loop around it.
    """
    import tempfile
    import time

    from PySide6.QtCore import QEventLoop

    def wait(signal) -> None:
        loop = QEventLoop()
        signal.connect(loop.quit)
        loop.exec()
        signal.disconnect(loop.quit)

    with tempfile.TemporaryDirectory() as tmp:
        window = MainWindow(store=ConversationStore(Path(tmp) / "bench.sqlite3"), model=model_path)
        window.show()
        wait(window.model_ready)
        window.load_model(model_path, LoadSettings(n_threads=threads))
        wait(window.model_ready)
        window.new_chat()
        window.store.set_settings(window.conversation, SamplingSettings(temperature=0, max_tokens=max_tokens))
        shown = []
        window.bridge.event.connect(
            lambda ev: (
                shown.append(time.perf_counter()) if isinstance(ev, Token) and ev.token_id >= 0 else None
            )
        )
        started = time.perf_counter()
        window.send(prompt)
        wait(window.reply_finished)
        ended = time.perf_counter()
        window.close()  # shuts the engine child down
        return {"tokens_shown": len(shown), "stream_started": started, "stream_ended": ended,
                "first_token": shown[0] if shown else None}  # fmt: skip
