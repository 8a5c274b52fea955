"""Attention: a token-by-token heatmap for one layer and head (or the mean over heads), and the text with the
weights from a hovered token to the tokens before it drawn as highlights. Painted from an
engine.attention_map.AttentionMap; app.inspector asks the engine for it."""

from __future__ import annotations

import math

import numpy as np
from PySide6.QtCore import QPoint, QPointF, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFontMetrics, QImage, QPainter, QPalette, QPen, QPolygonF
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSplitter,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from app.visualizers.chips import ChipFlow, chip_label
from app.visualizers.common import GLOBAL_COLOR, SLIDING_COLOR, dim_color, mix, text_color, visible_piece
from app.wording import count
from engine.attention_map import AttentionMap

HEAT_COLOR = "#d0443c"
MEAN = -1  # the head picker's "mean over heads"


def heat(weight: float) -> float:
    """Colour intensity for a weight: the square root, so weak but real attention still shows beside a sink."""
    return math.sqrt(min(1.0, max(0.0, weight)))


def label(piece: str) -> str:
    """A token as the heatmap and the tooltips name it: whitespace visible, a very long piece elided."""
    return chip_label(visible_piece(piece))


def heat_image(matrix: np.ndarray, base: QColor, hot: QColor) -> QImage:
    """The [query, key] matrix as an image, one pixel per cell: `base` at 0 to `hot` at 1, by √weight."""
    level = np.sqrt(np.clip(np.nan_to_num(matrix), 0.0, 1.0))[..., None]
    lo, hi = np.array(base.getRgb()[:3], np.float64), np.array(hot.getRgb()[:3], np.float64)
    rgb = (lo + (hi - lo) * level + 0.5).astype(np.uint8)
    n_rows, n_cols = matrix.shape
    pixels = np.ascontiguousarray(np.concatenate([rgb, np.full((n_rows, n_cols, 1), 255, np.uint8)], axis=-1))
    # QImage does not own numpy's buffer: copy() before `pixels` goes away
    return QImage(pixels.data, n_cols, n_rows, 4 * n_cols, QImage.Format_RGBA8888).copy()


