"""The one way the GUI talks to the engine: requests run on a worker QThread, events come back as Qt signals."""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from engine.host import STREAMING, EngineHost

log = logging.getLogger(__name__)


class _Worker(QObject):
    """Lives on the bridge's thread; runs one engine request at a time and reports through signals."""

    event = Signal(object)
    done = Signal(str, object)  # method, result (None for streams)
    failed = Signal(str, object)  # method, exception

    def __init__(self, host: EngineHost):
        super().__init__()
        self.host = host

    @Slot(str, tuple)
    def run(self, method: str, args: tuple) -> None:
        try:
            if method == "restart":
                self.host.restart()
                # the GUI process never loads llama.cpp: GPUs and their free memory come from the engine child
                result = self.host.request("hardware")
            elif method in STREAMING:
                for ev in self.host.request(method, *args):
                    self.event.emit(ev)
                result = None
            else:
                result = self.host.request(method, *args)
        except Exception as err:  # every engine error reaches the GUI as a signal, never a traceback
            log.info("engine request %s failed: %s", method, err)
            self.failed.emit(method, err)
            return
        self.done.emit(method, result)


class EngineBridge(QObject):
    """Owns the EngineHost (the llama.cpp child process) and a worker thread.

    `submit(method, *args)` starts a request (one at a time); streaming requests emit `event` per engine
    event; every request ends with `done(method, result)` or `failed(method, exception)`. `cancel()`
    stops a stream from the GUI thread at once (EngineHost.cancel is thread-safe).
    """

    event = Signal(object)
    done = Signal(str, object)
    failed = Signal(str, object)
    busy_changed = Signal(bool)
    _submit = Signal(str, tuple)

    def __init__(self, parent: QObject | None = None, hang_timeout: float = 120.0):
        super().__init__(parent)
        self.host = EngineHost(hang_timeout=hang_timeout, start=False)
        self._thread = QThread()
        self._thread.setObjectName("ingle-engine-bridge")
        self._worker = _Worker(self.host)
        self._worker.moveToThread(self._thread)
        self._submit.connect(self._worker.run)
        self._worker.event.connect(self.event)
        self._worker.done.connect(self._finish_done)
        self._worker.failed.connect(self._finish_failed)
        self._thread.start()
        self.method: str | None = None  # the request in flight

    @property
    def busy(self) -> bool:
        return self.method is not None

    def submit(self, method: str, *args: Any) -> None:
        if self.busy:
            raise RuntimeError(f"the engine is busy with {self.method}")
        self.method = method
        self.busy_changed.emit(True)
        self._submit.emit(method, args)

    def start_engine(self) -> None:
        """Start (or restart after a crash) the engine child process."""
        self.submit("restart")

    def cancel(self) -> None:
        self.host.cancel()

    def _finish(self) -> None:
        self.method = None
        self.busy_changed.emit(False)

    def _finish_done(self, method: str, result: object) -> None:
        self._finish()
        self.done.emit(method, result)

    def _finish_failed(self, method: str, err: object) -> None:
        self._finish()
        self.failed.emit(method, err)

    def shutdown(self) -> None:
        """Stop any stream, end the worker thread and the engine child (no orphan processes)."""
        self.host.cancel()
        self._thread.quit()
        self._thread.wait(10_000)
        self.host.close()
