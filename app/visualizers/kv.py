"""The KV cache: its cells by message and its memory per layer, and a calculator for any library model."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PySide6.QtCore import QRect, Qt
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPalette
from PySide6.QtWidgets import QCheckBox, QComboBox, QFormLayout, QLabel, QSpinBox, QWidget

from app.visualizers.common import (
    GLOBAL_COLOR,
    ROLE_COLORS,
    SLIDING_COLOR,
    HeightForWidthMixin,
    mix,
    text_color,
)
from engine import units
from engine.errors import IngleError
from engine.interface import KVState

KV_MIB_DIGITS = 2  # as llama.cpp reports its KV cache ("27.00 MiB"), so the two can be compared


class KVCacheMap(HeightForWidthMixin, QWidget):
    """The KV cache's cells by the message they hold (reused from the cache pale, computed on the last turn full),
    then memory per layer (sliding-window vs global), K/V types and the total with its formula. Grows live while
    a reply streams."""

    CELL, GAP = 6, 1

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.layout_info: dict | None = None
        self.cell_roles: list[str] = []  # the role of the message each used cell holds
        self.fresh_from = 0  # cells from here on were computed on the last turn (the rest: cached)
        self.n_past = 0
        self.note = "No model loaded."
        self.setMinimumHeight(260)

    def set_state(self, kv: KVState, spans: Sequence[tuple[int, int, int]], roles: Sequence[str],
                  reused: int, evaluated: int) -> None:  # fmt: skip
        """`kv`: Runtime.kv_state(); `spans`: (message, first, end) per message; `reused`/`evaluated`: the last
        turn's split (from its PromptEvaluated event)."""
        self.layout_info = kv.layout.to_dict()
        self.n_past = kv.n_past
        cell_roles: list[str] = []
        for index, start, end in spans:
            role = roles[index] if index < len(roles) else "draft"
            cell_roles.extend([role] * (end - start))
        cell_roles = cell_roles[: self.n_past]
        cell_roles.extend(["assistant"] * (self.n_past - len(cell_roles)))  # a reply being written
        self.cell_roles = cell_roles
        self.fresh_from = reused if (reused or evaluated) else self.n_past
        self.note = (
            f"{self.n_past:,} cells in use · last turn: {reused:,} reused from the cache, "
            f"{evaluated:,} computed fresh, then the reply"
        )
        self.updateGeometry()
        self.update()

    def add_generated(self, n: int = 1) -> None:
        """A streamed token took the next cell (no engine request while a reply runs)."""
        self.cell_roles.extend(["assistant"] * n)
        self.n_past += n
        self.update()

    @property
    def total_bytes(self) -> int:
        if not self.layout_info:
            return 0
        return sum(lyr["bytes_k"] + lyr["bytes_v"] for lyr in self.layout_info["layers"])

    def _grid(self, width: int) -> tuple[int, int]:
        n = self.layout_info["n_ctx"] if self.layout_info else 0
        per_row = max(16, (width - 16) // (self.CELL + self.GAP))
        return per_row, math.ceil(n / per_row) if n else 0

    def heightForWidth(self, width: int) -> int:
        fm = QFontMetrics(self.font())
        _, rows = self._grid(width)
        n_layers = len(self.layout_info["layers"]) if self.layout_info else 0
        return (
            16
            + rows * (self.CELL + self.GAP)
            + 3 * fm.height()
            + n_layers * (fm.height() + 2)
            + 4 * fm.height()
        )

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        fm = QFontMetrics(self.font())
        text = text_color(self)
        if not self.layout_info:
            p.setPen(text)
            p.drawText(self.rect().adjusted(8, 8, -8, -8), Qt.TextWordWrap, self.note)
            p.end()
            return
        per_row, rows = self._grid(self.width())
        empty = mix(self.palette().color(QPalette.Base), text, 0.08)
        step = self.CELL + self.GAP
        for cell in range(self.layout_info["n_ctx"]):
            r, c = divmod(cell, per_row)
            rect = QRect(8 + c * step, 8 + r * step, self.CELL, self.CELL)
            if cell < len(self.cell_roles):
                color = QColor(ROLE_COLORS.get(self.cell_roles[cell], ROLE_COLORS["assistant"]))
                if cell < self.fresh_from:  # came from the cache: pale
                    color = mix(color, self.palette().color(QPalette.Base), 0.55)
                p.fillRect(rect, color)
            else:
                p.fillRect(rect, empty)
        y = 8 + rows * step + 6
        x = 8
        for name, color in (
            ("system", "system"),
            ("user", "user"),
            ("assistant", "assistant"),
            ("typing", "draft"),
        ):
            p.fillRect(QRect(x, y + 3, 10, 10), QColor(ROLE_COLORS[color]))
            p.setPen(text)
            p.drawText(x + 14, y + fm.ascent(), name)
            x += 28 + fm.horizontalAdvance(name)
        p.drawText(
            x, y + fm.ascent(), "· pale: reused from the cache · full colour: computed on the last turn"
        )
        y += fm.height() + 4
        p.drawText(8, y + fm.ascent(), self.note)
        y += fm.height() + 6
        info = self.layout_info
        p.drawText(8, y + fm.ascent(), f"Per layer: K {info['type_k']}, V {info['type_v']}, "
                                       f"{info['n_kv_heads']} KV heads x head dim {info['head_dim_k']}")  # fmt: skip
        y += fm.height() + 2
        biggest = max(lyr["bytes_k"] + lyr["bytes_v"] for lyr in info["layers"]) or 1
        label_w = fm.horizontalAdvance("L00 sliding 00000 cells ")
        bar_w = max(40, self.width() - label_w - fm.horizontalAdvance(" 000.00 MiB") - 24)
        for lyr in info["layers"]:
            kind = "sliding" if lyr["sliding"] else "global"
            p.setPen(text)
            p.drawText(8, y + fm.ascent(), f"L{lyr['index']:<2} {kind:<7} {lyr['cells']:>5} cells")
            total = lyr["bytes_k"] + lyr["bytes_v"]
            w = int(bar_w * total / biggest)
            color = QColor(SLIDING_COLOR if lyr["sliding"] else GLOBAL_COLOR)
            kw = int(w * lyr["bytes_k"] / total) if total else 0
            p.fillRect(QRect(8 + label_w, y + 2, kw, fm.height() - 4), color)
            p.fillRect(
                QRect(8 + label_w + kw, y + 2, w - kw, fm.height() - 4), mix(color, QColor("white"), 0.35)
            )
            p.drawText(8 + label_w + w + 6, y + fm.ascent(), units.size(total, KV_MIB_DIGITS))
            y += fm.height() + 2
        y += 4
        formula = kv_formula(info)
        p.drawText(QRect(8, y, self.width() - 16, 4 * fm.height()), Qt.TextWordWrap,
                   f"Total {units.size(self.total_bytes, KV_MIB_DIGITS)} = {formula}\n(darker: K, lighter: V)")  # fmt: skip
        p.end()


def kv_formula(info: dict) -> str:
    """layers x cells x KV heads x head dim x bytes, per cache group, as the KV map and calculator print it."""
    groups: dict[bool, list[dict]] = {}
    for lyr in info["layers"]:
        groups.setdefault(lyr["sliding"], []).append(lyr)
    parts = []
    for sliding, layers in sorted(groups.items()):
        per_cell = (layers[0]["bytes_k"] + layers[0]["bytes_v"]) / max(1, layers[0]["cells"])
        parts.append(
            f"{len(layers)} {'sliding-window' if sliding else 'global'} layers x {layers[0]['cells']:,} cells x "
            f"{per_cell:,.0f} B/cell ({info['n_kv_heads']} KV heads x ({info['head_dim_k']} x {info['type_k']} "
            f"+ {info['head_dim_v']} x {info['type_v']}))"
        )
    return " + ".join(parts)


class KVCalculator(QWidget):
    """Cache memory for any library model, context length and cache types, before loading (engine.kv, pure)."""

    def __init__(self, library, parent: QWidget | None = None):
        super().__init__(parent)
        self.library = library
        form = QFormLayout(self)
        self.model_box = QComboBox()
        self.model_box.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.model_box.setMinimumContentsLength(16)
        self.n_ctx = QSpinBox()
        self.n_ctx.setRange(64, 1 << 20)
        self.n_ctx.setSingleStep(1024)
        self.n_ctx.setValue(4096)
        self.type_k, self.type_v = QComboBox(), QComboBox()
        from engine.settings import CacheType

        for box in (self.type_k, self.type_v):
            box.addItems([t.value for t in CacheType])
            box.setCurrentText("f16")
        self.swa_full = QCheckBox("keep every position in sliding-window layers")
        self.result = QLabel()
        self.result.setTextFormat(Qt.PlainText)  # error messages quote file names
        self.result.setWordWrap(True)
        self.result.setTextInteractionFlags(Qt.TextSelectableByMouse)
        form.addRow("Model", self.model_box)
        form.addRow("Context length", self.n_ctx)
        form.addRow("K cache type", self.type_k)
        form.addRow("V cache type", self.type_v)
        form.addRow("Full SWA cache", self.swa_full)
        form.addRow(self.result)
        for signal in (self.model_box.currentIndexChanged, self.n_ctx.valueChanged, self.type_k.currentIndexChanged,
                       self.type_v.currentIndexChanged, self.swa_full.toggled):  # fmt: skip
            signal.connect(self.compute)
        self._infos: dict[str, object] = {}
        # the last KVLayout computed (the inspector refreshes it when its dock opens); not `layout`, which
        # would hide QWidget.layout()
        self.computed_layout = None

    def refresh(self) -> None:
        current = self.model_box.currentData()
        self.model_box.blockSignals(True)
        self.model_box.clear()
        for entry in self.library.entries("model"):
            self.model_box.addItem(entry.name, str(entry.file))
        if current:
            self.model_box.setCurrentIndex(max(0, self.model_box.findData(current)))
        self.model_box.blockSignals(False)
        self.compute()

    def compute(self, *_args) -> None:
        from engine.gguf_info import inspect_gguf
        from engine.kv import kv_layout
        from engine.settings import CacheType

        path = self.model_box.currentData()
        if not path:
            self.result.setText("No models in the library yet.")
            return
        try:
            info = self._infos.get(path) or inspect_gguf(path)
            self._infos[path] = info
            layout = kv_layout(info, self.n_ctx.value(), CacheType(self.type_k.currentText()),
                               CacheType(self.type_v.currentText()), swa_full=self.swa_full.isChecked())  # fmt: skip
        except IngleError as err:
            self.result.setText(str(err))
            return
        lines = [
            f"{g['layers']} {g['cache']} layers: {g['cells']:,} cells, "
            f"K {units.size(g['bytes_k'], KV_MIB_DIGITS)} + V {units.size(g['bytes_v'], KV_MIB_DIGITS)}"
            for g in layout.groups()
        ]
        self.computed_layout = layout
        self.result.setText(
            "\n".join(lines)
            + f"\n\nTotal: {units.size(layout.total_bytes, KV_MIB_DIGITS)}\n{kv_formula(layout.to_dict())}"
        )
