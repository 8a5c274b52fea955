"""Instant reopen in the window: the open conversation's KV cache is saved when the window switches away from it
or closes, and restored when it is opened again (engine.kv_store checks and deletes what does not match); the
Settings dialog for the space the saved caches may take."""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Qt
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine import units
from engine.kv_store import StateFolder
from engine.session import ChatSession

log = logging.getLogger("ingle.reopen")
CLOSE_SAVE_SECONDS = 10.0  # closing the window waits at most this long for the cache to be written
MIB = 1 << 20


class ReopenCache(QObject):
    """Which conversation the engine's cache holds, and its saving and restoring through the bridge's queue."""

    def __init__(self, window, folder: StateFolder | None = None):
        super().__init__(window)
        self.window = window
        self.folder = folder or StateFolder()
        self.open_cid: int | None = None  # the conversation shown, whose tokens the engine's cache holds
        self.last_restore = (
            None  # engine.kv_store.StateRestored of the last opening, for the status bar and tests
        )
        self.last_save = None
        window.conversation_opened.connect(self._opened)
        window.model_ready.connect(lambda _ev: self._restore(self.open_cid))

    def _messages(self, cid: int) -> list:
        return ChatSession(self.window.store, cid).engine_messages()

    def _ready(self) -> bool:
        # a remote model's KV cache is the server's: nothing to keep here
        return self.window.loaded is not None and self.folder.cap > 0 and self.window.bridge.remote is None

    def _opened(self, cid) -> None:
        previous, self.open_cid = self.open_cid, cid
        if previous is not None and previous != cid:
            self._save(previous)
        if cid is not None and cid != previous:
            self._restore(cid)

    def _save(self, cid: int) -> None:
        if not self._ready():
            return
        try:
            messages = self._messages(cid)
        except Exception:  # a conversation deleted meanwhile: nothing to keep
            self.folder.remove(cid)
            return
        path = str(self.folder.path_for(cid))
        # housekeeping: ahead of the next conversation's requests (the cache still holds this one), never "busy"
        self.window.bridge.call(
            lambda engine: engine.save_state(path, messages),
            lambda result: self._saved(cid, result),
            self._failed,
            housekeeping=True,
        )

    def _saved(self, cid: int, result) -> None:
        self.last_save = result
        self.folder.evict(keep=self.folder.path_for(cid))

    def _restore(self, cid: int | None) -> None:
        if cid is None or not self._ready() or not self.folder.path_for(cid).exists():
            return
        messages = self._messages(cid)
        path = str(self.folder.path_for(cid))
        self.window.bridge.call(
            lambda engine: engine.restore_state(path, messages),
            self._restored,
            self._failed,
            housekeeping=True,
        )

    def _restored(self, result) -> None:
        self.last_restore = result
        if result.tokens:
            self.window.statusBar().showMessage(
                f"Reopened with its saved cache: {result.tokens:,} tokens in {result.seconds * 1000:.0f} ms.",
                5000,
            )
        elif result.deleted:
            self.window.statusBar().showMessage(result.reason, 8000)

    def _failed(self, err: Exception) -> None:
        log.info("saving or restoring a conversation's cache failed: %s", err)

    def save_on_close(self) -> None:
        """Called as the window closes: write the open conversation's cache, waiting at most CLOSE_SAVE_SECONDS
        (a hung engine is stopped then, and the conversation reopens by evaluating its prompt)."""
        bridge = self.window.bridge
        if self.open_cid is None or not self._ready() or bridge.running is not None or not bridge.host.alive:
            return
        try:
            messages = self._messages(self.open_cid)
        except Exception:
            return
        host = bridge.host
        old, host.hang_timeout = host.hang_timeout, CLOSE_SAVE_SECONDS
        try:
            self.last_save = host.save_state(str(self.folder.path_for(self.open_cid)), messages)
            self.folder.evict(keep=self.folder.path_for(self.open_cid))
        except Exception as err:  # closing goes on whatever happened
            log.info("the conversation's cache was not saved at close: %s", err)
        finally:
            host.hang_timeout = old

    def forget_missing(self) -> list:
        """Delete the saved caches of conversations that are gone (a cache holds the conversation's tokens)."""
        live = {c.id for c in self.window.store.conversations()}
        gone = [p for p in self.folder.files() if _conversation_id(p) not in live]
        for path in gone:
            path.unlink(missing_ok=True)
        return gone


def _conversation_id(path) -> int | None:
    stem = path.name.removesuffix(".ingle-kv")
    number = stem.removeprefix("conversation-")
    return int(number) if stem != number and number.isdigit() else None


class ReopenSettings(QDialog):
    """Settings: how much disk the saved conversation caches may use, what they use now, delete them all."""

    def __init__(self, folder: StateFolder, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.folder = folder
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.cap = QSpinBox()
        self.cap.setRange(0, 1 << 20)
        self.cap.setSingleStep(256)
        self.cap.setSuffix(" MiB")
        self.cap.setValue(folder.cap // MIB)
        self.cap.setToolTip(
            "Saved KV caches let a long conversation reopen without reading it again; the least recently used "
            "are deleted past this size. 0 saves none."
        )
        form.addRow("Saved conversation caches", self.cap)
        self.usage = QLabel()
        self.usage.setTextFormat(Qt.PlainText)
        form.addRow("Space used", self.usage)
        layout.addLayout(form)
        self.clear = QPushButton("Delete saved caches")
        self.clear.clicked.connect(self._clear)
        layout.addWidget(self.clear)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.show_usage()

    def show_usage(self) -> None:
        files = self.folder.files()
        self.usage.setText(
            f"{units.size(self.folder.usage())} in {len(files)} conversation{'s' if len(files) != 1 else ''} "
            f"(limit {units.size(self.folder.cap)})"
        )

    def _clear(self) -> None:
        for path in self.folder.files():
            path.unlink(missing_ok=True)
        self.show_usage()

    def accept(self) -> None:
        self.folder.set_cap(self.cap.value() * MIB)
        self.show_usage()
        super().accept()
