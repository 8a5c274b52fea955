"""A chat reply with MCP tools in the window: the tool loop (engine/tool_loop.py) runs on the engine queue's
worker thread; each call's approval is asked on the GUI thread (the worker waits for the answer)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

from PySide6.QtCore import QObject, Signal, Slot

from app.tool_approval import ask_with_dialog
from engine.events import ReplyDone, ToolCall, ToolCallsMade
from engine.mcp_client import McpClient, ServerSpec
from engine.tool_loop import Approver, reply_with_tools


class GuiApprover(QObject):
    """`approve(call, server)` callable from any thread: the dialog is shown on the GUI thread ('always' is
    remembered per tool for the window's tool session)."""

    _asked = Signal(object, object)

    def __init__(self, parent: QObject | None = None, ask=None):
        super().__init__(parent)
        self._approver = Approver(ask or ask_with_dialog(parent))
        self._answer = False
        self._done = threading.Event()
        self._asked.connect(self._ask_here)

    def __call__(self, call: ToolCall, server: str) -> bool:
        if threading.current_thread() is threading.main_thread():
            return self._approver(call, server)
        self._done.clear()
        self._asked.emit(call, server)  # queued to the GUI thread
        self._done.wait()
        return self._answer

    @Slot(object, object)
    def _ask_here(self, call: ToolCall, server: str) -> None:
        try:
            self._answer = self._approver(call, server)
        finally:
            self._done.set()


def gui_reply(engine, messages, client: McpClient, choice: str, approve, settings, policy) -> Iterator:
    """The loop's events as one reply for ChatSession: a round that ended in calls does not end the reply
    (its ReplyDone is held back); the calls come through as ToolCallStarted / ToolCallFinished."""
    history = list(messages)
    calls_pending = False
    for event in reply_with_tools(engine, history, client, choice, approve, settings, policy):
        if isinstance(event, ToolCallsMade):
            calls_pending = bool(event.calls)
            continue
        if isinstance(event, ReplyDone) and calls_pending:
            continue
        yield event


class ToolSession:
    """The window's MCP client for the servers the open conversation enabled (made again when they change)."""

    def __init__(self):
        self.client: McpClient | None = None
        self._key = ""

    def client_for(self, specs: list[ServerSpec]) -> McpClient | None:
        key = json.dumps([[s.name, s.to_json()] for s in specs], sort_keys=True)
        if key != self._key:
            self.close()
            self.client = McpClient(specs) if specs else None
            self._key = key
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client, self._key = None, ""
