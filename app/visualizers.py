"""The visualizer widgets: context bar, token view, KV cache map and calculator, token probabilities, sampling
preview, timing. Each is painted with QPainter from plain data (engine.visual, engine.kv); none talks to the
engine: app.inspector feeds them."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PySide6.QtCore import QPoint, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetrics, QPainter, QPalette, QPen
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from app.wording import count
from engine.errors import IngleError
from engine.events import Token
from engine.interface import KVState
from engine.visual import ContextBudget, PreviewStage, TokenPiece

ROLE_COLORS = {"system": "#8e6fc1", "user": "#3f83cc", "assistant": "#3a9d5d", "draft": "#e09a2b"}
RESERVE_COLOR = "#9aa4ad"
DROP_COLOR = "#d0443c"
CHIP_CHARS = 40  # longest token text a chip shows whole
GLOBAL_COLOR, SLIDING_COLOR = "#3f83cc", "#3a9d5d"
MIB = 2**20


def _mix(a: QColor, b: QColor, t: float) -> QColor:
    return QColor.fromRgbF(
        *(x * (1 - t) + y * t for x, y in zip(a.getRgbF()[:3], b.getRgbF()[:3], strict=True))
    )


def _text_color(widget: QWidget) -> QColor:
    return widget.palette().color(QPalette.WindowText)


def _dim(widget: QWidget) -> QColor:
    return _mix(widget.palette().color(QPalette.WindowText), widget.palette().color(QPalette.Window), 0.45)


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / MIB:.2f} MiB"


def chip_label(text: str) -> str:
    """A chip's text, elided past CHIP_CHARS (a hostile "token" can be megabytes; Qt measures it all)."""
    return text if len(text) <= CHIP_CHARS else text[: CHIP_CHARS - 1] + "…"


def visible_piece(text: str) -> str:
    """A token's text as a chip shows it: whitespace made visible, nothing invisible."""
    if not text:
        return "∅"
    return text.replace("\n", "↵").replace("\t", "⇥").replace(" ", "·")


# ------------------------------------------------------------------ 1. context window
@dataclass(frozen=True)
class Segment:
    label: str
    tokens: int
    color: str
    dropped: bool = False
    detail: str = ""


def split_budget(budget: ContextBudget, roles: Sequence[str], has_draft: bool) -> tuple[int, int, int]:
    """(system, earlier turns, message being typed) in tokens, from the message spans themselves, so the three
    always add up to what the bar draws and none is negative (the start-of-text token belongs to the first
    message's span, whatever its role)."""
    if not budget.spans:
        return budget.system_tokens, max(0, budget.history_tokens), budget.draft_tokens
    total = budget.spans[-1][2]
    system = budget.spans[0][1]  # anything before the first message
    if roles and roles[0] == "system":
        system = budget.spans[0][2]
    typing = budget.spans[-1][2] - budget.spans[-1][1] if has_draft else 0
    return system, max(0, total - system - typing), typing


