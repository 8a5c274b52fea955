"""What the visualizers share: colours, colour mixing, how a token's text is shown, height-for-width."""

from __future__ import annotations

from PySide6.QtCore import QSize
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QWidget

ROLE_COLORS = {"system": "#8e6fc1", "user": "#3f83cc", "assistant": "#3a9d5d", "draft": "#e09a2b"}
RESERVE_COLOR = "#9aa4ad"
DROP_COLOR = "#d0443c"
GLOBAL_COLOR, SLIDING_COLOR = "#3f83cc", "#3a9d5d"


def mix(a: QColor, b: QColor, t: float) -> QColor:
    """`a` moved a fraction `t` of the way to `b` (0: a, 1: b)."""
    return QColor.fromRgbF(
        *(x * (1 - t) + y * t for x, y in zip(a.getRgbF()[:3], b.getRgbF()[:3], strict=True))
    )


def text_color(widget: QWidget) -> QColor:
    return widget.palette().color(QPalette.WindowText)


def dim_color(widget: QWidget) -> QColor:
    """The widget's text colour faded towards its background, for legends and notes."""
    return mix(widget.palette().color(QPalette.WindowText), widget.palette().color(QPalette.Window), 0.45)


def visible_piece(text: str) -> str:
    """A token's text as a chip shows it: whitespace made visible, nothing invisible."""
    if not text:
        return "∅"
    return text.replace("\n", "↵").replace("\t", "⇥").replace(" ", "·")


class HeightForWidthMixin:
    """For a QWidget whose height follows its width (it wraps or grows with its data): its layout asks
    `heightForWidth`, which the widget defines, and its size hint is that height at HINT_WIDTH.
    List it before QWidget in the bases, so these overrides win."""

    HINT_WIDTH = 520

    def hasHeightForWidth(self) -> bool:
        return True

    def sizeHint(self) -> QSize:
        return QSize(self.HINT_WIDTH, self.heightForWidth(self.HINT_WIDTH))
