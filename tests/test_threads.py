"""Inference threads from the idle cores: a busy core is left alone, an explicit setting wins, and the choice
reaches llama.cpp and the reply's events."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from engine.events import ReplyDone, ThreadsChosen
from engine.settings import LoadSettings, SamplingSettings
from engine.threads import ThreadChooser, allowed_cpus, choose

GREEDY = SamplingSettings(temperature=0.0, max_tokens=4)


def test_choose_counts_idle_cores_capped_by_physical_cores():
    assert choose([3.0, 2.0], physical=2) == (2, 2)
    assert choose([100.0, 1.0], physical=2) == (1, 1)  # one busy: one thread
    assert choose([100.0, 99.0], physical=2) == (1, 0)  # all busy: still one thread
    assert choose([0.0] * 8, physical=4) == (4, 8)  # hyperthreads do not add threads
    assert choose([0.0, 100.0, 0.0, 0.0], physical=4, allowed=[1, 2]) == (1, 1)  # only the CPUs we may use
    assert choose([0.0, 0.0], physical=2, allowed=[5]) == (1, 0)  # nonsense affinity: one thread, not zero


@pytest.fixture
def busy_cpu():
    """A real competing process spinning on the last CPU this process may use."""
    cpus = allowed_cpus()
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    target = cpus[-1]
    code = f"import os; os.sched_setaffinity(0, {{{target}}})\nwhile True: pass"
    proc = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(0.3)  # let it settle on its CPU
    yield target
    proc.kill()
    proc.wait(5)


def test_a_busy_core_is_not_given_a_thread(busy_cpu):
    chooser = ThreadChooser()
    chosen = chooser.pick(0, 0)
    cores = len(allowed_cpus())
    assert chosen.source == "idle cores" and chosen.cores == cores
    assert chosen.idle <= cores - 1  # the spinning CPU is never counted idle
    assert chosen.threads == max(1, min(chosen.idle, os.cpu_count()))
    assert chosen.threads <= cores - 1
    assert "busy with other work" in chosen.describe()


def test_replies_back_to_back_keep_the_last_choice_and_a_pause_rechecks():
    chooser = ThreadChooser()
    first = chooser.pick(0, 0)
    chooser.start_window()
    assert chooser.pick(0, 0) is first  # no time to measure: the choice stands
    chooser.start_window()
    time.sleep(0.15)
    again = chooser.pick(0, 0)
    assert again is not first and again.source == "idle cores"


def test_the_users_setting_wins(tiny_model, busy_cpu):
    import llama_cpp

    from engine.runtime import Runtime

    rt = Runtime()
    list(rt.load(tiny_model, LoadSettings(n_ctx=512, n_threads=len(allowed_cpus()), n_threads_batch=1)))
    try:
        events = list(rt.complete("the cat", GREEDY))
        chosen = next(e for e in events if isinstance(e, ThreadsChosen))
        assert (chosen.threads, chosen.threads_batch, chosen.source) == (len(allowed_cpus()), 1, "setting")
        assert llama_cpp.llama_n_threads(rt.ctx) == len(allowed_cpus())
        assert llama_cpp.llama_n_threads_batch(rt.ctx) == 1
        assert "set in the load settings" in chosen.describe()
    finally:
        rt.close()


def test_each_reply_runs_on_the_idle_cores(tiny_model, busy_cpu):
    import llama_cpp

    from engine.runtime import Runtime

    rt = Runtime()
    list(rt.load(tiny_model, LoadSettings(n_ctx=512)))
    try:
        time.sleep(0.15)  # the user types: the engine watches the cores meanwhile
        events = list(rt.complete("the cat", GREEDY))
        chosen = next(e for e in events if isinstance(e, ThreadsChosen))
        assert events.index(chosen) < next(i for i, e in enumerate(events) if isinstance(e, ReplyDone))
        assert chosen.source == "idle cores" and chosen.threads <= len(allowed_cpus()) - 1
        assert llama_cpp.llama_n_threads(rt.ctx) == chosen.threads
    finally:
        rt.close()
