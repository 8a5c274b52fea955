"""The Server panel (a dock of the chat window): start/stop the API server on the loaded model, its address,
key and slots, the base URL and an example curl, which slots are busy and the live request log.

A dock rather than a dialog: it stays beside the chat while the server runs, so the log and the busy slots are
in view while chatting, and the window saves where it was like the visualizer docks.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable

from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QDockWidget,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.server_control import MAX_SLOTS, ServerControl, ServerOptions
from engine.errors import IngleError
from engine.events import ModelLoaded
from engine.server.keyfile import check_key, generate_key, load_key, save_key
from engine.server.request_log import LoggedRequest
from engine.server_cli import KEY_ENV, is_loopback

LOG_ROWS = 500  # the table keeps the newest rows
COLUMNS = ("Time", "Method", "Path", "Model", "Prompt tok", "Gen tok", "tok/s", "Status", "Prompt")
SLOT_COLORS = {True: "#3d8b5a", False: "#c9ccd1"}


def curl_example(url: str, model: str, with_key: bool) -> str:
    """A command that works when pasted into a shell (the key comes from the environment, never inlined)."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})
    lines = [f"curl {url}/chat/completions"]
    if with_key:
        lines.append(f'-H "Authorization: Bearer ${KEY_ENV}"')
    lines += ['-H "Content-Type: application/json"', f"-d {shlex.quote(body)}"]
    return " \\\n  ".join(lines)


