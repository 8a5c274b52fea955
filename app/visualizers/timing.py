"""Where each reply's time went: prefill (reading the prompt) then decode (writing), with tok/s."""

from __future__ import annotations

from PySide6.QtCore import QRect, Qt
from PySide6.QtGui import QColor, QFontMetrics, QPainter
from PySide6.QtWidgets import QWidget

from app.forms import ERROR_COLOR
from app.visualizers.common import ROLE_COLORS, HeightForWidthMixin, dim_color, text_color


def drafting_line(stats) -> str:
    """Speculative decoding's share of a reply: drafted and accepted tokens, and whether it switched itself off."""
    if not getattr(stats, "drafting", ""):
        return ""
    line = f"drafting by {stats.drafting}: {stats.accepted_tokens} of {stats.drafted_tokens} drafted tokens accepted"
    if stats.drafted_tokens:
        line += f" ({stats.acceptance:.0%})"
    if stats.drafting_switched_off:
        line += " · switched itself off for a while: drafting did not pay"
    return line


class TimingBar(HeightForWidthMixin, QWidget):
    """Per reply, a timeline: prefill (reading the prompt) then decode (writing), with tok/s; newest on top."""

    KEEP = 6

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.replies: list[dict] = []
        self.threads = None  # engine.events.ThreadsChosen of the reply running or last run
        self.setMinimumHeight(80)

    def set_threads(self, chosen) -> None:
        """The threads the coming reply runs on (engine.events.ThreadsChosen); shown with it when it ends."""
        self.threads = chosen

    def add_reply(self, stats) -> None:
        """`stats`: engine.events.ReplyStats of a finished reply."""
        self.replies.insert(0, {
            "prefill_s": stats.prefill_seconds, "decode_s": stats.decode_seconds,
            "prompt": stats.prompt_tokens, "reused": stats.reused_tokens, "evaluated": stats.evaluated_tokens,
            "generated": stats.generated_tokens, "prefill_tok_s": stats.prefill_tok_s,
            "decode_tok_s": stats.decode_tok_s, "ttft": stats.ttft_seconds,
            "threads": self.threads.describe() if self.threads is not None else "",
            "drafting": drafting_line(stats), "drafting_off": getattr(stats, "drafting_switched_off", False),
        })  # fmt: skip
        self.threads = None
        del self.replies[self.KEEP :]
        self.updateGeometry()
        self.update()

    def heightForWidth(self, _width: int) -> int:
        fm = QFontMetrics(self.font())
        rows = sum(3 * fm.height() + 16 + (fm.height() + 2 if r["drafting"] else 0) for r in self.replies)
        return 12 + (rows or 3 * fm.height() + 16) + fm.height()

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        fm = QFontMetrics(self.font())
        text = text_color(self)
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
            if r["threads"]:  # how many CPU threads it ran on, and why (engine.threads)
                p.setPen(dim_color(self))
                line = QRect(8, y + 2 * fm.height() + 4, width, fm.height() + 4)
                p.drawText(line, Qt.AlignLeft, fm.elidedText("CPU: " + r["threads"], Qt.ElideRight, width))
            y += 3 * fm.height() + 16
            if r["drafting"]:
                p.setPen(QColor(ERROR_COLOR) if r["drafting_off"] else text)
                p.drawText(QRect(8, y - 10, width, fm.height() + 4), Qt.AlignLeft,
                           fm.elidedText(r["drafting"], Qt.ElideRight, width))  # fmt: skip
                y += fm.height() + 2
        p.setPen(dim_color(self))
        p.drawText(
            8, y + fm.ascent(), "blue: prefill (reading the prompt) · green: decode (writing the reply)"
        )
        p.end()
