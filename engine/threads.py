"""Inference threads from the cores that are idle now (as training picks its threads): llama.cpp's worker threads
meet at a barrier at every step, so one thread on a core that another program keeps busy stalls all of them
(measured on 2 cores with one busy: 2 threads decode at a fraction of what 1 thread does). Chosen when a model
loads and before every reply; an explicit thread count in the load settings wins."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import psutil

from engine.events import ThreadsChosen

BUSY_PERCENT = 50.0  # a core busier than this over the sampling window counts as taken
MIN_WINDOW = 0.1  # seconds of CPU accounting needed for a fair picture


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (a container or taskset may allow fewer than the machine has)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def choose(percents: Sequence[float], physical: int, allowed: Sequence[int] | None = None) -> tuple[int, int]:
    """(threads, idle cores) for per-CPU busy `percents`: one thread per idle CPU we may use, never more than the
    physical cores (hyperthreads share a core's arithmetic units), at least one."""
    cpus = range(len(percents)) if allowed is None else [c for c in allowed if c < len(percents)]
    idle = sum(1 for c in cpus if percents[c] < BUSY_PERCENT)
    return max(1, min(idle, physical, len(cpus) or 1)), idle


class ThreadChooser:
    """Samples per-CPU load between replies: the window runs from the end of one reply to the start of the next
    (the engine is idle then, so what is busy is someone else)."""

    def __init__(self) -> None:
        self._since = 0.0
        self.last: ThreadsChosen | None = None

    def start_window(self) -> None:
        psutil.cpu_percent(percpu=True)  # starts psutil's accounting window
        self._since = time.monotonic()

    def idle_percents(self) -> list[float] | None:
        """Per-CPU busy percentages since the window started; None when it is too short to tell (replies back
        to back: the last choice stands). The first call measures for MIN_WINDOW."""
        if not self._since:
            self.start_window()
            time.sleep(MIN_WINDOW)
        elif time.monotonic() - self._since < MIN_WINDOW:
            return None
        percents = psutil.cpu_percent(percpu=True)
        self._since = 0.0
        return percents

    def pick(self, n_threads: int, n_threads_batch: int) -> ThreadsChosen:
        """Threads for the next request: the settings' count when given, else from the idle cores."""
        cores = len(allowed_cpus())
        if n_threads > 0:
            chosen = ThreadsChosen(n_threads, n_threads_batch or n_threads, cores, -1, "setting")
        else:
            percents = self.idle_percents()
            if percents is None and self.last is not None and self.last.source != "setting":
                return self.last
            threads, idle = choose(
                percents or [0.0] * (os.cpu_count() or 1), physical_cores(), allowed_cpus()
            )
            chosen = ThreadsChosen(threads, n_threads_batch or threads, cores, idle, "idle cores")
        self.last = chosen
        return chosen


def apply(rt) -> ThreadsChosen | None:
    """Set the runtime's context to the threads chosen now (engine.runtime calls this at load and per reply)."""
    import llama_cpp

    if not rt.loaded:
        return None
    chooser = rt.__dict__.setdefault("thread_chooser", ThreadChooser())
    settings = rt.load_settings
    chosen = chooser.pick(settings.n_threads if settings else 0, settings.n_threads_batch if settings else 0)
    llama_cpp.llama_set_n_threads(rt.ctx, chosen.threads, chosen.threads_batch)
    return chosen


def at_load(rt) -> ThreadsChosen | None:
    """Choose at load, then start watching the cores until the first reply (the engine is idle meanwhile)."""
    rt.__dict__.pop("thread_chooser", None)  # new settings: choose afresh
    chosen = apply(rt)
    reply_ended(rt)
    return chosen


def reply_ended(rt) -> None:
    chooser = rt.__dict__.get("thread_chooser")
    if chooser is not None:
        chooser.start_window()
