"""The training page's chart: train loss per step (line) and validation loss (dots), drawn with QPainter."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRect, QSize, Qt
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPalette, QPen, QPolygonF
from PySide6.QtWidgets import QWidget


class LossChart(QWidget):
    """Train loss per step (line) and validation loss (dots), on shared axes."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.total_steps = 1
        self.setMinimumHeight(180)

    def sizeHint(self) -> QSize:
        return QSize(560, 220)

    def clear(self) -> None:
        self.train, self.val = [], []
        self.update()

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        fm = QFontMetrics(self.font())
        text = self.palette().color(QPalette.WindowText)
        left, bottom = fm.horizontalAdvance("00.000") + 12, fm.height() + 8
        plot = QRect(left, 8, self.width() - left - 12, self.height() - bottom - 16)
        p.setPen(QPen(text, 1))
        p.drawRect(plot)
        points = self.train + self.val
        if not points:
            p.drawText(plot, Qt.AlignCenter, "The loss curves appear with the first steps.")
            p.end()
            return
        lo = min(v for _, v in points)
        hi = max(v for _, v in points)
        hi = hi if hi > lo else lo + 1
        steps = max(self.total_steps, max(s for s, _ in points), 1)

        def at(step: int, value: float) -> QPointF:
            return QPointF(
                plot.left() + plot.width() * step / steps,
                plot.bottom() - plot.height() * (value - lo) / (hi - lo),
            )

        p.drawText(2, plot.top() + fm.ascent(), f"{hi:.3f}")
        p.drawText(2, plot.bottom(), f"{lo:.3f}")
        p.drawText(plot.left(), plot.bottom() + fm.height() + 2, "step 0")
        last = f"step {steps}"
        p.drawText(plot.right() - fm.horizontalAdvance(last), plot.bottom() + fm.height() + 2, last)
        p.setPen(QPen(QColor("#3f83cc"), 2))
        p.drawPolyline(QPolygonF([at(s, v) for s, v in self.train]))
        p.setPen(QPen(QColor("#e09a2b"), 2))
        p.setBrush(QColor("#e09a2b"))
        for s, v in self.val:
            p.drawEllipse(at(s, v), 4, 4)
        p.setPen(text)
        legend = "blue: training loss · orange: validation loss"
        p.drawText(plot.right() - fm.horizontalAdvance(legend) - 4, plot.top() + fm.ascent() + 2, legend)
        p.end()
