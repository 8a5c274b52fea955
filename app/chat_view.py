"""The chat transcript: a QTextBrowser that never runs model HTML, never loads remote resources, streams cheaply."""

from __future__ import annotations

import html
import time
from concurrent.futures import Future, ThreadPoolExecutor

from PySide6.QtCore import QMimeData, Qt, QUrl, Signal
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import QTextBrowser

from app.actions import NEUTRAL_SCHEME, SCHEME, ActionLinks
from app.render import LIGHT, ZWSP, MarkdownRenderer, Theme, head, plain_html, split_thinking, tail
from app.wording import count
from engine.conversations import StoredMessage
from engine.reply_meta import call_line

ROLE_NAMES = {"user": "You", "assistant": "Model", "system": "System"}

# What one message may cost the GUI thread (a model can reply with megabytes): Markdown takes ~10 µs a
# character in pure Python, and QTextDocument ~1 µs a character of HTML, so
SHOW_CHARS = 20_000  # a message shows its first 20,000 characters; "show more" adds as many again
SYNC_CHARS = 3_000  # longer messages are formatted in a worker thread; their plain text shows meanwhile
STREAM_CHARS = 3_000  # a streaming reply longer than this shows its formatted end until it is done
STREAM_BUDGET_S = 0.025  # a streaming reply that takes longer to format is shown plain until it is done
# a body with more HTML than this is drawn below its message's box, not inside it (see _message_html)
WRAP_CHARS = 6_000
CACHE_SIZE = 400  # formatted message bodies kept


def message_body(
    renderer: MarkdownRenderer,
    marker: str,
    content: str,
    expanded: bool,
    streaming: bool,
    limit: int,
    formatted: bool = True,
) -> tuple[str, list[str]]:
    """The HTML of a message's text and its code blocks (`formatted` False: its text as it is). Touches no
    widget, so a worker thread may run it (with a renderer of its own).

    The view's own links in it (reasoning, show more, copy code) are written as `ingle:<verb>/<marker>/<arg>`
    with the view's secret marker; ActionLinks.sanitize() turns them into tokens of the render that shows
    the body and neutralizes every other `ingle:` link, which came from the model."""
    t = renderer.theme
    renderer.code_blocks = []

    def render(text: str, prefix: str = "") -> str:
        return renderer.render(text, prefix) if formatted else plain_html(text)

    def own(verb: str) -> str:
        return f"{SCHEME}:{verb}/{marker}/"

    reasoning, answer, thinking_open = split_thinking(content)
    body = ""
    if reasoning or thinking_open:
        shown = streaming or expanded
        arrow = "▾" if shown else "▸"
        label = (
            "Thinking…"
            if thinking_open and streaming
            else f"Reasoning ({count(len(reasoning.split()), 'word')})"
        )
        body += f'<p style="color:{t.muted}"><a href="{own("think")}">{arrow} {label}</a></p>'
        if shown:
            part = tail(reasoning, STREAM_CHARS) if streaming else head(reasoning, limit)
            body += f'<blockquote style="color:{t.muted}">{render(part)}</blockquote>'
    text = answer if (reasoning or thinking_open) else content
    if streaming and len(text) > STREAM_CHARS:
        # re-rendering the whole reply at every redraw is quadratic: show the end, the rest when it is done
        body += f'<p style="color:{t.muted}">… {len(text) - STREAM_CHARS:,} characters above, shown when the reply ends</p>'
        body += render(tail(text, STREAM_CHARS), prefix=f"{marker}/")
    else:
        shown_text = text if streaming else head(text, limit)
        body += render(shown_text, prefix=f"{marker}/")
        if len(shown_text) < len(text):
            body += (
                f'<p style="color:{t.muted}">Showing {len(shown_text):,} of {len(text):,} characters · '
                f'<a href="{own("more")}">show more</a> · copy takes all of it</p>'
            )
    return body, list(renderer.code_blocks)


def _render_in_worker(theme: Theme, marker: str, *args) -> tuple[str, list[str]]:
    return message_body(MarkdownRenderer(theme), marker, *args)


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

    def createMimeDataFromSelection(self) -> QMimeData:
        """Copied text without the break points the renderer put into long words."""
        fragment = self.textCursor().selection()
        data = QMimeData()
        data.setHtml(fragment.toHtml().replace(ZWSP, ""))
        data.setText(fragment.toPlainText().replace(ZWSP, ""))
        return data


