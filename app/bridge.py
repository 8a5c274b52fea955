"""The one way the GUI talks to the engine: one queue of typed requests, run on a worker QThread, answered on
the GUI thread through per-request callbacks.

User actions (load, chat, ...) and background work (the visualizers' inspect/preview/token requests) share the
queue. User requests go first: one never waits behind more than the one background request already running.
A background request with a `key` replaces a queued one with the same key (a newer slider position makes the
older preview pointless). `Request.cancel()` drops a queued request or stops a running stream.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from engine.errors import EngineDied
from engine.hardware import Hardware
from engine.host import EngineHost

log = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    HOUSEKEEPING = (
        -1
    )  # keeping the engine's state (a conversation's saved cache): before user work, never "busy"
    USER = 0  # something the user asked for: load, send, regenerate...
    BACKGROUND = 1  # refreshes nobody waits for: the visualizers


class State(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(eq=False)
class Request:
    """One engine call. `work(host)` runs on the bridge's thread: a value, or an iterator of events to stream."""

    work: Callable[[EngineHost], Any]
    streaming: bool
    priority: Priority
    key: str | None = None
    on_event: Callable[[Any], None] | None = None
    on_done: Callable[[Any], None] | None = None
    on_failed: Callable[[Exception], None] | None = None
    state: State = State.QUEUED
    _bridge: EngineBridge | None = field(default=None, repr=False)

    def cancel(self) -> None:
        """Drop it if queued; stop it before its next token if it streams now (its on_done still runs)."""
        if self._bridge is not None:
            self._bridge._cancel(self)


class _Worker(QObject):
    """Lives on the bridge's thread; runs one request at a time and reports through signals."""

    event = Signal(object, object)  # request, event
    done = Signal(object, object)  # request, result (None for streams)
    failed = Signal(object, object)  # request, exception

    def __init__(self, host: EngineHost):
        super().__init__()
        self.host = host
        # what requests run on: the engine child, or a RemoteEngine (app/remote_models.py)
        self.engine: Any = host

    @Slot(object)
    def run(self, request: Request) -> None:
        try:
            result = request.work(self.engine)
            if request.streaming:
                stream: Iterator[Any] = result
                for ev in stream:
                    self.event.emit(request, ev)
                result = None
        except Exception as err:  # every engine error reaches the GUI as a callback, never a traceback
            log.info("engine request failed: %s", err)
            self.failed.emit(request, err)
            return
        self.done.emit(request, result)


