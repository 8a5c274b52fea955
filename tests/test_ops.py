"""app/ops.py: background work off the GUI thread, in a thread or a child process, with real Qt event loops."""

from __future__ import annotations

import os
import threading
import time

import pytest

from app.ops import Op, describe_error
from engine.errors import Cancelled, LibraryError


def _pid_and_thread() -> tuple[int, str]:
    return os.getpid(), threading.current_thread().name


def _fails() -> None:
    raise LibraryError("The library folder /x is not writable.")


def _sleeps() -> None:
    time.sleep(60)


def test_work_runs_off_the_gui_thread_and_success_runs_on_it(qtbot):
    results = []
    gui = threading.current_thread()
    Op(None, lambda progress: threading.current_thread()).success(
        lambda worker: results.append((worker, threading.current_thread()))
    ).run()
    qtbot.waitUntil(lambda: bool(results), timeout=30_000)
    worker, callback = results[0]
    assert worker is not gui and callback is gui


def test_progress_arrives_in_order_on_the_gui_thread(qtbot):
    seen, done = [], []

    def work(progress):
        for i in range(5):
            progress(i / 4, f"step {i}")
        return "ok"

    Op(None, work).on_progress(lambda f, t: seen.append((f, t))).success(done.append).run()
    qtbot.waitUntil(lambda: bool(done), timeout=30_000)
    assert done == ["ok"] and [t for _, t in seen] == [f"step {i}" for i in range(5)]


def test_failures_go_to_the_failure_callback(qtbot):
    errors = []
    Op(None, lambda progress: _fails()).failure(errors.append).run()
    qtbot.waitUntil(lambda: bool(errors), timeout=30_000)
    assert isinstance(errors[0], LibraryError) and "not writable" in describe_error(errors[0])


def test_failures_are_shown_by_default_without_a_traceback(qtbot, monkeypatch):
    shown = []
    monkeypatch.setattr("app.ops.show_error", lambda parent, text, title="Ingle": shown.append(text))
    Op(None, lambda progress: 1 / 0).run()
    qtbot.waitUntil(lambda: bool(shown), timeout=30_000)
    assert shown[0].startswith("Something went wrong inside Ingle (ZeroDivisionError")
    assert "Traceback" not in shown[0]


def test_cancel_stops_work_that_reports_progress(qtbot):
    errors = []

    def work(progress):
        while True:
            progress(None, "working")
            time.sleep(0.01)

    op = Op(None, work).failure(errors.append).run()
    qtbot.wait(50)
    op.cancel()
    qtbot.waitUntil(lambda: bool(errors), timeout=30_000)
    assert isinstance(errors[0], Cancelled)


def test_child_process_work_runs_in_another_process(qtbot):
    results = []
    Op(None, None).in_child_process(_pid_and_thread).success(results.append).run()
    qtbot.waitUntil(lambda: bool(results), timeout=60_000)
    assert results[0][0] != os.getpid()


def test_child_process_errors_keep_their_type(qtbot):
    errors = []
    Op(None, None).in_child_process(_fails).failure(errors.append).run()
    qtbot.waitUntil(lambda: bool(errors), timeout=60_000)
    assert isinstance(errors[0], LibraryError) and "not writable" in str(errors[0])


def test_cancelling_a_child_kills_it(qtbot):
    errors = []
    op = Op(None, None).in_child_process(_sleeps).failure(errors.append).run()
    qtbot.waitUntil(
        lambda: op._child_process.pid is not None and op._child_process.is_alive(), timeout=60_000
    )
    op.cancel()
    qtbot.waitUntil(lambda: bool(errors), timeout=30_000)
    assert isinstance(errors[0], Cancelled) and not op._child_process.is_alive()


@pytest.mark.parametrize("label", ["Copying model…"])
def test_progress_dialog_follows_and_closes(qtbot, label):
    done = []
    gate = threading.Event()

    def work(progress):
        progress(0.5, "half way")
        gate.wait(30)
        return 1

    op = Op(None, work).with_progress(label).success(done.append).run()
    qtbot.waitUntil(lambda: op._dialog is not None and op._dialog.value() == 500, timeout=30_000)
    assert op._dialog.labelText() == "half way"
    gate.set()
    qtbot.waitUntil(lambda: bool(done), timeout=30_000)
    assert op._dialog is None and op.finished
