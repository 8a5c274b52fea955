"""The last reply's tokens coloured by probability, with the alternatives the model weighed for each."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from app.visualizers.chips import ChipFlow
from app.visualizers.common import visible_piece
from app.wording import count
from engine.events import Token


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
        self.tokens = [t for t in tokens if t.token_id != -1]  # -1: held-back text, not a token
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
        if token.token_id != -1:  # a remote server's tokens have no id (-2), yet a probability
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
                f"{math.exp(alt.logprob):7.2%}  {visible_piece(alt.piece)}"
                + (f"  (id {alt.token_id})" if alt.token_id >= 0 else "")
            )
            item.setData(Qt.UserRole, alt.piece)
            # a remote server's tokens have no ids: the chosen one is known by its text
            if alt.token_id == tok.token_id if tok.token_id >= 0 else alt.piece == tok.piece:
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


class _ProbabilityFlow(ChipFlow):
    def __init__(self, panel: TokenProbabilities):
        super().__init__(panel)
        self.panel = panel  # the tokens and the selection live there

    def chip_count(self) -> int:
        return len(self.panel.tokens)

    def chip_text(self, index: int) -> str:
        return visible_piece(self.panel.tokens[index].text)

    def paintEvent(self, _event) -> None:
        base, black, tokens = self.palette().color(QPalette.Base), QColor("black"), self.panel.tokens

        def color(i: int) -> QColor:
            return prob_color(math.exp(tokens[i].logprob)) if tokens[i].logprob is not None else base

        self.paint_chips(color, lambda _i: black, self.panel.selected)

    def mouseMoveEvent(self, event) -> None:
        i = self.chip_at(event.position().toPoint())
        if i >= 0:
            tok = self.panel.tokens[i]
            p = f"{math.exp(tok.logprob):.2%}" if tok.logprob is not None else "unknown"
            QToolTip.showText(
                event.globalPosition().toPoint(),
                (f"id {tok.token_id} · " if tok.token_id >= 0 else "") + f"p {p}",
                self,
            )

    def mousePressEvent(self, event) -> None:
        i = self.chip_at(event.position().toPoint())
        if i >= 0:
            self.panel.select(i)
