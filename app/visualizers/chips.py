"""Token chips laid out like words in a paragraph: the base of the token view and the token probabilities."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

from PySide6.QtCore import QPoint, QRect, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.visualizers.common import HeightForWidthMixin, text_color

CHIP_CHARS = 40  # longest token text a chip shows whole


def chip_label(text: str) -> str:
    """A chip's text, elided past CHIP_CHARS (a hostile "token" can be megabytes; Qt measures it all)."""
    return text if len(text) <= CHIP_CHARS else text[: CHIP_CHARS - 1] + "…"


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

    def chip_count(self) -> int:
        raise NotImplementedError

    def chip_text(self, index: int) -> str:
        raise NotImplementedError

    def _chip_layout(self, width: int, rects: list[QRect] | None = None) -> list[QRect]:
        """Chip rectangles for `width`; given `rects` (the first chips, laid out for the same width), the
        rest are appended to it."""
        fm = QFontMetrics(self.font())
        h = fm.height() + 2 * self.PAD_Y
        rects = [] if rects is None else rects
        x, y = (rects[-1].right() + 1 + self.GAP, rects[-1].top()) if rects else (0, 0)
        for i in range(len(rects), self.chip_count()):
            w = fm.horizontalAdvance(chip_label(self.chip_text(i))) + 2 * self.PAD_X
            if x and x + w > width:
                x, y = 0, y + h + self.GAP
            rects.append(QRect(x, y, w, h))
            x += w + self.GAP
        return rects

    def relayout(self) -> None:
        if not self.isVisible():  # a hidden dock's chips are laid out when it is shown
            self._laid_out_width = -1
            return
        self._chip_rects = self._chip_layout(max(50, self.width()))
        self._laid_out_width = self.width()
        self.updateGeometry()
        self.update()

    def showEvent(self, event) -> None:
        if self._laid_out_width != self.width():
            self.relayout()
        super().showEvent(event)

    def grow(self) -> None:
        """Lay out chips appended since the last layout: a streamed token costs one chip, not all of them."""
        if self._laid_out_width != self.width() or not self.isVisible():
            self.relayout()
            return
        self._chip_rects = self._chip_layout(max(50, self.width()), self._chip_rects)
        self.updateGeometry()
        self.update()

    def heightForWidth(self, width: int) -> int:
        rects = self._chip_rects if width == self._laid_out_width else self._chip_layout(max(50, width))
        return (rects[-1].bottom() + 4) if rects else 20

    def sizeHint(self) -> QSize:
        # the laid-out width, not HINT_WIDTH: asked at every token while a reply streams
        width = self._laid_out_width if self._laid_out_width > 0 else self.HINT_WIDTH
        return QSize(self.HINT_WIDTH, self.heightForWidth(width))

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
        self, color: Callable[[int], QColor], text_color_of: Callable[[int], QColor], outlined: int = -1
    ) -> None:
        """Paint the chips in view (colours asked for those only: a long reply has thousands)."""
        if self._laid_out_width != self.width():
            self._chip_rects = self._chip_layout(max(50, self.width()))
            self._laid_out_width = self.width()
        shown = self.visibleRegion().boundingRect()
        p = QPainter(self)
        first = bisect_left(self._chip_rects, shown.top(), key=QRect.bottom)  # rows run down the widget
        for i in range(first, min(len(self._chip_rects), self.chip_count())):
            rect = self._chip_rects[i]
            if rect.top() > shown.bottom():
                break
            p.fillRect(rect, color(i))
            if i == outlined:
                p.setPen(QPen(text_color(self), 2))
                p.drawRect(rect.adjusted(1, 1, -1, -1))
            p.setPen(text_color_of(i))
            p.drawText(rect, Qt.AlignCenter, chip_label(self.chip_text(i)))
        p.end()
