"""The one way to run work off the GUI thread: `Op(parent, work).success(...).failure(...).with_progress(...).run()`.

In the spirit of Anki's `QueryOp`: one builder for every slow call (file copies, hashing, GGUF inspection, Hub
calls, training jobs), failures shown to the user by default, callbacks always on the GUI thread. `work` runs on
a thread of the shared pool; with `.in_child_process()` it runs in a fresh child process instead (for work that
loads llama.cpp or torch, which the GUI process never imports: `work` and its arguments must then be picklable,
a module-level function).

What `work` may not touch: widgets, or anything the GUI thread changes meanwhile. It gets a `Progress` to report
through (`progress(fraction, text)`, thread-safe; fraction None when unknown) and can check `progress.cancelled`.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, QTimer, Signal
from PySide6.QtWidgets import QProgressDialog, QWidget

from app.dialogs import show_error
from engine.child_process import die_with_parent
from engine.errors import Cancelled, IngleError

T = TypeVar("T")
CHILD_POLL_MS = 100
_running: set[Op] = set()  # ops keep themselves alive until their callbacks have run


def describe_error(err: BaseException) -> str:
    """What the user reads: an IngleError's message, or the kind and text of an unexpected error (no traceback)."""
    if isinstance(err, IngleError):
        return str(err)
    return f"Something went wrong inside Ingle ({type(err).__name__}: {err})."


class Progress:
    """Handed to `work`: report progress from any thread, and see whether the user cancelled."""

    def __init__(self, report: Callable[[float | None, str], None]):
        self._report = report
        self._cancel = threading.Event()

    def __call__(self, fraction: float | None = None, text: str = "") -> None:
        if self._cancel.is_set():
            raise Cancelled("Cancelled.")
        self._report(fraction, text)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()


class _Signals(QObject):
    """Worker threads -> the GUI thread (queued connections)."""

    progress = Signal(object, str)
    done = Signal(object)
    failed = Signal(object)


class _Runnable(QRunnable):
    def __init__(self, op: Op):
        super().__init__()
        self.op = op

    def run(self) -> None:
        op = self.op
        try:
            try:
                result = op._work(op.progress)
            except BaseException as err:  # every failure reaches the GUI as a message
                op._signals.failed.emit(err)
            else:
                op._signals.done.emit(result)
        except RuntimeError:  # the application is gone (its objects deleted at exit): nobody to tell
            pass


def _child_main(conn, work: Callable, args: tuple) -> None:
    die_with_parent()
    try:
        conn.send(("done", work(*args)))
    except BaseException as err:
        try:
            conn.send(("failed", err))
        except Exception:  # an error that does not pickle still arrives as a message
            conn.send(("failed", RuntimeError(f"{type(err).__name__}: {err}")))
    finally:
        conn.close()


