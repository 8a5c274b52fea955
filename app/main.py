"""Start the GUI: the main window on the starter model (a minimal window until the chat window lands)."""

from __future__ import annotations

import sys


def run() -> int:
    from PySide6.QtWidgets import QApplication, QLabel, QMainWindow

    from engine.library import Library

    app = QApplication.instance() or QApplication(sys.argv)
    app.setApplicationName("Ingle")
    entry = Library().ensure_starter()
    window = QMainWindow()
    window.setWindowTitle("Ingle")
    window.setCentralWidget(QLabel(f"Ingle is ready. Model: {entry.name}\n{entry.description}"))
    window.resize(800, 500)
    window.show()
    return app.exec()
