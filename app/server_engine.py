"""The chat window's engine as the API server sees it: server requests go through the bridge's one queue, so
chat and server requests take turns on the one engine child (one copy of the weights serves both).

Swap point: once EngineHost runs slot calls beside the chat window's own call (multiplexed), the server can use
`bridge.host` directly and this module goes. Until then every server call is a background stream on the
bridge: it waits behind the user's own chat, never makes the window busy, and its events reach only the request
that asked. Threads: the server calls from its worker threads; submissions and cancels are handed to the GUI
thread through queued signals (the bridge's queue is only touched there), events come back through a
thread-safe queue per call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.bridge import EngineBridge, Request, State
from engine.errors import EngineError
from engine.server.scheduler import Scheduler
from engine.settings import OverflowPolicy, SamplingSettings

_END = object()


class _Call:
    """One server request's engine call: its work, its bridge request (once queued) and its events."""

    def __init__(self, work: Callable[[Any], Iterator[Any]]):
        self.work = work
        self.events: queue.Queue = queue.Queue()
        self.request: Request | None = None
        self.cancelled = False


class BridgeEngine(QObject):
    """Hands the server engine calls to the bridge's queue. Lives on the GUI thread; `handle()` per request."""

    _submit = Signal(object)  # _Call, emitted from a server thread, run on the GUI thread
    _cancel = Signal(object)

    def __init__(self, bridge: EngineBridge):
        super().__init__(bridge)
        self.bridge = bridge
        self._lock = threading.Lock()
        self._calls: set[_Call] = set()
        self.closed: str | None = None  # why no more calls are taken
        self._submit.connect(self._on_submit)
        self._cancel.connect(self._on_cancel)
        bridge.died.connect(self._engine_died)

    def handle(self) -> EngineHandle:
        return EngineHandle(self)

    def stream(self, work: Callable[[Any], Iterator[Any]], handle: EngineHandle) -> Iterator[Any]:
        """Run `work(engine)` through the bridge and yield its events (on the calling server thread)."""
        call = _Call(work)
        with self._lock:
            if self.closed:
                raise EngineError(self.closed)
            self._calls.add(call)
        handle.call = call
        if handle.cancelled:
            call.cancelled = True
        self._submit.emit(call)
        try:
            while (item := call.events.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            with self._lock:
                self._calls.discard(call)

    def cancel(self, call: _Call) -> None:
        self._cancel.emit(call)

    # ------------------------------------------------------------ GUI thread
    def _on_submit(self, call: _Call) -> None:
        if call.cancelled or self.closed:
            call.events.put(EngineError(self.closed) if self.closed else _END)
            return
        call.request = self.bridge.stream(
            call.work, event=call.events.put, done=lambda _r: call.events.put(_END), failed=call.events.put,
            background=True,
        )  # fmt: skip

    def _on_cancel(self, call: _Call) -> None:
        call.cancelled = True
        request = call.request
        if request is None:
            return  # not submitted yet: _on_submit ends it
        if request.state is State.QUEUED:
            request.cancel()  # dropped from the queue: no callback will come
            call.events.put(_END)
        elif request.state is State.RUNNING:
            request.cancel()  # the engine stops before its next token, then `done` ends the call

    def _engine_died(self, err: Exception) -> None:
        # the running call gets the error from the bridge; queued background calls are dropped silently
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            call.events.put(err)

    def close(self, why: str) -> None:
        """Take no more calls; end the waiting and running ones with `why` (the server is stopping)."""
        with self._lock:
            self.closed = why
            calls = list(self._calls)
        for call in calls:
            self._on_cancel(call)
            call.events.put(EngineError(why))


class EngineHandle:
    """The engine as one server request sees it: chat/complete through the bridge, and a cancel that stops
    this request only (the Scheduler's Job cancels through the engine it was given)."""

    def __init__(self, owner: BridgeEngine):
        self.owner = owner
        self.call: _Call | None = None
        self.cancelled = False

    def chat(self, messages, sampling: SamplingSettings | None = None,
             policy: OverflowPolicy = OverflowPolicy.STOP, continue_last: bool = False) -> Iterator[Any]:  # fmt: skip
        return self.owner.stream(lambda engine: engine.chat(messages, sampling, policy, continue_last), self)

    def complete(self, prompt: str, sampling: SamplingSettings | None = None,
                 policy: OverflowPolicy = OverflowPolicy.STOP) -> Iterator[Any]:  # fmt: skip
        return self.owner.stream(lambda engine: engine.complete(prompt, sampling, policy), self)

    def cancel(self) -> None:
        """Safe from any thread; before the call started it keeps the call from starting."""
        self.cancelled = True
        if self.call is not None:
            self.owner.cancel(self.call)


class BridgeScheduler(Scheduler):
    """The server's Scheduler over a BridgeEngine: each request's Job takes a fresh handle (Job reads
    `scheduler.engine` once), so cancelling one request never stops another or the chat window's reply."""

    @property
    def engine(self) -> EngineHandle:
        return self._bridge_engine.handle()

    @engine.setter
    def engine(self, value: BridgeEngine) -> None:
        self._bridge_engine = value