class ServerPanel(QWidget):
    """The panel's widgets over a ServerControl; settings persist in `settings` (the app's gui.ini)."""

    def __init__(self, control: ServerControl, settings: QSettings, loaded: Callable[[], ModelLoaded | None]):
        super().__init__()
        self.control = control
        self.settings = settings
        self.loaded = loaded
        self.status_note: QLabel | None = None  # the window's status-bar note (server_dock)
        mono = QFontDatabase.systemFont(QFontDatabase.FixedFont)

        self.status = QLabel("Stopped.")
        self.status.setTextFormat(Qt.PlainText)
        self.status.setWordWrap(True)
        self.message = QLabel()
        self.message.setTextFormat(Qt.PlainText)  # errors may quote a host the user typed
        self.message.setWordWrap(True)
        self.message.setStyleSheet("color: #b3261e;")
        self.message.hide()

        self.host = QLineEdit(self._setting("host", "127.0.0.1", str))
        self.port = QSpinBox(minimum=0, maximum=65535)
        self.port.setValue(self._setting("port", 8080, int))
        self.port.setToolTip("0 picks a free port")
        self.slots = QSpinBox(minimum=1, maximum=MAX_SLOTS)
        self.slots.setValue(self._setting("slots", 1, int))
        self.slots.setToolTip("Requests served at once; more wait in a fair queue")
        self.key = QLineEdit(load_key() or "")
        self.key.setEchoMode(QLineEdit.Password)
        self.key.setPlaceholderText("no key yet: Generate one")
        self.generate = QPushButton("Generate")
        self.show_key = QPushButton("Show", checkable=True)
        self.copy_key = QPushButton("Copy")
        self.require_key = QCheckBox("Require the API key")
        self.require_key.setChecked(self._setting("require_key", True, bool))
        self.insecure = QCheckBox("Serve other machines without a key (insecure)")
        self.log_prompts = QCheckBox("Log prompts")
        self.log_prompts.setChecked(self._setting("log_prompts", False, bool))
        self.log_prompts.setToolTip("Show the start of each request's prompt in the log (off: never kept)")
        self.start_stop = QPushButton("Start server")
        self.url = QLineEdit(readOnly=True)
        self.copy_url = QPushButton("Copy")
        self.curl = QPlainTextEdit(readOnly=True)
        self.curl.setFont(mono)
        self.curl.setMaximumHeight(92)
        self.copy_curl = QPushButton("Copy")
        self.slot_row = QHBoxLayout()
        self.slot_boxes: list[QLabel] = []
        self.slot_text = QLabel()
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 6)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        # the prompt takes the room left (elided; the whole start is in its tooltip): no sideways scrolling
        self.table.horizontalHeader().setSectionResizeMode(len(COLUMNS) - 1, QHeaderView.Stretch)

        form = QFormLayout()
        address = QHBoxLayout()
        address.addWidget(self.host, 1)
        address.addWidget(QLabel("Port"))
        address.addWidget(self.port)
        address.addWidget(QLabel("Slots"))
        address.addWidget(self.slots)
        form.addRow("Host", address)
        key_row = QHBoxLayout()
        key_row.addWidget(self.key, 1)
        for button in (self.generate, self.show_key, self.copy_key):
            key_row.addWidget(button)
        form.addRow("API key", key_row)
        form.addRow("", self.require_key)
        form.addRow("", self.insecure)
        form.addRow("", self.log_prompts)
        url_row = QHBoxLayout()
        url_row.addWidget(self.url, 1)
        url_row.addWidget(self.copy_url)
        curl_row = QHBoxLayout()
        curl_row.addWidget(self.curl, 1)
        curl_row.addWidget(self.copy_curl, 0, Qt.AlignTop)
        slots_row = QHBoxLayout()
        slots_row.addLayout(self.slot_row)
        slots_row.addWidget(self.slot_text, 1)

        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addWidget(self.message)
        layout.addLayout(form)
        layout.addWidget(self.start_stop)
        layout.addWidget(QLabel("Base URL (OpenAI; Ollama clients use the same address without /v1)"))
        layout.addLayout(url_row)
        layout.addWidget(QLabel("Example"))
        layout.addLayout(curl_row)
        layout.addLayout(slots_row)
        layout.addWidget(self.table, 1)

        self.generate.clicked.connect(self._generate_key)
        self.show_key.toggled.connect(self._show_key)
        self.copy_key.clicked.connect(lambda: self._copy(self.key.text()))
        self.copy_url.clicked.connect(lambda: self._copy(self.url.text()))
        self.copy_curl.clicked.connect(lambda: self._copy(self.curl.toPlainText()))
        self.start_stop.clicked.connect(self.toggle)
        self.log_prompts.toggled.connect(self._log_prompts_toggled)
        self.host.editingFinished.connect(
            lambda: self.settings.setValue("server/host", self.host.text().strip())
        )
        self.port.valueChanged.connect(lambda v: self.settings.setValue("server/port", v))
        self.slots.valueChanged.connect(self._slots_changed)
        self.require_key.toggled.connect(lambda on: self.settings.setValue("server/require_key", on))
        control.started.connect(self._started)
        control.stopped.connect(self._stopped)
        control.logged.connect(self.add_log_row)
        self._poll = QTimer(self, interval=200)
        self._poll.timeout.connect(self.show_slots)
        self._slots_changed(self.slots.value())
        self._show_stopped()

    def _setting(self, name: str, default, kind):
        value = self.settings.value(f"server/{name}", default)
        try:  # gui.ini is a text file: a value this version did not write falls back to the default
            if kind is bool:
                return value if isinstance(value, bool) else str(value).lower() == "true"
            value = kind(value)
        except (TypeError, ValueError):
            return default
        if kind is int and name == "port":
            return value if 0 <= value <= 65535 else default
        if kind is int:
            return value if 1 <= value <= MAX_SLOTS else default
        return value.strip() or default

    # ------------------------------------------------------------ key
    def _generate_key(self) -> None:
        key = generate_key()
        try:
            save_key(key)
        except (IngleError, OSError) as err:
            self.show_message(f"Cannot save the key: {err}")
            return
        self.key.setText(key)
        self.show_message("A new key was generated and saved (readable by you only). Copy it to your clients.",
                          error=False)  # fmt: skip

    def _show_key(self, shown: bool) -> None:
        self.key.setEchoMode(QLineEdit.Normal if shown else QLineEdit.Password)
        self.show_key.setText("Hide" if shown else "Show")

    def _copy(self, text: str) -> None:
        if text:
            QGuiApplication.clipboard().setText(text)

    def _chosen_key(self) -> str | None:
        """The key to require (saved when typed in or generated here), or None."""
        if not self.require_key.isChecked():
            return None
        text = self.key.text().strip()
        if not text:
            self._generate_key()
            return self.key.text()
        key = check_key(text)
        if key != load_key():
            save_key(key)
        return key

    # ------------------------------------------------------------ start / stop
    def options(self) -> ServerOptions:
        return ServerOptions(
            host=self.host.text().strip() or "127.0.0.1", port=self.port.value(), slots=self.slots.value(),
            api_key=self._chosen_key(), insecure=self.insecure.isChecked(),
            log_prompts=self.log_prompts.isChecked(),
        )  # fmt: skip

    def toggle(self) -> None:
        if self.control.running:
            self.control.stop("The server was stopped.")
        else:
            self.start()

    def start(self) -> bool:
        """Start from the panel's fields; a refusal is shown in the panel (and False returned)."""
        self.message.hide()
        try:
            options = self.options()
            self.control.start(options, self.loaded())
        except IngleError as err:
            self.show_message(str(err))
            return False
        self.settings.setValue("server/host", options.host)
        if self.control.warning:
            self.show_message(self.control.warning)
        return True

    def _started(self, url: str) -> None:
        control = self.control
        self.url.setText(url)
        self.curl.setPlainText(curl_example(url, control.model_name, control.options.api_key is not None))
        where = "this machine only" if is_loopback(control.options.host) else "other machines too"
        self.status.setText(f"Serving {control.model_name} at {url} ({where}). Requests take turns with the "
                            "chat window on the same loaded model.")  # fmt: skip
        self.start_stop.setText("Stop server")
        for w in (self.host, self.port, self.slots, self.require_key, self.insecure, self.key, self.generate):
            w.setEnabled(False)
        self._poll.start()
        self.show_slots()

    def _stopped(self, why: str) -> None:
        self._show_stopped()
        self.show_message(why, error=why != "The server was stopped.")

    def _show_stopped(self) -> None:
        self._poll.stop()
        self.status.setText("Stopped. Start it to serve the model loaded in the chat window over an OpenAI- and "
                            "Ollama-compatible API.")  # fmt: skip
        self.start_stop.setText("Start server")
        self.start_stop.setEnabled(True)
        for w in (self.host, self.port, self.slots, self.require_key, self.insecure, self.key, self.generate):
            w.setEnabled(True)
        self.show_slots()

    def show_message(self, text: str, error: bool = True) -> None:
        self.message.setStyleSheet(f"color: {'#b3261e' if error else '#1f6f43'};")
        self.message.setText(text)
        self.message.show()

    # ------------------------------------------------------------ slots and log
    def _slots_changed(self, n: int) -> None:
        self.settings.setValue("server/slots", n)
        while len(self.slot_boxes) < n:
            box = QLabel()
            box.setFixedSize(14, 14)
            self.slot_boxes.append(box)
            self.slot_row.addWidget(box)
        while len(self.slot_boxes) > n:
            self.slot_boxes.pop().deleteLater()
        self.show_slots()

    def show_slots(self) -> None:
        busy, slots, waiting = self.control.slot_usage()
        for i, box in enumerate(self.slot_boxes):
            box.setStyleSheet(f"background: {SLOT_COLORS[i < busy]}; border-radius: 3px;")
        text = f"{busy} of {slots} slots busy"
        if waiting:
            text += f" · {waiting} waiting"
        self.slot_text.setText(text if self.control.running else f"{slots} slots (stopped)")

    def _log_prompts_toggled(self, on: bool) -> None:
        self.settings.setValue("server/log_prompts", on)
        self.control.set_log_prompts(on)

    def add_log_row(self, entry: LoggedRequest) -> None:
        if self.table.rowCount() >= LOG_ROWS:
            self.table.removeRow(0)
        row = self.table.rowCount()
        self.table.insertRow(row)

        def num(value, fmt="{:,}"):
            return "" if value is None else fmt.format(value)

        cells = (time.strftime("%H:%M:%S", time.localtime(entry.time)), entry.method, entry.path,
                 entry.model or "—", num(entry.prompt_tokens), num(entry.completion_tokens),
                 num(entry.tok_s, "{:.1f}"), str(entry.status) + (f" {entry.error}" if entry.error else ""),
                 entry.prompt or "")  # fmt: skip
        for column, text in enumerate(cells):
            item = QTableWidgetItem(text)
            if column == len(cells) - 1 and text:
                item.setToolTip(text)
            self.table.setItem(row, column, item)
        self.table.scrollToBottom()

    def log_texts(self) -> list[list[str]]:
        """Every cell of the log (what a user can see or copy), for checks."""
        return [[self.table.item(r, c).text() for c in range(self.table.columnCount())]
                for r in range(self.table.rowCount())]  # fmt: skip


def server_dock(window, panel: ServerPanel) -> QDockWidget:
    """The panel as a (hidden) dock of `window`, and a status-bar note while the server runs (the dock may be
    closed while it serves)."""
    dock = QDockWidget("API server", window)
    dock.setObjectName("server-panel")  # saveState/restoreState key
    dock.setWidget(panel)
    dock.hide()
    window.addDockWidget(Qt.RightDockWidgetArea, dock)
    note = QLabel()
    note.setTextFormat(Qt.PlainText)
    note.setContentsMargins(10, 0, 10, 0)
    note.hide()
    window.statusBar().addPermanentWidget(note)
    panel.control.started.connect(lambda url: (note.setText(f"API server: {url}"), note.show()))
    panel.control.stopped.connect(lambda _why: note.hide())
    panel.status_note = note
    return dock
