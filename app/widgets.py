"""Small widgets of the main window: the banner strip above the chat, the message and system prompt boxes."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QTextOption
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton

LONG_LINE = 2_000  # an editor holding a longer line wraps it anywhere (see TextEditor)
PASTE_LINE = 200_000  # longest line a paste may bring: Qt lays out the whole line again at every key
PASTE_CHARS = 2_000_000  # most text one paste may bring (far past any model's context)


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


def longest_line(text: str) -> int:
    return max(map(len, text.splitlines()), default=0)


class TextEditor(QPlainTextEdit):
    """A plain-text box that stays responsive with a pasted megabyte: Qt wraps a line at word boundaries in
    time quadratic in its length (a pasted 1 MB line took 2 minutes, then 35 s a key), but anywhere in
    linear time, so a box holding a line over LONG_LINE characters wraps anywhere until it is cleared."""

    refused = Signal(str)  # why a paste was not taken

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.textChanged.connect(self._maybe_rewrap)

    def _wrap_for(self, longest: int) -> None:
        mode = QTextOption.WrapAnywhere if longest > LONG_LINE else QTextOption.WrapAtWordBoundaryOrAnywhere
        if self.wordWrapMode() != mode:
            self.setWordWrapMode(mode)

    def _maybe_rewrap(self) -> None:
        if self.wordWrapMode() == QTextOption.WrapAnywhere and self.document().characterCount() <= LONG_LINE:
            self._wrap_for(0)  # short again: words are kept whole

    def insertFromMimeData(self, source) -> None:
        if source.hasText():
            text = source.text()
            longest = longest_line(text)
            if len(text) > PASTE_CHARS or longest > PASTE_LINE:
                what = (
                    f"{len(text):,} characters"
                    if len(text) > PASTE_CHARS
                    else f"a line of {longest:,} characters"
                )
                self.refused.emit(
                    f"Not pasted: the text has {what}; this box takes up to {PASTE_CHARS:,} characters in "
                    f"lines of up to {PASTE_LINE:,}."
                )
                return
            self._wrap_for(max(longest, len(self.textCursor().block().text())))
        super().insertFromMimeData(source)

    def setPlainText(self, text: str) -> None:
        self._wrap_for(longest_line(text))
        super().setPlainText(text)


class Composer(TextEditor):
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
