"""The next-token distribution as bars: the model's top tokens, then what each sampler stage keeps of them."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QRect, Qt
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPalette
from PySide6.QtWidgets import QWidget

from app.visualizers.common import (
    DROP_COLOR,
    ROLE_COLORS,
    HeightForWidthMixin,
    dim_color,
    mix,
    text_color,
    visible_piece,
)
from engine.visual import PreviewStage


class SamplingPreview(HeightForWidthMixin, QWidget):
    """The next-token distribution as bars: the model's top tokens, then what each sampler stage keeps at the
    current slider values; a token a stage removed is named with that stage."""

    ROW = 18
    HINT_WIDTH = 620

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.stages: list[PreviewStage] = []
        self.note = "Load a model and type a message to see what the model would say next."
        self.setMinimumHeight(200)

    def set_stages(self, stages: Sequence[PreviewStage], note: str = "") -> None:
        self.stages = list(stages)
        self.note = note
        self.updateGeometry()
        self.update()

    def rows(self) -> list[dict]:
        """One row per token of the model's top list: its p at each stage (None once removed), who removed it."""
        if not self.stages:
            return []
        out = []
        for tok in self.stages[0].tokens:
            ps, removed_by = [], ""
            for stage in self.stages:
                kept = next((t.p for t in stage.tokens if t.token_id == tok.token_id), None)
                if tok.token_id in stage.removed and not removed_by:
                    removed_by = stage.name
                ps.append(None if removed_by else kept)
            out.append({"token_id": tok.token_id, "piece": tok.piece, "p": ps, "removed_by": removed_by})
        return out

    def heightForWidth(self, _width: int) -> int:
        n = len(self.stages[0].tokens) if self.stages else 2
        return 3 * self.ROW + n * self.ROW + 2 * QFontMetrics(self.font()).height()

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        fm = QFontMetrics(self.font())
        text = text_color(self)
        p.setPen(text)
        if not self.stages:
            p.drawText(self.rect().adjusted(8, 8, -8, -8), Qt.TextWordWrap, self.note)
            p.end()
            return
        rows = self.rows()
        token_w = min(140, max(fm.horizontalAdvance(visible_piece(r["piece"])[:16]) for r in rows) + 12)
        removed_w = fm.horizontalAdvance("removed by top_n_sigma") + 8
        n = len(self.stages)
        col_w = max(44, (self.width() - 16 - token_w - removed_w) // n)
        y = 6
        for j, stage in enumerate(self.stages):
            x = 8 + token_w + j * col_w
            p.drawText(QRect(x, y, col_w - 4, self.ROW), Qt.AlignLeft | Qt.AlignVCenter,
                       fm.elidedText(stage.name, Qt.ElideRight, col_w - 4))  # fmt: skip
            p.setPen(dim_color(self))
            p.drawText(QRect(x, y + self.ROW, col_w - 4, self.ROW), Qt.AlignLeft | Qt.AlignVCenter,
                       f"{stage.kept:,} left")  # fmt: skip
            p.setPen(text)
        y += 2 * self.ROW + 2
        for r in rows:
            p.setPen(text)
            p.drawText(QRect(8, y, token_w - 6, self.ROW), Qt.AlignRight | Qt.AlignVCenter,
                       fm.elidedText(visible_piece(r["piece"]), Qt.ElideRight, token_w - 6))  # fmt: skip
            for j, prob in enumerate(r["p"]):
                x = 8 + token_w + j * col_w
                track = QRect(x, y + 3, col_w - 8, self.ROW - 6)
                p.fillRect(track, mix(self.palette().color(QPalette.Base), text, 0.06))
                if prob is not None:
                    p.fillRect(QRect(x, y + 3, max(1, int((col_w - 8) * prob)), self.ROW - 6),
                               QColor(ROLE_COLORS["user"] if j == 0 else ROLE_COLORS["assistant"]))  # fmt: skip
                    if prob >= 0.01:
                        p.setPen(text)
                        p.drawText(track.adjusted(2, 0, 0, 0), Qt.AlignLeft | Qt.AlignVCenter, f"{prob:.0%}")
            if r["removed_by"]:
                p.setPen(QColor(DROP_COLOR))
                p.drawText(QRect(8 + token_w + n * col_w, y, removed_w, self.ROW), Qt.AlignLeft | Qt.AlignVCenter,
                           f"removed by {r['removed_by']}")  # fmt: skip
            y += self.ROW
        if self.note:
            p.setPen(dim_color(self))
            p.drawText(QRect(8, y + 4, self.width() - 16, 2 * fm.height()), Qt.TextWordWrap, self.note)
        p.end()
