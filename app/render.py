"""Model text to safe HTML: Markdown (raw HTML off, images off), Pygments code, collapsible reasoning blocks."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_by_name
from pygments.util import ClassNotFound

# Reasoning sections models emit; an opened but not yet closed block is still streaming.
THINK_RE = re.compile(r"<(think|thinking|reasoning)>(.*?)(</\1>|$)", re.S)


@dataclass(frozen=True)
class Theme:
    name: str
    window: str
    text: str
    user_bg: str
    assistant_bg: str
    code_bg: str
    muted: str
    link: str
    pygments_style: str


LIGHT = Theme(
    "light", "#fafafa", "#1d1d1f", "#e3edfb", "#ffffff", "#f3f3f5", "#6b6b70", "#1a62c9", "friendly"
)
DARK = Theme("dark", "#1e1f22", "#e6e6e6", "#2b3a52", "#26282c", "#17181a", "#9a9aa2", "#79aef2", "monokai")


def split_thinking(text: str) -> tuple[str, str, bool]:
    """(reasoning, answer, reasoning_still_open) of a reply."""
    m = THINK_RE.search(text)
    if not m:
        return "", text, False
    answer = (text[: m.start()] + text[m.end() :]).strip()
    return m.group(2).strip(), answer, m.group(3) == ""


class MarkdownRenderer:
    def __init__(self, theme: Theme = LIGHT):
        self.theme = theme
        self.code_blocks: list[str] = []  # raw text of each fenced block, for copy buttons
        self._md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
        self._md.disable("image")  # never fetch remote pictures; the ![alt](url) text stays visible
        # markdown-it binds render rules to its renderer, so pass a plain function that calls back here
        self._md.add_render_rule("fence", lambda _r, tokens, idx, options, env: self._fence(tokens, idx, env))
        self._md.add_render_rule(
            "code_block", lambda _r, tokens, idx, options, env: self._fence(tokens, idx, env)
        )

    def _fence(self, tokens, idx, env) -> str:
        token = tokens[idx]
        lang = (token.info or "").strip().split(" ")[0]
        try:
            lexer = get_lexer_by_name(lang) if lang else TextLexer()
        except ClassNotFound:
            lexer = TextLexer()
        formatter = HtmlFormatter(noclasses=True, nowrap=True, style=self.theme.pygments_style)
        body = highlight(token.content, lexer, formatter)
        index = len(self.code_blocks)
        self.code_blocks.append(token.content)
        prefix = env.get("prefix", "")
        t = self.theme
        return (
            f'<table width="100%" cellpadding="8" style="background:{t.code_bg}; margin:4px 0"><tr><td>'
            f'<span style="color:{t.muted}; font-size:small">{html.escape(lang or "text")} · '
            f'<a href="ingle:copycode/{prefix}{index}">copy</a></span>'
            f'<pre style="font-family:monospace; margin:0">{body}</pre></td></tr></table>'
        )

    def render(self, text: str, prefix: str = "") -> str:
        """Markdown to HTML. Raw HTML in `text` is escaped, so `<script>` shows as text."""
        self.code_blocks = []
        return self._md.render(text, {"prefix": prefix})