class ContextBar(QWidget):
    """The context as a bar: system prompt, earlier turns (each message), the draft, the reply reserve, free.

    Turns the overflow policy would drop before the next reply are hatched in red.
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.budget: ContextBudget | None = None
        self.used = 0  # tokens of the conversation (and draft) the bar shows; the status bar shows the same
        self.segments: list[Segment] = []
        self.note = "No model loaded."
        self.setMouseTracking(True)
        self.setMinimumHeight(96)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)

    def sizeHint(self) -> QSize:
        return QSize(520, 110)

    def set_budget(self, budget: ContextBudget, roles: Sequence[str], has_draft: bool) -> None:
        """`roles`: the role of each message of the conversation (+ "user" for the draft when there is one)."""
        self.budget = budget
        segs = []
        if budget.spans and budget.spans[0][1] > 0:  # BOS before the first message
            segs.append(Segment("start of text", budget.spans[0][1], ROLE_COLORS["system"]))
        for index, start, end in budget.spans:
            draft = has_draft and index == len(budget.spans) - 1
            role = "draft" if draft else roles[index] if index < len(roles) else "user"
            label = "message being typed" if draft else f"message {index + 1} ({role})"
            segs.append(Segment(label, end - start, ROLE_COLORS[role], index in budget.would_drop_messages))
        segs.append(Segment("reserved for the reply", budget.reserve_tokens, RESERVE_COLOR))
        self.segments = segs
        system, turns, typing = split_budget(budget, roles, has_draft)
        self.used = system + turns + typing
        self.note = (
            f"{self.used:,} of {budget.n_ctx:,} tokens used (system {system:,} · turns {turns:,} · typing "
            f"{typing:,}) · reply reserve {budget.reserve_tokens:,} · free {budget.free_tokens:,}"
        )
        if budget.would_drop_messages:
            self.note += (
                f"\nThe next reply drops the {count(len(budget.would_drop_messages), 'oldest message')} "
                f"({budget.would_drop_tokens:,} tokens), hatched."
            )
        elif not budget.fits:
            self.note += "\nDoes not fit: the overflow policy is 'stop'; shorten it or pick another policy."
        self.update()

    def clear(self, note: str) -> None:
        self.budget, self.segments, self.note, self.used = None, [], note, 0
        self.update()

    def _bar_rect(self) -> QRect:
        return QRect(8, 8, max(10, self.width() - 16), 30)

    def _segment_rects(self) -> list[tuple[Segment, QRectF]]:
        if not self.budget:
            return []
        bar = self._bar_rect()
        total = max(self.budget.n_ctx, sum(s.tokens for s in self.segments))
        x, out = float(bar.left()), []
        for seg in self.segments:
            w = bar.width() * seg.tokens / total
            out.append((seg, QRectF(x, bar.top(), max(w, 1.0 if seg.tokens else 0.0), bar.height())))
            x += w
        return out

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        bar = self._bar_rect()
        p.setPen(QPen(_dim(self), 1))
        p.setBrush(self.palette().color(QPalette.Base))
        p.drawRoundedRect(bar, 4, 4)
        for seg, rect in self._segment_rects():
            p.fillRect(rect, QColor(seg.color))
            if seg.dropped:
                p.fillRect(rect, QBrush(QColor(DROP_COLOR), Qt.BDiagPattern))
                p.setPen(QPen(QColor(DROP_COLOR), 2))
                p.drawRect(rect.adjusted(1, 1, -1, -1))
            p.setPen(QPen(self.palette().color(QPalette.Base), 1))
            p.drawLine(rect.topRight(), rect.bottomRight())
        # legend
        p.setPen(_text_color(self))
        y = bar.bottom() + 8
        x = bar.left()
        fm = QFontMetrics(self.font())
        for name, color in (("system", ROLE_COLORS["system"]), ("user", ROLE_COLORS["user"]),
                            ("assistant", ROLE_COLORS["assistant"]), ("typing", ROLE_COLORS["draft"]),
                            ("reply reserve", RESERVE_COLOR), ("dropped next", DROP_COLOR)):  # fmt: skip
            p.fillRect(QRect(x, y + 3, 10, 10), QColor(color))
            p.drawText(x + 14, y + fm.ascent(), name)
            x += 14 + fm.horizontalAdvance(name) + 14
        p.drawText(QRect(bar.left(), y + fm.height() + 4, bar.width(), 3 * fm.height()),
                   Qt.TextWordWrap, self.note)  # fmt: skip
        p.end()

    def mouseMoveEvent(self, event) -> None:
        for seg, rect in self._segment_rects():
            if rect.contains(event.position()):
                extra = " — dropped before the next reply" if seg.dropped else ""
                QToolTip.showText(
                    event.globalPosition().toPoint(), f"{seg.label}: {seg.tokens:,} tokens{extra}", self
                )
                return
        QToolTip.hideText()


# ------------------------------------------------------------------ shared: chips that flow like text
class _ChipFlow(QWidget):
    """Token chips laid out like words in a paragraph; subclasses say what each chip shows and how it looks."""

    PAD_X, PAD_Y, GAP = 3, 2, 2

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMouseTracking(True)
        self._rects: list[QRect] = []
        self._laid_for = -1
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        mono = QFont("monospace")
        mono.setStyleHint(QFont.Monospace)
        self.setFont(mono)

    def chip_count(self) -> int:
        raise NotImplementedError

    def chip_text(self, index: int) -> str:
        raise NotImplementedError

    def _layout(self, width: int, rects: list[QRect] | None = None) -> list[QRect]:
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
            self._laid_for = -1
            return
        self._rects = self._layout(max(50, self.width()))
        self._laid_for = self.width()
        self.updateGeometry()
        self.update()

    def showEvent(self, event) -> None:
        if self._laid_for != self.width():
            self.relayout()
        super().showEvent(event)

    def grow(self) -> None:
        """Lay out chips appended since the last layout: a streamed token costs one chip, not all of them."""
        if self._laid_for != self.width() or not self.isVisible():
            self.relayout()
            return
        self._rects = self._layout(max(50, self.width()), self._rects)
        self.updateGeometry()
        self.update()

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        rects = self._rects if width == self._laid_for else self._layout(max(50, width))
        return (rects[-1].bottom() + 4) if rects else 20

    def sizeHint(self) -> QSize:
        width = self._laid_for if self._laid_for > 0 else 480  # asked at every token while a reply streams
        return QSize(480, self.heightForWidth(width))

    def resizeEvent(self, event) -> None:
        if self.width() != self._laid_for:
            self.relayout()
        super().resizeEvent(event)

    def chip_at(self, pos: QPoint) -> int:
        for i, rect in enumerate(self._rects):
            if rect.contains(pos):
                return i
        return -1

    def paint_chips(
        self, color: Callable[[int], QColor], fg: Callable[[int], QColor], outlined: int = -1
    ) -> None:
        """Paint the chips in view (colours asked for those only: a long reply has thousands)."""
        if self._laid_for != self.width():
            self._rects = self._layout(max(50, self.width()))
            self._laid_for = self.width()
        shown = self.visibleRegion().boundingRect()
        p = QPainter(self)
        first = bisect_left(self._rects, shown.top(), key=QRect.bottom)  # rows run down the widget
        for i in range(first, min(len(self._rects), self.chip_count())):
            rect = self._rects[i]
            if rect.top() > shown.bottom():
                break
            p.fillRect(rect, color(i))
            if i == outlined:
                p.setPen(QPen(_text_color(self), 2))
                p.drawRect(rect.adjusted(1, 1, -1, -1))
            p.setPen(fg(i))
            p.drawText(rect, Qt.AlignCenter, chip_label(self.chip_text(i)))
        p.end()


# ------------------------------------------------------------------ 2. token view
class TokenView(_ChipFlow):
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
        text = _text_color(self)
        shades = (
            _mix(base, QColor(ROLE_COLORS["user"]), 0.18),
            _mix(base, QColor(ROLE_COLORS["assistant"]), 0.22),
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


# ------------------------------------------------------------------ 3. KV cache map + calculator
class KVCacheMap(QWidget):
    """The KV cache's cells by the message they hold (reused from the cache pale, computed on the last turn full),
    then memory per layer (sliding-window vs global), K/V types and the total with its formula. Grows live while
    a reply streams."""

    CELL, GAP = 6, 1

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.layout_info: dict | None = None
        self.owner: list[str] = []  # role per used cell
        self.fresh_from = (
            0  # cells from here on were computed on the last turn (the rest came from the cache)
        )
        self.n_past = 0
        self.note = "No model loaded."
        self.setMinimumHeight(260)

    def set_state(self, kv: KVState, spans: Sequence[tuple[int, int, int]], roles: Sequence[str],
                  reused: int, evaluated: int) -> None:  # fmt: skip
        """`kv`: Runtime.kv_state(); `spans`: (message, first, end) per message; `reused`/`evaluated`: the last
        turn's split (from its PromptEvaluated event)."""
        self.layout_info = kv.layout.to_dict()
        self.n_past = kv.n_past
        owner: list[str] = []
        for index, start, end in spans:
            role = roles[index] if index < len(roles) else "draft"
            owner.extend([role] * (end - start))
        owner = owner[: self.n_past]
        owner.extend(["assistant"] * (self.n_past - len(owner)))  # a reply being written
        self.owner = owner
        self.fresh_from = reused if (reused or evaluated) else self.n_past
        self.note = (
            f"{self.n_past:,} cells in use · last turn: {reused:,} reused from the cache, "
            f"{evaluated:,} computed fresh, then the reply"
        )
        self.updateGeometry()
        self.update()

    def add_generated(self, n: int = 1) -> None:
        """A streamed token took the next cell (no engine request while a reply runs)."""
        self.owner.extend(["assistant"] * n)
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

    def hasHeightForWidth(self) -> bool:
        return True

    def sizeHint(self) -> QSize:
        return QSize(520, self.heightForWidth(520))

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        fm = QFontMetrics(self.font())
        text = _text_color(self)
        if not self.layout_info:
            p.setPen(text)
            p.drawText(self.rect().adjusted(8, 8, -8, -8), Qt.TextWordWrap, self.note)
            p.end()
            return
        per_row, rows = self._grid(self.width())
        empty = _mix(self.palette().color(QPalette.Base), text, 0.08)
        step = self.CELL + self.GAP
        for cell in range(self.layout_info["n_ctx"]):
            r, c = divmod(cell, per_row)
            rect = QRect(8 + c * step, 8 + r * step, self.CELL, self.CELL)
            if cell < len(self.owner):
                color = QColor(ROLE_COLORS.get(self.owner[cell], ROLE_COLORS["assistant"]))
                if cell < self.fresh_from:  # came from the cache: pale
                    color = _mix(color, self.palette().color(QPalette.Base), 0.55)
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
                QRect(8 + label_w + kw, y + 2, w - kw, fm.height() - 4), _mix(color, QColor("white"), 0.35)
            )
            p.drawText(8 + label_w + w + 6, y + fm.ascent(), _size(total))
            y += fm.height() + 2
        y += 4
        formula = kv_formula(info)
        p.drawText(QRect(8, y, self.width() - 16, 4 * fm.height()), Qt.TextWordWrap,
                   f"Total {_size(self.total_bytes)} = {formula}\n(darker: K, lighter: V)")  # fmt: skip
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
        self.layout = None  # the last KVLayout computed (the inspector refreshes this when its dock opens)

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
            f"{g['layers']} {g['cache']} layers: {g['cells']:,} cells, K {_size(g['bytes_k'])} + V {_size(g['bytes_v'])}"
            for g in layout.groups()
        ]
        self.layout = layout
        self.result.setText(
            "\n".join(lines) + f"\n\nTotal: {_size(layout.total_bytes)}\n{kv_formula(layout.to_dict())}"
        )


