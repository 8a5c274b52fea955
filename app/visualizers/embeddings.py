"""The embedding space: a token's nearest tokens (cosine) with their scores, and the context's tokens drawn in
the PCA plane of their input embeddings. Painted from engine.embedding_space results; app.inspector asks."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPalette, QPen
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.forms import MessageLabel
from app.visualizers.common import ROLE_COLORS, dim_color, text_color, visible_piece
from engine.embedding_space import Neighbours, Projection


class NeighbourList(QWidget):
    """The nearest tokens, best first: the piece, a bar as long as the cosine, and the score; click one to
    look up its own neighbours."""

    token_clicked = Signal(int)
    ROW = 20

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.result: Neighbours | None = None
        self.setMinimumSize(220, 120)

    def set_result(self, result: Neighbours | None) -> None:
        self.result = result
        self.setMinimumHeight(max(120, self.ROW * (1 + len(result.neighbours) if result else 0) + 8))
        self.update()

    def mousePressEvent(self, event) -> None:
        if self.result is None:
            return
        row = int((event.position().y() - 4) // self.ROW) - 1
        if 0 <= row < len(self.result.neighbours):
            self.token_clicked.emit(self.result.neighbours[row].token)

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        fm = QFontMetrics(self.font())
        text = text_color(self)
        if self.result is None:
            p.setPen(dim_color(self))
            p.drawText(self.rect().adjusted(8, 8, -8, -8), Qt.TextWordWrap,
                       "Type a token (or #id) and press Enter: its nearest tokens in the model's input "
                       "embeddings appear here.")  # fmt: skip
            p.end()
            return
        r = self.result
        label_w = min(180, max(fm.horizontalAdvance(visible_piece(n.piece)) for n in r.neighbours) + 12)
        bar_x, bar_w = 8 + label_w, max(40, self.width() - label_w - 70)
        p.setPen(text)
        p.drawText(8, 4 + fm.ascent(), f"nearest to {visible_piece(r.piece)!s} (#{r.token}) by cosine")
        for i, n in enumerate(r.neighbours):
            y = 4 + (i + 1) * self.ROW
            p.setPen(text)
            p.drawText(QRectF(8, y, label_w - 8, self.ROW), Qt.AlignVCenter | Qt.AlignLeft,
                       fm.elidedText(visible_piece(n.piece), Qt.ElideRight, label_w - 8))  # fmt: skip
            width = bar_w * max(0.0, n.score)
            p.fillRect(QRectF(bar_x, y + 4, width, self.ROW - 8), QColor(ROLE_COLORS["user"]))
            p.drawText(QRectF(bar_x + bar_w + 6, y, 60, self.ROW), Qt.AlignVCenter | Qt.AlignLeft,
                       f"{n.score:.3f}")  # fmt: skip
        p.end()


class ProjectionPlot(QWidget):
    """The context's distinct tokens as labelled points in the plane of their two principal components."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.projection: Projection | None = None
        self.highlight: set[int] = (
            set()
        )  # tokens drawn in the accent colour (the looked-up token, its neighbours)
        self.note = "Send a message or type a draft, then press Project: the context's tokens appear here."
        self.setMinimumSize(260, 220)

    def set_projection(self, projection: Projection | None, note: str = "") -> None:
        self.projection = projection
        if note:
            self.note = note
        self.update()

    def set_highlight(self, tokens: set[int]) -> None:
        self.highlight = tokens
        self.update()

    def points(self) -> list[QPointF]:
        """Where each token is drawn (widget coordinates), with a margin for the labels."""
        pts = self.projection.points if self.projection else ()
        if not pts:
            return []
        xs, ys = [x for x, _ in pts], [y for _, y in pts]
        span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
        left, top, w, h = 16, 28, max(10, self.width() - 80), max(10, self.height() - 56)
        return [QPointF(left + (x - min(xs)) / span_x * w, top + (max(ys) - y) / span_y * h) for x, y in pts]

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        fm = QFontMetrics(self.font())
        dim, text = dim_color(self), text_color(self)
        if self.projection is None:
            p.setPen(dim)
            p.drawText(self.rect().adjusted(8, 8, -8, -8), Qt.TextWordWrap, self.note)
            p.end()
            return
        pr = self.projection
        p.setPen(dim)
        p.drawText(8, 4 + fm.ascent(),
                   f"{len(pr.tokens)} distinct of {pr.total_tokens} tokens · PC1 {pr.explained[0]:.0%}, "
                   f"PC2 {pr.explained[1]:.0%} of the variance")  # fmt: skip
        p.setPen(QPen(dim, 1, Qt.DashLine))
        p.drawRect(QRectF(10, 24, self.width() - 20, self.height() - 34))
        normal, accent = QColor(ROLE_COLORS["user"]), QColor(ROLE_COLORS["draft"])
        backdrop = self.palette().color(QPalette.Window)
        backdrop.setAlphaF(0.8)
        items = sorted(
            zip(pr.tokens, pr.pieces, self.points(), strict=True), key=lambda i: i[0] in self.highlight
        )
        for token, piece, at in items:  # the highlighted last, so no other label covers them
            colour = accent if token in self.highlight else normal
            p.setPen(Qt.NoPen)
            p.setBrush(colour)
            p.drawEllipse(at, 3.5, 3.5)
            label = fm.elidedText(visible_piece(piece), Qt.ElideRight, 90)
            box = QRectF(at.x() + 5, at.y() + 4 - fm.ascent(), fm.horizontalAdvance(label) + 2, fm.height())
            p.fillRect(box, backdrop)  # a readable label where points crowd
            p.setPen(colour if token in self.highlight else text)
            p.drawText(at + QPointF(6, 4), label)
        p.end()


