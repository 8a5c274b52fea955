"""Starting the GUI: the checks that must pass before the window opens (a writable data folder, a readable
conversation store, the starter model), each failure shown in a dialog and on stderr (exit code 2)."""

from __future__ import annotations

import sqlite3
import sys
import tempfile

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QMessageBox

from app.dialogs import show_error
from app.main import MainWindow
from engine.conversations import open_store
from engine.errors import IngleError
from engine.library import Library, data_dir


def home_problem() -> str | None:
    """Why Ingle cannot keep its data (an unwritable INGLE_HOME), or None."""
    home = data_dir()
    if home.exists() and not home.is_dir():
        return f"Ingle's data folder {home} is a file, not a folder. Set INGLE_HOME to a folder you can write to."
    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=home, prefix=".write-test-"):
            pass
    except OSError as err:
        return (
            f"Ingle cannot write to its data folder {home} ({err.strerror or err}). Make it writable, or set "
            "INGLE_HOME to a folder you can write to, and start Ingle again."
        )
    return None


def run(smoke_prompt: str | None = None) -> int:
    """The GUI. Problems that stop it from starting are shown in a dialog (and on stderr), exit code 2."""
    app = QApplication.instance() or QApplication(sys.argv)
    app.setApplicationName("Ingle")

    def fail(text: str) -> int:
        print(f"ingle: error: {text}", file=sys.stderr)
        show_error(None, text, "Ingle cannot start")
        return 2

    problem = home_problem()
    if problem:
        return fail(problem)
    notes = []
    try:
        store, recovery = open_store()
        if recovery is not None:
            notes.append(("Ingle: conversations recovered", recovery.describe()))
        try:
            Library().entries()  # a damaged index is rebuilt here, and reported (the starter is made later)
        except IngleError as err:
            Library().entries()
            notes.append(("Ingle: model library", str(err)))
        window = MainWindow(store=store)
    except (IngleError, OSError, ValueError, sqlite3.Error) as err:
        return fail(str(err))
    for title, text in notes:
        box = QMessageBox(QMessageBox.Warning, title, text)
        box.setTextFormat(Qt.PlainText)
        box.exec()
    window.show()
    if smoke_prompt is None:
        return app.exec()
    from app.hooks import smoke

    return smoke(app, window, smoke_prompt)