# ------------------------------------------------------------------ 4. token probabilities
def prob_color(p: float) -> QColor:
    """Red (unlikely) through amber to green (certain), on a log scale so 1% and 10% look different."""
    t = min(1.0, max(0.0, 1 + math.log10(max(p, 1e-4)) / 4))
    return QColor.fromHsvF(t * 0.33, 0.55, 0.95)


class TokenProbabilities(QWidget):
    """The last reply's tokens coloured by probability; click one for its alternatives, and continue the
    conversation from there with another choice (a new branch)."""

    continue_requested = Signal(int, str)  # assistant message id, text of the new branch so far

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.message_id: int | None = None
        self.tokens: list[Token] = []
        layout = QVBoxLayout(self)
        self.caption = QLabel(
            "Send a message: each token of the reply appears here coloured by its probability."
        )
        self.caption.setWordWrap(True)
        layout.addWidget(self.caption)
        self.flow = _ProbabilityFlow(self)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setWidget(self.flow)
        layout.addWidget(scroll, 2)
        self.detail = QLabel()
        self.detail.setTextFormat(Qt.PlainText)  # it quotes the model's tokens
        layout.addWidget(self.detail)
        self.alternatives = QListWidget()
        self.alternatives.setMaximumHeight(150)
        layout.addWidget(self.alternatives, 1)
        self.continue_button = QPushButton("Continue from here with this alternative")
        self.continue_button.setEnabled(False)
        self.continue_button.clicked.connect(self._continue)
        self.alternatives.currentRowChanged.connect(lambda row: self.continue_button.setEnabled(row >= 0))
        layout.addWidget(self.continue_button)
        self.selected = -1

    def set_reply(self, message_id: int | None, tokens: Sequence[Token]) -> None:
        self.message_id = message_id
        self.tokens = [t for t in tokens if t.token_id >= 0]
        self.selected = -1
        self.alternatives.clear()
        self.detail.clear()
        self.continue_button.setEnabled(False)
        with_p = [t for t in self.tokens if t.logprob is not None]
        if self.tokens and not with_p:
            self.caption.setText(
                "This reply was streamed without probabilities (open the inspector before sending)."
            )
        elif self.tokens:
            mean = sum(math.exp(t.logprob) for t in with_p) / len(with_p)
            self.caption.setText(f"{count(len(self.tokens), 'token')}, mean probability {mean:.0%}. Click a token for the "
                                 "alternatives the model weighed.")  # fmt: skip
        self.flow.relayout()

    def add_token(self, message_id: int, token: Token) -> None:
        if message_id != self.message_id:
            self.set_reply(message_id, [])
        if token.token_id >= 0:
            self.tokens.append(token)
            self.flow.grow()

    def select(self, index: int) -> None:
        self.selected = index
        tok = self.tokens[index]
        p = math.exp(tok.logprob) if tok.logprob is not None else None
        chosen = f"chosen: {visible_piece(tok.text)!s} ({p:.1%})" if p is not None else "chosen token"
        self.detail.setText(f"Token {index + 1}: {chosen}")
        self.alternatives.clear()
        for alt in tok.alternatives:
            item = QListWidgetItem(
                f"{math.exp(alt.logprob):7.2%}  {visible_piece(alt.piece)}  (id {alt.token_id})"
            )
            item.setData(Qt.UserRole, alt.piece)
            if alt.token_id == tok.token_id:
                item.setText(item.text() + "  ← chosen")
            self.alternatives.addItem(item)
        self.continue_button.setEnabled(False)
        self.flow.update()

    def branch_text(self, index: int, piece: str) -> str:
        return "".join(t.text for t in self.tokens[:index]) + piece

    def _continue(self) -> None:
        item = self.alternatives.currentItem()
        if item is None or self.selected < 0 or self.message_id is None:
            return
        self.continue_requested.emit(self.message_id, self.branch_text(self.selected, item.data(Qt.UserRole)))