class EngineBridge(QObject):
    """Owns the EngineHost (the llama.cpp child process), the worker thread and the only engine queue.

    `call(work, ...)` and `stream(work, ...)` enqueue a request; `work` receives the engine and calls one of its
    typed methods (`lambda engine: engine.tokenize(text)`). Signals for whoever watches the engine as a whole:
    `event` (every streamed event), `busy_changed` (user work queued or running), `died` (the child ended).
    """

    event = Signal(object)
    busy_changed = Signal(bool)
    died = Signal(object)  # EngineDied
    _run = Signal(object)

    def __init__(self, parent: QObject | None = None, hang_timeout: float = 120.0):
        super().__init__(parent)
        self.host = EngineHost(hang_timeout=hang_timeout, start=False)
        self._thread = QThread()
        self._thread.setObjectName("ingle-engine-bridge")
        self._worker = _Worker(self.host)
        self._worker.moveToThread(self._thread)
        self._run.connect(self._worker.run)
        self._worker.event.connect(self._on_event)
        self._worker.done.connect(self._on_done)
        self._worker.failed.connect(self._on_failed)
        self._thread.start()
        self._queue: list[Request] = []
        self.running: Request | None = None
        self._busy = False

    # ------------------------------------------------------------ queueing
    def call(
        self,
        work: Callable[[EngineHost], Any],
        done: Callable[[Any], None] | None = None,
        failed: Callable[[Exception], None] | None = None,
        *,
        background: bool = False,
        key: str | None = None,
        housekeeping: bool = False,
    ) -> Request:
        """Queue a call that returns one value."""
        priority = (
            Priority.HOUSEKEEPING if housekeeping else Priority.BACKGROUND if background else Priority.USER
        )
        return self._enqueue(Request(work, False, priority, key, None, done, failed))

    def stream(
        self,
        work: Callable[[EngineHost], Iterator[Any]],
        event: Callable[[Any], None] | None = None,
        done: Callable[[Any], None] | None = None,
        failed: Callable[[Exception], None] | None = None,
        *,
        background: bool = False,
    ) -> Request:
        """Queue a streaming call (load, chat, complete): `event` per engine event, then `done(None)`.

        A background stream (the API server's requests) waits behind user work, does not make the bridge
        busy, and its events go to its own `event` callback only, not to the window's `event` signal."""
        priority = Priority.BACKGROUND if background else Priority.USER
        return self._enqueue(Request(work, True, priority, None, event, done, failed))

    def start_engine(
        self,
        done: Callable[[Hardware], None] | None = None,
        failed: Callable[[Exception], None] | None = None,
    ) -> Request:
        """Start (or restart after a crash) the engine child; `done` gets the hardware it can use (the GUI
        process never loads llama.cpp, so GPUs and their free memory come from the child)."""

        def restart(_engine) -> Hardware:  # the child, even while chats run on a remote server
            self.host.restart()
            return self.host.hardware()

        return self.call(restart, done, failed)

    def _enqueue(self, request: Request) -> Request:
        request._bridge = self
        if request.key is not None:
            for old in [r for r in self._queue if r.key == request.key]:
                self._queue.remove(old)
                old.state = State.CANCELLED
        # user requests go before every queued background request, in the order they came
        index = len(self._queue)
        if request.priority <= Priority.USER:  # housekeeping goes before user requests too
            index = next((i for i, r in enumerate(self._queue) if r.priority > request.priority), index)
        self._queue.insert(index, request)
        self._dispatch()
        return request

    def _dispatch(self) -> None:
        if self.running is None and self._queue:
            self.running = self._queue.pop(0)
            self.running.state = State.RUNNING
            self._run.emit(self.running)
        self._update_busy()

    def _update_busy(self) -> None:
        busy = any(r.priority == Priority.USER for r in (self.running, *self._queue) if r is not None)
        if busy != self._busy:
            self._busy = busy
            self.busy_changed.emit(busy)

    @property
    def busy(self) -> bool:
        """User work is queued or running (background refreshes do not count)."""
        return self._busy

    def pending(self, key: str | None = None) -> list[Request]:
        """Requests queued or running (with `key`, only those)."""
        live = [r for r in (self.running, *self._queue) if r is not None]
        return [r for r in live if key is None or r.key == key]

    @property
    def idle(self) -> bool:
        return self.running is None and not self._queue

    # ------------------------------------------------------------ cancelling
    def _cancel(self, request: Request) -> None:
        if request in self._queue:
            self._queue.remove(request)
            request.state = State.CANCELLED
            self._update_busy()
        elif request is self.running and request.streaming:
            self._worker.engine.cancel()

    def cancel(self) -> None:
        """Stop the running stream (the Stop button): thread-safe, takes effect before the next token. A
        background stream (an API request) is not the user's to stop here."""
        running = self.running
        if running is None or running.priority == Priority.USER:
            self._worker.engine.cancel()

    # ------------------------------------------------------------ answers (GUI thread)
    def _on_event(self, request: Request, ev: object) -> None:
        if request.on_event is not None:
            request.on_event(ev)
        if request.priority == Priority.USER:
            self.event.emit(ev)

    def _on_done(self, request: Request, result: object) -> None:
        self.running = None
        request.state = State.DONE
        self._update_busy()  # the callback may start the next user action at once
        try:
            if request.on_done is not None:
                request.on_done(result)
        finally:
            self._dispatch()

    def _on_failed(self, request: Request, err: Exception) -> None:
        self.running = None
        request.state = State.FAILED
        died = isinstance(err, EngineDied)
        dropped: list[Request] = []
        if died:  # what waited for this engine cannot run on it; user work is told why
            dropped, self._queue = self._queue, []
        self._update_busy()
        try:
            if request.on_failed is not None:
                request.on_failed(err)
            for r in dropped:
                r.state = State.FAILED
                if r.priority == Priority.USER and r.on_failed is not None:
                    r.on_failed(err)
            if died:
                self.died.emit(err)
        finally:
            self._dispatch()

    def shutdown(self) -> None:
        """Stop any stream, end the worker thread and the engine child (no orphan processes)."""
        for r in self._queue:
            r.state = State.CANCELLED
        self._queue = []
        self._worker.engine.cancel()
        self._thread.quit()
        self._thread.wait(10_000)
        if self._worker.engine is not self.host:
            self._worker.engine.close()
        self.host.close()

    # ------------------------------------------------------------ remote engines (worker thread only)
    @property
    def remote(self) -> Any:
        """The RemoteEngine chats run on now; None while they run on the engine child (a local model)."""
        engine = self._worker.engine
        return None if engine is self.host else engine

    def use_engine(self, engine: Any) -> Any:
        """Make `engine` (a RemoteEngine, or None for the engine child) the one requests run on, and return it.
        Call it only inside a request's work (the worker thread), so no request sees the switch midway."""
        engine = self.host if engine is None else engine
        old, self._worker.engine = self._worker.engine, engine
        if old is not self.host and old is not engine:
            old.close()
        return engine
