"""Progress of long CLI work on stderr: a bar with an ETA on a terminal, plain lines when stderr is not one."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from engine.units import clock as duration  # the name callers of this module use

_BAR = 24
_REDRAW_SECONDS = 0.1  # a terminal bar is redrawn at most this often
PLAIN_INTERVAL_SECONDS = 10.0  # without a terminal, a line at least this often (and at every tenth done)


class Progress:
    """One task's progress: `update(done)` as it goes, `note()` for a line beside it, `close()` at the end.

    On a terminal one line is redrawn in place (a bar, counts, ETA); otherwise (a log file, a pipe, a test) plain
    lines are printed: the first, one at every tenth of the total or every PLAIN_INTERVAL_SECONDS, and the last,
    so a long run says what it is doing without flooding the log.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        unit: str = "",
        stream: TextIO | None = None,
        tty: bool | None = None,
        interval: float = PLAIN_INTERVAL_SECONDS,
    ):
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.interval = interval
        self.done = 0
        self.started = time.monotonic()
        self._first: tuple[float, int] | None = None  # (time, done) of the first update: the rate's origin
        self._drawn = 0.0
        self._printed_at = 0.0
        self._printed_tenth = -2  # -2: nothing printed yet
        self._line_open = False  # a bar is on the terminal's current line
        self.closed = False

    # ---------------------------------------------------------------- public
    def update(self, done: int, detail: str = "", eta: float | None = None, total: int | None = None) -> None:
        """`done` of `total` (units) so far; `eta`: seconds left when the caller knows better than the rate."""
        if total is not None:
            self.total = total
        now = time.monotonic()
        if self._first is None:
            self._first = (now, done)
        self.done = done
        if eta is None:
            eta = self._eta(now)
        finished = self.total is not None and done >= self.total
        if self.tty:
            if finished or now - self._drawn >= _REDRAW_SECONDS:
                self._drawn = now
                self._draw(self._text(detail, eta, bar=True))
            return
        tenth = int(10 * done / self.total) if self.total else -1
        first = self._printed_tenth == -2
        if finished or first or tenth > self._printed_tenth or now - self._printed_at >= self.interval:
            self._printed_at, self._printed_tenth = now, tenth
            self._line(self._text(detail, eta, bar=False))

    def tick(self, detail: str = "") -> None:
        """Nothing new is done, but time went by: redraw the time so far (on a terminal; plain lines keep their
        interval)."""
        self.update(self.done, detail)

    def advance(self, n: int = 1, detail: str = "", eta: float | None = None) -> None:
        self.update(self.done + n, detail, eta)

    def note(self, text: str) -> None:
        """A line of its own (a phase, a validation loss), printed above the bar."""
        self._line(f"{self.label}: {text}")

    def close(self, message: str | None = None) -> None:
        """End the bar's line; `message` (e.g. what was done, in how long) is printed as the last line."""
        if self.closed:
            return
        self.closed = True
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False
        if message:
            self._line(f"{self.label}: {message}")
        self.stream.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- drawing
    def _eta(self, now: float) -> float | None:
        if not self.total or self._first is None:
            return None
        t0, d0 = self._first
        if self.done <= d0 or now <= t0:
            return None
        return (now - t0) / (self.done - d0) * max(0, self.total - self.done)

    def _text(self, detail: str, eta: float | None, bar: bool) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            share = min(1.0, self.done / self.total)
            count = f"{self.done}/{self.total}{unit} ({share:.0%})"
            if bar:
                filled = int(_BAR * share)
                count = "[" + "#" * filled + "." * (_BAR - filled) + "] " + count
        elif self.done or unit:
            count = f"{self.done}{unit}"
        else:
            count = ""  # a phase without a count: its time so far says it is alive
        parts = [count] if count else []
        if detail:
            parts.append(detail)
        if self.total and self.done >= self.total:
            parts.append(f"in {duration(self.elapsed())}")
        elif eta is not None:
            parts.append(f"ETA {duration(eta)}")
        else:
            parts.append(f"{duration(self.elapsed())} so far")
        return f"{self.label}: " + ", ".join(parts)

    def _draw(self, text: str) -> None:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r" + text[:width].ljust(width))
        self.stream.flush()
        self._line_open = True

    def _line(self, text: str) -> None:
        if self._line_open:  # clear the bar, print the line, let the next update redraw the bar below it
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r" + " " * width + "\r")
            self._line_open = False
            self._drawn = 0.0
        self.stream.write(text + "\n")
        self.stream.flush()


def say(label: str, text: str, stream: TextIO | None = None) -> None:
    """One line of what a command is doing now (a phase without a count: loading, dequantizing)."""
    stream = stream if stream is not None else sys.stderr
    stream.write(f"{label}: {text}\n")
    stream.flush()
