"""Starting the GUI: a missing display library, no display, an unwritable home or a damaged store each say what to
do (one line on the terminal, a dialog in the app), never a Qt abort, a traceback or an empty screen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from app import start as app_main
from app.main import MainWindow
from app.platform_check import XCB_LIBRARIES, can_connect_x, can_load, display_problem
from engine.library import STARTER_NAME, Library

REPO = Path(__file__).resolve().parents[1]
STOCK_DEBIAN_MISSING = {"libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxcb-keysyms.so.1"}


def test_display_problem_names_the_packages_of_the_missing_libraries():
    line = display_problem(
        {"DISPLAY": ":0"}, "linux", lambda lib: lib not in STOCK_DEBIAN_MISSING, lambda d: True
    )
    assert line is not None and "\n" not in line
    assert line.endswith("sudo apt install libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1")
    assert "libxcb-cursor.so.0" in line
    one = display_problem({"DISPLAY": ":0"}, "linux", lambda lib: lib != "libxcb-cursor.so.0", lambda d: True)
    assert one.endswith("install it with: sudo apt install libxcb-cursor0")


def test_display_problem_only_speaks_for_x11_on_linux():
    everything = lambda lib: True  # noqa: E731
    assert display_problem({"DISPLAY": ":0"}, "linux", everything, lambda d: True) is None
    assert (
        display_problem({"DISPLAY": ":0", "QT_QPA_PLATFORM": "xcb"}, "linux", everything, lambda d: True)
        is None
    )
    nothing = lambda lib: False  # noqa: E731
    for env in ({"QT_QPA_PLATFORM": "offscreen"}, {"QT_QPA_PLATFORM": "wayland", "DISPLAY": ":0"},
                {"WAYLAND_DISPLAY": "wayland-0"}, {"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"}):  # fmt: skip
        assert display_problem(env, "linux", nothing, lambda d: False) is None
    assert display_problem({}, "darwin", nothing) is None and display_problem({}, "win32", nothing) is None
    assert "no display" in display_problem({}, "linux", nothing)
    assert "no display" in display_problem(
        {"QT_QPA_PLATFORM": "xcb", "WAYLAND_DISPLAY": "w"}, "linux", nothing
    )
    line = display_problem({"DISPLAY": ":77"}, "linux", everything, lambda d: False)
    assert "cannot connect to the X display ':77'" in line


def test_the_real_library_check_finds_libc_and_not_a_made_up_library():
    assert can_load("libc.so.6") and not can_load("libingle-does-not-exist.so.9")
    assert len(XCB_LIBRARIES) == len({lib for lib, _ in XCB_LIBRARIES})


def _ingle(env_changes: dict[str, str | None]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "app.cli"], env=env, capture_output=True, text=True, timeout=300
    )


def test_ingle_without_a_display_says_so_in_one_line():
    done = _ingle({})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("ingle: error: no display")
    assert "Traceback" not in done.stderr


def test_ingle_on_x11_without_qts_libraries_names_the_packages():
    display = ":97"
    missing = [pkg for lib, pkg in XCB_LIBRARIES if not can_load(lib)]
    if not missing and can_connect_x(display):
        pytest.skip("this machine has every library and an X server at :97: Qt would start")
    done = _ingle({"DISPLAY": display})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    if missing:  # a stock Debian 12 lacks libxcb-icccm4 and libxcb-keysyms1
        assert done.stderr.rstrip().endswith("sudo apt install " + " ".join(missing))
    else:
        assert "cannot connect to the X display ':97'" in done.stderr


def _read_dialogs(seen: list[tuple[str, str, object]], shots: Path | None = None):
    """Accept each message box as it appears, keeping its title, text and text format (and a picture)."""

    def poll():
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            seen.append((box.windowTitle(), box.text(), box.textFormat()))
            if shots is not None:
                box.grab().save(str(shots / f"dialog-{len(seen)}.png"))
            box.accept()
        timer.start()

    timer = QTimer(singleShot=True, interval=50)
    timer.timeout.connect(poll)
    timer.start()
    return timer


def test_an_unwritable_home_shows_a_dialog_and_exits_cleanly(qtbot, tmp_path, monkeypatch, capsys):
    home = tmp_path / "not-a-folder"
    home.write_text("a file where the data folder should be")
    monkeypatch.setenv("INGLE_HOME", str(home))
    seen: list = []
    timer = _read_dialogs(seen, tmp_path)
    assert app_main.run() == 2
    timer.stop()
    assert len(seen) == 1 and seen[0][0] == "Ingle cannot start"
    assert str(home) in seen[0][1] and "INGLE_HOME" in seen[0][1]
    assert seen[0][2] == QMessageBox().textFormat().PlainText
    err = capsys.readouterr().err
    assert err.startswith("ingle: error: ") and err.count("\n") == 1
    assert not [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]


def test_an_unwritable_subfolder_of_home_is_reported_too(qtbot, tmp_path, monkeypatch):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere: the file-as-folder case above covers it")
    home = tmp_path / "ro"
    home.mkdir()
    home.chmod(0o500)
    monkeypatch.setenv("INGLE_HOME", str(home))
    try:
        assert "cannot write" in app_main.home_problem()
    finally:
        home.chmod(0o700)


def test_a_damaged_store_and_library_index_start_the_app_with_messages(
    qtbot, tmp_path, monkeypatch, starter_model
):
    home = tmp_path / "home"
    Library(home).import_file(starter_model, link=True, name=STARTER_NAME)
    (home / "index.json").write_text('{"entries": {"x": {"bogus": 1}}}')  # rebuilt (and reported) on start
    db = home / "conversations.sqlite3"
    db.write_bytes(b"\x00garbage, not a database" * 200)
    monkeypatch.setenv("INGLE_HOME", str(home))
    seen: list = []
    timer = _read_dialogs(seen, tmp_path)
    windows: list[MainWindow] = []

    def close_when_shown():
        shown = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
        if not shown:
            QTimer.singleShot(100, close_when_shown)
            return
        windows.extend(shown)
        shown[0].grab().save(str(tmp_path / "recovered_start.png"))
        shown[0].close()
        QApplication.exit(0)  # at once: a posted quit would outlive this loop and end the next test's loops

    app = QApplication.instance()
    app.setQuitOnLastWindowClosed(False)  # closing the window must not post a second quit
    QTimer.singleShot(100, close_when_shown)
    try:
        assert app_main.run() == 0
    finally:
        app.setQuitOnLastWindowClosed(True)
        timer.stop()
    assert windows and windows[0].store.conversations() == []
    assert len(seen) == 2 and "damaged" in seen[0][1] and "kept, unchanged" in seen[0][1]
    assert "library index" in seen[1][1] and "rebuilt" in seen[1][1]
    kept = [p for p in home.iterdir() if ".damaged-" in p.name]
    assert len(kept) == 1 and kept[0].read_bytes() == b"\x00garbage, not a database" * 200