class _ProbabilityFlow(_ChipFlow):
    def __init__(self, owner: TokenProbabilities):
        super().__init__(owner)
        self.owner = owner

    def chip_count(self) -> int:
        return len(self.owner.tokens)

    def chip_text(self, index: int) -> str:
        return visible_piece(self.owner.tokens[index].text)

    def paintEvent(self, _event) -> None:
        base, black, tokens = self.palette().color(QPalette.Base), QColor("black"), self.owner.tokens

        def color(i: int) -> QColor:
            return prob_color(math.exp(tokens[i].logprob)) if tokens[i].logprob is not None else base

        self.paint_chips(color, lambda _i: black, self.owner.selected)

    def mouseMoveEvent(self, event) -> None:
        i = self.chip_at(event.position().toPoint())
        if i >= 0:
            tok = self.owner.tokens[i]
            p = f"{math.exp(tok.logprob):.2%}" if tok.logprob is not None else "unknown"
            QToolTip.showText(event.globalPosition().toPoint(), f"id {tok.token_id} · p {p}", self)

    def mousePressEvent(self, event) -> None:
        i = self.chip_at(event.position().toPoint())
        if i >= 0:
            self.owner.select(i)


# ------------------------------------------------------------------ 5. sampling preview
class SamplingPreview(QWidget):
    """The next-token distribution as bars: the model's top tokens, then what each sampler stage keeps at the
    current slider values; a token a stage removed is named with that stage."""

    ROW = 18

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

    def hasHeightForWidth(self) -> bool:
        return True

    def sizeHint(self) -> QSize:
        return QSize(620, self.heightForWidth(620))

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        fm = QFontMetrics(self.font())
        text = _text_color(self)
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
            p.setPen(_dim(self))
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
                p.fillRect(track, _mix(self.palette().color(QPalette.Base), text, 0.06))
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
            p.setPen(_dim(self))
            p.drawText(QRect(8, y + 4, self.width() - 16, 2 * fm.height()), Qt.TextWordWrap, self.note)
        p.end()


