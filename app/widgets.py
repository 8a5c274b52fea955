"""Small widgets of the main window: the banner strip above the chat and the message box."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton


class Banner(QFrame):
    """A strip above the chat: a message, an optional action button and a close button."""

    def __init__(self, color: str):
        super().__init__()
        self.setStyleSheet(
            f"Banner {{ background: {color}; border-radius: 4px; }} QLabel {{ color: #1d1d1f; }}"
        )
        row = QHBoxLayout(self)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.RichText)
        self.button = QPushButton()
        close = QPushButton("✕")
        close.setFlat(True)
        close.clicked.connect(self.hide)
        row.addWidget(self.label, 1)
        row.addWidget(self.button)
        row.addWidget(close)
        self.hide()

    def show_message(self, text: str, button: str = "", bold: str = "") -> None:
        """`text` (and the `bold` lead-in) are shown as plain text: titles and error messages can come from
        files and models, and must not render as markup or links."""
        lead = f"<b>{html.escape(bold)}</b> " if bold else ""
        self.show_html(lead + html.escape(text).replace("\n", "<br/>"), button)

    def show_html(self, trusted_html: str, button: str = "") -> None:
        """For the app's own fixed texts only."""
        self.label.setText(trusted_html)
        self.button.setText(button)
        self.button.setVisible(bool(button))
        self.show()


class Composer(QPlainTextEdit):
    """The message box: Enter sends, Shift+Enter starts a new line, Esc stops a reply."""

    send = Signal()
    stop = Signal()

    def keyPressEvent(self, event) -> None:
        if event.key() in (Qt.Key_Return, Qt.Key_Enter) and not event.modifiers() & Qt.ShiftModifier:
            self.send.emit()
        elif event.key() == Qt.Key_Escape:
            self.stop.emit()
        else:
            super().keyPressEvent(event)
