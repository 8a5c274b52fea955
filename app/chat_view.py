"""The chat transcript: a QTextBrowser that never runs model HTML, never loads remote resources, streams cheaply."""

from __future__ import annotations

import html

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import QTextBrowser

from app.render import LIGHT, MarkdownRenderer, Theme, split_thinking
from engine.conversations import StoredMessage

ROLE_NAMES = {"user": "You", "assistant": "Model", "system": "System"}


def is_cut_off(msg: StoredMessage) -> bool:
    """A reply that ended before the model finished it: stopped, interrupted, or out of tokens/context."""
    stop = (msg.stats or {}).get("stop")
    return bool(msg.content) and (
        msg.status in ("stopped", "interrupted") or stop in ("max_tokens", "context_full")
    )


class SafeBrowser(QTextBrowser):
    """Links are handed to the window (ingle: actions) instead of being followed; no resource is ever fetched."""

    def __init__(self):
        super().__init__()
        self.setOpenLinks(False)
        self.setOpenExternalLinks(False)
        self.refused_urls: list[str] = []  # what model output tried to load (tests read it)

    def loadResource(self, kind: int, url: QUrl):  # noqa: N802 (Qt override)
        self.refused_urls.append(url.toString())
        return None


class ChatView(SafeBrowser):
    """Shows one branch of a conversation; the streaming reply is re-rendered alone at the end of the document."""

    action = Signal(str, int, str)  # verb, message id, argument

    def __init__(self):
        super().__init__()
        self.theme: Theme = LIGHT
        self.renderer = MarkdownRenderer(self.theme)
        self.code: dict[int, list[str]] = {}  # message id -> its code blocks, for copy links
        self.expanded_thinking: set[int] = set()
        self._stream_start: int | None = None
        self._cache: dict[tuple, tuple[str, list[str]]] = {}  # finished messages' HTML, for long chats
        self.anchorClicked.connect(self._clicked)

    def set_theme(self, theme: Theme) -> None:
        self.theme = theme
        self.renderer = MarkdownRenderer(theme)
        self._cache.clear()

    # ------------------------------------------------------------ html
    def _links(self, msg: StoredMessage, siblings: tuple[int, int], streaming: bool) -> str:
        t = self.theme
        parts = []
        index, count = siblings
        if count > 1:
            parts.append(
                f'<a href="ingle:prev/{msg.id}">‹</a> {index}/{count} <a href="ingle:next/{msg.id}">›</a>'
            )
        if not streaming:
            parts.append(f'<a href="ingle:copy/{msg.id}">copy</a>')
            if msg.role == "user":
                parts.append(f'<a href="ingle:edit/{msg.id}">edit</a>')
            else:
                parts.append(f'<a href="ingle:regenerate/{msg.id}">regenerate</a>')
                if is_cut_off(msg):
                    parts.append(f'<a href="ingle:continue/{msg.id}">continue</a>')
            parts.append(f'<a href="ingle:delete/{msg.id}">delete</a>')
        return f'<span style="color:{t.muted}; font-size:small">{" · ".join(parts)}</span>'

    def message_html(
        self, msg: StoredMessage, siblings: tuple[int, int] = (1, 1), streaming: bool = False
    ) -> str:
        key = (msg.id, msg.content, msg.status, siblings, msg.id in self.expanded_thinking)
        if not streaming and key in self._cache:
            html_text, self.code[msg.id] = self._cache[key]
            return html_text
        html_text = self._message_html(msg, siblings, streaming)
        if not streaming:
            self._cache[key] = (html_text, self.code[msg.id])
        return html_text

    def _message_html(self, msg: StoredMessage, siblings: tuple[int, int], streaming: bool) -> str:
        t = self.theme
        reasoning, answer, thinking_open = split_thinking(msg.content)
        body = ""
        if reasoning or thinking_open:
            shown = streaming or msg.id in self.expanded_thinking
            arrow = "▾" if shown else "▸"
            label = (
                "Thinking…" if thinking_open and streaming else f"Reasoning ({len(reasoning.split())} words)"
            )
            body += f'<p style="color:{t.muted}"><a href="ingle:think/{msg.id}">{arrow} {label}</a></p>'
            if shown:
                body += f'<blockquote style="color:{t.muted}">{self.renderer.render(reasoning)}</blockquote>'
        body += self.renderer.render(
            answer if (reasoning or thinking_open) else msg.content, prefix=f"{msg.id}/"
        )
        self.code[msg.id] = list(self.renderer.code_blocks)
        note = ""
        if msg.status == "interrupted":
            note = ' <span style="color:#c0392b">(interrupted)</span>'
        elif msg.status == "stopped":
            note = f' <span style="color:{t.muted}">(stopped)</span>'
        elif streaming:
            note = f' <span style="color:{t.muted}">…</span>'
        bg = t.user_bg if msg.role == "user" else t.assistant_bg
        return (
            f'<table width="100%" cellpadding="10" cellspacing="0" style="margin:6px 0; background:{bg}">'
            f"<tr><td><b>{html.escape(ROLE_NAMES.get(msg.role, msg.role))}</b>{note} "
            f"&nbsp; {self._links(msg, siblings, streaming)}<br/>{body}</td></tr></table>"
        )

    def show_messages(
        self, messages: list[tuple[StoredMessage, tuple[int, int]]], streaming: StoredMessage | None
    ) -> None:
        """Render the finished messages once; the streaming one (if any) is appended and updated separately."""
        self.code.clear()
        self.renderer.code_blocks = []
        style = f"body {{ color:{self.theme.text}; background:{self.theme.window}; }} a {{ color:{self.theme.link}; }}"
        self.document().setDefaultStyleSheet(style)
        self.setHtml("".join(self.message_html(m, s) for m, s in messages) or self._empty_html())
        self._stream_start = None
        if streaming is not None:
            self.update_stream(streaming)
        self.verticalScrollBar().setValue(self.verticalScrollBar().maximum())

    def _empty_html(self) -> str:
        return f'<p style="color:{self.theme.muted}">Type a message below to start.</p>'

    def update_stream(self, msg: StoredMessage) -> None:
        bar = self.verticalScrollBar()
        at_bottom = bar.value() >= bar.maximum() - 4
        cursor = QTextCursor(self.document())
        if self._stream_start is None:
            cursor.movePosition(QTextCursor.End)
            self._stream_start = cursor.position()
        else:
            cursor.setPosition(self._stream_start)
            cursor.movePosition(QTextCursor.End, QTextCursor.KeepAnchor)
            cursor.removeSelectedText()
        cursor.insertHtml(self.message_html(msg, streaming=True))
        if at_bottom:
            bar.setValue(bar.maximum())

    # ------------------------------------------------------------ links
    def _clicked(self, url: QUrl) -> None:
        if url.scheme() != "ingle":
            self.action.emit("external", 0, url.toString())  # never followed; the window offers to copy it
            return
        verb, _, rest = url.path().partition("/")
        mid, _, arg = rest.partition("/")
        if mid.isdigit():
            self.action.emit(verb, int(mid), arg)
