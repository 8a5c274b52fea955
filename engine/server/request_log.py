"""A live request log for the GUI's Server panel: one entry per HTTP request (refused ones too), never the key,
the prompt text only while the user asks for it.

`RequestLog` wraps the whole app (outside the key check, so a 401 is logged too). It notes the method, path and
HTTP status itself and takes the model, token counts and tok/s from the route's own `ServerState.record` entry,
which runs inside the same request (a context variable ties the two together).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from engine.server.app import ServerState
from engine.text import printable

PROMPT_CHARS = 2000  # a log row shows the start of a prompt, not a whole conversation

_current: ContextVar[dict | None] = ContextVar("ingle_request_log", default=None)


@dataclass(frozen=True)
class LoggedRequest:
    time: float  # unix time the request came in
    method: str
    path: str
    status: int
    model: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tok_s: float | None = None
    seconds: float = 0.0
    error: str = ""  # the error code sent (invalid_api_key, server_busy...)
    prompt: str | None = None  # only when the user ticked "log prompts"


def prompt_text(body: bytes) -> str | None:
    """The prompt a request carries (the last user message, or `prompt`), shortened; None if there is none."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    text = None
    messages = data.get("messages")
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1].get("content") if users else None
        if isinstance(content, list):  # OpenAI content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        text = content if isinstance(content, str) else None
    elif isinstance(data.get("prompt"), str):
        text = data["prompt"]
    elif isinstance(data.get("prompt"), list):
        text = " ".join(p for p in data["prompt"] if isinstance(p, str))
    if not text:
        return None
    short = printable(text[:PROMPT_CHARS].replace("\n", " "))
    return short + ("…" if len(text) > PROMPT_CHARS else "")


def error_code(body: bytes) -> str:
    """The `code` of an OpenAI error object (the key check's refusals name why), else ""."""
    try:
        error = json.loads(body.decode("utf-8")).get("error")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return ""
    code = error.get("code") if isinstance(error, dict) else None
    return printable(code[:60]) if isinstance(code, str) else ""


class RequestLog:
    """ASGI middleware: `sink(LoggedRequest)` after each HTTP request ends (called on the server's thread)."""

    def __init__(self, app, state: ServerState, sink: Callable[[LoggedRequest], None],
                 log_prompts: Callable[[], bool] = lambda: False):  # fmt: skip
        self.app = app
        self.state = state
        self.sink = sink
        self.log_prompts = log_prompts
        state.listeners.append(self._route_recorded)

    @staticmethod
    def _route_recorded(entry: dict) -> None:
        current = _current.get()
        if current is not None:
            current["route"] = entry

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        entry: dict = {"time": time.time(), "started": time.monotonic()}
        token = _current.set(entry)
        body = bytearray() if self.log_prompts() else None  # the prompt is never read unless asked for
        limit = self.state.config.max_body

        async def receive_and_keep():
            message = await receive()
            if body is not None and message["type"] == "http.request" and len(body) <= limit:
                body.extend(message.get("body", b""))
            return message

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            elif message["type"] == "http.response.body" and entry.get("status", 200) >= 400:
                entry["error"] = error_code(message.get("body", b""))  # refusals before any route (401)
            await send(message)

        try:
            await self.app(scope, receive_and_keep, send_and_note)
        finally:
            _current.reset(token)
            self.sink(self._entry(scope, entry, body))

    def _entry(self, scope, entry: dict, body: bytearray | None) -> LoggedRequest:
        route = entry.get("route", {})
        return LoggedRequest(
            time=entry["time"], method=scope["method"], path=printable(scope["path"][:200]),
            status=route.get("status", entry.get("status", 500)),
            model=route.get("model", ""), prompt_tokens=route.get("prompt_tokens"),
            completion_tokens=route.get("completion_tokens"), tok_s=route.get("tok_s"),
            seconds=round(time.monotonic() - entry["started"], 3), error=route.get("error") or entry.get("error", ""),
            prompt=prompt_text(bytes(body)) if body else None,
        )  # fmt: skip
