"""The request path to the engine: a fair, bounded queue in front of its slots, jobs run in worker threads.

The engine decodes `slots` requests at once (its slot calls, batched in one llama_decode per step); more
requests wait in FIFO order (asyncio's semaphore wakes waiters in order), at most `max_queue` of them; beyond
that the caller gets `QueueFull` (503 with Retry-After). Routes only see `async with scheduler.slot() as
engine` and `Job`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from engine.errors import EngineDied

log = logging.getLogger("ingle.server")


class QueueFull(Exception):
    """Every slot is busy and the queue is at its bound."""


class Scheduler:
    """Hands the engine to one request at a time; restarts a dead engine before the next request."""

    def __init__(self, engine: Any, reload: Callable[[Any], None], max_queue: int = 16, slots: int = 1):
        self.engine = engine
        self._reload = reload  # (engine) -> None: start a fresh engine child and load the model again
        self.max_queue = max_queue
        self.slots = slots
        self.waiting = 0
        self.busy = 0
        self.needs_restart = False
        self.restarts = 0
        self._sem: asyncio.Semaphore | None = None  # made in the server's event loop
        self._restart_lock = threading.Lock()  # requests that find the engine dead restart it once

    @asynccontextmanager
    async def slot(self):
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.slots)
        if self._sem.locked() and self.waiting >= self.max_queue:
            raise QueueFull()
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.busy += 1
        try:
            if self.needs_restart:
                await anyio.to_thread.run_sync(self._restart)
            yield self.engine
        finally:
            self.busy -= 1
            self._sem.release()

    def _restart(self) -> None:
        with self._restart_lock:
            if not self.needs_restart:
                return  # another request restarted it meanwhile
            log.warning("restarting the engine after it stopped")
            self._reload(self.engine)
            self.needs_restart = False
            self.restarts += 1

    def engine_died(self) -> None:
        self.needs_restart = True


_END = object()


class Job:
    """One streaming engine call (`call(engine)` yields events) run in a worker thread.

    Iterate it from the event loop; `cancel()` ends the generation (the engine stops before its next token:
    a slot call's iterator is cancelled by its id, other calls through `engine.cancel()`); `aclose()` cancels
    and waits until the call has ended, so the slot can be handed on.
    """

    def __init__(self, scheduler: Scheduler, call: Callable[[Any], Iterator[Any]]):
        self.scheduler = scheduler
        self.engine = scheduler.engine
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._finished = asyncio.Event()
        self.cancelled = False
        self._stream: Any = None  # the iterator the call returned, once it has
        self._stream_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(call,), name="ingle-server-job", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _run(self, call) -> None:
        try:
            stream = call(self.engine)
            with self._stream_lock:
                self._stream = stream
                if self.cancelled:  # cancelled while the call was being made
                    self._cancel_stream()
            for event in stream:
                self._put(event)
        except BaseException as err:  # handed to the request that owns the job
            if isinstance(err, EngineDied):
                self.scheduler.engine_died()
            self._put(err)
        finally:  # one callback: a reader that sees the end also sees the job finished (else aclose cancels)
            self._loop.call_soon_threadsafe(self._end)

    def _end(self) -> None:
        self._queue.put_nowait(_END)
        self._finished.set()

    async def next(self) -> Any:
        """The next event, or None at the end; an engine error is raised here."""
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # stays at the end for later calls
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def __aiter__(self):
        return self

    async def __anext__(self) -> Any:
        item = await self.next()
        if item is None:
            raise StopAsyncIteration
        return item

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def unread(self) -> list[Any]:
        """The events (and error) a finished job produced that nobody read: a stream the client left."""
        items = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not _END:
                items.append(item)
        if self.done:
            self._queue.put_nowait(_END)
        return items

    def cancel(self) -> None:
        """Safe from any thread; repeating it is harmless."""
        with self._stream_lock:
            self.cancelled = True
            self._cancel_stream()

    def _cancel_stream(self) -> None:
        if self._stream is None:
            return  # the worker cancels it once the call returns
        if hasattr(self._stream, "cancel"):
            self._stream.cancel()
        else:
            self.engine.cancel()

    async def aclose(self) -> None:
        """Cancel a running generation and wait for the engine to finish it (shielded from cancellation:
        the slot must not be handed on while the engine still works for this request)."""
        with anyio.CancelScope(shield=True):
            if not self._finished.is_set():
                self.cancel()
            while not self._finished.is_set():
                with anyio.move_on_after(0.2):
                    await self._finished.wait()
                if not hasattr(self._stream, "cancel"):
                    self.cancel()  # engine.cancel() before an ordinary call has started is lost: repeat it
