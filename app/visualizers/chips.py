"""Token chips laid out like words in a paragraph: the base of the token view and the token probabilities."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QPoint, QRect, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.visualizers.common import HeightForWidthMixin, text_color


class ChipFlow(HeightForWidthMixin, QWidget):
    """Token chips laid out like words in a paragraph; subclasses say what each chip shows and how it looks."""

    PAD_X, PAD_Y, GAP = 3, 2, 2
    HINT_WIDTH = 480

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMouseTracking(True)
        self._chip_rects: list[QRect] = []
        self._laid_out_width = -1
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        mono = QFont("monospace")
        mono.setStyleHint(QFont.Monospace)
        self.setFont(mono)

    def chip_texts(self) -> list[str]:
        raise NotImplementedError

    def _chip_layout(self, width: int) -> list[QRect]:
        fm = QFontMetrics(self.font())
        h = fm.height() + 2 * self.PAD_Y
        x = y = 0
        rects = []
        for text in self.chip_texts():
            w = fm.horizontalAdvance(text) + 2 * self.PAD_X
            if x and x + w > width:
                x, y = 0, y + h + self.GAP
            rects.append(QRect(x, y, w, h))
            x += w + self.GAP
        return rects

    def relayout(self) -> None:
        self._chip_rects = self._chip_layout(max(50, self.width()))
        self._laid_out_width = self.width()
        self.updateGeometry()
        self.update()

    def heightForWidth(self, width: int) -> int:
        rects = self._chip_layout(max(50, width))
        return (rects[-1].bottom() + 4) if rects else 20

    def resizeEvent(self, event) -> None:
        if self.width() != self._laid_out_width:
            self.relayout()
        super().resizeEvent(event)

    def chip_at(self, pos: QPoint) -> int:
        for i, rect in enumerate(self._chip_rects):
            if rect.contains(pos):
                return i
        return -1

    def paint_chips(
        self, colors: Sequence[QColor], text_colors: Sequence[QColor], outlined: int = -1
    ) -> None:
        if self._laid_out_width != self.width():
            self._chip_rects = self._chip_layout(max(50, self.width()))
            self._laid_out_width = self.width()
        p = QPainter(self)
        for i, (rect, text) in enumerate(zip(self._chip_rects, self.chip_texts(), strict=False)):
            p.fillRect(rect, colors[i])
            if i == outlined:
                p.setPen(QPen(text_color(self), 2))
                p.drawRect(rect.adjusted(1, 1, -1, -1))
            p.setPen(text_colors[i])
            p.drawText(rect, Qt.AlignCenter, text)
        p.end()
