"""Model text to safe HTML: Markdown (raw HTML off, images off), Pygments code, collapsible reasoning blocks.

Every step is bounded, because a model can reply with anything: QTextDocument lays out an unbroken run of
characters in time quadratic in its length, and its cost grows with the number of elements, so long runs get
break points, big code blocks lose their colours and markup that would make too many elements is shown as
plain text. Nothing is dropped: deep nesting is drawn flat, never cut.
"""

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

HIGHLIGHT_CHARS = 6_000  # code blocks longer than this are shown without colours (one span per token is slow)
MAX_ELEMENTS = 2_500  # Markdown whose HTML has more tags than this is shown as plain text
BREAK_RUN = 64  # unbroken runs of text longer than this get an invisible break point
BLOCK_NESTING = 10_000  # past Python's recursion limit: the text is shown plain, never dropped
SHOWN_NESTING = 8  # list and quote levels drawn indented; deeper ones are drawn at this level
ZWSP = "\u200b"  # zero-width space: a line-break opportunity that shows nothing (stripped again on copy)

# One unit of text in HTML (a character or an entity), after any tags; a run of BREAK_RUN units with more
# text after it gets a break point. Tags are skipped whole, so attributes are never touched.
_UNIT = r"(?:<[^>]*>)*(?:&#?\w+;|[^\s&<])"
_LONG_RUN_RE = re.compile(rf"((?:{_UNIT}){{{BREAK_RUN}}})(?=(?:<[^>]*>)*[^\s<])")
_CONTAINERS = {"blockquote", "bullet_list", "ordered_list", "list_item"}


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


def break_long_runs(html_text: str) -> str:
    """`html_text` with a zero-width space after every BREAK_RUN characters of unbroken text, so that Qt can
    wrap it (it lays out a 400 KB word in 15 s, the same text with break points in 0.2 s)."""
    return _LONG_RUN_RE.sub(lambda m: m.group(1) + ZWSP, html_text)


def plain_html(text: str) -> str:
    """Text shown as it is, escaped (quotes too: text that reads like `href="ingle:…"` must never look like
    an attribute to the view's link sanitizer), line breaks kept."""
    return f'<p style="white-space:pre-wrap">{break_long_runs(html.escape(text))}</p>'


def head(text: str, limit: int) -> str:
    """At most `limit` characters from the start of `text`, cut at a line end when one is near."""
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", limit * 3 // 4, limit)
    return text[: cut if cut > 0 else limit]


def tail(text: str, limit: int) -> str:
    """At most `limit` characters from the end of `text`, starting at a paragraph when one is near, and
    reopening a code fence the cut falls into."""
    if len(text) <= limit:
        return text
    start = len(text) - limit
    para = text.find("\n\n", start, start + limit // 4)
    start = para + 2 if para >= 0 else start
    fence = "```\n" if text.count("```", 0, start) % 2 else ""
    return fence + text[start:]


def flatten_nesting(tokens: list, shown: int = SHOWN_NESTING) -> list:
    """Block tokens with lists and quotes deeper than `shown` levels unwrapped: their text stays, drawn at
    the deepest shown level (Qt would indent 40 levels past the window's edge)."""
    out, dropped, depth = [], [], 0  # dropped: one flag per open container
    for tok in tokens:
        kind = tok.type.rsplit("_", 1)[0]
        if kind in _CONTAINERS and tok.nesting == 1:
            indents = kind != "list_item"  # an item sits in its list's indent
            depth += indents
            drop = depth > shown if indents else bool(dropped and dropped[-1])
            dropped.append(drop)
            if drop:
                continue
        elif kind in _CONTAINERS and tok.nesting == -1:
            depth -= kind != "list_item"
            if dropped.pop():
                continue
        elif dropped and dropped[-1] and tok.type.startswith("paragraph_"):
            tok.hidden = False  # tight lists hide their paragraphs; unwrapped items need them to stay apart
        out.append(tok)
    return out


class MarkdownRenderer:
    def __init__(self, theme: Theme = LIGHT):
        self.theme = theme
        self.code_blocks: list[str] = []  # raw text of each fenced block, for copy buttons
        # markdown-it drops whatever lies deeper than maxNesting blocks (text vanished past ~18 levels), so
        # blocks get a deep limit (Python's recursion limit bounds them; flatten_nesting() draws them), but
        # inlines keep the preset's: link labels are rescanned per nesting level (quadratic in "[`" soup)
        self._md = MarkdownIt("commonmark", {"html": False, "linkify": False})
        self._md.core.ruler.before("block", "deep_blocks", lambda state: self._nesting(state, BLOCK_NESTING))
        self._md.core.ruler.before("inline", "shallow_inlines", lambda state: self._nesting(state, 20))
        self._md.enable("table")
        self._md.disable("image")  # never fetch remote pictures; the ![alt](url) text stays visible
        # markdown-it binds render rules to its renderer, so pass a plain function that calls back here
        self._md.add_render_rule("fence", lambda _r, tokens, idx, options, env: self._fence(tokens, idx, env))
        self._md.add_render_rule(
            "code_block", lambda _r, tokens, idx, options, env: self._fence(tokens, idx, env)
        )

    @staticmethod
    def _nesting(state, limit: int) -> None:
        state.md.options["maxNesting"] = limit

    def _fence(self, tokens, idx, env) -> str:
        token = tokens[idx]
        lang = (token.info or "").strip().split(" ")[0]
        if len(token.content) > HIGHLIGHT_CHARS:
            body = html.escape(token.content)  # quotes too, as Pygments does (see plain_html)
        else:
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
        # blocks with a background rather than a table: Qt lays a table out as one piece (twice, to size
        # its column), but plain blocks a screenful at a time
        return (
            f'<p style="background-color:{t.code_bg}; color:{t.muted}; font-size:small; margin:4px 0 0 0">'
            f"&nbsp;{html.escape(lang or 'text')} · "
            f'<a href="ingle:copycode/{prefix}{index}">copy</a></p>'
            f'<pre style="background-color:{t.code_bg}; font-family:monospace; margin:0 0 4px 0">{body}</pre>\n'
        )

    def render(self, text: str, prefix: str = "") -> str:
        """Markdown to HTML. Raw HTML in `text` is escaped, so `<script>` shows as text. Text the view could
        not draw in bounded time (too many elements, nesting past the recursion limit) comes back plain."""
        self.code_blocks = []
        env = {"prefix": prefix}
        try:
            tokens = flatten_nesting(self._md.parse(text, env))
            out = self._md.renderer.render(tokens, self._md.options, env)
        except RecursionError:
            out = None
        if out is None or out.count("<") > MAX_ELEMENTS:
            self.code_blocks = []
            return plain_html(text)
        return break_long_runs(out)
