"""The main window's layout: the conversation list, chat view and message box, side panel, status bar, menus,
themes, and the saved geometry (a mixin of app.main.MainWindow)."""

from __future__ import annotations

from PySide6.QtCore import QByteArray, Qt, QTimer
from PySide6.QtGui import QAction, QActionGroup, QColor, QGuiApplication, QKeySequence, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.chat_view import ChatView
from app.inspector import Inspector
from app.model_panel import ModelPanel
from app.render import DARK, LIGHT
from app.sampling_panel import SamplingPanel
from app.server_control import ServerControl
from app.server_panel import ServerPanel, server_dock
from app.tools_panel import ToolsPanel
from app.widgets import Banner, Composer, TextEditor
from engine.settings import OverflowPolicy

SAVE_INTERVAL = 0.5  # seconds between saves of a growing reply (a kill -9 loses at most this much)
REDRAW_INTERVAL_MS = 40  # streamed text is redrawn at most this often
STARTER_NOTE = (
    "<b>Gemma 3 270M</b> is loaded: a small <b>base model</b>. It continues text rather than following "
    "instructions. Teach it with the fine-tuning wizard, or get a chat model from the download manager."
)


class WindowLayout:
    """Builds and restores the window; MainWindow provides the widgets' handlers."""

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
        self.model_panel.remote_load_requested.connect(self.load_remote)
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
        model_scroll = QScrollArea()  # the RoPE and advanced sections unfold past a small window's height
        model_scroll.setWidgetResizable(True)
        model_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        model_scroll.setWidget(self.model_panel)
        self.side.addTab(model_scroll, "Model")
        self.side.addTab(sampling_scroll, "Sampling")
        self.side.addTab(self.system_prompt, "System prompt")
        from app.docs_panel import DocsPanel

        self.docs_panel = DocsPanel(self._docs_collection)
        self.side.addTab(self.docs_panel, "Documents")
        # MCP servers, enabled per conversation and kept in the conversation store (app/tools_panel.py)
        self.tools_panel = ToolsPanel(store=self.store)
        self.side.addTab(self.tools_panel, "Tools")

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
        # the API server on the loaded model, through this window's engine (app/server_panel.py)
        self.server = ServerControl(self.bridge, self)
        self.server_panel = ServerPanel(self.server, self.gui_settings, lambda: self.loaded)
        self.server_dock = server_dock(self, self.server_panel)
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
        add(file_menu, "Settings…", self.open_settings)
        add(file_menu, "Quit", self.close, "Ctrl+Q")
        models_menu = self.menuBar().addMenu("&Models")
        add(models_menu, "Download models…", lambda: self.open_model_manager(0), "Ctrl+Shift+D")
        add(models_menu, "Library…", lambda: self.open_model_manager(1), "Ctrl+Shift+L")
        training_menu = self.menuBar().addMenu("&Training")
        add(training_menu, "Fine-tune a model…", self.open_wizard, "Ctrl+Shift+T")
        server_menu = self.menuBar().addMenu("&Server")
        server_action = self.server_dock.toggleViewAction()
        server_action.setText("API server panel")
        server_action.setShortcut(QKeySequence("Ctrl+Shift+S"))
        server_menu.addAction(server_action)
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
                              ("kv_calculator", "Ctrl+7"), ("attention", "Ctrl+8"),
                              ("embeddings", "Ctrl+9")):  # fmt: skip
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
