"""Run a function in a child process and hear back on the GUI thread: for work that loads llama.cpp or torch,
which the GUI process never imports. One job at a time, each in a fresh process (its memory goes with it);
a QTimer polls, so there is no extra thread in the GUI."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer

from engine.errors import IngleError

POLL_MS = 100


def _child(conn, fn: Callable, args: tuple) -> None:
    from engine.host import die_with_parent

    die_with_parent()
    try:
        conn.send(("done", fn(*args)))
    except IngleError as err:
        conn.send(("failed", str(err)))
    except Exception as err:  # a bug in the child: still a message, never a traceback in the GUI
        conn.send(("failed", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


class ChildJobs(QObject):
    """`run(fn, args, on_done, on_failed)`: `fn(*args)` in a child; `on_done(result)` or `on_failed(message)`."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._process = None
        self._conn = None
        self._callbacks: tuple[Callable, Callable] | None = None
        self._timer = QTimer(self, interval=POLL_MS)
        self._timer.timeout.connect(self._check)

    @property
    def busy(self) -> bool:
        return self._process is not None

    def run(self, fn: Callable, args: tuple, on_done: Callable, on_failed: Callable) -> None:
        if self.busy:
            raise RuntimeError("a job is already running")
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=_child, args=(child_conn, fn, args), name="ingle-job", daemon=True)
        self._process.start()
        child_conn.close()
        self._callbacks = (on_done, on_failed)
        self._timer.start()

    def _check(self) -> None:
        if self._process is None:
            return
        try:
            ready = self._conn.poll()
            message = self._conn.recv() if ready else None
        except (EOFError, OSError):
            ready, message = True, None
        if not ready:
            if self._process.is_alive():
                return
            message = None  # died without a word
        on_done, on_failed = self._callbacks
        code = self._finish()
        if message is None:
            on_failed(f"The worker process ended unexpectedly (exit code {code}).")
        elif message[0] == "done":
            on_done(message[1])
        else:
            on_failed(message[1])

    def _finish(self) -> int | None:
        self._timer.stop()
        process, self._process, self._callbacks = self._process, None, None
        self._conn.close()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)
        return process.exitcode

    def close(self) -> None:
        """Stop whatever runs (the child is killed)."""
        if self._process is not None:
            self._process.kill()
            self._finish()