class EmbeddingsView(QWidget):
    """A token box with k and the neighbour list beside the context's PCA plot. Emits requests; the inspector
    runs them in the engine and hands back the results."""

    neighbours_requested = Signal(object, int)  # token id or one-token text, k
    projection_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.token_box = QLineEdit(placeholderText="token, e.g. ' king' or #1234")
        self.token_box.setToolTip("Text that is one token of this model (a leading space matters), or #id.")
        self.token_box.returnPressed.connect(self._ask)
        self.k = QSpinBox()
        self.k.setRange(1, 200)
        self.k.setValue(15)
        self.k.setPrefix("k = ")
        find = QPushButton("Nearest")
        find.clicked.connect(self._ask)
        self.project_button = QPushButton("Project context")
        self.project_button.setToolTip("The context's distinct tokens in the plane of their first two "
                                       "principal components (PCA of their input embeddings).")  # fmt: skip
        self.project_button.clicked.connect(self.projection_requested)
        for w in (self.token_box, self.k, find, self.project_button):
            row.addWidget(w, 1 if w is self.token_box else 0)
        layout.addLayout(row)
        self.status = MessageLabel(hide_when_empty=True)
        self.failed = False
        layout.addWidget(self.status)
        split = QSplitter()
        self.neighbours = NeighbourList()
        self.neighbours.token_clicked.connect(self.look_up)
        self.plot = ProjectionPlot()
        split.addWidget(self.neighbours)
        split.addWidget(self.plot)
        split.setSizes([300, 500])
        layout.addWidget(split, 1)
        self.caption = QLabel(
            "Cosine similarity of the model's input embeddings (token_embd, dequantized from the GGUF)."
        )
        self.caption.setStyleSheet("color: palette(mid)")
        layout.addWidget(self.caption)

    def look_up(self, token: int) -> None:
        self.token_box.setText(f"#{token}")
        self._ask()

    def _ask(self) -> None:
        text = self.token_box.text()
        if not text:
            self.status.show_error("Type a token first.")
            return
        token: int | str = text
        if text.startswith("#") and text[1:].isdigit():
            token = int(text[1:])
        self.status.show_message("Looking up…")
        self.neighbours_requested.emit(token, self.k.value())

    def show_neighbours(self, result: Neighbours) -> None:
        how = "from memory" if result.cached else "read and dequantized the embedding matrix first"
        self.failed = False
        self.status.show_message(f"{result.seconds * 1000:.0f} ms ({how}).")
        self.neighbours.set_result(result)
        self.plot.set_highlight({result.token, *(n.token for n in result.neighbours)})

    def show_projection(self, result: Projection) -> None:
        if self.failed:  # the error was about an earlier request; keep a lookup's timing line
            self.status.clear()
            self.failed = False
        self.plot.set_projection(result)

    def show_error(self, message: str) -> None:
        self.failed = True
        self.status.show_error(message)