class AttentionHeatmap(QWidget):
    """Query tokens down, key tokens across; a cell's colour is √weight. Hover a cell for its figures."""

    hovered = Signal(int)  # the query row under the mouse

    LABEL_CHARS = 8

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setMinimumSize(200, 200)
        self.matrix = np.zeros((0, 0), np.float32)
        self.pieces: tuple[str, ...] = ()
        self.window_size = 0  # sliding window of the shown layer (0: global)
        self.focus = -1  # the query row to outline

    def set_matrix(self, matrix: np.ndarray, pieces: tuple[str, ...], window_size: int) -> None:
        self.matrix, self.pieces, self.window_size = matrix, pieces, window_size
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(440, 440)

    def _geometry(self) -> tuple[int, int, float]:
        """(left, top, cell size): token labels go in the margins when the cells are tall enough to read."""
        n = len(self.matrix)
        fm = QFontMetrics(self.font())
        room = min(self.width(), self.height()) - 8
        labels = n and room / n >= fm.height() - 2
        margin = fm.horizontalAdvance("M" * self.LABEL_CHARS) + 6 if labels else 4
        cell = (min(self.width(), self.height()) - margin - 4) / max(1, n)
        return margin, margin, max(0.5, cell)

    def cell_at(self, pos: QPoint) -> tuple[int, int]:
        left, top, cell = self._geometry()
        q, k = int((pos.y() - top) // cell), int((pos.x() - left) // cell)
        n = len(self.matrix)
        return (q, k) if 0 <= q < n and 0 <= k < n and pos.x() >= left and pos.y() >= top else (-1, -1)

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        n = len(self.matrix)
        if not n:
            p.setPen(dim_color(self))
            p.drawText(self.rect().adjusted(8, 8, -8, -8), Qt.TextWordWrap, "No attention captured yet.")
            p.end()
            return
        left, top, cell = self._geometry()
        base = self.palette().color(QPalette.Base)
        side = cell * n
        # one pixel per cell, scaled up without smoothing: 512 tokens are 131k cells, too many to fill one by one
        p.drawImage(QRectF(left, top, side, side), heat_image(self.matrix, base, QColor(HEAT_COLOR)))
        if self.window_size and self.window_size < n:  # the window's far edge: keys left of it get nothing
            p.setPen(QPen(QColor(SLIDING_COLOR), 2))
            w = self.window_size
            edge = QPolygonF()
            for q in range(w, n):  # row q sees keys q-w+1 .. q (llama.cpp masks q - k >= window)
                x = left + (q - w + 1) * cell
                edge.append(QPointF(x, top + q * cell))
                edge.append(QPointF(x, top + (q + 1) * cell))
            p.drawPolyline(edge)
        p.setPen(QPen(dim_color(self), 1))
        p.drawRect(QRect(left, top, math.ceil(side), math.ceil(side)))
        if 0 <= self.focus < n:
            p.setPen(QPen(text_color(self), 1))
            p.drawRect(QRect(left, int(top + self.focus * cell), math.ceil(side), max(1, int(cell))))
        if left > 4:  # token labels: queries down the left, keys across the top (rotated)
            fm = QFontMetrics(self.font())
            p.setPen(text_color(self))
            for i, piece in enumerate(self.pieces):
                text = fm.elidedText(label(piece), Qt.ElideRight, left - 6)
                p.drawText(
                    QRect(0, int(top + i * cell), left - 4, int(cell)), Qt.AlignRight | Qt.AlignVCenter, text
                )
                p.save()
                p.translate(left + i * cell, top - 4)
                p.rotate(-90)
                p.drawText(QRect(0, 0, top - 6, int(cell)), Qt.AlignLeft | Qt.AlignVCenter, text)
                p.restore()
        p.end()

    def mouseMoveEvent(self, event) -> None:
        q, k = self.cell_at(event.position().toPoint())
        if q < 0:
            QToolTip.hideText()
            return
        self.hovered.emit(q)
        tip = (
            f"query #{q} {label(self.pieces[q])!r} → key #{k} {label(self.pieces[k])!r}\n"
            f"weight {self.matrix[q, k]:.4f}" + ("  (after the query: causal, always 0)" if k > q else "")
        )
        QToolTip.showText(event.globalPosition().toPoint(), tip, self)


class AttentionText(ChipFlow):
    """The tokens as text; the hovered token is outlined and the tokens it attends to are highlighted, the
    strongest at full colour (intensity √(weight / strongest weight)); tokens after it are dimmed."""

    hovered = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.pieces: tuple[str, ...] = ()
        self.matrix = np.zeros((0, 0), np.float32)
        self.focus = -1

    def set_matrix(self, matrix: np.ndarray, pieces: tuple[str, ...]) -> None:
        changed = pieces != self.pieces
        self.matrix, self.pieces = matrix, pieces
        if self.focus >= len(pieces):
            self.focus = len(pieces) - 1
        if changed:
            self.relayout()
        self.update()

    def set_focus(self, index: int) -> None:
        if index != self.focus:
            self.focus = index
            self.update()

    def chip_count(self) -> int:
        return len(self.pieces)

    def chip_text(self, index: int) -> str:
        return visible_piece(self.pieces[index])

    def weights_from_focus(self) -> np.ndarray:
        """The focused token's weights to every token (zeros when none is focused)."""
        if not 0 <= self.focus < len(self.matrix):
            return np.zeros(len(self.pieces), np.float32)
        return self.matrix[self.focus]

    def paintEvent(self, _event) -> None:
        base = self.palette().color(QPalette.Base)
        hot, text, dim = QColor(HEAT_COLOR), text_color(self), dim_color(self)
        row = self.weights_from_focus()
        strongest = float(row.max()) if len(row) else 0.0

        def color(i: int) -> QColor:
            if self.focus < 0 or strongest <= 0:
                return mix(base, QColor(GLOBAL_COLOR), 0.12)
            return mix(base, hot, heat(float(row[i]) / strongest)) if i <= self.focus else base

        self.paint_chips(color, lambda i: dim if 0 <= self.focus < i else text, outlined=self.focus)

    def mouseMoveEvent(self, event) -> None:
        i = self.chip_at(event.position().toPoint())
        if i < 0:
            return
        self.set_focus(i)
        self.hovered.emit(i)
        row = self.weights_from_focus()
        top = np.argsort(-row[: i + 1], kind="stable")[:3]
        lines = "\n".join(f"  {label(self.pieces[k])!r} #{k}: {row[k]:.3f}" for k in top)
        QToolTip.showText(
            event.globalPosition().toPoint(),
            f"#{i} {chip_label(self.chip_text(i))!r} attends to:\n{lines}",
            self,
        )


class AttentionView(QWidget):
    """Layer and head pickers, the refresh button, the heatmap and the hover text, for one AttentionMap."""

    refresh_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.amap: AttentionMap | None = None
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.layer_box = QComboBox()
        self.layer_box.setToolTip("Which layer; sliding-window layers see only the most recent tokens.")
        self.head_box = QComboBox()
        self.head_box.setToolTip("One attention head, or the mean over all heads of the layer.")
        for box in (self.layer_box, self.head_box):
            box.setSizeAdjustPolicy(QComboBox.AdjustToContents)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Capture the attention of the current conversation again.")
        self.refresh_button.clicked.connect(self.refresh_requested)
        self.status = QLabel("Open a conversation and press Refresh.")
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.status.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)  # the pickers keep their width
        row.addWidget(QLabel("Layer"))
        row.addWidget(self.layer_box)
        row.addWidget(QLabel("Head"))
        row.addWidget(self.head_box)
        row.addWidget(self.refresh_button)
        row.addWidget(self.status, 1)
        layout.addLayout(row)
        self.layer_note = QLabel()
        layout.addWidget(self.layer_note)
        split = QSplitter(Qt.Horizontal)
        self.heatmap = AttentionHeatmap()
        self.text = AttentionText()
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setWidget(self.text)
        split.addWidget(self.heatmap)
        split.addWidget(scroll)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        layout.addWidget(split, 1)
        self.hint = QLabel(
            "Hover a token (or a heatmap row) to see which earlier tokens it attends to: the strongest at full "
            "colour. Heatmap colour: √weight, so weak attention beside a strong one still shows."
        )
        self.hint.setWordWrap(True)
        layout.addWidget(self.hint)
        self.layer_box.currentIndexChanged.connect(self._show)
        self.head_box.currentIndexChanged.connect(self._show)
        self.heatmap.hovered.connect(self.focus_token)
        self.text.hovered.connect(self.focus_token)

    def set_busy(self) -> None:
        self.refresh_button.setEnabled(False)
        self.status.setText("Capturing attention…")

    def clear(self, note: str) -> None:
        self.refresh_button.setEnabled(True)
        self.status.setText(note)

    def set_map(self, amap: AttentionMap) -> None:
        """Show a new capture, keeping the chosen layer and head where they still exist."""
        layer, head = self.layer_box.currentIndex(), self.head_box.currentData()
        self.amap = amap
        sliding = set(amap.sliding_window_layers)
        for box in (self.layer_box, self.head_box):
            box.blockSignals(True)
            box.clear()
        for i in range(amap.n_layers):
            kind = f"sliding window {amap.sliding_window}" if i in sliding else "global"
            self.layer_box.addItem(f"{i} · {kind}", i)
            self.layer_box.setItemData(
                i, QColor(SLIDING_COLOR if i in sliding else GLOBAL_COLOR), Qt.ForegroundRole
            )
        self.head_box.addItem("Mean over heads", MEAN)
        for h in range(amap.n_heads):
            self.head_box.addItem(f"Head {h}", h)
        self.layer_box.setCurrentIndex(layer if 0 <= layer < amap.n_layers else amap.n_layers - 1)
        self.head_box.setCurrentIndex(max(0, self.head_box.findData(head)) if head is not None else 0)
        for box in (self.layer_box, self.head_box):
            box.blockSignals(False)
        left_out = f", the first {count(amap.dropped, 'token')} left out" if amap.dropped else ""
        self.status.setText(
            f"{count(len(amap.tokens), 'token')}{left_out} · {amap.n_layers} layers × "
            f"{count(amap.n_heads, 'head')} · captured in {amap.seconds:.2f} s"
        )
        self.refresh_button.setEnabled(True)
        self.layout().activate()  # the pickers grew to their new items' width: lay out now, not at the next event
        if self.text.focus < 0 or self.text.focus >= len(amap.tokens):
            self.text.focus = len(amap.tokens) - 1  # the last token: what the next word is computed from
        self._show()

    def chosen(self) -> tuple[int, int | None]:
        head = self.head_box.currentData()
        return self.layer_box.currentIndex(), None if head in (None, MEAN) else int(head)

    def _show(self) -> None:
        if self.amap is None or self.layer_box.currentIndex() < 0:
            return
        layer, head = self.chosen()
        matrix = self.amap.matrix(layer, head)
        sliding = layer in self.amap.sliding_window_layers
        window = self.amap.sliding_window if sliding else 0
        self.layer_note.setText(
            f"Layer {layer} is a sliding-window layer: each token sees at most the {window} tokens up to itself."
            + (
                ""
                if window < len(self.amap.tokens)
                else " This text is shorter than the window, so it sees all."
            )
            if sliding
            else f"Layer {layer} is a global layer: each token sees every token before it."
        )
        self.heatmap.set_matrix(matrix, self.amap.pieces, window)
        self.heatmap.focus = self.text.focus
        self.text.set_matrix(matrix, self.amap.pieces)

    def focus_token(self, index: int) -> None:
        """Show what token `index` attends to (as hovering it does)."""
        self.text.set_focus(index)
        self.heatmap.focus = index
        self.heatmap.update()
