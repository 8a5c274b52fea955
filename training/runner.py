"""Runs training in a child process: events stream back over a pipe; cancel is honoured within a step; no orphans."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from engine.child_process import describe_exit, keep_crash_log, new_log
from engine.errors import EngineDied, EngineHung, IngleError
from training.events import TrainDone

_POLL_SECONDS = 0.2
HEARTBEAT_SECONDS = 1.0
HEARTBEAT = ("alive",)


def _child(conn, kwargs: dict, log_path: str) -> None:
    from engine.child_process import die_with_parent, native_stderr_to

    die_with_parent()
    native_stderr_to(log_path)  # llama.cpp's messages (an abort's, too) go to the log, not over our lines
    # Ctrl+C in a terminal reaches the whole process group: the parent turns it into a cancel, which saves a
    # checkpoint; a KeyboardInterrupt here would lose the run and print a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF conversion bar would scribble over ours
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes are not the user's
    cancel = threading.Event()
    finished = threading.Event()
    send_lock = threading.Lock()

    def send(msg) -> None:
        with send_lock:
            conn.send(msg)

    def heartbeat() -> None:
        # a step can take minutes on a big model; the parent tells "slow" from "stopped" by these
        while not finished.wait(HEARTBEAT_SECONDS):
            try:
                send(HEARTBEAT)
            except (OSError, ValueError):
                return

    def listen() -> None:
        try:
            while conn.recv() != "cancel":
                pass
        except (EOFError, OSError):
            pass
        cancel.set()

    threading.Thread(target=listen, daemon=True).start()
    threading.Thread(target=heartbeat, daemon=True).start()  # before importing torch, which takes seconds
    try:
        from training.lora import train

        train(emit=send, cancel=cancel, **kwargs)
    except IngleError as err:
        send(("error", err))
    except Exception as err:  # unexpected: report it as a training error with its type
        from training.errors import TrainingError

        send(("error", TrainingError(f"Training failed: {type(err).__name__}: {err}")))
    finally:
        finished.set()
        with send_lock:
            conn.close()


class TrainingRun:
    """One training run in a child process. Iterate `events()`; the last is TrainDone, or an error is raised."""

    def __init__(
        self, base: str | Path, data: str | Path, out: str | Path, settings=None, hang_timeout: float = 120.0,
        **options,
    ):  # fmt: skip
        """`hang_timeout`: seconds without any sign of life (the child sends one every second, even mid-step)
        after which the child is killed and `events()` raises EngineHung."""
        self.hang_timeout = hang_timeout
        self._last_sign = time.monotonic()
        self.finished = False  # TrainDone or an error has come
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        kwargs = {"base": str(base), "data": str(data), "out": str(out), "settings": settings, **options}
        self.log_path = new_log()
        self.crash_log: Path | None = None  # kept when the child dies, and named in the error
        self.process = ctx.Process(
            target=_child, args=(child_conn, kwargs, str(self.log_path)), name="ingle-training", daemon=True
        )
        self.process.start()
        child_conn.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def events(self, heartbeats: bool = False) -> Iterator[object]:
        """Every event until TrainDone (blocking); errors, a dead or a silent child raise. `heartbeats`: also
        yield None for each sign of life (about every second), so a caller can show time passing in long phases."""
        while True:
            ready, event = self._next(_POLL_SECONDS)
            if event is None and ready and heartbeats:
                yield None
            if event is not None:
                yield event
                if isinstance(event, TrainDone):
                    return

    def poll(self) -> list[object]:
        """The events that have arrived, without waiting (for a GUI timer); raises like events()."""
        out: list[object] = []
        while not self.finished:
            ready, event = self._next(0)
            if not ready:
                break
            if event is not None:
                out.append(event)
        return out

    def _next(self, timeout: float) -> tuple[bool, object | None]:
        """(whether a message came within `timeout`, the event it carried or None for a heartbeat)."""
        try:
            ready = self._conn.poll(timeout)
        except (EOFError, OSError):
            ready = True
        if not ready:
            if not self.process.is_alive():
                self._died()
            if time.monotonic() - self._last_sign > self.hang_timeout:
                self._hung()
            return False, None
        try:
            event = self._conn.recv()
        except (EOFError, OSError):
            self._died()
        self._last_sign = time.monotonic()
        if event == HEARTBEAT:
            return True, None
        if isinstance(event, tuple) and event[:1] == ("error",):
            self.finished = True
            self.process.join(10)
            raise event[1]
        if isinstance(event, TrainDone):
            self.finished = True
            self.process.join(30)
        return True, event

    def _died(self):
        self.process.join(5)
        if self.crash_log is None:
            self.crash_log = keep_crash_log(self.log_path, self.process.pid)
        where = f" Its log: {self.crash_log}." if self.crash_log else ""
        raise EngineDied(
            f"The training process ended unexpectedly ({describe_exit(self.process.exitcode)}); a model file that "
            f"llama.cpp or torch cannot handle can do this.{where}", self.process.exitcode,
        )  # fmt: skip

    def _hung(self):
        self.process.kill()
        self.process.join(5)
        raise EngineHung(
            f"The training process stopped answering for {self.hang_timeout:.0f} s and was stopped. A checkpoint "
            "saved before then can be resumed (Resume, or `ingle train ... --resume`).", self.process.exitcode,
        )  # fmt: skip

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
        if self.crash_log is None:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
