"""Message dialogs whose text is never read as markup: errors quote file names, titles and server replies."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QWidget


def show_error(parent: QWidget | None, text: str, title: str = "Ingle") -> QMessageBox:
    """A modal warning with `text` shown as plain text (Qt would guess rich text from a "<b>" in it)."""
    box = QMessageBox(QMessageBox.Warning, title, text, QMessageBox.Ok, parent)
    box.setTextFormat(Qt.PlainText)
    box.exec()
    return box
