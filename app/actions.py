"""The chat view's action links: unguessable per-render tokens, so text from a model can never trigger an action."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

SCHEME = "ingle"
# What a neutralized link in model text points at instead: clicking it is handled like any outside link (copied,
# never followed), and it can never be mistaken for an action.
NEUTRAL_SCHEME = "model-link"
_HREF_RE = re.compile(r"""href\s*=\s*(["'])(.*?)\1""", re.I | re.S)
_SCHEME_RE = re.compile(r"^[\s\x00-\x1f]*([A-Za-z][A-Za-z0-9+.\-]*)\s*:", re.S)
# The view's own links inside HTML made from model text, and the argument each takes: a code block's index,
# or nothing (the reasoning toggle, "show more").
BODY_VERBS = {"copycode": str.isdigit, "think": lambda arg: arg == "", "more": lambda arg: arg == ""}


@dataclass(frozen=True)
class Action:
    verb: str
    message: int
    arg: str = ""


class ActionLinks:
    """Tokens for the links the view itself made, rebuilt with every render.

    A link is `ingle:<token>`; the token maps to (verb, message id, argument) only until the next render, so
    a link written by a model (`ingle:delete/1`) or copied from an earlier render resolves to nothing.
    """

    def __init__(self) -> None:
        self._map: dict[str, Action] = {}
        # A secret that marks the app's own links inside HTML made from model text (code-block copy links,
        # the reasoning toggle, "show more"), so they can be told apart from links the model wrote; it never
        # leaves this process.
        self.marker = secrets.token_hex(16)

    def reset(self) -> None:
        """A new render: every earlier token stops working."""
        self._map.clear()

    def href(self, verb: str, message: int, arg: str = "") -> str:
        token = secrets.token_urlsafe(18)
        self._map[token] = Action(verb, message, arg)
        return f"{SCHEME}:{token}"

    def forget(self, hrefs: list[str]) -> None:
        for href in hrefs:
            self._map.pop(href.partition(":")[2], None)

    def resolve(self, scheme: str, path: str) -> Action | None:
        if scheme.lower() != SCHEME:
            return None
        return self._map.get(path)

    def tokens(self) -> list[str]:
        return list(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def sanitize(self, body: str, message: int) -> tuple[str, list[str]]:
        """HTML made from model text with every `ingle:` link neutralized, except the view's own links
        (`ingle:<verb>/<marker>/<arg>`, verbs in BODY_VERBS), which get tokens. Returns the HTML and the
        tokens it holds."""
        issued: list[str] = []

        def fix(m: re.Match) -> str:
            quote, url = m.group(1), m.group(2)
            verb, _, rest = url.removeprefix(f"{SCHEME}:").partition("/")
            marker, _, arg = rest.partition("/")
            own = url.startswith(f"{SCHEME}:") and verb in BODY_VERBS and marker == self.marker
            if own and BODY_VERBS[verb](arg):
                href = self.href(verb, message, arg)
                issued.append(href)
                return f"href={quote}{href}{quote}"
            scheme = _SCHEME_RE.match(url)
            if scheme and scheme.group(1).lower() == SCHEME:
                return f"href={quote}{NEUTRAL_SCHEME}:{url[scheme.end() :].lstrip()}{quote}"
            return m.group(0)

        return _HREF_RE.sub(fix, body), issued
