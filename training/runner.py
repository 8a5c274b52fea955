"""Runs training in a child process: events stream back over a pipe; cancel is honoured within a step; no orphans."""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Iterator
from pathlib import Path

from engine.errors import EngineDied, IngleError
from training.events import TrainDone

_POLL_SECONDS = 0.2


def _child(conn, kwargs: dict) -> None:
    from engine.host import _die_with_parent
    from training.lora import train

    _die_with_parent()
    cancel = threading.Event()

    def listen() -> None:
        try:
            while conn.recv() != "cancel":
                pass
        except (EOFError, OSError):
            pass
        cancel.set()

    threading.Thread(target=listen, daemon=True).start()
    try:
        train(emit=conn.send, cancel=cancel, **kwargs)
    except IngleError as err:
        conn.send(("error", err))
    except Exception as err:  # unexpected: report it as a training error with its type
        from training.errors import TrainingError

        conn.send(("error", TrainingError(f"Training failed: {type(err).__name__}: {err}")))
    finally:
        conn.close()


class TrainingRun:
    """One training run in a child process. Iterate `events()`; the last is TrainDone, or an error is raised."""

    def __init__(self, base: str | Path, data: str | Path, out: str | Path, settings=None, **options):
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        kwargs = {"base": str(base), "data": str(data), "out": str(out), "settings": settings, **options}
        self.process = ctx.Process(
            target=_child, args=(child_conn, kwargs), name="ingle-training", daemon=True
        )
        self.process.start()
        child_conn.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def events(self) -> Iterator[object]:
        while True:
            try:
                ready = self._conn.poll(_POLL_SECONDS)
            except (EOFError, OSError):
                ready = True
            if not ready:
                if not self.process.is_alive():
                    self._died()
                continue
            try:
                event = self._conn.recv()
            except (EOFError, OSError):
                self._died()
            if isinstance(event, tuple) and event[:1] == ("error",):
                self.process.join(10)
                raise event[1]
            yield event
            if isinstance(event, TrainDone):
                self.process.join(30)
                return

    def _died(self):
        self.process.join(5)
        raise EngineDied(f"The training process ended unexpectedly (exit code {self.process.exitcode}).",
                         self.process.exitcode)  # fmt: skip

    def cancel(self) -> None:
        try:
            self._conn.send("cancel")
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        """Stop the child (politely, then by force) and release the pipe."""
        if self.process.is_alive():
            self.cancel()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._conn.close()

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
