"""The context window as a bar: system prompt, each earlier turn, the draft, the reply reserve, free."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtCore import QRect, QRectF, QSize, Qt
from PySide6.QtGui import QBrush, QColor, QFontMetrics, QPainter, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

from app.visualizers.common import DROP_COLOR, RESERVE_COLOR, ROLE_COLORS, dim_color, text_color
from app.wording import count
from engine.visual import ContextBudget

SOURCES_COLOR = "#2aa198"  # retrieved document passages
TOOLS_COLOR = "#d33682"  # the tool definitions the template writes into the prompt


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

    def set_budget(
        self,
        budget: ContextBudget,
        roles: Sequence[str],
        has_draft: bool,
        retrieved: dict[int, int] | None = None,
    ) -> None:
        """`roles`: the role of each message of the conversation (+ "user" for the draft when there is one).
        `retrieved`: message index -> tokens of retrieved document passages inside it (their own segment)."""
        retrieved = retrieved or {}
        self.budget = budget
        segs = []
        if budget.spans and budget.spans[0][1] > 0:  # BOS before the first message
            segs.append(Segment("start of text", budget.spans[0][1], ROLE_COLORS["system"]))
        for index, start, end in budget.spans:
            draft = has_draft and index == len(budget.spans) - 1
            role = "draft" if draft else roles[index] if index < len(roles) else "user"
            label = "message being typed" if draft else f"message {index + 1} ({role})"
            sources = min(retrieved.get(index, 0), end - start)
            tools = min(budget.tool_tokens, end - start - sources) if index == budget.tools_in else 0
            if sources:  # the passages sit before the question inside the message
                segs.append(Segment(f"retrieved passages in message {index + 1}", sources, SOURCES_COLOR,
                                    index in budget.would_drop_messages))  # fmt: skip
            segs.append(Segment(
                label, end - start - sources - tools, ROLE_COLORS[role], index in budget.would_drop_messages
            ))  # fmt: skip
            # what the template wrote into this message's turn: the tools' names, descriptions, schemas
            if tools:
                segs.append(Segment(f"tool definitions (in message {index + 1})", tools, TOOLS_COLOR))
        segs.append(Segment("reserved for the reply", budget.reserve_tokens, RESERVE_COLOR))
        self.segments = segs
        system, turns, typing = split_budget(budget, roles, has_draft)
        self.used = system + turns + typing
        self.note = (
            f"{self.used:,} of {budget.n_ctx:,} tokens used (system {system:,} · turns {turns:,} · typing "
            f"{typing:,}) · reply reserve {budget.reserve_tokens:,} · free {budget.free_tokens:,}"
        )
        if retrieved:
            self.note += f" · retrieved passages {sum(retrieved.values()):,}"
        if budget.tool_tokens:
            self.note += f" · tool definitions {budget.tool_tokens:,}"
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
        p.setPen(QPen(dim_color(self), 1))
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
        p.setPen(text_color(self))
        y = bar.bottom() + 8
        x = bar.left()
        fm = QFontMetrics(self.font())
        for name, color in (("system", ROLE_COLORS["system"]), ("user", ROLE_COLORS["user"]),
                            ("assistant", ROLE_COLORS["assistant"]), ("typing", ROLE_COLORS["draft"]),
                            ("reply reserve", RESERVE_COLOR), ("dropped next", DROP_COLOR),
                            *((("docs", SOURCES_COLOR),) if any(s.color == SOURCES_COLOR for s in self.segments)
                              else ()),
                            *((("tools", TOOLS_COLOR),) if any(s.color == TOOLS_COLOR for s in self.segments)
                              else ())):  # fmt: skip
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
