"""One job at a time in a child process, for the wizard's steps that load llama.cpp or torch (which the GUI
process never imports): a thin layer over app/ops.py's `Op.in_child_process`, keeping one job in flight."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject

from app.ops import Op, describe_error


class ChildJobs(QObject):
    """`run(fn, args, on_done, on_failed)`: `fn(*args)` in a child; `on_done(result)` or `on_failed(message)`."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._op: Op | None = None

    @property
    def busy(self) -> bool:
        return self._op is not None and not self._op.finished

    def run(self, fn: Callable, args: tuple, on_done: Callable, on_failed: Callable) -> None:
        if self.busy:
            raise RuntimeError("a job is already running")
        self._op = (
            Op(self.parent(), None)
            .in_child_process(fn, *args)
            .success(on_done)
            .failure(lambda err: on_failed(describe_error(err)))
            .run()
        )

    def close(self) -> None:
        """Stop whatever runs (the child is killed)."""
        if self.busy:
            self._op.abandon()