class Op(Generic[T]):
    """One piece of background work and what happens when it ends. Build it, then `run()`."""

    def __init__(self, parent: QObject | None, work: Callable[[Progress], T]):
        self.parent = parent
        self._work = work
        self._on_success: Callable[[T], None] | None = None
        self._on_failure: Callable[[BaseException], None] | None = None
        self._on_progress: Callable[[float | None, str], None] | None = None
        self._label: str | None = None
        self._dialog: QProgressDialog | None = None
        self._child: tuple | None = None
        self._signals = _Signals()
        self._signals.progress.connect(self._progress, Qt.QueuedConnection)
        self._signals.done.connect(self._done, Qt.QueuedConnection)
        self._signals.failed.connect(self._failed, Qt.QueuedConnection)
        self.progress = Progress(self._report)
        self.finished = False

    def _report(self, fraction: float | None, text: str) -> None:
        try:
            self._signals.progress.emit(fraction, text)
        except RuntimeError:  # the application is gone: stop the work
            self.progress.cancel()

    # ------------------------------------------------------------ building
    def success(self, callback: Callable[[T], None]) -> Op[T]:
        self._on_success = callback
        return self

    def failure(self, callback: Callable[[BaseException], None]) -> Op[T]:
        """Handle failures yourself; without it they are shown in a message box (Cancelled is never shown)."""
        self._on_failure = callback
        return self

    def on_progress(self, callback: Callable[[float | None, str], None]) -> Op[T]:
        """Progress reports on the GUI thread (e.g. into a status label)."""
        self._on_progress = callback
        return self

    def with_progress(self, label: str) -> Op[T]:
        """Show a progress dialog with a Cancel button while it runs (after a short delay)."""
        self._label = label
        return self

    def in_child_process(self, function: Callable[..., T], *args: Any) -> Op[T]:
        """Run `function(*args)` in a fresh child process instead of `work` on a thread."""
        self._child = (function, args)
        return self

    # ------------------------------------------------------------ running
    def run(self) -> Op[T]:
        _running.add(self)
        if self._label is not None:
            parent = self.parent if isinstance(self.parent, QWidget) else None
            self._dialog = QProgressDialog(self._label, "Cancel", 0, 0, parent)
            self._dialog.setWindowTitle("Ingle")
            self._dialog.setMinimumDuration(400)
            self._dialog.canceled.connect(self.cancel)
        if self._child is not None:
            self._start_child()
        else:
            QThreadPool.globalInstance().start(_Runnable(self))
        return self

    def cancel(self) -> None:
        """Ask the work to stop (it sees `progress.cancelled`); a child process is killed."""
        self.progress.cancel()
        if self._child_process is not None and self._child_process.is_alive():
            self._child_process.kill()

    def abandon(self) -> None:
        """Cancel, and let nobody hear about it (its owner is going away)."""
        self._on_success = None
        self._on_failure = lambda _err: None
        self.cancel()

    _child_process = None

    def _start_child(self) -> None:
        function, args = self._child
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe(duplex=False)
        self._child_process = ctx.Process(
            target=_child_main, args=(child_conn, function, args), name="ingle-op", daemon=True
        )
        self._child_process.start()
        child_conn.close()
        self._timer = QTimer(interval=CHILD_POLL_MS)
        self._timer.timeout.connect(self._poll_child)
        self._timer.start()

    def _poll_child(self) -> None:
        proc = self._child_process
        try:
            message = self._conn.recv() if self._conn.poll() else None
        except (EOFError, OSError):
            message = None
        if message is None and proc.is_alive():
            return
        self._timer.stop()
        self._conn.close()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        if message is not None and message[0] == "done":
            self._done(message[1])
        elif message is not None:
            self._failed(message[1])
        elif self.progress.cancelled:
            self._failed(Cancelled("Cancelled."))
        else:
            self._failed(IngleError(f"The worker process ended unexpectedly (exit code {proc.exitcode})."))

    # ------------------------------------------------------------ answers (GUI thread)
    def _progress(self, fraction: float | None, text: str) -> None:
        if self._dialog is not None:
            if fraction is None:
                self._dialog.setRange(0, 0)
            else:
                self._dialog.setRange(0, 1000)
                self._dialog.setValue(int(max(0.0, min(1.0, fraction)) * 1000))
            if text:
                self._dialog.setLabelText(text)
        if self._on_progress is not None:
            self._on_progress(fraction, text)

    def _close(self) -> None:
        self.finished = True
        if self._dialog is not None:
            self._dialog.canceled.disconnect(self.cancel)
            self._dialog.close()
            self._dialog.deleteLater()
            self._dialog = None
        _running.discard(self)

    def _done(self, result: T) -> None:
        self._close()
        if self._on_success is not None:
            self._on_success(result)

    def _failed(self, err: BaseException) -> None:
        self._close()
        if self._on_failure is not None:
            self._on_failure(err)
        elif not isinstance(err, Cancelled):
            parent = self.parent if isinstance(self.parent, QWidget) else None
            show_error(parent, describe_error(err))
