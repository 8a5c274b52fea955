"""A message as the model's tokens (hover: id and bytes), and the panel that picks the message."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QScrollArea, QToolTip, QVBoxLayout, QWidget

from app.visualizers.chips import ChipFlow
from app.visualizers.common import ROLE_COLORS, mix, text_color, visible_piece
from app.wording import count
from engine.visual import TokenPiece


class TokenView(ChipFlow):
    """A message as its tokens: alternating shades, special tokens marked; hover shows id and bytes."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.pieces: list[TokenPiece] = []

    def set_pieces(self, pieces: Sequence[TokenPiece]) -> None:
        self.pieces = list(pieces)
        self.relayout()

    def chip_count(self) -> int:
        return len(self.pieces)

    def chip_text(self, index: int) -> str:
        piece = self.pieces[index]
        return piece.text if piece.special else visible_piece(piece.text)

    def joined_bytes(self) -> bytes:
        return b"".join(p.data for p in self.pieces)

    def tooltip_for(self, index: int) -> str:
        piece = self.pieces[index]
        kind = "special token" if piece.special else "token"
        partial = "" if piece.data.decode("utf-8", "ignore") == piece.text else " (part of a UTF-8 character)"
        return (
            f"{kind} #{index + 1} · id {piece.token_id}\nbytes: {piece.data.hex(' ') or '(none)'}{partial}\n"
            f"text: {piece.text!r}"
        )

    def paintEvent(self, _event) -> None:
        base = self.palette().color(QPalette.Base)
        text = text_color(self)
        shades = (
            mix(base, QColor(ROLE_COLORS["user"]), 0.18),
            mix(base, QColor(ROLE_COLORS["assistant"]), 0.22),
        )
        special, white = QColor(ROLE_COLORS["system"]), QColor("white")
        self.paint_chips(
            lambda i: special if self.pieces[i].special else shades[i % 2],
            lambda i: white if self.pieces[i].special else text,
        )

    def mouseMoveEvent(self, event) -> None:
        i = self.chip_at(event.position().toPoint())
        if i >= 0:
            QToolTip.showText(event.globalPosition().toPoint(), self.tooltip_for(i), self)
        else:
            QToolTip.hideText()


class TokenPanel(QWidget):
    """The token view with a message picker and the count per message."""

    message_chosen = Signal(int)  # index into the messages offered

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.picker = QComboBox()
        self.picker.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.picker.setMinimumContentsLength(16)
        self.picker.activated.connect(self.message_chosen)
        self.count = QLabel()
        row.addWidget(QLabel("Message"))
        row.addWidget(self.picker, 1)
        row.addWidget(self.count)
        layout.addLayout(row)
        self.view = TokenView()
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setWidget(self.view)
        layout.addWidget(scroll, 1)

    def set_messages(self, labels: Sequence[str], current: int) -> None:
        self.picker.blockSignals(True)
        self.picker.clear()
        self.picker.addItems(list(labels))
        self.picker.setCurrentIndex(current)
        self.picker.blockSignals(False)

    def show_pieces(self, pieces: Sequence[TokenPiece]) -> None:
        self.view.set_pieces(pieces)
        special = sum(1 for p in pieces if p.special)
        self.count.setText(count(len(pieces), "token") + (f" ({special} special)" if special else ""))
