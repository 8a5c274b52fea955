"""A conversation's chat logic without Qt: what a send, regenerate, edit or continue asks of the engine, how the
streamed events grow the stored reply, and how a reply ends (done, stopped, interrupted).

The window renders a ChatSession and runs its turns on the engine; tests drive one with a real in-process
engine and no Qt at all. The store is the truth: a reply is saved while it streams (every `save_interval`
seconds), so a killed app loses at most that much.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.conversations import ConversationStore, StoredMessage
from engine.errors import IngleError
from engine.events import Message, ReplyDone, ReplyStats, StopReason, Token


class SessionError(IngleError):
    """A chat action that cannot start now (a reply is running, nothing to regenerate...)."""


class Phase(enum.Enum):
    IDLE = "idle"
    STREAMING = "streaming"


@dataclass(frozen=True)
class Turn:
    """What to ask the engine for: `engine.chat(messages, continue_last=continue_last)`, written into `reply`."""

    reply: int  # the assistant message id the reply streams into
    messages: tuple[Message, ...]
    continue_last: bool


def reply_stats(stats: ReplyStats) -> dict:
    """The figures stored with a finished reply (and shown under it)."""
    return {"ttft": stats.ttft_seconds, "tok_s": stats.decode_tok_s, "generated": stats.generated_tokens,
            "n_past": stats.n_past, "n_ctx": stats.n_ctx, "stop": stats.stop_reason.value}  # fmt: skip


class ChatSession:
    """The streaming state machine of one conversation in a ConversationStore.

    IDLE --send/regenerate/continue--> STREAMING --ReplyDone--> IDLE (reply done or stopped)
                                                 --fail()-----> IDLE (reply interrupted, text kept)
    """

    def __init__(
        self,
        store: ConversationStore,
        conversation: int,
        save_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.conversation = conversation
        self.save_interval = save_interval
        self._clock = clock
        self.phase = Phase.IDLE
        self.reply: StoredMessage | None = None  # the message being written
        self.text = ""  # its text so far (prefix + streamed)
        self.prefix = ""  # text it had before this stream (continue)
        self.stats: ReplyStats | None = None  # of the last finished reply
        self._last_save = 0.0

    # ------------------------------------------------------------ what is sent
    def engine_messages(self, skip_last: bool = False) -> list[Message]:
        """The conversation as the engine gets it: system prompt, then the selected branch's messages.
        Past reasoning is left in: the chat template decides whether to keep it."""
        conv = self.store.get(self.conversation)
        messages = [Message("system", conv.system_prompt)] if conv.system_prompt else []
        path = self.store.path(self.conversation)
        for msg in path[:-1] if skip_last else path:
            messages.append(Message(msg.role, msg.content))
        return messages

    def _require_idle(self) -> None:
        if self.phase is Phase.STREAMING:
            raise SessionError("A reply is being written: stop it (Esc) or let it finish first.")

    def _reply_in(self, message: StoredMessage, prefix: str, continue_last: bool) -> Turn:
        self.reply = message
        self.prefix = prefix
        self.text = prefix
        self.phase = Phase.STREAMING
        self._last_save = self._clock()
        return Turn(message.id, tuple(self.engine_messages(skip_last=not continue_last)), continue_last)

    def send(self, text: str, editing: int | None = None) -> Turn:
        """A user message (beside `editing` as a new branch, when editing one), and the reply to it."""
        self._require_idle()
        if not text.strip():
            raise SessionError("The message is empty.")
        if self.store.get(self.conversation).title == "New chat":
            self.store.rename(self.conversation, text.strip().splitlines()[0][:48])
        parent = (
            self.store.message(editing).parent if editing is not None else self.store.leaf(self.conversation)
        )
        user = self.store.add_message(self.conversation, parent, "user", text)
        return self._new_reply(user.id)

    def _new_reply(self, parent: int) -> Turn:
        reply = self.store.add_message(self.conversation, parent, "assistant", "", status="streaming")
        return self._reply_in(reply, "", continue_last=False)

    def regenerate(self, mid: int) -> Turn:
        """Another reply beside assistant message `mid` (both are kept, as branches)."""
        self._require_idle()
        msg = self.store.message(mid)
        if msg.role != "assistant" or msg.parent is None:
            raise SessionError("Only a reply to a message can be regenerated.")
        return self._new_reply(msg.parent)

    def continue_reply(self, mid: int) -> Turn:
        """Let the model go on writing reply `mid` (stopped or cut off), in the same message."""
        self._require_idle()
        msg = self.store.message(mid)
        if msg.role != "assistant":
            raise SessionError("Only a reply can be continued.")
        self.store.select(mid)
        self.store.update_message(mid, msg.content, "streaming")
        return self._reply_in(self.store.message(mid), msg.content, continue_last=True)

    def continue_with(self, mid: int, text: str) -> Turn:
        """A new branch beside reply `mid` that starts with `text`, which the model then goes on writing."""
        self._require_idle()
        msg = self.store.message(mid)
        if msg.role != "assistant":
            raise SessionError("Only a reply can be continued.")
        branch = self.store.add_message(msg.conversation, msg.parent, "assistant", text, status="stopped")
        return self.continue_reply(branch.id)

    # ------------------------------------------------------------ what comes back
    def on_event(self, event: object) -> bool:
        """Take one engine event of the running turn; True when the reply's text changed."""
        if self.phase is not Phase.STREAMING:
            return False
        if isinstance(event, Token):
            self.text += event.text
            if self._clock() - self._last_save >= self.save_interval:
                self._save()
            return bool(event.text)
        if isinstance(event, ReplyDone):
            self.text = self.prefix + event.text
            self.stats = event.stats
            # a remote server's stream cut midway ends with what arrived: kept, marked interrupted
            status = {StopReason.CANCELLED: "stopped", StopReason.INTERRUPTED: "interrupted"}
            self._end(status.get(event.stats.stop_reason, "done"), reply_stats(event.stats))
            return True
        return False

    def stopped_without_reply(self) -> int | None:
        """The engine request ended with no ReplyDone (cancelled before any token): keep it as stopped."""
        return self._end("stopped") if self.phase is Phase.STREAMING else None

    def fail(self) -> int | None:
        """The engine failed or died mid-reply: the partial text is kept, marked interrupted."""
        return self._end("interrupted") if self.phase is Phase.STREAMING else None

    def suspend(self) -> None:
        """The app is closing mid-reply: keep what was written as stopped."""
        if self.phase is Phase.STREAMING:
            self._end("stopped")

    def _save(self, status: str | None = None, stats: dict | None = None) -> None:
        self.store.update_message(self.reply.id, self.text, status, stats)
        self._last_save = self._clock()

    def _end(self, status: str, stats: dict | None = None) -> int:
        self._save(status, stats)
        mid = self.reply.id
        self.phase = Phase.IDLE
        self.reply = None
        return mid

    def live_message(self) -> StoredMessage | None:
        """The reply being written, with its text so far (for the view)."""
        if self.reply is None:
            return None
        r = self.reply
        return StoredMessage(r.id, r.conversation, r.parent, r.role, self.text, r.status, r.stats, r.created)
