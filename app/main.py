"""Ingle's main window: conversation list, streamed chat, model and sampling side panel, status bar, fault banner."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QActionGroup, QColor, QGuiApplication, QKeySequence, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
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
from app.chat_view import ChatView
from app.dialogs import show_error
from app.inspector import Inspector
from app.model_panel import ModelPanel
from app.ops import Op, describe_error
from app.render import DARK, LIGHT
from app.sampling_panel import SamplingPanel
from app.widgets import Banner, Composer, TextEditor
from engine.conversations import ConversationError, ConversationStore, StoredMessage
from engine.errors import EngineDied, IngleError
from engine.events import LoadProgress, Message, ModelLoaded, ReplyDone
from engine.library import STARTER_NAME, Library, atomic_write_bytes, data_dir
from engine.session import ChatSession, Phase
from engine.settings import LoadSettings, OverflowPolicy, SamplingSettings

log = logging.getLogger(__name__)
SAVE_INTERVAL = 0.5  # seconds between saves of a growing reply (a kill -9 loses at most this much)
REDRAW_INTERVAL_MS = 40  # streamed text is redrawn at most this often
STARTER_NOTE = (
    "<b>Gemma 3 270M</b> is loaded: a small <b>base model</b>. It continues text rather than following "
    "instructions. Teach it with the fine-tuning wizard, or get a chat model from the download manager."
)


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
        self.bridge.busy_changed.connect(self._update_buttons)
        self.bridge.died.connect(self._engine_died)
        self.conversation: int | None = None
        self._undo = None  # what the undo banner's button undoes: returns the conversation to show
        self._unopenable: set[int] = set()  # conversations that failed to open (not retried as fallbacks)
        self.loaded: ModelLoaded | None = None
        self.last_load: tuple | None = None
        self.chat: ChatSession | None = None  # the open conversation's chat logic (engine/session.py)
        self._interrupted: int | None = None  # a reply the engine's death cut off (for the fault banner)
        self.editing: int | None = None
        self.model_manager = None  # the download manager window, made on first use
        self.wizard = None  # the fine-tuning wizard, while open
        self._build()
        self._redraw = QTimer(self, singleShot=True, interval=REDRAW_INTERVAL_MS)
        self._redraw.timeout.connect(self._redraw_stream)
        self.apply_theme(self.gui_settings.value("theme", "system"))
        QGuiApplication.styleHints().colorSchemeChanged.connect(self._system_scheme_changed)
        self.refresh_conversations()
        convs = self.store.conversations()
        self.open_conversation(convs[0].id if convs else None)  # a bad one shows its error, another opens
        self._restore_layout()
        self.initial_model = model
        if start_engine:
            self.start_engine()

    @property
    def streaming(self) -> StoredMessage | None:
        """The reply being written, if any."""
        return self.chat.reply if self.chat is not None and self.chat.phase is Phase.STREAMING else None

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
        known = {p.value for p in OverflowPolicy}
        self.sampling_panel.set_policy(  # gui.ini is a text file: anything may be in it
            OverflowPolicy(saved_policy)
            if isinstance(saved_policy, str) and saved_policy in known
            else OverflowPolicy.STOP
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
            label.setTextFormat(Qt.PlainText)  # model names and metadata come from model files
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
        themes = QActionGroup(self)
        themes.setExclusive(True)  # the current theme carries the check mark
        self.theme_actions: dict[str, QAction] = {}
        for name in ("system", "light", "dark"):
            act = add(view_menu, f"{name.capitalize()} theme", lambda _=False, n=name: self.apply_theme(n))
            act.setCheckable(True)
            themes.addAction(act)
            self.theme_actions[name] = act
        add(view_menu, "Toggle side panel", lambda: self.side.setVisible(not self.side.isVisible()), "Ctrl+B")
        view_menu.addSeparator()
        for key, shortcut in (("context", "Ctrl+1"), ("tokens", "Ctrl+2"), ("kv", "Ctrl+3"),
                              ("probabilities", "Ctrl+4"), ("preview", "Ctrl+5"), ("timing", "Ctrl+6"),
                              ("kv_calculator", "Ctrl+7")):  # fmt: skip
            dock = self.inspector.docks[key]
            action = dock.toggleViewAction()
            action.setShortcut(QKeySequence(shortcut))
            # the docks share one tab group: a dock that is shown is also brought to the front
            action.triggered.connect(
                lambda checked, d=dock: QTimer.singleShot(0, d.raise_) if checked else None
            )
            view_menu.addAction(action)

    def _restore_layout(self) -> None:
        # gui.ini is a text file: a value that is not what this version wrote is ignored, never fatal
        geometry = self.gui_settings.value("geometry")
        if not isinstance(geometry, QByteArray) or not self.restoreGeometry(geometry):
            self.resize(1280, 800)
        state = self.gui_settings.value("splitter")
        if isinstance(state, QByteArray):
            self.splitter.restoreState(state)
        docks = self.gui_settings.value("docks")
        if isinstance(docks, QByteArray):
            self.restoreState(docks)  # which visualizers were open, and where
        self.side.setVisible(self.gui_settings.value("side_visible", "true") == "true")

    def apply_theme(self, name: str) -> None:
        """Light, dark, or follow the system's colour scheme."""
        if not isinstance(name, str) or name not in self.theme_actions:  # a hand-edited or old settings file
            name = "system"
        self.theme_actions[name].setChecked(True)
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

    def open_conversation(self, cid: int | None) -> bool:
        """Show conversation `cid`. One that cannot be shown (a damaged store, a bad import) leaves the window
        working: its error is shown and the previous conversation, or another one, stays open. False then."""
        if self.bridge.busy and self.streaming is not None:
            self.statusBar().showMessage("A reply is streaming: stop it (Esc) or let it finish first.", 5000)
            return False
        previous = self.conversation
        try:
            self._show_conversation(cid)
        except Exception as err:  # noqa: BLE001 (one bad conversation must never take the window down)
            log.exception("conversation %s could not be opened", cid)
            title = self._title_or_id(cid)
            fallbacks = [previous] + [c.id for c in self._conversations_or_none()]
            for other in fallbacks:
                if other is not None and other != cid and other not in self._unopenable:
                    try:
                        self._show_conversation(other)
                        break
                    except Exception:  # noqa: BLE001
                        log.exception("conversation %s could not be opened either", other)
                        self._unopenable.add(other)
            else:
                self._show_conversation(None)
            self._unopenable.add(cid)
            self.fault_banner.show_message(
                f"The conversation “{title}” could not be opened ({str(err).rstrip('.')}). Its messages are kept in the store; "
                "the other conversations work as before."
            )
            return False
        return True

    def _title_or_id(self, cid: int | None) -> str:
        try:
            return self.store.get(cid).title
        except Exception:  # noqa: BLE001
            return f"#{cid}"

    def _conversations_or_none(self) -> list:
        try:
            return self.store.conversations()
        except Exception:  # noqa: BLE001
            return []

    def _show_conversation(self, cid: int | None) -> None:
        settings = None
        if cid is not None:
            try:
                settings = self.store.settings(cid)
            except (
                IngleError,
                ValueError,
                TypeError,
            ) as err:  # damaged settings: the chat itself still opens
                settings = SamplingSettings()
                self.fault_banner.show_message(
                    f"The sampling settings of “{self._title_or_id(cid)}” could not be read ({err}); the defaults "
                    "are used, and saved when you change one."
                )
        system_prompt = self.store.get(cid).system_prompt if cid is not None else ""
        self.conversation = cid
        self.chat = ChatSession(self.store, cid, SAVE_INTERVAL) if cid is not None else None
        self.editing = None
        if settings is not None:
            self.sampling_panel.set_settings(settings)
        self.system_prompt.blockSignals(True)
        self.system_prompt.setPlainText(system_prompt)
        self.system_prompt.blockSignals(False)
        self.refresh_conversations()
        self.render_conversation()
        self._show_conversation_figures()
        self.conversation_opened.emit(cid)

    def _show_conversation_figures(self) -> None:
        """The status bar's context and speed belong to the open conversation: its last reply, or nothing."""
        path = self.store.path(self.conversation) if self.conversation is not None else []
        last = next((m for m in reversed(path) if m.role == "assistant" and m.stats), None)
        n_ctx = self.loaded.n_ctx if self.loaded is not None else 0
        stats = last.stats if last is not None else {}
        try:
            n_past, tok_s, ttft = int(stats["n_past"]), float(stats["tok_s"]), float(stats["ttft"])
        except (KeyError, TypeError, ValueError):
            self.context_label.setText(f"Context 0 / {n_ctx:,}" if n_ctx else "")
            self.speed_label.setText("")
            return
        self._show_stats(n_past, n_ctx or int(stats.get("n_ctx") or 0), tok_s, ttft)

    def show_context_figure(self, used: int, n_ctx: int) -> None:
        """The context view's count (the conversation as the next reply would see it): the status bar says the
        same number."""
        self.context_label.setText(f"Context {used:,} / {n_ctx:,}")

    def render_conversation(self) -> None:
        if self.conversation is None:
            self.view.show_messages([], None)
            return
        shown = []
        live = self.chat.live_message() if self.chat is not None else None
        for msg in self.store.path(self.conversation):
            if live is not None and msg.id == live.id:
                continue
            siblings = [m.id for m in self.store.siblings(msg.id)]
            shown.append((msg, (siblings.index(msg.id) + 1, len(siblings))))
        self.view.show_messages(shown, live)

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
        self._undo = lambda: (self.store.undelete(cid), cid)[1]
        self.undo_banner.show_message(f"Deleted “{self.store.get(cid).title}”.", "Undo")
        if cid == self.conversation:
            convs = self.store.conversations()
            self.open_conversation(convs[0].id if convs else None)
        self.refresh_conversations()

    def delete_message(self, mid: int) -> None:
        """Delete a message and its replies; the undo banner brings them back (until the app closes)."""
        if self.bridge.busy:
            self.statusBar().showMessage(
                "Wait for the engine to finish (or press Stop) before deleting.", 5000
            )
            return
        msg = self.store.message(mid)
        ticket = self.store.delete_message(mid)
        self._undo = lambda: self.store.undelete_message(ticket)
        who = {"user": "your message", "assistant": "a reply", "system": "a system message"}.get(
            msg.role, "a message"
        )
        preview = " ".join(msg.content.split())[:60]
        self.undo_banner.show_message(f"Deleted {who}: “{preview}”.", "Undo")
        self.render_conversation()

    def _undo_delete(self) -> None:
        undo, self._undo = self._undo, None
        self.undo_banner.hide()
        if undo is None:
            return
        try:
            cid = undo()
        except IngleError as err:
            show_error(self, str(err))
            return
        self.open_conversation(cid)
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
            show_error(self, str(err))
            return False

    # ------------------------------------------------------------ engine and model
    def start_engine(self) -> None:
        """Start (or restart) the engine child; then load the last model, or the first one."""
        self.bridge.start_engine(self._engine_started, self._engine_start_failed)

    def _engine_started(self, hardware) -> None:
        self.model_panel.set_hardware(hardware)
        self.model_label.setText("No model")
        if self.last_load is not None:  # after a crash, bring the same model back
            self.load_model(*self.last_load)
        else:
            self._load_initial_model()

    def _engine_start_failed(self, err: Exception) -> None:
        if not isinstance(err, EngineDied):  # a child that died at start is reported by _engine_died
            self.fault_banner.show_message(str(err), "Restart engine")
            self.engine_failed.emit(str(err))

    def _load_initial_model(self) -> None:
        model = self.initial_model or self.gui_settings.value("last_model")
        if isinstance(model, (str, Path)) and model and Path(model).exists():  # gui.ini may be edited
            self.load_model(str(model))
            return
        # the bundled starter: assembled and checked (250 MB, sha256) off the GUI thread on first start
        self.model_label.setText("Preparing the starter model…")

        def prepare(progress):
            progress(None, "Assembling the starter model (first start)…")
            checking = "Checking the starter model's sha256…"
            return self.library.ensure_starter(lambda done, total: progress(done / total, checking))

        def failed(err: BaseException) -> None:
            self.model_label.setText("No model")
            self.fault_banner.show_message(describe_error(err))

        (
            Op(self, prepare)
            .with_progress("Preparing the starter model…")
            .success(lambda entry: (self.model_panel.refresh(), self.load_model(str(entry.file))))
            .failure(failed)
            .run()
        )

    def _refuse_while_busy(self, what: str) -> bool:
        """User actions run one at a time; True (and a note) when one is queued or running."""
        if self.bridge.busy:
            self.statusBar().showMessage(
                f"Wait for the engine to finish (or press Stop) before {what}.", 5000
            )
            return True
        return False

    def load_model(
        self, path: str, settings: LoadSettings | None = None, adapters=(), template: str | None = None
    ) -> None:
        """Load a model (with LoRA adapters; `template`: a chat template override, else the panel's choice)."""
        if self._refuse_while_busy("loading"):
            return
        if template is None:
            template = self.model_panel.chat_template()
        self.last_load = (str(path), settings or self.model_panel.load_settings(), tuple(adapters), template)
        path, load, adapters, template = self.last_load
        self.model_panel.set_loading(0.0)
        self.model_label.setText(f"Loading {Path(path).name}…")
        self.bridge.stream(
            lambda engine: engine.load(path, load, adapters, template),
            event=self._on_load_event, done=self._load_done, failed=self._load_failed,
        )  # fmt: skip

    def _on_load_event(self, ev) -> None:
        if isinstance(ev, LoadProgress):
            self.model_panel.set_loading(ev.fraction)
        elif isinstance(ev, ModelLoaded):
            self._model_loaded(ev)

    def _load_done(self, _result) -> None:
        if self.loaded is not None:
            self.model_ready.emit(self.loaded)  # the engine is free now: ready to send

    def _load_failed(self, err: Exception) -> None:
        self.model_panel.set_loading(None)
        self.model_label.setText("No model")
        if not isinstance(err, EngineDied):
            self.fault_banner.show_message(str(err))
            self.engine_failed.emit(str(err))

    def unload_model(self) -> None:
        if self._refuse_while_busy("unloading"):
            return
        self.loaded = None
        self.model_label.setText("No model")
        self.bridge.call(lambda engine: engine.unload())

    def restart_engine(self) -> None:
        self.fault_banner.hide()
        self.model_label.setText("Restarting the engine…")
        self.start_engine()

    def _engine_died(self, err: EngineDied) -> None:
        self.loaded = None
        self.model_label.setText("Engine stopped")
        detail = " Your conversation and the partial reply are kept." if self._interrupted is not None else ""
        self._interrupted = None
        self.fault_banner.show_message(f"{err}{detail}", "Restart engine", bold="The engine stopped.")
        self.engine_failed.emit(str(err))

    def _model_loaded(self, ev: ModelLoaded) -> None:
        self.loaded = ev
        self.model_panel.set_loading(None)
        name = Path(ev.path).stem
        self.model_label.setText(f"{name} · {ev.info.get('architecture', '')} {ev.info.get('file_type', '')}")
        self.context_label.setText(f"Context 0 / {ev.n_ctx:,}")
        self.gui_settings.setValue("last_model", ev.path)
        if ev.template_warning:
            self.info_banner.show_message(ev.template_warning)
        elif name == STARTER_NAME:
            self.info_banner.show_html(STARTER_NOTE)
        else:
            self.info_banner.hide()

    # ------------------------------------------------------------ chat actions (engine/session.py decides)
    def send_from_composer(self) -> None:
        text = self.composer.toPlainText().strip()
        if text and self.send(text):
            self.composer.clear()

    def _can_chat(self) -> bool:
        if self.loaded is None:
            self.statusBar().showMessage("Load a model first.", 5000)
            return False
        return not self._refuse_while_busy("sending")

    def send(self, text: str) -> bool:
        """Add a user message (a new branch when editing) and stream the reply. False when it cannot start."""
        if not self._can_chat():
            return False
        if self.conversation is None:
            self.new_chat()
        editing, self.editing = self.editing, None
        if not self._start(lambda chat: chat.send(text, editing=editing)):
            return False
        self.refresh_conversations()  # the first message titles the chat
        return True

    def regenerate(self, mid: int) -> None:
        if self._can_chat():
            self._start(lambda chat: chat.regenerate(mid))

    def continue_reply(self, mid: int) -> None:
        """Let the model go on writing a reply that was stopped or cut off, in the same message."""
        if self._can_chat():
            self._start(lambda chat: chat.continue_reply(mid))

    def continue_with(self, mid: int, text: str) -> None:
        """A new branch beside reply `mid` that starts with `text` (its tokens up to one, then another choice
        there), which the model then goes on writing."""
        if self._can_chat():
            self._start(lambda chat: chat.continue_with(mid, text))

    def engine_messages(self) -> list[Message]:
        """The open conversation as the engine gets it (for the visualizers)."""
        return self.chat.engine_messages() if self.chat is not None else []

    def _start(self, plan) -> bool:
        """Plan a turn with the session, then stream it through the engine queue."""
        try:
            turn = plan(self.chat)
        except IngleError as err:
            self.statusBar().showMessage(str(err), 5000)
            return False
        settings = self.inspector.stream_settings(self.store.settings(self.conversation))
        policy = self.sampling_panel.policy()
        messages = list(turn.messages)
        self.render_conversation()
        self.bridge.stream(
            lambda engine: engine.chat(messages, settings, policy, turn.continue_last),
            event=lambda ev, chat=self.chat: self._on_chat_event(chat, ev),
            done=lambda _r, chat=self.chat, mid=turn.reply: self._chat_done(chat, mid),
            failed=lambda err, chat=self.chat, mid=turn.reply: self._chat_failed(chat, mid, err),
        )
        return True

    def stop(self) -> None:
        self.bridge.cancel()

    def _on_chat_event(self, chat: ChatSession, ev) -> None:
        if not chat.on_event(ev):
            return
        if isinstance(ev, ReplyDone):
            st = ev.stats
            if chat is self.chat:
                self._show_stats(st.n_past, st.n_ctx, st.decode_tok_s, st.ttft_seconds)
            self._redraw.stop()
            self.render_conversation()
            self.refresh_conversations()
        elif not self._redraw.isActive():
            self._redraw.start()

    def _redraw_stream(self) -> None:
        live = self.chat.live_message() if self.chat is not None else None
        if live is not None:
            self.view.update_stream(live)

    def _chat_done(self, chat: ChatSession, mid: int) -> None:
        """The request has ended (the engine is free): the reply is stored, as done or stopped."""
        if chat.stopped_without_reply() is not None:  # cancelled before any token came
            self.render_conversation()
        self.reply_finished.emit(mid)

    def _chat_failed(self, chat: ChatSession, mid: int, err: Exception) -> None:
        chat.fail()  # the partial reply is kept, marked interrupted
        self._redraw.stop()
        self.render_conversation()
        if isinstance(err, EngineDied):  # reported once, by _engine_died, which the bridge calls next
            self._interrupted = mid
        else:
            self.fault_banner.show_message(str(err))
            self.engine_failed.emit(str(err))
        self.reply_finished.emit(mid)

    def _show_stats(self, n_past: int, n_ctx: int, tok_s: float, ttft: float) -> None:
        self.context_label.setText(f"Context {n_past:,} / {n_ctx:,}")
        self.speed_label.setText(f"{tok_s:.1f} tok/s · TTFT {ttft * 1000:.0f} ms")

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
        if msg.conversation != self.conversation:  # actions only ever apply to the open conversation
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
        elif verb == "delete":
            self.delete_message(mid)
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
            self._guard(lambda: self.export_conversation(Path(path), fmt))

    def export_conversation(self, path: Path, fmt: str) -> None:
        """Written whole or not at all (a temporary file renamed into place); ConversationError when it cannot."""
        if fmt == "json":
            text = json.dumps(self.store.export_json(self.conversation), indent=2, ensure_ascii=False)
        else:
            text = self.store.export_markdown(self.conversation)
        try:
            atomic_write_bytes(path, text.encode("utf-8"))
        except OSError as err:
            raise ConversationError(
                f"Cannot write {path}: {err.strerror or err}. Choose another place."
            ) from None

    def _import_json(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import conversation", "", "JSON (*.json)")
        if path:
            self._guard(lambda: self.import_conversation(Path(path)))

    def import_conversation(self, path: Path) -> None:
        conv = self.store.import_file(path)
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
        if self.chat is not None:
            self.chat.suspend()  # a reply being written is kept as stopped
        self.bridge.shutdown()
        self.store.purge()
        super().closeEvent(event)
