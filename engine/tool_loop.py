"""One reply that may use tools: the model calls, the user approves, the MCP client runs the call, the result
goes back to the model, until it answers in text or the cap on calls per reply is reached.

Shared by the CLI (run, chat) and the GUI; the GUI runs it off its thread and answers `approve` through a
dialog. The engine is any Engine (chat_tools); the tools come from an McpClient (engine/mcp_client.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum

from engine.events import Event, Message, ReplyDone, StopReason, ToolCall, ToolCallsMade
from engine.mcp_client import McpClient, ToolResult
from engine.settings import OverflowPolicy, SamplingSettings
from engine.tools import ToolSet

MAX_CALLS = 8  # calls per reply: a model that keeps calling is stopped and asked to answer


class Approval(Enum):
    ONCE = "once"
    ALWAYS = "always"  # this tool, for the rest of the conversation
    DENY = "deny"


@dataclass(frozen=True)
class ToolCallStarted:
    """A call the model made, about to be asked about (or refused by the cap)."""

    call: ToolCall
    server: str


@dataclass(frozen=True)
class ToolCallFinished:
    """A call's outcome: approved or not, and the result the model reads."""

    call: ToolCall
    server: str
    approved: bool
    result: ToolResult


@dataclass(frozen=True)
class ToolCallCut:
    """The model began a call but its reply ran out of tokens (or context) first: no tool ran."""

    text: str  # the call as far as it was written
    reason: StopReason

    def message(self, setting: str = "Max tokens") -> str:
        """What happened and what to change; `setting`: the name of the token limit where it is shown."""
        if self.reason is StopReason.MAX_TOKENS:
            what, fix = "the reply's token limit", f"Raise {setting} and ask again."
        else:
            what, fix = (
                "the end of the context",
                "Start a new chat or load with a longer context, and ask again.",
            )
        return f"The model's tool call was cut off by {what} before it was complete, so no tool ran. {fix}"


LoopEvent = Event | ToolCallStarted | ToolCallFinished | ToolCallCut


class Approver:
    """Asks `ask(call, server)` before each call, and remembers 'always' per tool."""

    def __init__(self, ask: Callable[[ToolCall, str], Approval]):
        self.ask = ask
        self.always: set[str] = set()

    def __call__(self, call: ToolCall, server: str) -> bool:
        if call.name in self.always:
            return True
        answer = self.ask(call, server)
        if answer is Approval.ALWAYS:
            self.always.add(call.name)
        return answer is not Approval.DENY


def allow_all(call: ToolCall, server: str) -> Approval:
    return Approval.ALWAYS


DENIED = "The user did not allow this call. Answer without it, or ask the user."
NO_TERMINAL = (
    "Not run: there is no terminal to ask the user for approval (run with --allow-tools to allow tool calls)."
)


def capped(limit: int) -> str:
    return f"Not run: the limit of {limit} tool calls per reply was reached. Answer with what you have."


def reply_with_tools(
    engine,
    messages: Sequence[Message],
    client: McpClient,
    choice: str,
    approve: Callable[[ToolCall, str], bool | str],
    sampling: SamplingSettings | None = None,
    policy: OverflowPolicy = OverflowPolicy.STOP,
    max_calls: int = MAX_CALLS,
) -> Iterator[LoopEvent]:
    """The events of one reply (the engine's, and the calls'); `messages` (a list) gets the assistant's calls,
    the tools' results and the final reply appended as they happen. `approve` answers True, False (the
    user said no) or the reason the call was refused."""
    history = messages if isinstance(messages, list) else list(messages)
    tools = tuple(t.tool for t in client.tools())
    servers = {t.tool.name: t.server for t in client.tools()}
    made_calls = 0
    while True:
        toolset = ToolSet(tools, choice) if tools and made_calls < max_calls and choice != "none" else None
        made: ToolCallsMade | None = None
        done: ReplyDone | None = None
        for event in engine.chat_tools(history, toolset, sampling, policy):
            if isinstance(event, ToolCallsMade):
                made = event
            elif isinstance(event, ReplyDone):
                done = event
            yield event
        if made is None or not made.calls:
            if done is not None:
                history.append(Message("assistant", made.content if made else done.text))
                if made is not None and made.cut:
                    yield ToolCallCut(made.cut, done.stats.stop_reason)
            return
        history.append(Message("assistant", made.content, tool_calls=made.calls))
        for call in made.calls:
            server = servers.get(call.name, "")
            yield ToolCallStarted(call, server)
            if made_calls >= max_calls:
                approved, result = False, ToolResult(capped(max_calls), True)
            elif (verdict := approve(call, server)) is True:
                approved, result = True, client.call(call.name, call.arguments)
            else:  # False, or the reason it was refused
                approved, result = False, ToolResult(verdict if isinstance(verdict, str) else DENIED, True)
            made_calls += 1  # denied calls count too: a model that keeps asking is stopped all the same
            yield ToolCallFinished(call, server, approved, result)
            history.append(Message("tool", result.text, tool_call_id=call.id, name=call.name))
        if choice not in ("auto", "none"):  # required (or a named tool) forces the first call only
            choice = "auto"


def call_record(event: ToolCallFinished) -> dict:
    """A finished call as `--json` writes it."""
    import json

    return {
        "id": event.call.id,
        "server": event.server,
        "name": event.call.name,
        "arguments": json.loads(event.call.arguments or "{}"),
        "approved": event.approved,
        "result": event.result.text,
        "is_error": event.result.is_error,
    }
