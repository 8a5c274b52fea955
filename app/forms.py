"""Shared form pieces: "label + widget + one-line help" rows built from settings field specs, and message labels."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFormLayout, QLabel, QVBoxLayout, QWidget

ERROR_COLOR = "#c0392b"
ERROR_STYLE = f"color: {ERROR_COLOR}"
HELP_STYLE = "color: palette(mid)"


def text_label(text: str = "", wrap: bool = True) -> QLabel:
    """A label whose text the user can select and copy (figures, paths, messages)."""
    label = QLabel(text)
    label.setWordWrap(wrap)
    label.setTextInteractionFlags(Qt.TextSelectableByMouse)
    return label


class MessageLabel(QLabel):
    """A wrapped status line: `show_error` turns it red, `show_message` back to the normal colour.

    `hide_when_empty`: the label takes no room until it has something to say (`clear` hides it again).
    """

    def __init__(self, text: str = "", *, hide_when_empty: bool = False, selectable: bool = True):
        super().__init__(text)
        self.hide_when_empty = hide_when_empty
        self.setWordWrap(True)
        if selectable:
            self.setTextInteractionFlags(Qt.TextSelectableByMouse)
        if hide_when_empty and not text:
            self.hide()

    def show_message(self, text: str) -> None:
        self.setStyleSheet("")
        self._show(text)

    def show_error(self, text: str) -> None:
        self.setStyleSheet(ERROR_STYLE)
        self._show(text)

    def _show(self, text: str) -> None:
        self.setText(text)
        if self.hide_when_empty:
            self.setVisible(bool(text))

    def clear(self) -> None:
        super().clear()
        if self.hide_when_empty:
            self.hide()


def add_field_rows(
    form: QFormLayout,
    specs: Iterable[dataclasses.Field],
    make_widget: Callable[[dataclasses.Field], QWidget],
    help_style: str = HELP_STYLE,
) -> dict[str, QWidget]:
    """One row per field spec (engine.settings.spec metadata: label, help): its label, the widget that
    `make_widget` builds for it and the one-line help under that widget. Returns the widgets by field name."""
    widgets: dict[str, QWidget] = {}
    for f in specs:
        widget = make_widget(f)
        widgets[f.name] = widget
        help_label = QLabel(f.metadata["help"])
        help_label.setWordWrap(True)
        help_label.setStyleSheet(help_style)
        box = QVBoxLayout()
        box.setSpacing(0)
        box.addWidget(widget)
        box.addWidget(help_label)
        label = QLabel(f.metadata["label"])
        label.setToolTip(f.metadata["help"])
        form.addRow(label, box)
    return widgets
