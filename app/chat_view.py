"""The chat transcript: a QTextBrowser that never runs model HTML, never loads remote resources, streams cheaply."""

from __future__ import annotations

import html

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import QTextBrowser

from app.actions import NEUTRAL_SCHEME, SCHEME, ActionLinks
from app.render import LIGHT, MarkdownRenderer, Theme, split_thinking
from app.wording import count
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

    def loadResource(self, kind: int, url: QUrl):
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
        self._cache: dict[tuple, tuple[tuple[str, str], list[str]]] = {}  # finished messages' HTML
        self.actions = ActionLinks()  # the links of the current render
        self._stream_links: list[str] = []
        self.anchorClicked.connect(self._clicked)

    def set_theme(self, theme: Theme) -> None:
        self.theme = theme
        self.renderer = MarkdownRenderer(theme)
        self._cache.clear()

    # ------------------------------------------------------------ html
    def _links(self, msg: StoredMessage, siblings: tuple[int, int], streaming: bool) -> str:
        t = self.theme
        a = self.actions.href
        parts = []
        index, count = siblings
        if count > 1:
            parts.append(
                f'<a href="{a("prev", msg.id)}">‹</a> {index}/{count} <a href="{a("next", msg.id)}">›</a>'
            )
        if not streaming:
            parts.append(f'<a href="{a("copy", msg.id)}">copy</a>')
            if msg.role == "user":
                parts.append(f'<a href="{a("edit", msg.id)}">edit</a>')
            else:
                parts.append(f'<a href="{a("regenerate", msg.id)}">regenerate</a>')
                if is_cut_off(msg):
                    parts.append(f'<a href="{a("continue", msg.id)}">continue</a>')
            parts.append(f'<a href="{a("delete", msg.id)}">delete</a>')
        return f'<span style="color:{t.muted}; font-size:small">{" · ".join(parts)}</span>'

    def message_html(
        self, msg: StoredMessage, siblings: tuple[int, int] = (1, 1), streaming: bool = False
    ) -> str:
        """One message; its action links get tokens of the current render (see app/actions.py)."""
        key = (msg.id, msg.content, msg.status, msg.id in self.expanded_thinking)
        if not streaming and key in self._cache:
            rendered, self.code[msg.id] = self._cache[key]
        else:
            rendered = self._model_html(msg, streaming)
            if not streaming:
                self._cache[key] = (rendered, self.code[msg.id])
        return self._message_html(msg, siblings, streaming, rendered)

    def _model_html(self, msg: StoredMessage, streaming: bool) -> tuple[str, str]:
        """(reasoning, answer) HTML made from the message's text; its links are not yet sanitized."""
        reasoning, answer, thinking_open = split_thinking(msg.content)
        shown = streaming or msg.id in self.expanded_thinking
        thought = self.renderer.render(reasoning) if (reasoning or thinking_open) and shown else ""
        body = self.renderer.render(
            answer if (reasoning or thinking_open) else msg.content, prefix=f"{self.actions.marker}/"
        )
        self.code[msg.id] = list(self.renderer.code_blocks)
        return thought, body

    def _message_html(
        self, msg: StoredMessage, siblings: tuple[int, int], streaming: bool, rendered: tuple[str, str]
    ) -> str:
        t = self.theme
        reasoning, _answer, thinking_open = split_thinking(msg.content)
        thought, answer_html = (self.actions.sanitize(part, msg.id)[0] for part in rendered)
        body = ""
        if reasoning or thinking_open:
            shown = streaming or msg.id in self.expanded_thinking
            arrow = "▾" if shown else "▸"
            label = (
                "Thinking…"
                if thinking_open and streaming
                else f"Reasoning ({count(len(reasoning.split()), 'word')})"
            )
            body += f'<p style="color:{t.muted}"><a href="{self.actions.href("think", msg.id)}">{arrow} {label}</a></p>'
            if shown:
                body += f'<blockquote style="color:{t.muted}">{thought}</blockquote>'
        body += answer_html
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
        self.actions.reset()  # links of the previous render (and of other conversations) stop working
        self._stream_links = []
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
        self.actions.forget(self._stream_links)  # the previous frame's links are gone from the document
        issued = len(self.actions)
        cursor.insertHtml(self.message_html(msg, streaming=True))
        self._stream_links = [f"{SCHEME}:{t}" for t in self.actions.tokens()[issued:]]  # in issue order
        if at_bottom:
            bar.setValue(bar.maximum())

    # ------------------------------------------------------------ links
    def _clicked(self, url: QUrl) -> None:
        """Only tokens this view issued in its current render act; anything else is an outside link."""
        if url.scheme().lower() == NEUTRAL_SCHEME:  # a link the model wrote with the app's scheme
            self.action.emit("external", 0, f"{SCHEME}:{url.path()}")
            return
        if url.scheme().lower() != SCHEME:
            self.action.emit("external", 0, url.toString())  # never followed; the window offers to copy it
            return
        found = self.actions.resolve(url.scheme(), url.path())
        if found is not None:
            self.action.emit(found.verb, found.message, found.arg)