# ------------------------------------------------------------------ 6. timing
class TimingBar(QWidget):
    """Per reply, a timeline: prefill (reading the prompt) then decode (writing), with tok/s; newest on top."""

    KEEP = 6

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.replies: list[dict] = []
        self.setMinimumHeight(80)

    def add_reply(self, stats) -> None:
        """`stats`: engine.events.ReplyStats of a finished reply."""
        self.replies.insert(0, {
            "prefill_s": stats.prefill_seconds, "decode_s": stats.decode_seconds,
            "prompt": stats.prompt_tokens, "reused": stats.reused_tokens, "evaluated": stats.evaluated_tokens,
            "generated": stats.generated_tokens, "prefill_tok_s": stats.prefill_tok_s,
            "decode_tok_s": stats.decode_tok_s, "ttft": stats.ttft_seconds,
        })  # fmt: skip
        del self.replies[self.KEEP :]
        self.updateGeometry()
        self.update()

    def heightForWidth(self, _width: int) -> int:
        fm = QFontMetrics(self.font())
        return 12 + max(1, len(self.replies)) * (2 * fm.height() + 14) + fm.height()

    def hasHeightForWidth(self) -> bool:
        return True

    def sizeHint(self) -> QSize:
        return QSize(520, self.heightForWidth(520))

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        fm = QFontMetrics(self.font())
        text = _text_color(self)
        p.setPen(text)
        if not self.replies:
            p.drawText(
                self.rect().adjusted(8, 8, -8, -8), Qt.TextWordWrap, "Timing appears after the first reply."
            )
            p.end()
            return
        longest = max(r["prefill_s"] + r["decode_s"] for r in self.replies) or 1.0
        width = self.width() - 16
        y = 8
        for i, r in enumerate(self.replies):
            w_pre = max(2, int(width * r["prefill_s"] / longest))
            w_dec = max(2, int(width * r["decode_s"] / longest))
            p.fillRect(QRect(8, y, w_pre, fm.height()), QColor(ROLE_COLORS["user"]))
            p.fillRect(QRect(8 + w_pre, y, w_dec, fm.height()), QColor(ROLE_COLORS["assistant"]))
            p.setPen(text)
            label = (
                f"{'last reply' if i == 0 else f'{i + 1} replies ago'}: prefill {r['evaluated']} tok "
                f"({r['reused']} from cache) in {r['prefill_s'] * 1000:.0f} ms = {r['prefill_tok_s']:.0f} tok/s · "
                f"first token after {r['ttft'] * 1000:.0f} ms · decode {r['generated']} tok in "
                f"{r['decode_s']:.2f} s = {r['decode_tok_s']:.1f} tok/s"
            )
            p.drawText(QRect(8, y + fm.height() + 2, width, fm.height() + 4), Qt.AlignLeft,
                       fm.elidedText(label, Qt.ElideRight, width))  # fmt: skip
            y += 2 * fm.height() + 14
        p.setPen(_dim(self))
        p.drawText(
            8, y + fm.ascent(), "blue: prefill (reading the prompt) · green: decode (writing the reply)"
        )
        p.end()