class ChatView(SafeBrowser):
    """Shows one branch of a conversation; the streaming reply is re-rendered alone at the end of the document."""

    action = Signal(str, int, str)  # verb, message id, argument
    _formatted = Signal(object, object)  # body cache key, Future of message_body (from the worker thread)

    def __init__(self):
        super().__init__()
        self.theme: Theme = LIGHT
        self.renderer = MarkdownRenderer(self.theme)
        self.code: dict[int, list[str]] = {}  # message id -> its code blocks, for copy links
        self.expanded_thinking: set[int] = set()
        self.expanded_calls: set[int] = set()  # replies whose tool calls are shown whole
        self.show_limit: dict[int, int] = {}  # message id -> characters shown, where "show more" was used
        self._stream_start: int | None = None
        # finished messages' bodies, for long chats; their links are not yet sanitized (see message_body)
        self._cache: dict[tuple, tuple[str, list[str]]] = {}
        self.actions = ActionLinks()  # the links of the current render
        self._stream_links: list[str] = []
        self._pending: set[tuple] = set()  # bodies being formatted in the worker
        self._plain_streams: set[int] = set()  # streaming replies shown unformatted (over STREAM_BUDGET_S)
        # one thread: pure-Python formatting holds the GIL, so more threads would only slow the GUI thread
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingle-format")
        self._shown: tuple[list, StoredMessage | None] = ([], None)  # what show_messages() last drew
        # queued even when the worker is done before add_done_callback: never re-enter a redraw
        self._formatted.connect(self._on_formatted, Qt.QueuedConnection)
        self.anchorClicked.connect(self._clicked)
        worker = self._worker
        self.destroyed.connect(lambda: worker.shutdown(wait=False, cancel_futures=True))

    def set_theme(self, theme: Theme) -> None:
        self.theme = theme
        self.renderer = MarkdownRenderer(theme)
        self._cache.clear()

    # ------------------------------------------------------------ html
    def _links(self, msg: StoredMessage, siblings: tuple[int, int], streaming: bool) -> str:
        t = self.theme
        a = self.actions.href
        parts = []
        index, total = siblings
        if total > 1:
            parts.append(
                f'<a href="{a("prev", msg.id)}">‹</a> {index}/{total} <a href="{a("next", msg.id)}">›</a>'
            )
        if not streaming:
            parts.append(f'<a href="{a("copy", msg.id)}">copy</a>')
            if msg.role == "user":
                parts.append(f'<a href="{a("edit", msg.id)}">edit</a>')
            else:
                parts.append(f'<a href="{a("regenerate", msg.id)}">regenerate</a>')
                if is_cut_off(msg):
                    parts.append(f'<a href="{a("continue", msg.id)}">continue</a>')
                if msg.sources:
                    parts.append(f'<a href="{a("sources", msg.id)}">{count(len(msg.sources), "source")}</a>')
            parts.append(f'<a href="{a("delete", msg.id)}">delete</a>')
        return f'<span style="color:{t.muted}; font-size:small">{" · ".join(parts)}</span>'

    def message_html(
        self, msg: StoredMessage, siblings: tuple[int, int] = (1, 1), streaming: bool = False
    ) -> str:
        """One message; its action links get tokens of the current render (see app/actions.py)."""
        return self._message_html(msg, siblings, streaming)

    def _body(self, msg: StoredMessage, streaming: bool) -> str:
        """The message's formatted text: cached, or formatted now when short, or in the worker when long
        (plain text is shown until it is done)."""
        expanded = msg.id in self.expanded_thinking
        limit = self.show_limit.get(msg.id, SHOW_CHARS)
        args = (msg.content, expanded, streaming, limit)
        marker = self.actions.marker
        if streaming:
            formatted = msg.id not in self._plain_streams
            started = time.perf_counter()
            body, self.code[msg.id] = message_body(self.renderer, marker, *args, formatted=formatted)
            if formatted and time.perf_counter() - started > STREAM_BUDGET_S:
                self._plain_streams.add(msg.id)  # text that is this slow to format is formatted at the end
            return body
        key = (self.theme.name, msg.id, *args)
        if key not in self._cache and len(msg.content) <= SYNC_CHARS:
            self._cache[key] = message_body(self.renderer, marker, *args)
        if key in self._cache:
            body, self.code[msg.id] = self._cache[key]
            return body
        if key not in self._pending:
            self._pending.add(key)
            future = self._worker.submit(_render_in_worker, self.theme, marker, *args)
            future.add_done_callback(lambda f: self._emit_formatted(key, f))
        self.code[msg.id] = []
        answer = split_thinking(msg.content)[1]
        shown = head(answer, min(limit, SHOW_CHARS))
        more = len(shown) < len(answer)
        return (
            f'<p style="color:{self.theme.muted}">Formatting {len(answer):,} characters…</p>'
            + plain_html(shown)
            + (f'<p style="color:{self.theme.muted}">…</p>' if more else "")
        )

    def _emit_formatted(self, key: tuple, future: Future) -> None:
        try:
            self._formatted.emit(key, future)  # queued to the GUI thread
        except RuntimeError:  # the view was deleted meanwhile
            pass

    def _on_formatted(self, key: tuple, future: Future) -> None:
        self._pending.discard(key)
        if future.cancelled() or key[0] != self.theme.name:
            return
        error = future.exception()
        if error is not None:  # never lose the text: show it plain
            content, limit = key[2], key[5]
            result = (plain_html(head(content, limit)), [])
        else:
            result = future.result()
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = result
        messages, streaming = self._shown
        if any(m.id == key[1] and m.content == key[2] for m, _ in messages):
            self._redraw_keeping_scroll()

    def _redraw_keeping_scroll(self) -> None:
        bar = self.verticalScrollBar()
        at_bottom, value = bar.value() >= bar.maximum() - 4, bar.value()
        self.show_messages(*self._shown)
        bar.setValue(bar.maximum() if at_bottom else value)

    def show_more(self, mid: int) -> None:
        """Show SHOW_CHARS more of a long message."""
        self.show_limit[mid] = self.show_limit.get(mid, SHOW_CHARS) + SHOW_CHARS
        self._redraw_keeping_scroll()

    def _calls_html(self, msg: StoredMessage) -> str:
        """A reply's tool calls, one collapsed line each (`Called server.tool(args) → result`); the arrow shows
        the whole arguments and result. Plain text, escaped: a tool's result is never markup."""
        t = self.theme
        shown = msg.id in self.expanded_calls
        arrow = f'<a href="{self.actions.href("calls", msg.id)}">{"▾" if shown else "▸"}</a>'
        tools = f'<a href="{self.actions.href("tools", msg.id)}">in Tools</a>'
        out = ""
        for record in msg.tool_calls:
            line = html.escape(call_line(record), quote=True)
            out += f'<p style="color:{t.muted}; font-size:small">{arrow} {line} · {tools}</p>'
            if shown:
                whole = f"{record.get('arguments', '')}\n→ {record.get('result', '')}"
                out += f'<blockquote style="color:{t.muted}">{plain_html(whole)}</blockquote>'
        return out

    def _message_html(self, msg: StoredMessage, siblings: tuple[int, int], streaming: bool) -> str:
        t = self.theme
        body = self.actions.sanitize(self._body(msg, streaming), msg.id)[0]
        if msg.tool_calls:
            body = self._calls_html(msg) + body
        note = ""
        if msg.status == "interrupted":
            note = ' <span style="color:#c0392b">(interrupted)</span>'
        elif msg.status == "stopped":
            note = f' <span style="color:{t.muted}">(stopped)</span>'
        elif streaming:
            note = f' <span style="color:{t.muted}">…</span>'
        bg = t.user_bg if msg.role == "user" else t.assistant_bg
        header = (
            f"<b>{html.escape(ROLE_NAMES.get(msg.role, msg.role))}</b>{note} "
            f"&nbsp; {self._links(msg, siblings, streaming)}"
        )
        if len(body) > WRAP_CHARS:
            # Qt lays a table out in one piece, but the document's own blocks a screenful at a time: a long
            # body goes below its header instead of into the coloured box
            return (
                f'<table width="100%" cellpadding="10" cellspacing="0" style="margin:6px 0 0 0; background:{bg}">'
                f"<tr><td>{header}</td></tr></table>{body}"
                f'<table width="100%" cellpadding="2" cellspacing="0" style="margin:0 0 6px 0; background:{bg}">'
                "<tr><td></td></tr></table>"
            )
        return (
            f'<table width="100%" cellpadding="10" cellspacing="0" style="margin:6px 0; background:{bg}">'
            f"<tr><td>{header}<br/>{body}</td></tr></table>"
        )

    def show_messages(
        self, messages: list[tuple[StoredMessage, tuple[int, int]]], streaming: StoredMessage | None
    ) -> None:
        """Render the finished messages once; the streaming one (if any) is appended and updated separately."""
        self._shown = (messages, streaming)
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
        else:
            self._plain_streams.clear()
        self.verticalScrollBar().setValue(self.verticalScrollBar().maximum())

    def _empty_html(self) -> str:
        return f'<p style="color:{self.theme.muted}">Type a message below to start.</p>'

    def update_stream(self, msg: StoredMessage) -> None:
        self._shown = (self._shown[0], msg)
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
        if found is None:
            return
        if found.verb == "more":  # only changes what this view shows
            self.show_more(found.message)
        elif found.verb == "calls":
            self.expanded_calls ^= {found.message}
            self._redraw_keeping_scroll()
        else:
            self.action.emit(found.verb, found.message, found.arg)
